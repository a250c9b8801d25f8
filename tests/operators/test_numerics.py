"""Pinned numerics (operators/backends/precision.py): every backend runs the precision the
card states unless VERISEG_PRECISION says otherwise, whatever the host CPU's own default;
the runner's execution profile says what ran and every results line states it; a failing
run costs only its frames, at once."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import installed_backends, need
from tests.flow_fixtures import expected_classes, frame_image, tiny_card, tiny_onnx

REPO = Path(__file__).resolve().parents[2]
KA = "a" * 64


def _x(n=1, size=(32, 32), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


class _Compiled:
    """A compiled model as a device whose own default precision is ``default`` would give it:
    compiled without a precision hint it reports (and would run) ``default``; ``ignore``
    reports ``default`` whatever was set (a device that does not honour the hint)."""

    def __init__(self, real, hint, default, ignore=False, fail_when=None):
        self._real, self._fail_when = real, fail_when
        self._reported = default if (hint is None or ignore) else hint

    def get_property(self, name):
        if name == "INFERENCE_PRECISION_HINT":
            import openvino as ov
            return {"f32": ov.Type.f32, "bf16": ov.Type.bf16, "f16": ov.Type.f16}[self._reported]
        return self._real.get_property(name)

    def create_infer_request(self):
        real = self._real.create_infer_request()
        return real if self._fail_when is None else _FailingRequest(real, self._fail_when)

    def __getattr__(self, name):
        return getattr(self._real, name)


class _FailingRequest:
    """An infer request whose run raises for the inputs ``fail_when`` picks: the failing path
    of a runtime, forced the same way on every CPU."""

    def __init__(self, real, fail_when):
        self._real, self._fail_when, self._x = real, fail_when, None

    def set_input_tensor(self, t):
        self._x = t.data
        self._real.set_input_tensor(t)

    def infer(self):
        if self._fail_when(self._x):
            raise RuntimeError("device lost the run")
        self._real.infer()

    def get_output_tensor(self, i):
        return self._real.get_output_tensor(i)


@pytest.fixture
def fake_device(monkeypatch):
    """OpenVINO's Core with a device whose default precision is bf16 (as the CPU plugin's is
    on a CPU with AVX512_BF16 or AMX), on any host. Returns the configs compiled with and a
    dict of knobs (``caps``: OPTIMIZATION_CAPABILITIES, ``ignore``, ``fail_when``)."""
    ov = pytest.importorskip("openvino")
    seen, knobs = [], {"caps": ["FP32", "BF16", "INT8"], "ignore": False, "fail_when": None}
    real_compile, real_prop = ov.Core.compile_model, ov.Core.get_property

    def compile_(self, model, device=None, config=None, **kw):
        config = dict(config or {})
        seen.append(config)
        hint = config.get("INFERENCE_PRECISION_HINT")
        # compiled for real in f32, so the class maps are checked too; the fake reports bf16
        real = real_compile(self, model, device, dict(config, INFERENCE_PRECISION_HINT="f32"), **kw)
        return _Compiled(real, hint, "bf16", knobs["ignore"], knobs["fail_when"])

    def get_property(self, device, name, *a):
        if name == "OPTIMIZATION_CAPABILITIES":
            return list(knobs["caps"])
        if name == "INFERENCE_PRECISION_HINT":
            return ov.Type.bf16
        return real_prop(self, device, name, *a)
    monkeypatch.setattr(ov.Core, "compile_model", compile_)
    monkeypatch.setattr(ov.Core, "get_property", get_property)
    return seen, knobs


# ----------------------------------------------------------------------------- the card's precision
def test_the_card_precision_is_that_of_the_graphs_float_weights():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from operators.backends.precision import card_precision, wanted
    assert card_precision(tiny_onnx()) == "fp32"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT16, [4], np.ones(4, np.float16).view(np.uint16).tolist())
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "half", [x], [y], [w])
    half = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    assert card_precision(half) == "fp16"
    assert wanted("card", half) == ("fp16", False) and wanted("bf16", half) == ("bf16", True)
    assert card_precision(b"not onnx") == "fp32"     # the runtime refuses those bytes itself


def test_an_int8_blob_is_fp32_for_its_non_quantised_part():
    import model_store
    from operators.backends.precision import card_precision
    blob = REPO / "models" / "carla-enet-int8.vsb"
    need(blob.exists(), "models/carla-enet-int8.vsb")
    card, onnx = model_store.load(str(blob), expected_key=model_store.verify(str(blob)))
    assert card_precision(onnx) == "fp32"


# ----------------------------------------------------------------------------- OpenVINO
def test_openvino_is_told_f32_even_where_the_device_default_is_bf16(fake_device):
    """The CPU plugin runs an fp32 graph in bf16 by default on a CPU with native bf16: the
    backend sets f32 itself and reads the precision back, so the suite does not depend on
    the host (this fake device defaults to bf16 on any CPU)."""
    from operators.backends import ov as ovb
    seen, _ = fake_device
    r = ovb.build(tiny_onnx(shift=1), key=KA, threads=1, device="CPU")
    assert seen[-1]["INFERENCE_PRECISION_HINT"] == "f32"
    assert (r.profile.backend, r.profile.device, r.profile.precision) == ("openvino", "CPU", "fp32")
    assert r.profile.runtime == ovb.version() and "precision fp32 (the card)" in r.how
    x = _x(2)
    assert (r.submit(x).result()[0] == expected_classes(x, 1)).all()
    r.close()


def test_a_device_that_does_not_run_the_precision_set_is_refused(fake_device):
    from operators.backends import ScoreError
    from operators.backends import ov as ovb
    _, knobs = fake_device
    knobs["ignore"] = True
    with pytest.raises(ScoreError, match="compiled it for bf16 though fp32 was set") as e:
        ovb.build(tiny_onnx(), key=KA, threads=1, device="CPU")
    assert "\n" not in str(e.value)


def test_bf16_is_an_explicit_choice_refused_with_one_line_where_the_device_lacks_it(fake_device):
    from operators.backends import ScoreError, compile_verified
    seen, knobs = fake_device
    r, _ = compile_verified(tiny_onnx(), key=KA, backend="openvino", threads=1, precision="bf16")
    assert seen[-1]["INFERENCE_PRECISION_HINT"] == "bf16" and r.profile.precision == "bf16"
    assert "precision bf16 (VERISEG_PRECISION)" in r.how
    r.close()
    knobs["caps"] = ["FP32", "INT8"]          # an AVX2-only CPU
    with pytest.raises(ScoreError, match=r"VERISEG_PRECISION=bf16: OpenVINO's CPU does not compute bf16 "
                                         r"natively \(it offers FP32, INT8\)") as e:
        compile_verified(tiny_onnx(), key=KA, backend="openvino", threads=1, precision="bf16")
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- ONNX Runtime
def test_onnx_runtime_runs_the_cards_precision_and_tensorrt_fp16_only_when_asked(tmp_path):
    from operators.backends import ScoreError, compile_verified
    from operators.backends.ort import provider_options
    r, _ = compile_verified(tiny_onnx(), key=KA, backend="onnxruntime", providers="cpu", threads=1)
    assert (r.profile.backend, r.profile.device, r.profile.precision) == ("onnxruntime", "CPU", "fp32")
    import onnxruntime
    assert r.profile.runtime == onnxruntime.__version__
    r.close()
    with pytest.raises(ScoreError, match="VERISEG_PRECISION=fp16: ONNX Runtime's CPUExecutionProvider runs "
                                         r"the graph's own precision \(fp32\) only"):
        compile_verified(tiny_onnx(), key=KA, backend="onnxruntime", providers="cpu", threads=1, precision="fp16")
    trt = ["TensorrtExecutionProvider"]
    for precision, fp16, bf16 in (("fp32", "False", "False"), ("fp16", "True", "False"), ("bf16", "False", "True")):
        o = provider_options(trt, KA, tmp_path, precision)[0]
        assert (o["trt_fp16_enable"], o["trt_bf16_enable"]) == (fp16, bf16)


def test_the_precision_setting_is_declared_and_refused_with_one_line():
    from operators.config import ConfigError, load_config
    base = {"VERISEG_SOURCE": str(REPO / "models" / "sample.avi")}
    assert load_config(base).precision == "card"
    assert load_config(dict(base, VERISEG_PRECISION="BF16")).precision == "bf16"
    with pytest.raises(ConfigError) as e:
        load_config(dict(base, VERISEG_PRECISION="fp64"))
    assert str(e.value).startswith("VERISEG_PRECISION: expected card, fp32, bf16 or fp16") and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- the profile on every line
def test_each_scored_frame_and_results_line_states_the_profile_it_was_scored_with(backend):
    from chain.profile import ExecutionProfile
    from chain.frame_digest import frame_digest
    from chain.results import RESULT_BOUND, frame_record
    from operators.context import FlowContext
    from operators.frames import Frame, ModelLoaded, ScoredFrame
    from operators.score import ScoreLogic
    from operators.sessions import SessionCache
    ctx = FlowContext(sessions=SessionCache(backend=backend, providers="cpu", threads=1))
    logic = ScoreLogic(ctx, "cam", batch=1)
    logic._apply(ModelLoaded(KA, 1, card=tiny_card(), onnx=tiny_onnx()))
    img = np.ascontiguousarray(frame_image(0, (32, 32))[..., ::-1])
    out = logic.on_batch([("cam", Frame("cam", 0, 0.0, "#0", img, colour="RGB"))])[0] + logic.on_eof()[0]
    (r,) = [o for o in out if isinstance(o, ScoredFrame)]
    assert r.profile == logic.entry.runner.profile and r.profile.precision == "fp32"
    assert r.profile.backend == backend
    line = frame_record("cam", 0, KA, r.class_map, ts=0.0, pos="#0", class_names=None,
                        frame=frame_digest(img, "RGB"), profile=r.profile).line
    assert ExecutionProfile.from_dict(line["profile"]) == r.profile and "profile" in RESULT_BOUND


# ----------------------------------------------------------------------------- failing runs
def test_a_failing_run_costs_only_its_frames_at_once_and_later_runs_still_work(backend):
    """A frame the model refuses fails its own run, reported as soon as the runtime raises
    (not after a run timeout), and every later frame on the same model is scored."""
    from operators.context import FlowContext
    from operators.frames import Frame, ModelLoaded, ScoredFrame
    from operators.score import ScoreLogic
    from operators.sessions import SessionCache
    ctx = FlowContext(sessions=SessionCache(backend=backend, providers="cpu", threads=1))
    logic = ScoreLogic(ctx, "cam", batch=1)
    logic._apply(ModelLoaded(KA, 1, card=tiny_card(), onnx=tiny_onnx()))
    logic.entry.pre = type(logic.entry.pre)(None, "RGB")
    frames = [Frame("cam", i, 0.0, f"#{i}", np.ascontiguousarray(frame_image(i, (32, 32))[..., ::-1]), colour="RGB")
              for i in range(8)]
    frames[1] = Frame("cam", 1, 0.0, "#bad", np.zeros((5, 7, 3), np.uint8), colour="RGB")
    t = time.perf_counter()
    out = []
    for f in frames:
        out += logic.on_batch([("cam", f)])[0]
    out += logic.on_eof()[0]
    assert time.perf_counter() - t < 10
    assert [r.seq for r in out if isinstance(r, ScoredFrame)] == [0, 2, 3, 4, 5, 6, 7]
    assert ctx.stats.snapshot()["frames_dropped"]["cam"]["score_error"] == 1


def test_an_openvino_run_that_fails_in_the_device_fails_only_its_frames(fake_device):
    """The failing path forced on every CPU: the device raises during one run (AsyncInferQueue
    called no callback for such a run: its frames waited out the 120 s run timeout, and the
    request's next start raised the old error again)."""
    from operators.backends import ov as ovb
    _, knobs = fake_device
    knobs["fail_when"] = lambda x: int(x[0, 0, 0, 0]) == 255
    r = ovb.build(tiny_onnx(), key=KA, threads=1, device="CPU")
    xs = [_x(1, seed=i) for i in range(8)]
    for x in xs:
        x[0, 0, 0, 0] = 0
    xs[2][0, 0, 0, 0] = 255
    t = time.perf_counter()
    pend = [r.submit(x) for x in xs]
    for i, (x, p) in enumerate(zip(xs, pend)):
        if i == 2:
            with pytest.raises(RuntimeError, match="device lost the run"):
                p.result()
        else:
            assert (p.result()[0] == expected_classes(x, 0)).all()
    assert time.perf_counter() - t < 10
    r.close()


# ----------------------------------------------------------------------------- the same answer on every CPU
def _clip_frames(card, n=8):
    from operators.frames import Frame
    from operators.preprocess import Preprocessor
    pre = Preprocessor.for_card(card)
    cap = cv2.VideoCapture(str(REPO / "models" / "sample.avi"))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 60
    frames = []
    for i in np.linspace(0, total - 1, n).astype(int):    # spread over the clip
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
        ok, img = cap.read()
        assert ok, f"frame {i} of the sample clip"
        frames.append(pre(Frame("s", int(i), 0.0, "", img)).image)
    return np.stack(frames)


def _scores(runner, x):
    return np.concatenate([runner.submit(x[i:i + 1]).result()[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def sample():
    """The default flow's model and clip (models/carla-enet.vsb, models/sample.avi), and
    ONNX Runtime fp32's class maps of 8 frames spread over the clip."""
    import model_store
    from operators.backends import compile_verified
    from operators.config import DEFAULT_MODEL, default_sample_clip
    need(DEFAULT_MODEL.exists() and default_sample_clip() is not None, "models/carla-enet.vsb and the sample clip")
    key = model_store.verify(str(DEFAULT_MODEL))
    card, onnx = model_store.load(str(DEFAULT_MODEL), expected_key=key)
    x = _clip_frames(card)
    ref, _ = compile_verified(onnx, key=key, backend="onnxruntime", providers="cpu")
    want = _scores(ref, x)
    ref.close()
    assert ref.profile.precision == "fp32" and len(np.unique(want)) >= 4   # a real scene
    return key, onnx, x, want


@pytest.mark.slow
def test_the_default_flows_class_maps_equal_onnx_runtime_fp32_on_any_cpu(sample):
    """The main job's defaults (VERISEG_BACKEND=auto, VERISEG_PRECISION=card) on the sample
    clip: ≥ 99.99 % of pixels as ONNX Runtime fp32 gives them (identical on the AVX512_BF16
    EPYC where OpenVINO's own default was bf16: 0.07 % of pixels differed there)."""
    from operators.backends import compile_verified
    key, onnx, x, want = sample
    r, _ = compile_verified(onnx, key=key)
    assert r.profile.precision == "fp32"
    agree = float((_scores(r, x) == want).mean())
    r.close()
    assert agree >= 0.9999, f"{r.profile}: {100 * agree:.4f} % of pixels agree with ONNX Runtime fp32"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_each_backend_at_fp32_gives_onnx_runtimes_fp32_class_maps(sample, name):
    from operators.backends import compile_verified
    need(name in installed_backends(), name)
    key, onnx, x, want = sample
    r, _ = compile_verified(onnx, key=key, backend=name, providers="cpu", precision="fp32")
    got = _scores(r, x)
    r.close()
    assert r.profile.precision == "fp32" and np.array_equal(got, want), \
        f"{r.profile}: {int((got != want).sum())} pixels differ from ONNX Runtime fp32"


@pytest.mark.slow
def test_openvino_bf16_runs_where_the_cpu_has_native_bf16_and_says_so(sample):
    ov = pytest.importorskip("openvino")
    from operators.backends import compile_verified
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no native bf16 (no AVX512_BF16 or AMX): OpenVINO's bf16 row needs one")
    key, onnx, x, want = sample
    r, _ = compile_verified(onnx, key=key, backend="openvino", ov_device="CPU", precision="bf16")
    agree = float((_scores(r, x) == want).mean())
    r.close()
    assert r.profile.precision == "bf16"
    # bf16 is not fp32: it differs (0.07 % of pixels on the EPYC), and it is stated as bf16
    assert agree >= 0.995, f"{r.profile}: {100 * agree:.3f} % of pixels agree with ONNX Runtime fp32"


def test_each_model_load_logs_the_profile_it_runs_as(backend):
    import logging

    from operators.frames import ModelLoaded
    from operators.sessions import SessionCache
    from operators.telemetry import log
    seen = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: seen.append(record.getMessage())
    log.addHandler(handler)
    try:
        e = SessionCache(backend=backend, providers="cpu", threads=1).get(
            ModelLoaded(KA, 1, card=tiny_card(), onnx=tiny_onnx()))
    finally:
        log.removeHandler(handler)
    assert f"model {KA[:12]} runs as {e.runner.profile}" in seen
    assert str(e.runner.profile).startswith(backend) and str(e.runner.profile).endswith(" CPU fp32")
    e.runner.close()
