"""The score's session cache keeps only the newest model, so hot swaps do not grow memory."""
import gc
import weakref

import numpy as np
import pytest

from tests.conftest import tiny_onnx

pytest.importorskip("onnxruntime")


def test_a_superseded_session_lives_only_while_a_stream_still_scores_with_it(backend):
    from operators.frames import ModelLoaded
    from operators.sessions import SessionCache
    cache = SessionCache(backend=backend, providers="cpu", threads=1)
    onnx = tiny_onnx()
    old = cache.get(ModelLoaded("a" * 64, 1, onnx=onnx))
    new = cache.get(ModelLoaded("b" * 64, 2, onnx=onnx))
    assert cache.keys() == ["b" * 64]
    assert old.runner.backend == new.runner.backend == backend
    # the stream that still holds the old entry can finish its batch with it ...
    x = np.zeros((1, 8, 8, 3), np.uint8)
    x[..., 2] = 1
    assert (old.runner.run(x) == 2).all()
    assert (old.runner.submit(x).result()[0] == 2).all()
    # ... and once it switches, nothing keeps the old model alive
    ref = weakref.ref(old.runner)
    del old
    gc.collect()
    assert ref() is None
    assert cache.get(ModelLoaded("b" * 64, 3, onnx=onnx)) is new


def test_a_stream_without_a_valid_model_is_paused_and_resumed_by_the_next_model(backend):
    """The score pauses the stream's file replay while no valid model may score it (no frame
    is dropped) and resumes it when a verified model arrives."""
    from operators.context import FlowContext
    from operators.frames import Frame, ModelLoaded
    from operators.score import ScoreLogic
    from operators.sessions import SessionCache
    ctx = FlowContext(sessions=SessionCache(backend=backend, providers="cpu", threads=1))
    logic = ScoreLogic(ctx, "paused-cam", pending=4)
    frame = Frame("paused-cam", 0, 0.0, "#0", np.zeros((8, 8, 3), np.uint8))
    out, _ = logic.on_batch([("paused-cam", frame)])
    assert out == [] and ctx.streams.paused("paused-cam") and len(logic.pending) == 1
    from model_store import CARLA_CLASSES, ModelCard, TensorSpec
    card = ModelCard(name="tiny", description="test", algorithm="argmax of the channels",
                     created="2026-01-01T00:00:00Z", modified="2026-01-01T00:00:00Z", training_params={},
                     classes=CARLA_CLASSES, scoring_function="class = largest channel",
                     inputs=(TensorSpec("image", "uint8", ("N", 8, 8, 3), "NHWC", "RGB"),),
                     outputs=(TensorSpec("classes", "uint8", ("N", 8, 8), "NHW", None),),
                     metrics={}, onnx_opset=17)
    out, _ = logic.on_batch([("paused-cam", ModelLoaded("c" * 64, 1, card=card, onnx=tiny_onnx()))])
    assert not ctx.streams.paused("paused-cam")
    out += logic.on_eof()[0]    # the run may still be in flight: the end of input collects it
    assert [r.seq for r in out if hasattr(r, "seq")] == [0]


_TRT = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_tensorrt_engines_are_cached_per_key_in_a_private_folder(tmp_path):
    """ORT names a TensorRT engine by its graph, not its weights: one cache shared by all
    keys could run another (even a revoked) model's engine. Each key gets its own folder and
    prefix, in a folder only this user can write."""
    import os
    from operators.sessions import ScoreError, build_session, provider_options
    home = tmp_path / "home"
    ka, kb = "a" * 64, "b" * 64
    oa, ob = provider_options(_TRT, ka, home), provider_options(_TRT, kb, home)
    assert oa[1:] == [{}, {}] and oa[0]["trt_engine_cache_enable"] == "True"
    assert oa[0]["trt_engine_cache_path"] == str(home / "trt-cache" / ka)
    assert ob[0]["trt_engine_cache_path"] == str(home / "trt-cache" / kb)
    assert (oa[0]["trt_engine_cache_prefix"], ob[0]["trt_engine_cache_prefix"]) == (ka + "_fp32", kb + "_fp32")
    assert provider_options(_TRT, ka, home, "fp16")[0]["trt_engine_cache_prefix"] == ka + "_fp16"
    for d in (home / "trt-cache", home / "trt-cache" / ka):
        assert d.is_dir() and (d.stat().st_mode & 0o777) == 0o700
    assert provider_options(["CPUExecutionProvider"], ka, tmp_path / "h2") == [{}]
    assert not (tmp_path / "h2").exists()
    # a cache others can write, or a link to one, is refused with one line
    (home / "trt-cache").chmod(0o777)
    with pytest.raises(ScoreError) as ei:
        provider_options(_TRT, ka, home)
    assert "\n" not in str(ei.value) and "no one else can write" in str(ei.value)
    (home / "trt-cache").chmod(0o700)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    os.rmdir(home / "trt-cache" / kb)
    (home / "trt-cache" / kb).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ScoreError, match="not a folder"):
        provider_options(_TRT, kb, home)
    # the CPU provider makes no cache at all
    build_session(tiny_onnx(), key=ka, backend="onnxruntime", providers="cpu", threads=1, home=tmp_path / "h3")
    assert not (tmp_path / "h3").exists()


@pytest.mark.gpu
def test_tensorrt_runs_each_keys_own_engine(tmp_path):
    """Two models with the same graph and other weights, one after the other: each scores
    with its own engine. Selected with ``-m gpu``, so a machine without TensorRT fails it."""
    import onnxruntime as ort
    from tests.flow_fixtures import tiny_onnx as shifted_onnx
    from operators.sessions import build_session, gpu_driver
    if "TensorrtExecutionProvider" not in ort.get_available_providers() or not gpu_driver():
        pytest.fail("TensorRT is not available here: run -m gpu where an NVIDIA GPU and TensorRT are")
    x = np.zeros((1, 32, 32, 3), np.uint8)
    x[..., 0] = 45    # class (45 // 20 + shift) % 13
    for shift, key in ((0, "a" * 64), (1, "b" * 64)):
        e = build_session(shifted_onnx(shift), key=key, backend="onnxruntime", providers="tensorrt",
                          threads=1, home=tmp_path)
        if e.provider != "TensorrtExecutionProvider":
            pytest.fail(f"TensorRT did not load ({e.provider})")
        assert (e.runner.run(x) == 2 + shift).all()
        assert any((tmp_path / "trt-cache" / key).iterdir()), "no engine cached for this key"
