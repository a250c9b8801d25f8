"""Scoring backends (operators.backends): the choice, the contract, key isolation, order,
revocation with runs in flight, and OpenVINO's class maps against ONNX Runtime's on real
frames of the sample clip."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import installed_backends, need
from tests.flow_fixtures import expected_classes, frame_image, tiny_card, tiny_onnx

REPO = Path(__file__).resolve().parents[2]
KA, KB = "a" * 64, "b" * 64


def _x(n=1, size=(32, 32), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- choice
def test_auto_picks_openvino_on_a_cpu_and_says_why(monkeypatch):
    pytest.importorskip("openvino")
    from operators.backends import choose, compile_verified, ort
    monkeypatch.setattr(ort, "gpu_provider_available", lambda providers: False)
    r, why = compile_verified(tiny_onnx(), key=KA, backend="auto", threads=1)
    assert r.backend == "openvino" and r.device == "CPU" and r.key == KA
    assert why.startswith("auto: ") and "OpenVINO" in why and "\n" not in why
    # VERISEG_PROVIDERS=cuda / VERISEG_REQUIRE_GPU are ONNX Runtime settings: auto obeys them
    r, why = compile_verified(tiny_onnx(), key=KA, backend="auto", providers="cuda", threads=1)
    assert r.backend == "onnxruntime" and "VERISEG_PROVIDERS=cuda" in why
    # OpenVINO missing: ONNX Runtime on the CPU, and the line says how to get the faster one
    monkeypatch.setattr(choose.ov, "available", lambda: False)
    r, why = compile_verified(tiny_onnx(), key=KA, backend="auto", threads=1)
    assert r.backend == "onnxruntime" and r.device == "CPUExecutionProvider"
    assert "pip install openvino" in why


def test_auto_takes_ort_when_a_gpu_provider_loads_and_openvino_when_it_falls_back(monkeypatch):
    pytest.importorskip("openvino")
    from operators.backends import choose, compile_verified, ort
    built = []
    real_build = ort.build

    def fake_build(onnx, **kw):
        r = real_build(onnx, **dict(kw, providers="cpu"))
        r.device = device
        built.append(r)
        return r
    monkeypatch.setattr(ort, "gpu_provider_available", lambda providers: True)
    monkeypatch.setattr(choose.ort, "build", fake_build)
    device = "CUDAExecutionProvider"
    r, why = compile_verified(tiny_onnx(), key=KA, threads=1)
    assert r.backend == "onnxruntime" and "CUDAExecutionProvider loaded" in why
    device = "CPUExecutionProvider"     # the GPU build fell back silently: OpenVINO is faster there
    r, why = compile_verified(tiny_onnx(), key=KA, threads=1)
    assert r.backend == "openvino" and "fell back to CPUExecutionProvider" in why


def test_an_unknown_or_missing_backend_is_one_line(monkeypatch):
    from operators.backends import ScoreError, choose, compile_verified
    with pytest.raises(ScoreError, match="unknown scoring backend"):
        compile_verified(tiny_onnx(), key=KA, backend="tflite")
    monkeypatch.setattr(choose.ov, "available", lambda: False)
    with pytest.raises(ScoreError) as ei:
        compile_verified(tiny_onnx(), key=KA, backend="openvino")
    assert "pip install openvino" in str(ei.value) and "\n" not in str(ei.value)


def test_a_model_openvino_cannot_compile_is_refused_with_one_line(backend):
    from operators.backends import ScoreError, compile_verified
    with pytest.raises(ScoreError) as ei:
        compile_verified(b"\x08\x07not an onnx graph", key=KA, backend=backend, providers="cpu", threads=1)
    assert KA[:12] in str(ei.value) and "\n" not in str(ei.value)


# ----------------------------------------------------------------------------- contract
def test_runner_run_and_submit_keep_the_ort_contract(backend):
    from operators.backends import compile_verified
    r, _ = compile_verified(tiny_onnx(shift=3), key=KA, backend=backend, providers="cpu", threads=1)
    x = _x(3)
    y = r.run(x)
    assert y.dtype == np.uint8 and y.shape == (3, 32, 32)
    assert (y == expected_classes(x, 3)).all()
    assert r.input.type == "tensor(uint8)" and r.output.type == "tensor(uint8)"
    assert r.input.shape[1:] == (32, 32, 3) and not isinstance(r.input.shape[0], int)
    # several runs in flight: each result is its own input's, whatever the completion order
    xs = [_x(1, seed=i) for i in range(8)]
    pend = [r.submit(x) for x in xs]
    for x, p in zip(xs, pend):
        got, ms = p.result()
        assert p.done() and ms >= 0 and (got == expected_classes(x, 3)).all()
    # a wrong input fails that run only, with the runtime's error, and the next one works
    bad = r.submit(np.zeros((1, 5, 5, 3), np.float32))
    with pytest.raises(Exception):
        bad.result()
    assert (r.submit(xs[0]).result()[0] == expected_classes(xs[0], 3)).all()


def test_a_fixed_shape_model_is_warmed_on_every_in_flight_slot_and_a_named_dim_is_not(backend, monkeypatch):
    """The runtime's lazy first-run work happens when the model is built (the reader's
    thread), not on a live stream's first frames; a named batch dim has no shape to warm."""
    from operators.backends import base
    from operators.sessions import build_session
    seen = []
    real_submit = {}

    def spy(cls):
        real_submit[cls] = cls.submit

        def submit(self, x):
            seen.append((x.shape, x.dtype, int(x.max())))
            return real_submit[cls](self, x)
        monkeypatch.setattr(cls, "submit", submit)
    for cls in base.Runner.__subclasses__():
        spy(cls)
    e = build_session(tiny_onnx(dynamic_batch=False), key=KA, backend=backend, providers="cpu", threads=1)
    assert seen == [((1, 32, 32, 3), np.uint8, 0)] * e.runner.depth and e.runner.depth >= 2
    seen.clear()
    e = build_session(tiny_onnx(), key=KA, backend=backend, providers="cpu", threads=1)
    assert seen == []


