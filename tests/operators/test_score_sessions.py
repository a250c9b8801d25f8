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


def test_tensorrt_builds_one_engine_for_every_batch_the_batcher_can_send(tmp_path):
    """The batcher's runs hold 1 to VERISEG_BATCH frames; without a profile TensorRT builds a
    new engine (seconds) for each batch size it meets. The profile covers 1..batch of the
    graph's one input, and an engine of one batch range is never loaded for another."""
    from operators.backends.ort import trt_profile
    from operators.sessions import provider_options
    from tests.flow_fixtures import tiny_onnx as sized_onnx
    onnx = sized_onnx(size=(24, 40))            # image: [N, 24, 40, 3]
    profile = trt_profile(onnx, 8)
    assert profile == {"trt_profile_min_shapes": "image:1x24x40x3", "trt_profile_opt_shapes": "image:8x24x40x3",
                       "trt_profile_max_shapes": "image:8x24x40x3"}
    opts = provider_options(_TRT, "a" * 64, tmp_path, "fp32", profile, 8)[0]
    assert opts["trt_profile_max_shapes"] == "image:8x24x40x3" and opts["trt_engine_cache_prefix"] == "a" * 64 + "_fp32_b8"
    # a fixed batch, or a graph that is not one image of fixed size: TensorRT takes the shapes it meets
    assert trt_profile(sized_onnx(dynamic_batch=False), 8) == {}
    assert trt_profile(b"\x08\x07not an onnx graph", 8) == {}


def test_the_flow_builds_sessions_for_its_batch_before_it_knows_the_provider(monkeypatch):
    """VERISEG_BATCH reaches the session build; auto builds for the GPU's batch (1 on the CPU
    is decided only once the provider loaded, and a CPU session ignores the profile)."""
    from operators import sessions
    from operators.batching import GPU_AUTO_BATCH
    from operators.config import load_config
    from operators.context import FlowContext
    from operators.frames import ModelLoaded
    seen = []

    def spy(onnx, **kw):
        seen.append(kw["batch"])
        raise sessions.ScoreError("seen; compile nothing")
    monkeypatch.setattr(sessions, "compile_verified", spy)
    for env, want in (({}, GPU_AUTO_BATCH), ({"VERISEG_BATCH": "3"}, 3)):
        ctx = FlowContext(load_config(env))
        with pytest.raises(sessions.ScoreError):
            ctx.sessions.get(ModelLoaded("a" * 64, 1, onnx=tiny_onnx()))
        assert seen[-1] == want


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
                          threads=1, home=tmp_path, batch=8)
        if e.provider != "TensorrtExecutionProvider":
            pytest.fail(f"TensorRT did not load ({e.provider})")
        assert (e.runner.run(x) == 2 + shift).all()
        assert any((tmp_path / "trt-cache" / key).iterdir()), "no engine cached for this key"
        engines = sorted((tmp_path / "trt-cache" / key).iterdir())
        for n in (1, 3, 8):            # every batch the batcher sends runs on the one engine
            assert (e.runner.run(np.repeat(x, n, axis=0)) == 2 + shift).all()
        assert sorted((tmp_path / "trt-cache" / key).iterdir()) == engines, "an engine was built per batch size"