def test_a_model_compiled_for_one_key_is_never_used_for_another(backend):
    """Same graph, other weights (the shift), other key: each key scores with its own
    compiled model, also after one was dropped (a revocation) and the other rebuilt."""
    from operators.frames import ModelLoaded
    from operators.sessions import SessionCache
    cache = SessionCache(backend=backend, providers="cpu", threads=1, keep=2)
    x = _x(2)
    ea = cache.get(ModelLoaded(KA, 1, onnx=tiny_onnx(shift=0)))
    eb = cache.get(ModelLoaded(KB, 2, onnx=tiny_onnx(shift=1)))
    assert (ea.key, ea.runner.key, eb.key, eb.runner.key) == (KA, KA, KB, KB)
    assert (ea.runner.run(x) == expected_classes(x, 0)).all()
    assert (eb.runner.run(x) == expected_classes(x, 1)).all()
    cache.drop(KA)
    assert cache.keys() == [KB]
    # the same key again: served from the cache only under that key
    assert cache.get(ModelLoaded(KB, 3, onnx=tiny_onnx(shift=5))) is eb
    ea2 = cache.get(ModelLoaded(KA, 4, onnx=tiny_onnx(shift=0)))
    assert ea2 is not ea and (ea2.runner.run(x) == expected_classes(x, 0)).all()


def test_openvino_compiles_the_verified_bytes_in_memory_with_no_model_cache(tmp_path, monkeypatch):
    """OpenVINO loads a cached compiled model by a hash of the graph without checking it
    against the model: a planted cache file would run in place of the registered model. The
    backend reads the bytes it was given (never a path) and turns the cache off."""
    ov = pytest.importorskip("openvino")
    from operators.backends import ov as ovb
    seen = {}
    real_read, real_compile = ov.Core.read_model, ov.Core.compile_model

    def read(self, model, *a, **kw):
        seen["read"] = model
        return real_read(self, model, *a, **kw)

    def compile_(self, model, device=None, config=None, **kw):
        seen["config"] = dict(config or {})
        return real_compile(self, model, device, config, **kw)
    monkeypatch.setattr(ov.Core, "read_model", read)
    monkeypatch.setattr(ov.Core, "compile_model", compile_)
    monkeypatch.chdir(tmp_path)
    onnx = tiny_onnx(shift=2)
    r = ovb.build(onnx, key=KA, threads=1)
    assert seen["read"] is onnx                       # the verified bytes themselves
    assert seen["config"].get("CACHE_DIR") == ""      # no compiled-model cache at all
    x = _x(1)
    assert (r.run(x) == expected_classes(x, 2)).all()
    assert list(tmp_path.iterdir()) == []             # nothing written next to the process


def test_the_openvino_hint_setting_reaches_the_compiled_model_with_two_runs_in_flight():
    """VERISEG_OPENVINO_HINT (``Config.openvino_hint``) travels through the flow's context and
    session cache to OpenVINO; LATENCY's one optimal request would make the score window
    synchronous, so two stay in flight under either hint."""
    pytest.importorskip("openvino")
    from types import SimpleNamespace

    from operators.context import FlowContext
    from operators.sessions import build_session
    for hint in ("latency", "throughput"):
        cfg = SimpleNamespace(backend="openvino", providers="auto", require_gpu=False, threads=2, home=None,
                              openvino_hint=hint, ort_spin=False, openvino_device="auto", precision="card",
                              max_arena_bytes=0, batch=None)
        options = FlowContext(config=cfg).sessions.options
        assert options["hint"] == hint
        e = build_session(tiny_onnx(), key=KA, **options)
        assert f"hint {hint.upper()}" in e.runner.how and e.runner.depth >= 2, e.runner.how
        e.runner.close()


def test_ort_spin_wait_follows_the_flows_configuration_not_the_process_environment(monkeypatch):
    """VERISEG_ORT_SPIN reaches ONNX Runtime through the configuration (Config.ort_spin),
    so a flow configured from a mapping gets what that mapping says."""
    from types import SimpleNamespace

    from operators.context import FlowContext
    from operators.sessions import build_session
    monkeypatch.setenv("VERISEG_ORT_SPIN", "1")      # ignored: the configuration says no
    for spin in (False, True):
        cfg = SimpleNamespace(backend="onnxruntime", providers="cpu", require_gpu=False, threads=1, home=None,
                              openvino_hint="throughput", ort_spin=spin, openvino_device="auto", precision="card",
                              max_arena_bytes=0, batch=None)
        e = build_session(tiny_onnx(), key=KA, **FlowContext(config=cfg).sessions.options)
        so = e.runner.native.get_session_options()
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spin else "0")
        e.runner.close()


# ----------------------------------------------------------------------------- the score window
def _frames(sid, n, size=(32, 32)):
    from operators.frames import Frame
    return [Frame(sid, i, 0.0, f"#{i}", np.ascontiguousarray(frame_image(i, size)[..., ::-1]), colour="RGB")
            for i in range(n)]


def test_pipelined_scoring_keeps_frame_order_and_each_frames_own_result(backend):
    from operators.context import FlowContext
    from operators.frames import ModelLoaded, ScoredFrame
    from operators.score import ScoreLogic
    from operators.sessions import SessionCache
    ctx = FlowContext(sessions=SessionCache(backend=backend, providers="cpu", threads=1))
    logic = ScoreLogic(ctx, "cam", batch=1)
    logic._apply(ModelLoaded(KA, 1, card=tiny_card(), onnx=tiny_onnx(shift=0)))
    frames = _frames("cam", 30)
    out = []
    for i, f in enumerate(frames):
        out += logic.on_batch([("cam", f)])[0]
        if i == 14:   # hot swap mid-stream: runs in flight finish on the old model
            out += logic.on_batch([("cam", ModelLoaded(KB, 2, card=tiny_card(), onnx=tiny_onnx(shift=1)))])[0]
        assert len(logic.inflight) <= logic.entry.runner.depth
    out += logic.on_eof()[0]
    scored = [r for r in out if isinstance(r, ScoredFrame)]
    assert [r.seq for r in scored] == list(range(30))
    for r, f in zip(scored, frames):
        shift = 0 if r.seq <= 14 else 1
        assert r.model_key == (KA if shift == 0 else KB)
        assert (r.class_map == expected_classes(f.image, shift)).all()
        assert {"score", "wait", "in_flight"} <= set(r.latency_ms)


def test_no_frame_is_submitted_after_the_revocation_is_known_runs_in_flight_finish(backend):
    from operators.context import FlowContext
    from operators.frames import ModelLoaded, ScoredFrame
    from operators.score import ScoreLogic
    from operators.sessions import SessionCache
    ctx = FlowContext(sessions=SessionCache(backend=backend, providers="cpu", threads=1))
    logic = ScoreLogic(ctx, "cam", batch=1, pending=64)
    logic._apply(ModelLoaded(KA, 1, card=tiny_card(), onnx=tiny_onnx()))
    frames = _frames("cam", 6)
    out = []
    for f in frames[:3]:
        out += logic.on_batch([("cam", f)])[0]
    submitted = 3
    ctx.revoked.add(KA, "compromised")      # known now (the follower thread adds it)
    for f in frames[3:]:
        out += logic.on_batch([("cam", f)])[0]
    out += logic.notify_at() and logic.on_notify()[0] or []
    out += logic.on_eof()[0]
    scored = [r for r in out if isinstance(r, ScoredFrame)]
    # the 3 runs submitted before the revocation was known are emitted, in order; none after
    assert [r.seq for r in scored] == list(range(submitted))
    assert logic.entry is None and not logic.inflight
    assert ctx.stats.snapshot()["frames_dropped"]["cam"]["no_model"] == 3


def test_a_run_that_fails_costs_only_its_frames(backend):
    from operators.context import FlowContext
    from operators.frames import Frame, ModelLoaded, ScoredFrame
    from operators.score import ScoreLogic
    from operators.sessions import SessionCache
    ctx = FlowContext(sessions=SessionCache(backend=backend, providers="cpu", threads=1))
    logic = ScoreLogic(ctx, "cam", batch=1)
    logic._apply(ModelLoaded(KA, 1, card=tiny_card(), onnx=tiny_onnx()))
    good = _frames("cam", 3)
    # a frame the preprocessor lets through (dynamic size would be needed) but the model refuses
    logic.entry.pre = type(logic.entry.pre)(None, "RGB")
    bad = Frame("cam", 1, 0.0, "#bad", np.zeros((5, 7, 3), np.uint8), colour="RGB")
    out = []
    for f in (good[0], bad, good[2]):
        out += logic.on_batch([("cam", f)])[0]
    out += logic.on_eof()[0]
    assert [r.seq for r in out if isinstance(r, ScoredFrame)] == [0, 2]
    snap = ctx.stats.snapshot()
    assert snap["frames_dropped"]["cam"]["score_error"] == 1 and snap["bad_frames"]["cam"] == 1


# ----------------------------------------------------------------------------- equivalence
@pytest.mark.slow
def test_openvino_class_maps_agree_with_onnx_runtime_on_the_sample_clip():
    """The committed blob on frames of the committed clip: ≥ 99.9 % of pixels the same class
    on every backend as on ONNX Runtime (99.95 % measured on the 512² ENet)."""
    import model_store
    from operators.backends import compile_verified
    from operators.frames import Frame
    from operators.preprocess import Preprocessor
    blob, clip = REPO / "models" / "carla-enet.vsb", REPO / "models" / "sample.avi"
    need(blob.exists() and clip.exists(), "models/carla-enet.vsb and models/sample.avi")
    key = model_store.verify(str(blob))
    card, onnx = model_store.load(str(blob), expected_key=key)
    pre = Preprocessor.for_card(card)
    cap = cv2.VideoCapture(str(clip))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 240
    frames = []
    for i in np.linspace(0, n - 1, 8).astype(int):    # spread over the clip
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
        ok, img = cap.read()
        assert ok, f"frame {i} of {clip}"
        frames.append(pre(Frame("s", int(i), 0.0, "", img)).image)
    x = np.stack(frames)
    ref_runner, _ = compile_verified(onnx, key=key, backend="onnxruntime", providers="cpu")
    ref = np.concatenate([ref_runner.run(x[i:i + 1]) for i in range(len(x))])
    assert len(np.unique(ref)) >= 4          # a real scene, not one class everywhere
    for name in installed_backends():
        r, _ = compile_verified(onnx, key=key, backend=name, providers="cpu")
        got = np.concatenate([r.submit(x[i:i + 1]).result()[0] for i in range(len(x))])
        agree = float((got == ref).mean())
        assert agree >= 0.999, f"{name}: {100 * agree:.3f} % of pixels agree with ONNX Runtime"
    if "openvino" in installed_backends():     # its exact rewrite (ov_graph) changes no pixel
        from operators.backends import ov
        runs = [ov.build(onnx, key=key, rewrite=rw) for rw in (True, False)]
        assert "arg-max on the innermost axis" in runs[0].how
        a, b = (np.concatenate([r.run(x[i:i + 1]) for i in range(len(x))]) for r in runs)
        assert np.array_equal(a, b)


def test_openvino_compiles_after_a_gstreamer_pipeline_was_parsed():
    """GStreamer's plugins loaded before ONNX Runtime or OpenVINO made OpenVINO's first compile
    abort the process; the gst source now loads both runtimes' libraries first.  In a child
    process, so a regression fails this test instead of killing pytest."""
    import subprocess
    import sys
    pytest.importorskip("openvino")
    from operators.sources.gst import gst_available
    need(gst_available(), "GStreamer and PyGObject")
    code = ("import sys; sys.path[:0] = ['.']\n"
            "from operators.sources import check_pipeline\n"
            "check_pipeline('gst', 'videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=10/1')\n"
            "from tests.flow_fixtures import tiny_onnx\n"
            "from operators.backends import compile_verified\n"
            "import numpy as np\n"
            # auto imports ONNX Runtime to look for GPU providers, after GStreamer: the case that aborted
            "r, _ = compile_verified(tiny_onnx(), key='c' * 64, backend='auto', threads=1)\n"
            "assert r.backend == 'openvino' or r.device != 'CPUExecutionProvider', r.device\n"
            "print(r.submit(np.zeros((1, 32, 32, 3), np.uint8)).result()[0].shape)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-800:]
    assert "(1, 32, 32)" in p.stdout


def test_frames_in_flight_are_in_the_snapshot_and_scored_once_after_a_restart(backend):
    """The source's snapshot counts a frame as read once it is handed over; a restart from it
    must not lose the frames whose runs were still in flight (nor a file replay's frames
    waiting for a model): the score step's snapshot holds them, a restored step scores them
    first, in order, and with the model sent again at start."""
    import pickle

    from operators.context import FlowContext
    from operators.frames import ModelLoaded, ScoredFrame
    from operators.score import ScoreLogic
    from operators.sessions import SessionCache
    model = ModelLoaded(KA, 1, card=tiny_card(), onnx=tiny_onnx(shift=0))
    frames = _frames("cam", 8)

    def new_logic(resume=None):
        ctx = FlowContext(sessions=SessionCache(backend=backend, providers="cpu", threads=1))
        logic = ScoreLogic(ctx, None, batch=1)
        logic._apply(model)
        logic.restore(resume)
        return logic
    first = new_logic()
    runner, submit = first.entry.runner, first.entry.runner.submit

    class Unfinished:          # the process dies before these runs report back
        def __init__(self, x):
            self.real = submit(x)

        def done(self):
            return False

        def result(self):
            return self.real.result()
    emitted = []
    for i, f in enumerate(frames[:5]):
        if i == 3:
            runner.submit = Unfinished
        emitted += first.on_batch([("cam", f)])[0]
    in_flight = [f.seq for job in first.inflight for f in job.chunk]
    assert in_flight == [3, 4][-(runner.depth - 1):]     # the runs not reported back yet
    snap = pickle.loads(pickle.dumps(first.snapshot()))     # as Bytewax stores it
    assert [f.seq for f in snap] == in_flight
    assert sorted([r.seq for r in emitted if isinstance(r, ScoredFrame)] + in_flight) == list(range(5))
    # the process dies here; the source resumes after frame 4, the score step from its snapshot
    second = new_logic(snap)
    assert second.notify_at() is not None            # restored frames are not held back
    out = second.on_notify()[0]
    for f in frames[5:]:
        out += second.on_batch([("cam", f)])[0]
    out += second.on_eof()[0]
    scored = [r for r in out if isinstance(r, ScoredFrame)]
    assert [r.seq for r in scored] == in_flight + [5, 6, 7]
    for r in scored:
        assert (r.class_map == expected_classes(frames[r.seq].image, 0)).all()
    assert new_logic().snapshot() is None            # nothing in flight: nothing to keep
