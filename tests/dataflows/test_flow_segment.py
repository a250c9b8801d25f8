"""End-to-end tests of dataflows.segment with tiny ONNX models and a fake registry."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from bytewax.testing import run_main

from dataflows.segment import build_flow
from tests.flow_fixtures import (HOSTILE_HEADERS, FakeRegistry, env_for, hostile_blob, make_blob,
                           make_clip, make_folder, prom_value, read_jsonl, register_embedded, score_start,
                           wait_for)
from operators.config import ConfigError, load_config
from operators.model_reader import ModelRefused
from operators.sources import open_reader

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path, source, model, reg, **extra):
    cfg = load_config(env_for(tmp_path, source, model, **extra))
    flow = build_flow(cfg, registry=reg)
    run_main(flow)
    return cfg


def test_the_decoder_and_writer_threads_take_aux_nice_from_the_flows_configuration(tmp_path, monkeypatch):
    """VERISEG_AUX_NICE is read once, by the settings, from the mapping the flow was
    configured with (here not os.environ), and reaches both helper threads."""
    import operators.sinks.partition as sink_part
    import operators.sources.partition as source_part
    seen = {}
    for module, thread in ((source_part, "decoder"), (sink_part, "writer")):
        monkeypatch.setattr(module, "lower_thread_priority",
                            lambda n, thread=thread: seen.setdefault(thread, n))
    monkeypatch.delenv("VERISEG_AUX_NICE", raising=False)
    reg, blob, _ = _registered(tmp_path)
    _run(tmp_path, f"dir:{make_folder(tmp_path / 'f', n=2)}", blob, reg, VERISEG_AUX_NICE=7,
         VERISEG_ANCHOR_EVERY=0, VERISEG_VIDEO=0)
    assert seen == {"decoder": 7, "writer": 7}


def _registered(tmp_path, shift=0, name="tiny.vsb", reg=None, **kw):
    reg = reg or FakeRegistry()
    blob = tmp_path / "models" / name
    key = make_blob(blob, shift=shift, **kw)
    reg.register(key, "tiny", blob.as_uri())
    return reg, blob, key


def _two_models(tmp_path, uri_b=True, **b_kw):
    """Blobs A and B (B's classes shifted by one; ``b_kw`` go to its ``make_blob``) registered
    as 'tiny', A deployed: (reg, blob_a, key_a, blob_b, key_b). ``uri_b=False``: B is found by
    scanning the folder."""
    reg, blob_a, key_a = _registered(tmp_path, shift=0, name="a.vsb")
    blob_b = tmp_path / "models" / "b.vsb"
    key_b = make_blob(blob_b, shift=1, **b_kw)
    reg.register(key_b, "tiny", blob_b.as_uri() if uri_b else "")
    reg.deploy("tiny", key_a)
    return reg, blob_a, key_a, blob_b, key_b


def _model_c_and_slow_flow(tmp_path, reg, c_dir):
    """Blob C (classes shifted by two) in ``c_dir``, registered as 'tiny' with its URI, and a
    slowed 80-frame folder flow following 'tiny' that scans ``tmp_path/models`` for blobs:
    (key_c, cfg, flow)."""
    blob_c = c_dir / "c.vsb"
    key_c = make_blob(blob_c, shift=2)
    reg.register(key_c, "tiny", blob_c.as_uri())
    folder = make_folder(tmp_path / "f", n=80)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", "tiny", VERISEG_ANCHOR_EVERY=0,
                              VERISEG_MODEL_DIRS=tmp_path / "models"))
    return key_c, cfg, build_flow(cfg, registry=reg, reader_factory=_slow_factory(0.01))


def _dominant(mask_path) -> int:
    m = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    assert m is not None and m.ndim == 2 and m.dtype == np.uint8
    return int(np.bincount(m.ravel()).argmax())


# --------------------------------------------------------------------------- config
def test_config_reports_each_bad_value_on_its_own_line(tmp_path):
    clip = make_clip(tmp_path / "c.avi", n=2)
    env = {"VERISEG_SOURCE": str(clip), "VERISEG_MODEL": str(tmp_path / "missing.vsb"),
           "VERISEG_BATCH": "zero", "VERISEG_PROVIDERS": "gpu", "VERISEG_LOOP": "maybe",
           "VERISEG_CHAIN": "ftp://x", "VERISEG_ANCHOR_EVERY": "-3", "VERISEG_REGISTRY": "0x12"}
    with pytest.raises(ConfigError) as ei:
        load_config(env)
    lines = str(ei.value).splitlines()
    assert len(lines) == 7, lines
    for var in ("VERISEG_MODEL", "VERISEG_BATCH", "VERISEG_PROVIDERS", "VERISEG_LOOP",
                "VERISEG_CHAIN", "VERISEG_ANCHOR_EVERY", "VERISEG_REGISTRY"):
        assert sum(line.startswith(var + ":") for line in lines) == 1, (var, lines)
    assert "'zero'" in str(ei.value)


def test_config_several_sources_get_their_own_stream_ids(tmp_path):
    a = make_clip(tmp_path / "a.avi", n=2)
    d = make_folder(tmp_path / "frames", n=2)
    blob = tmp_path / "m.vsb"
    make_blob(blob)
    cfg = load_config({"VERISEG_SOURCE": f"{a}; front@dir:{d}; gst:videotestsrc ; rtsp://h/x",
                       "VERISEG_MODEL": str(blob)})
    assert [(s.stream_id, s.kind) for s in cfg.source] == [
        ("a", "video"), ("front", "dir"), ("gst0", "gst"), ("rtsp0", "rtsp")]
    assert cfg.source[2].live and not cfg.source[0].live
    with pytest.raises(ConfigError, match="used twice"):
        load_config({"VERISEG_SOURCE": f"x@{a};x@{a}", "VERISEG_MODEL": str(blob)})


def test_a_stream_id_that_would_leave_its_folder_is_refused_or_replaced(tmp_path):
    """``..@clip.avi`` wrote masks, results.jsonl and overlay.avi into the parent of
    VERISEG_OUT; a file named ``...avi`` got the default id ``..``."""
    from operators.source_spec import stream_id_of
    a = make_clip(tmp_path / "a.avi", n=2)
    blob = tmp_path / "m.vsb"
    make_blob(blob)
    for sid in ("..", ".", "..."):
        with pytest.raises(ConfigError) as ei:
            load_config({"VERISEG_SOURCE": f"{sid}@{a}", "VERISEG_MODEL": str(blob)})
        lines = str(ei.value).splitlines()
        assert len(lines) == 1 and f"stream id '{sid}'" in lines[0], lines
    dots = make_clip(tmp_path / "...avi", n=2)
    d = make_folder(tmp_path / "..frames.", n=2)
    cfg = load_config({"VERISEG_SOURCE": f"{dots}; dir:{d}; .x@{a}", "VERISEG_MODEL": str(blob)})
    assert [s.stream_id for s in cfg.source] == ["video", "..frames.", ".x"]
    assert stream_id_of(dots) == "video" and stream_id_of(tmp_path / "..avi") == "video"


# --------------------------------------------------------------------------- end to end
def test_video_end_to_end_outputs_and_keys(tmp_path):
    reg, blob, key = _registered(tmp_path)
    clip = make_clip(tmp_path / "clip.avi", n=20)
    cfg = _run(tmp_path, clip, blob, reg, VERISEG_ANCHOR_EVERY=8)
    out = cfg.out
    rows = read_jsonl(out / "clip" / "results.jsonl")
    assert [r["seq"] for r in rows] == list(range(20))
    assert {r["model_key"] for r in rows} == {key}
    for r in rows:
        assert r["stream"] == "clip" and r["pos"].endswith(f"#{r['seq']}")
        assert abs(sum(r["shares"].values()) - 1) < 1e-3
        assert {"decode", "score", "sink", "wait"} <= set(r["latency_ms"])
        # the tiny model's class is (R // 20) % 13 and frame i has R = (i % 13) * 20 + 5
        assert _dominant(out / "clip" / r["mask"]) == r["seq"] % 13
    masks = sorted((out / "clip" / "masks").glob("*.png"))
    assert len(masks) == 20 and cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED).shape == (32, 32)
    cap = cv2.VideoCapture(str(out / "clip" / "overlay.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 20
    # the overlay is half frame, half class colour (MJPG is lossy: compare means)
    import model_store
    src = cv2.VideoCapture(str(clip))
    for _ in range(3):   # frame 2: class 2 (Fence, an asymmetric colour: catches RGB/BGR mix-ups)
        ok, over = cap.read()
        ok2, frame = src.read()
    assert ok and ok2
    frame = cv2.resize(frame, over.shape[1::-1], interpolation=cv2.INTER_AREA).astype(float)
    card = model_store.load(blob, key)[0]
    colour = model_store.palette_lut((c.color for c in card.classes), "BGR")[2].astype(float)
    expected = 0.5 * frame + 0.5 * colour
    assert np.abs(over.astype(float) - expected).mean() < 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 20 and summary["dropped"] == 0 and summary["bad"] == 0
    assert summary["frames_by_model_key"] == {key: 20}
    # auto on a machine without an NVIDIA GPU: OpenVINO where installed, else ORT's CPU provider
    from tests.conftest import installed_backends
    assert summary["provider"] == ("OpenVINO CPU" if "openvino" in installed_backends() else "CPUExecutionProvider")
    prom = (out / "metrics.prom").read_text()
    assert prom_value(prom, "veriseg_frames_total", stream="clip", stage="scored") == 20
    assert prom_value(prom, "veriseg_model_in_use", stream="clip", key=key) == 1
    assert prom_value(prom, "veriseg_latency_seconds_count", stage="score") == 20
    assert prom_value(prom, "veriseg_latency_seconds_bucket", stage="score", le="+Inf") == 20
    backend = "openvino" if summary["provider"].startswith("OpenVINO") else "onnxruntime"
    assert prom_value(prom, "veriseg_runtime_info", backend=backend, provider=summary["provider"]) == 1
    # anchors: 8 + 8 + 4 frames, each batch anchored once on the (fake) chain
    batches = sorted((out / "anchors" / "clip").glob("*.json"))
    assert [b.name for b in batches] == ["000000-000007.json", "000008-000015.json",
                                         "000016-000019.json"]
    assert len(reg.anchors) == 3
    doc = json.loads(batches[1].read_text())
    assert doc["model_key"] == key and doc["chain"]["tx_hash"]
    leaves = {x["seq"]: x["digest"] for x in doc["leaves"]}
    assert leaves[9] == rows[9]["leaf"]


def test_preprocess_resizes_and_converts_colour_once(tmp_path):
    from operators.frames import Frame
    from operators.preprocess import Preprocessor
    pre = Preprocessor((32, 32), "RGB")
    img = np.zeros((24, 40, 3), np.uint8)
    img[..., 2] = 200   # red in BGR
    f = pre(Frame("s", 0, 0.0, "p", img))
    assert f.image.shape == (32, 32, 3) and f.colour == "RGB" and f.image[..., 0].min() == 200
    assert pre.ready(f) and pre(f) is f and f.orig_size == (24, 40)


def test_folder_with_a_corrupt_image_skips_counts_and_reports_it(tmp_path):
    reg, blob, key = _registered(tmp_path)
    folder = make_folder(tmp_path / "frames", n=10, bad=4)
    cfg = _run(tmp_path, f"dir:{folder}", blob, reg, VERISEG_ANCHOR_EVERY=0)
    rows = read_jsonl(cfg.out / "frames" / "results.jsonl")
    assert [r["seq"] for r in rows] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["bad"] == 1 and summary["bad_frames"] == {"frames": 1}
    assert "0004.png" in summary["bad_frame_reports"][0]
    assert all(_dominant(cfg.out / "frames" / r["mask"]) == r["seq"] % 13 for r in rows)


def test_video_with_an_undecodable_frame_in_the_middle(tmp_path):
    reg, blob, key = _registered(tmp_path)
    clip = make_clip(tmp_path / "bad.avi", n=16, zero_frame=7)
    cfg = _run(tmp_path, clip, blob, reg, VERISEG_ANCHOR_EVERY=0)
    rows = read_jsonl(cfg.out / "bad" / "results.jsonl")
    assert [r["seq"] for r in rows] == [i for i in range(16) if i != 7]
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["bad"] == 1 and summary["bad_frame_reports"][0].endswith(
        "bad.avi#7: frame could not be decoded")
    assert all(_dominant(cfg.out / "bad" / r["mask"]) == r["seq"] % 13 for r in rows)


def test_csv_source_with_labels_timestamps_and_bad_rows(tmp_path):
    reg, blob, key = _registered(tmp_path)
    folder = make_folder(tmp_path / "imgs", n=4)
    csv = tmp_path / "frames.csv"
    csv.write_text("image,label,timestamp\n"
                   "imgs/0000.png,labels/0000.png,100.5\n"
                   "imgs/0001.png,,101.5\n"
                   "imgs/missing.png,,102\n"
                   ",,\n"
                   f"{folder / '0003.png'},,103.5\n")
    cfg = _run(tmp_path, f"csv:{csv}", blob, reg, VERISEG_ANCHOR_EVERY=0)
    rows = read_jsonl(cfg.out / "frames" / "results.jsonl")
    assert [(r["seq"], r["ts"]) for r in rows] == [(0, 100.5), (1, 101.5), (3, 103.5)]
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["bad"] == 1 and "row 4" in summary["bad_frame_reports"][0]
    assert "missing.png" in summary["bad_frame_reports"][0]


def test_two_streams_and_micro_batches(tmp_path):
    reg, blob, key = _registered(tmp_path)
    a = make_clip(tmp_path / "a.avi", n=12)
    d = make_folder(tmp_path / "b", n=7)
    cfg = _run(tmp_path, f"{a};cam2@dir:{d}", blob, reg, VERISEG_ANCHOR_EVERY=0,
               VERISEG_BATCH=4, VERISEG_MASKS=0, VERISEG_VIDEO=0)
    ra = read_jsonl(cfg.out / "a" / "results.jsonl")
    rb = read_jsonl(cfg.out / "cam2" / "results.jsonl")
    assert [r["seq"] for r in ra] == list(range(12)) and [r["seq"] for r in rb] == list(range(7))
    assert max(r["batch"] for r in ra) > 1 and all(r["batch"] <= 4 for r in ra)
    assert not (cfg.out / "a" / "masks").exists()


def test_two_flows_in_one_process_run_side_by_side_with_their_own_state(tmp_path):
    """Each built flow has its own context: two flows with different models, outputs and
    settings, built one after the other and run at the same time, keep their own results,
    counters, revoked keys and sessions (nothing is shared through module globals)."""
    runs = []
    for name, shift, extra in (("one", 0, {"VERISEG_BATCH": 1}),
                               ("two", 1, {"VERISEG_BATCH": 4, "VERISEG_MASKS": 0})):
        d = tmp_path / name
        reg, blob, key = _registered(d, shift=shift)
        folder = make_folder(d / name, n=12 if shift == 0 else 9)
        cfg = load_config(env_for(d, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=5, **extra))
        runs.append((cfg, build_flow(cfg, registry=reg), reg, key, shift))
    (cfg1, flow1, *_), (cfg2, flow2, *_) = runs
    assert flow1.context is not flow2.context and cfg1.out != cfg2.out
    threads = [threading.Thread(target=run_main, args=(f,)) for f in (flow1, flow2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for cfg, flow, reg, key, shift in runs:
        sid, n = ("one", 12) if shift == 0 else ("two", 9)
        rows = read_jsonl(cfg.out / sid / "results.jsonl")
        assert [r["seq"] for r in rows] == list(range(n)) and {r["model_key"] for r in rows} == {key}
        if shift == 0:
            assert all(_dominant(cfg.out / sid / r["mask"]) == r["seq"] % 13 for r in rows)
        else:
            assert not (cfg.out / sid / "masks").exists() and max(r["batch"] for r in rows) > 1
        stats = flow.context.stats
        assert dict(stats.scored) == {sid: n} and dict(stats.by_key) == {key: n}
        # each flow has its own metrics registry: the other stream never shows in it
        prom = (cfg.out / "metrics.prom").read_text()
        assert prom_value(prom, "veriseg_frames_total", stage="scored") == n
        other = "two" if sid == "one" else "one"
        assert prom_value(stats.prometheus(), "veriseg_frames_total", stream=other) is None
        summary = json.loads((cfg.out / "summary.json").read_text())
        assert summary["frames_by_model_key"] == {key: n} and summary["scored"] == n
        assert flow.context.sessions.keys() == [key]
        assert len(reg.anchors) == -(-n // 5)    # each flow anchored on its own registry
    # a key revoked in one flow is not revoked in the other
    flow1.context.revoked.add(runs[0][3], "test")
    assert runs[0][3] in flow1.context.revoked and runs[0][3] not in flow2.context.revoked


# --------------------------------------------------------------------------- refusals
def test_unregistered_blob_refuses_to_start_with_one_line(tmp_path):
    reg = FakeRegistry()
    blob = tmp_path / "m.vsb"
    key = make_blob(blob)
    clip = make_clip(tmp_path / "c.avi", n=2)
    with pytest.raises(ModelRefused) as ei:
        build_flow(load_config(env_for(tmp_path, clip, blob)), registry=reg)
    msg = str(ei.value)
    assert "\n" not in msg and key in msg and "not registered" in msg


def test_tampered_blob_refuses_to_start(tmp_path):
    reg, blob, key = _registered(tmp_path)
    data = bytearray(blob.read_bytes())
    (header_len,) = struct.unpack(">I", data[10:14])
    data[(14 + header_len + len(data) - 32) // 2] ^= 0x01  # a body byte: the card stays valid, only the key can tell
    blob.write_bytes(bytes(data))
    clip = make_clip(tmp_path / "c.avi", n=2)
    with pytest.raises(ModelRefused) as ei:
        build_flow(load_config(env_for(tmp_path, clip, blob)), registry=reg)
    assert "\n" not in str(ei.value) and "VERISEG_MODEL" in str(ei.value)
    assert "corrupt or was modified" in str(ei.value)


def test_revoked_blob_and_unknown_deployment_refuse(tmp_path):
    reg, blob, key = _registered(tmp_path)
    reg.revoke(key, "leaked")
    clip = make_clip(tmp_path / "c.avi", n=2)
    with pytest.raises(ModelRefused, match="revoked.*leaked"):
        build_flow(load_config(env_for(tmp_path, clip, blob)), registry=reg)
    with pytest.raises(ModelRefused, match="deployment 'nope' is unknown"):
        build_flow(load_config(env_for(tmp_path, clip, "nope")), registry=reg)


def test_deployment_whose_blob_is_missing_refuses(tmp_path):
    reg = FakeRegistry()
    reg.register("ab" * 32, "ghost", "")
    reg.deploy("ghost", "ab" * 32)
    clip = make_clip(tmp_path / "c.avi", n=2)
    with pytest.raises(ModelRefused, match="no blob with that key"):
        build_flow(load_config(env_for(tmp_path, clip, "ghost")), registry=reg)


# --------------------------------------------------------------------------- live changes
class _Slow:
    """Wraps a reader so a small folder takes a while (hot swap happens mid-stream)."""

    gate = None

    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def read(self, *a):
        time.sleep(self.delay)
        if self.gate is not None:
            self.gate.wait()
        return self.inner.read(*a)


def _slow_factory(delay, gate=None):
    def make(spec, **kw):
        r = _Slow(open_reader(spec, **kw), delay)
        r.gate = gate
        return r
    return make


class _SwapGate:
    """Holds the replay, once a deploy was sent, until the flow has compiled the new model
    (about a second for OpenVINO on a loaded 2-core box, a tenth of that for ONNX Runtime),
    so the swap lands mid-stream on every backend whatever the machine's load."""

    def __init__(self):
        self.sent = threading.Event()
        self.stats = None

    def wait(self):
        if self.sent.is_set():
            assert wait_for(lambda: len(self.stats.models_loaded) >= 2, timeout=60)

    def deploy(self, reg, name, key):
        reg.deploy(name, key)
        self.sent.set()


def _when_scored(flow, n, action, timeout=30):
    """Run ``action`` in a thread once ``flow`` has scored ``n`` frames."""
    stats = flow.context.stats

    def run():
        t0 = time.time()
        while sum(stats.scored.values()) < n and time.time() - t0 < timeout:
            time.sleep(0.005)
        action()
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def test_hot_swap_on_new_deploy_mid_stream(tmp_path, backend):
    reg, blob_a, key_a, blob_b, key_b = _two_models(tmp_path, uri_b=False)
    folder = make_folder(tmp_path / "f", n=40)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", "tiny", VERISEG_ANCHOR_EVERY=0,
                              VERISEG_MODEL_DIRS=str(tmp_path / "models"), VERISEG_BACKEND=backend))
    gate = _SwapGate()
    flow = build_flow(cfg, registry=reg, reader_factory=_slow_factory(0.02, gate))
    gate.stats = flow.context.stats
    th = _when_scored(flow, 10, lambda: gate.deploy(reg, "tiny", key_b))
    run_main(flow)
    th.join()
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    assert [r["seq"] for r in rows] == list(range(40))
    keys = [r["model_key"] for r in rows]
    switch = keys.index(key_b)
    assert 10 <= switch < 40 and keys == [key_a] * switch + [key_b] * (40 - switch)
    for r in rows:   # each frame's mask is what its model computes
        shift = 0 if r["model_key"] == key_a else 1
        assert _dominant(cfg.out / "f" / r["mask"]) == (r["seq"] % 13 + shift) % 13


POLL = 0.05   # VERISEG_POLL of env_for


def _assert_revocation_honoured(rows, summary, key, t_sent, slack=1.0, race=0.05):
    """Per results line: the flow saw the revocation of ``key`` within one poll (+ ``slack``
    to read the events) and no frame was scored by that key after it saw it (+ ``race`` for
    a run that passed the check as the key was added)."""
    seen = [r for r in summary["revoked"] if r["key"] == key]
    assert seen, f"the flow never saw the revocation of {key[:12]}"
    t_seen = seen[0]["at"]
    assert t_seen - t_sent <= POLL + slack, t_seen - t_sent
    late = [(r["seq"], round(score_start(r) - t_seen, 3)) for r in rows
            if r["model_key"] == key and score_start(r) > t_seen + race]
    assert not late, f"frames scored by the revoked key after the flow saw it: {late}"


def test_revocation_mid_stream_stops_scoring_until_a_new_deploy(tmp_path, backend):
    reg, blob_a, key_a, blob_b, key_b = _two_models(tmp_path)
    folder = make_folder(tmp_path / "f", n=60)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", "tiny", VERISEG_ANCHOR_EVERY=0,
                              VERISEG_PENDING=8, VERISEG_BACKEND=backend))
    flow = build_flow(cfg, registry=reg, reader_factory=_slow_factory(0.01))
    marks = {}

    def revoke():
        marks["t_revoke"] = time.time()
        reg.revoke(key_a, "compromised")
        time.sleep(0.4)   # ~40 frames would arrive with no valid model: the replay pauses instead
        reg.deploy("tiny", key_b)
    th = _when_scored(flow, 10, revoke)
    run_main(flow)
    th.join()
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    keys = [r["model_key"] for r in rows]
    summary = json.loads((cfg.out / "summary.json").read_text())
    _assert_revocation_honoured(rows, summary, key_a, marks["t_revoke"])
    n_a = keys.count(key_a)
    assert keys == [key_a] * n_a + [key_b] * (len(keys) - n_a)
    assert key_b in keys
    # a file replay waits for the next deploy: every frame is scored, none by the revoked key late
    assert [r["seq"] for r in rows] == list(range(60))
    assert summary["frames_dropped"].get("f", {}).get("no_model", 0) == 0
    assert summary["revoked"][0]["key"] == key_a


@pytest.mark.parametrize("hostile", sorted(HOSTILE_HEADERS))
def test_a_hostile_file_in_the_model_folder_never_turns_revocation_off(tmp_path, hostile):
    """A re-keyed blob with a hostile header sits in the model folder; a deploy whose blob is
    found by scanning that folder reads it. It is skipped, named and counted, and the
    follower goes on: revoking the key in use stops scoring within one poll."""
    reg, blob_a, key_a, blob_b, key_b = _two_models(tmp_path, uri_b=False)
    bad = hostile_blob(tmp_path / "models" / "0-hostile.vsb", HOSTILE_HEADERS[hostile])
    key_c, cfg, flow = _model_c_and_slow_flow(tmp_path, reg, tmp_path / "models")
    marks = {}

    def attack():
        reg.deploy("tiny", key_b)     # B is found by scanning the folder: past the hostile file
        marks["b_loaded"] = wait_for(lambda: flow.context.stats.key_in_use.get("f") == key_b, timeout=10)
        marks["t_revoke"] = time.time()
        reg.revoke(key_b, "compromised")
        time.sleep(0.3)
        reg.deploy("tiny", key_c)     # the replay resumes with C and ends
    th = _when_scored(flow, 10, attack)
    run_main(flow)
    th.join()
    assert marks["b_loaded"], "the deploy found by scanning the folder was never loaded"
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    summary = json.loads((cfg.out / "summary.json").read_text())
    _assert_revocation_honoured(rows, summary, key_b, marks["t_revoke"])
    keys = [r["model_key"] for r in rows]
    assert [r["seq"] for r in rows] == list(range(80)) and keys[-1] == key_c
    assert summary["bad_model_files"] == 1 and str(bad) in summary["bad_model_file_reports"][0]
    assert "\n" not in summary["bad_model_file_reports"][0]
    assert prom_value((cfg.out / "metrics.prom").read_text(), "veriseg_bad_model_files_total") == 1


class _BrokenEvents(FakeRegistry):
    """A registry client whose event reading fails with an error nobody expected."""

    broken_at = None

    def events(self, *a, **kw):
        if self.broken_at is not None:
            raise TypeError("'NoneType' object is not subscriptable")
        return super().events(*a, **kw)


def test_an_unexpected_error_in_the_follower_stops_scoring_with_one_line(tmp_path, caplog):
    """Fail safe: the follower cannot see revocations any more, so scoring stops at once
    and the flow ends with one line; never a silent thread death or a retry loop that
    keeps scoring unfollowed."""
    reg = _BrokenEvents()
    _, blob, key = _registered(tmp_path, reg=reg)
    folder = make_folder(tmp_path / "f", n=200)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=0))
    flow = build_flow(cfg, registry=reg, reader_factory=_slow_factory(0.01))

    def brk():
        reg.broken_at = time.time()
    th = _when_scored(flow, 10, brk)
    with pytest.raises(RuntimeError) as ei:
        run_main(flow)
    th.join()
    msgs = []
    e = ei.value
    while e is not None:
        msgs.append(str(e))
        e = e.__cause__
    assert any("model reader stopped (TypeError" in m for m in msgs), msgs
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model reader stopped")]
    assert len(said) == 1 and "\n" not in said[0], said
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    assert 10 <= len(rows) < 200
    # no frame scored later than one poll after the follower broke
    late = [r["seq"] for r in rows if score_start(r) > reg.broken_at + POLL + 0.5]
    assert not late, late
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert "model reader stopped" in summary["error"]


def test_chain_outage_mid_stream_keeps_scoring_with_the_verified_model(tmp_path):
    reg, blob, key = _registered(tmp_path)
    folder = make_folder(tmp_path / "f", n=30)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=10))
    flow = build_flow(cfg, registry=reg, reader_factory=_slow_factory(0.01))

    def outage():
        reg.down = True
        time.sleep(0.3)
        reg.down = False
    th = _when_scored(flow, 5, outage)
    run_main(flow)
    th.join()
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    assert [r["seq"] for r in rows] == list(range(30)) and {r["model_key"] for r in rows} == {key}
    assert len(reg.anchors) == 3   # queued anchors went out once the node was back


# --------------------------------------------------------------------------- bytewax.run
def _embedded_env(tmp_path, source, model=None, **extra):
    env = dict(os.environ)
    env = {k: v for k, v in env.items() if not k.startswith("VERISEG_")}
    env.update(env_for(tmp_path, source, model or "", **extra))
    if model is None:
        env.pop("VERISEG_MODEL")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env




@pytest.mark.slow
def test_bytewax_run_subprocess_two_workers_embedded_chain(tmp_path):
    blob = tmp_path / "m.vsb"
    make_blob(blob)
    key = register_embedded(tmp_path / "home", blob)
    a = make_clip(tmp_path / "a.avi", n=10)
    b = make_folder(tmp_path / "b", n=6)
    env = _embedded_env(tmp_path, f"{a};dir:{b}", blob, VERISEG_ANCHOR_EVERY=5)
    p = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.segment", "-w", "2"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "out"
    assert len(read_jsonl(out / "a" / "results.jsonl")) == 10
    assert len(read_jsonl(out / "b" / "results.jsonl")) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_by_model_key"] == {key: 16}
    assert len(list((out / "anchors").rglob("*.json"))) == 4
    assert "scoring with model" in p.stderr or "verified" in p.stderr


@pytest.mark.slow
def test_bytewax_run_subprocess_refuses_unregistered_model_with_one_line(tmp_path):
    blob = tmp_path / "m.vsb"
    make_blob(blob)
    a = make_clip(tmp_path / "a.avi", n=2)
    env = _embedded_env(tmp_path, a, blob, VERISEG_BATCH="x")
    p = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.segment"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    errs = [line for line in p.stderr.splitlines() if line.startswith("veriseg: error:")]
    assert errs == ["veriseg: error: VERISEG_BATCH: expected a whole number, got 'x'"], p.stderr
    env = _embedded_env(tmp_path, a, blob)
    p = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.segment"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    errs = [line for line in p.stderr.splitlines() if line.startswith("veriseg: error:")]
    assert len(errs) == 1 and "not registered" in errs[0], p.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "models" / "carla-enet.vsb").exists(),
                    reason="the trained blob models/carla-enet.vsb is not committed yet")
def test_default_run_on_the_committed_blob_and_sample_clip(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERISEG_")}
    env.update({"VERISEG_HOME": str(tmp_path / "home"), "VERISEG_MAX_FRAMES": "6",
                "PYTHONPATH": str(REPO)})
    p = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.segment"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "registered the committed blob" in p.stderr
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 6
    stream = next(d for d in out.iterdir() if (d / "results.jsonl").exists())
    assert len(list((stream / "masks").glob("*.png"))) == 6 and (stream / "overlay.avi").exists()


def test_default_run_trusts_the_committed_blob_on_first_use_only(tmp_path, monkeypatch, caplog, capsys):
    """No VERISEG_MODEL / VERISEG_SOURCE: the blob and clip in models/ (patched to a tmp
    folder here) are used; on a fresh embedded chain the blob is registered and deployed
    (trust on first use, said in one line). A blob swapped into models/ later (a pull, or
    anyone who can write that folder) is refused with one line giving the two commands that
    would trust it, and scores nothing; the edge never registers or deploys it itself."""
    import chain
    import chain.cli
    import operators.config as config
    import operators.model_reader.resolver as resolver
    models = tmp_path / "models"
    blob = models / "carla-enet.vsb"
    key = make_blob(blob)
    make_clip(models / "sample.avi", n=6)
    monkeypatch.setattr(config, "MODELS_DIR", models)
    monkeypatch.setattr(config, "DEFAULT_MODEL", blob)
    monkeypatch.setattr(resolver, "MODELS_DIR", models)
    env = env_for(tmp_path, "", "", VERISEG_ANCHOR_EVERY=3)
    del env["VERISEG_SOURCE"], env["VERISEG_MODEL"]
    for run in (1, 2):
        caplog.clear()
        cfg = load_config(env)
        assert cfg.model_is_default and cfg.source[0].stream_id == "sample"
        run_main(build_flow(cfg))
        said = [r.getMessage() for r in caplog.records if "registered the committed blob" in r.getMessage()]
        assert len(said) == (run == 1)
        if said:
            assert "trust on first use" in said[0] and "deployed it as 'tiny'" in said[0]
        rows = read_jsonl(cfg.out / "sample" / "results.jsonl")
        assert len(rows) == 6 and {r["model_key"] for r in rows} == {key}
    # another blob swapped into models/: refused, nothing registered or deployed, nothing scored
    new_key = make_blob(blob, shift=1)
    (cfg.out / "sample" / "results.jsonl").unlink()
    with pytest.raises(ModelRefused) as ei:
        build_flow(load_config(env))
    msg = str(ei.value)
    home = tmp_path / "home"
    assert "\n" not in msg and "not registered" in msg and "not trusted on your behalf" in msg
    cmds = msg.split("if you trust it: ")[1].split(" && ")
    assert cmds == [f"python -m chain --home {home} register {blob}",
                    f"python -m chain --home {home} deploy tiny {blob}"]
    reg = chain.connect(chain="embedded", home=home)
    assert not reg.status(new_key).registered and reg.current("tiny")[0] == key
    assert not (cfg.out / "sample" / "results.jsonl").exists()
    # the two commands it names are what trusts it
    for c in cmds:
        assert chain.cli.main(c.split()[3:]) == 0, capsys.readouterr().err
    run_main(build_flow(load_config(env)))
    rows = read_jsonl(cfg.out / "sample" / "results.jsonl")
    assert len(rows) == 6 and {r["model_key"] for r in rows} == {new_key}


def test_metrics_http_endpoint_while_running(tmp_path):
    import socket
    import urllib.request
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    reg, blob, key = _registered(tmp_path)
    folder = make_folder(tmp_path / "f", n=30)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=0,
                              VERISEG_METRICS_PORT=port, VERISEG_METRICS_LINGER_S=0))
    flow = build_flow(cfg, registry=reg, reader_factory=_slow_factory(0.02))
    got = {}

    def fetch():
        got["body"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    th = _when_scored(flow, 5, fetch)
    run_main(flow)
    th.join()
    body = got["body"]
    assert prom_value(body, "veriseg_fps") is not None
    assert prom_value(body, "veriseg_model_in_use", stream="f", key=key) == 1
    assert prom_value(body, "veriseg_frames_total", stream="f", stage="scored") >= 5
    # what a dashboard queries exists at 0 before anything happened to it
    for reason in ("backpressure", "no_model", "score_error", "output_error"):
        assert prom_value(body, "veriseg_frames_dropped_total", stream="f", reason=reason) == 0
    for name in ("veriseg_bad_frames_total", "veriseg_source_errors_total", "veriseg_reconnects_total"):
        assert prom_value(body, name, stream="f") == 0, name
    # VERISEG_METRICS_LINGER_S=0: the port is closed once the flow ends
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_every_streams_counters_are_listed_at_zero_before_its_first_frame(tmp_path):
    """A labelled counter has no series until it is incremented: a query for drops or bad
    frames would return nothing rather than 0."""
    from operators.telemetry import DROP_REASONS, FRAME_STAGES
    reg, blob, key = _registered(tmp_path)
    folder = make_folder(tmp_path / "f", n=2)
    cfg = load_config(env_for(tmp_path, f"a@dir:{folder}; b@dir:{folder}", blob))
    text = build_flow(cfg, registry=reg).context.stats.prometheus()
    for sid in ("a", "b"):
        for reason in DROP_REASONS:
            assert prom_value(text, "veriseg_frames_dropped_total", stream=sid, reason=reason) == 0
        for stage in FRAME_STAGES:
            assert prom_value(text, "veriseg_frames_total", stream=sid, stage=stage) == 0
        for name in ("veriseg_bad_frames_total", "veriseg_source_errors_total", "veriseg_reconnects_total"):
            assert prom_value(text, name, stream=sid) == 0, (name, sid)


def test_metrics_stay_up_after_the_flow_for_a_last_scrape(tmp_path):
    """The final counts would fall between two scrapes if the port closed with the flow."""
    import logging
    import urllib.request
    from tests.chain_fixtures import free_port
    from operators.telemetry import log
    port = free_port()
    reg, blob, key = _registered(tmp_path)
    folder = make_folder(tmp_path / "f", n=12)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=0,
                              VERISEG_METRICS_PORT=port, VERISEG_METRICS_LINGER_S=3))
    flow = build_flow(cfg, registry=reg)
    lingering = threading.Event()
    h = logging.Handler()
    h.emit = lambda r: "stays up 3 s" in r.getMessage() and lingering.set()
    log.addHandler(h)
    try:
        th = threading.Thread(target=run_main, args=(flow,))
        t0 = time.monotonic()
        th.start()
        assert lingering.wait(60), "no line saying the metrics port stays up"
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        th.join(30)
    finally:
        log.removeHandler(h)
    assert not th.is_alive() and time.monotonic() - t0 >= 3
    assert prom_value(body, "veriseg_frames_total", stream="f", stage="written") == 12
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_require_gpu_without_a_gpu_refuses_with_one_line(tmp_path):
    from operators.sessions import gpu_driver
    if gpu_driver():
        pytest.skip("this machine has an NVIDIA driver")
    reg, blob, key = _registered(tmp_path)
    clip = make_clip(tmp_path / "c.avi", n=2)
    cfg = load_config(env_for(tmp_path, clip, blob, VERISEG_REQUIRE_GPU=1, VERISEG_PROVIDERS="auto"))
    with pytest.raises(ModelRefused) as ei:
        build_flow(cfg, registry=reg)
    assert "\n" not in str(ei.value) and "VERISEG_REQUIRE_GPU=1" in str(ei.value)
    assert "CPUExecutionProvider" in str(ei.value)


def test_missing_default_blob_is_one_config_line(tmp_path, monkeypatch):
    import operators.config as config
    monkeypatch.setattr(config, "DEFAULT_MODEL", tmp_path / "models" / "carla-enet.vsb")
    clip = make_clip(tmp_path / "c.avi", n=2)
    with pytest.raises(ConfigError) as ei:
        load_config({"VERISEG_SOURCE": str(clip)})
    assert str(ei.value).startswith("VERISEG_MODEL: blob file") and "\n" not in str(ei.value)


def test_a_card_that_lies_about_its_input_is_refused(tmp_path):
    import model_store
    from tests.flow_fixtures import tiny_card, tiny_onnx
    reg = FakeRegistry()
    blob = tmp_path / "liar.vsb"
    # graph takes 32x32, the card claims 64x64
    key = model_store.write(str(blob), tiny_onnx(0, (32, 32)), tiny_card((64, 64)))
    reg.register(key, "liar", blob.as_uri())
    clip = make_clip(tmp_path / "c.avi", n=2)
    with pytest.raises(ModelRefused) as ei:
        build_flow(load_config(env_for(tmp_path, clip, blob)), registry=reg)
    msg = str(ei.value)
    assert "\n" not in msg and "card does not describe its graph" in msg and "64" in msg


def test_output_failure_stops_the_flow_cleanly_in_process(tmp_path, monkeypatch):
    reg, blob, key = _registered(tmp_path)
    folder = make_folder(tmp_path / "f", n=200)
    real = cv2.imwrite
    calls = {"n": 0}

    def flaky(path, img, params=None):
        calls["n"] += 1
        return False if calls["n"] > 5 else real(path, img, params or [])
    monkeypatch.setattr(cv2, "imwrite", flaky)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=0))
    with pytest.raises(RuntimeError) as ei:   # Bytewax wraps it ("error closing ...")
        run_main(build_flow(cfg, registry=reg, reader_factory=_slow_factory(0.002)))
    chain_ = []
    e = ei.value
    while e is not None:
        chain_.append(str(e))
        e = e.__cause__
    assert any("writing outputs to" in m and "cannot write" in m for m in chain_), chain_
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert "cannot write" in summary["error"]
    assert len(read_jsonl(cfg.out / "f" / "results.jsonl")) == 5
    assert summary["scored"] < 200     # the sources stopped


@pytest.mark.slow
def test_disk_full_under_bytewax_run_is_one_line_and_exit_1(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    blob = tmp_path / "m.vsb"
    make_blob(blob)
    register_embedded(tmp_path / "home", blob)
    clip = make_clip(tmp_path / "c.avi", n=400, size=(48, 64))
    (tmp_path / "out" / "c").mkdir(parents=True)
    (tmp_path / "out" / "c" / "results.jsonl").symlink_to("/dev/full")
    env = _embedded_env(tmp_path, clip, blob, VERISEG_ANCHOR_EVERY=0)
    p = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.segment"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("veriseg: error: stream c: writing outputs to") and "No space left" in last


def test_chain_down_at_start_refuses_unless_a_recent_verified_status_is_cached(tmp_path):
    reg, blob, key = _registered(tmp_path)
    clip = make_clip(tmp_path / "c.avi", n=6)
    reg.down = True
    with pytest.raises(ModelRefused, match="unreachable.*VERISEG_STATUS_MAX_AGE"):
        build_flow(load_config(env_for(tmp_path, clip, blob)), registry=reg)
    with pytest.raises(ModelRefused, match="no verified status"):
        build_flow(load_config(env_for(tmp_path, clip, blob, VERISEG_STATUS_MAX_AGE=600, VERISEG_ANCHOR_EVERY=0)),
                   registry=reg)
    reg.down = False   # one online start caches the verified status
    run_main(build_flow(load_config(env_for(tmp_path, clip, blob, VERISEG_STATUS_MAX_AGE=600, VERISEG_ANCHOR_EVERY=0)),
                        registry=reg))
    reg.down = True
    cfg = load_config(env_for(tmp_path, clip, blob, VERISEG_STATUS_MAX_AGE=600, VERISEG_ANCHOR_EVERY=0))
    run_main(build_flow(cfg, registry=reg))
    rows = read_jsonl(cfg.out / "c" / "results.jsonl")
    assert len(rows) == 6 and {r["model_key"] for r in rows} == {key}
    # too old
    import json as _json
    cache = tmp_path / "home" / "status-cache.json"
    d = _json.loads(cache.read_text())
    for v in d.values():
        v["checked_at"] -= 3600
    cache.write_text(_json.dumps(d))
    with pytest.raises(ModelRefused, match="s old"):
        build_flow(load_config(env_for(tmp_path, clip, blob, VERISEG_STATUS_MAX_AGE=600, VERISEG_ANCHOR_EVERY=0)),
                   registry=reg)


def test_encrypted_blob_scores_with_the_device_secret_and_is_refused_without(tmp_path):
    import model_store
    from tests.flow_fixtures import tiny_card, tiny_onnx
    secret = model_store.generate_secret()
    (tmp_path / "device.key").write_text(secret.hex())
    (tmp_path / "other.key").write_text(model_store.generate_secret().hex())
    reg = FakeRegistry()
    blob = tmp_path / "enc.vsb"
    key = model_store.write(str(blob), tiny_onnx(), tiny_card(), encrypt_key=secret)
    reg.register(key, "tiny", blob.as_uri())
    clip = make_clip(tmp_path / "c.avi", n=4)
    cfg = load_config(env_for(tmp_path, clip, blob, VERISEG_ANCHOR_EVERY=0,
                              VERISEG_DECRYPT_KEY=tmp_path / "device.key"))
    run_main(build_flow(cfg, registry=reg))
    rows = read_jsonl(cfg.out / "c" / "results.jsonl")
    assert len(rows) == 4 and {r["model_key"] for r in rows} == {key}
    for extra in ({}, {"VERISEG_DECRYPT_KEY": tmp_path / "other.key"}):
        with pytest.raises(ModelRefused) as ei:
            build_flow(load_config(env_for(tmp_path, clip, blob, **extra)), registry=reg)
        assert "\n" not in str(ei.value) and "model blob refused" in str(ei.value)


def test_bad_inputs_in_a_folder_are_skipped_and_named(tmp_path):
    import struct
    import zlib
    reg, blob, key = _registered(tmp_path)
    d = make_folder(tmp_path / "f", n=4)
    (d / "0010_empty.png").write_bytes(b"")
    (d / "0011_garbage.jpg").write_bytes(os.urandom(5000))
    # a PNG header claiming 100000 x 100000 pixels (valid CRC), no data
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    png = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
           + struct.pack(">I", zlib.crc32(chunk)))
    (d / "0012_huge.png").write_bytes(png)
    cv2.imwrite(str(d / "0013_grey.png"), np.full((10, 12), 100, np.uint8))
    cv2.imwrite(str(d / "0014_tiny.png"), np.zeros((1, 1, 3), np.uint8))
    cfg = load_config(env_for(tmp_path, f"dir:{d}", blob, VERISEG_ANCHOR_EVERY=0))
    run_main(build_flow(cfg, registry=reg))
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    assert [r["seq"] for r in rows] == [0, 1, 2, 3, 7, 8]
    summary = json.loads((cfg.out / "summary.json").read_text())
    reports = " | ".join(summary["bad_frame_reports"])
    assert summary["bad"] == 3
    for name in ("0010_empty.png", "0011_garbage.jpg", "0012_huge.png"):
        assert name in reports, reports


def test_a_superseded_blob_is_refused_and_a_pinned_blob_follows_newer_deploys(tmp_path):
    reg, blob_a, key_a, blob_b, key_b = _two_models(tmp_path)
    folder = make_folder(tmp_path / "f", n=40)
    # pinned to blob A while A is current: a deploy of B mid-stream swaps to B
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob_a, VERISEG_ANCHOR_EVERY=0))
    flow = build_flow(cfg, registry=reg, reader_factory=_slow_factory(0.02))
    th = _when_scored(flow, 10, lambda: reg.deploy("tiny", key_b))
    run_main(flow)
    th.join()
    keys = [r["model_key"] for r in read_jsonl(cfg.out / "f" / "results.jsonl")]
    n_a = keys.count(key_a)
    assert 10 <= n_a < 40 and keys == [key_a] * n_a + [key_b] * (40 - n_a)
    # now A is superseded: starting from its file is a rollback, refused
    with pytest.raises(ModelRefused, match="superseded.*no rollback"):
        build_flow(load_config(env_for(tmp_path, f"dir:{folder}", blob_a)), registry=reg)
    # a registered candidate that was never deployed under its name may still run
    blob_c = tmp_path / "models" / "c.vsb"
    key_c = make_blob(blob_c, shift=2)
    reg.register(key_c, "tiny", blob_c.as_uri())
    build_flow(load_config(env_for(tmp_path, f"dir:{folder}", blob_c)), registry=reg)


def test_hot_swap_to_a_model_with_another_input_size(tmp_path, backend):
    reg, blob_a, key_a, blob_b, key_b = _two_models(tmp_path, size=(48, 64))
    folder = make_folder(tmp_path / "f", n=30)
    rng = np.random.default_rng(0)
    for p in folder.iterdir():   # textured: resizing twice is not resizing once
        cv2.imwrite(str(p), rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", "tiny", VERISEG_ANCHOR_EVERY=0,
                              VERISEG_BACKEND=backend, VERISEG_KEEP_FRAMES="all"))
    gate = _SwapGate()
    flow = build_flow(cfg, registry=reg, reader_factory=_slow_factory(0.02, gate))
    gate.stats = flow.context.stats
    th = _when_scored(flow, 8, lambda: gate.deploy(reg, "tiny", key_b))
    run_main(flow)
    th.join()
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    assert [r["seq"] for r in rows] == list(range(30))
    shapes = {r["model_key"]: cv2.imread(str(cfg.out / "f" / r["mask"]), cv2.IMREAD_UNCHANGED).shape
              for r in rows}
    assert shapes == {key_a: (32, 32), key_b: (48, 64)}
    # the frames adapted to B's input in the score step were made from the decoded picture
    # (not A's resized one): re-running B on the kept frames gives their masks
    from types import SimpleNamespace

    from chain.rescore import rescore_frame
    from chain.retained_frame import find_frame
    for r in rows:
        v = SimpleNamespace(stream="f", seq=r["seq"], model_key=r["model_key"], frame=r["frame"],
                            profile=r["profile"])
        mask = cv2.imread(str(cfg.out / "f" / r["mask"]), cv2.IMREAD_UNCHANGED)
        rescore_frame(v, mask, blob_a if r["model_key"] == key_a else blob_b,
                      find_frame(cfg.out / "f", r["seq"])).check()


# --------------------------------------------------------------------------- anchors
class _RefusingAnchors(FakeRegistry):
    """A node that refuses every anchor transaction while ``refuse`` is set."""

    refuse = False

    def anchor(self, *a, **kw):
        if self.refuse:
            import chain
            raise chain.errors.ChainError("node refused the transaction")
        return super().anchor(*a, **kw)


def test_unsent_batches_the_flow_wrote_are_sent_at_the_next_start_and_planted_ones_never(tmp_path):
    from chain import anchoring
    reg = _RefusingAnchors()
    _, blob, key = _registered(tmp_path, reg=reg)
    reg.refuse = True
    cfg = _run(tmp_path, f"f@dir:{make_folder(tmp_path / 'a', n=10)}", blob, reg,
               VERISEG_ANCHOR_EVERY=4, VERISEG_VIDEO=0)
    left = sorted((cfg.out / "anchors" / "f").glob("*.json"))
    assert len(left) == 3 and not reg.anchors
    assert all(json.loads(p.read_text())["chain"] is None for p in left)
    planted = anchoring.AnchorBatch(key, [anchoring.Leaf("f", 3, b"\x07" * 32)])
    planted.write(cfg.out / "anchors" / "f" / "000003-000003.json", include_proofs=True)
    reg.refuse = False
    _run(tmp_path, f"f@dir:{make_folder(tmp_path / 'b', n=2)}", blob, reg,
         VERISEG_ANCHOR_EVERY=4, VERISEG_VIDEO=0)
    for p in left:   # each genuine one went on chain once, from its own file
        doc = json.loads(p.read_text())
        assert doc["chain"] and reg.anchors[bytes.fromhex(doc["root"])][1:3] == (
            doc["first_seq"], doc["last_seq"]), p.name
    assert planted.root not in reg.anchors and len(reg.anchors) == 4   # + the new run's batch
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["anchors_refused"] == 1


def test_a_batch_of_a_revoked_key_is_never_anchored_by_the_flow(tmp_path):
    """The fake node anchors anything (a real contract refuses KeyRevoked): the flow itself
    must not send results of a revoked model, now or at the next start."""
    reg, blob_a, key_a, blob_b, key_b = _two_models(tmp_path)
    folder = make_folder(tmp_path / "f", n=40)
    env = dict(VERISEG_ANCHOR_EVERY=1000, VERISEG_VIDEO=0)   # A's batch closes at the key change
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", "tiny", **env))
    flow = build_flow(cfg, registry=reg, reader_factory=_slow_factory(0.01))
    marks = {}

    def revoke():
        reg.revoke(key_a, "compromised")
        marks["block"] = reg.block
        time.sleep(0.2)
        reg.deploy("tiny", key_b)
    th = _when_scored(flow, 10, revoke)
    run_main(flow)
    th.join()
    keys = [r["model_key"] for r in read_jsonl(cfg.out / "f" / "results.jsonl")]
    assert key_a in keys and key_b in keys
    late = [v for v in reg.anchors.values() if v[0] == key_a and v[3] > marks["block"]]
    assert not late, late
    a_files = [p for p in (cfg.out / "anchors" / "f").glob("*.json")
               if json.loads(p.read_text())["model_key"] == key_a]
    assert a_files and all(json.loads(p.read_text())["chain"] is None for p in a_files)
    assert json.loads((cfg.out / "summary.json").read_text())["anchor_failures"] >= 1
    # the next start re-sends sealed batches, but not one of a revoked key
    _run(tmp_path, f"f@dir:{make_folder(tmp_path / 'g', n=2)}", "tiny", reg, **env)
    assert not [v for v in reg.anchors.values() if v[0] == key_a and v[3] > marks["block"]]


def test_the_seal_secret_is_refused_unless_private_and_outside_the_outputs(tmp_path):
    from operators.anchor_seal import SECRET_FILE, SealError, load_secret
    home, out = tmp_path / "home", tmp_path / "out"
    s = load_secret(home, out)
    p = home / SECRET_FILE
    assert len(s) == 32 and (p.stat().st_mode & 0o777) == 0o600 and load_secret(home, out) == s
    p.chmod(0o640)
    with pytest.raises(SealError, match="no one else can read or write"):
        load_secret(home, out)
    p.chmod(0o600)
    p.write_bytes(b"short")
    with pytest.raises(SealError, match="holds 5 bytes"):
        load_secret(home, out)
    p.unlink()
    p.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SealError) as ei:
        load_secret(home, out)
    assert "\n" not in str(ei.value) and str(p) in str(ei.value)
    with pytest.raises(SealError, match="inside the output folder"):
        load_secret(out / "home", out)


def test_a_deploy_whose_blob_never_arrives_stops_the_superseded_model_after_the_max_wait(
        tmp_path, caplog):
    """B is current on chain but its blob is not here: A scored on for good. Now A scores for
    at most VERISEG_PENDING_DEPLOY_MAX_S, then stops (one line, a counter; the replay waits
    as with no valid model, A is not marked revoked), and B scores once its blob arrives."""
    import shutil
    reg, blob_a, key_a = _registered(tmp_path, name="a.vsb")
    reg.deploy("tiny", key_a)
    staged = tmp_path / "staging" / "b.vsb"
    key_b = make_blob(staged, shift=1)
    reg.register(key_b, "tiny", "")      # found only by scanning the model folder
    folder = make_folder(tmp_path / "f", n=80)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", "tiny", VERISEG_ANCHOR_EVERY=0,
                              VERISEG_MODEL_DIRS=tmp_path / "models",
                              VERISEG_PENDING_DEPLOY_MAX_S=0.5))
    assert cfg.pending_deploy_max_s == 0.5
    flow = build_flow(cfg, registry=reg, reader_factory=_slow_factory(0.02))
    stats, marks = flow.context.stats, {}

    def scenario():
        marks["t_deploy"] = time.time()
        reg.deploy("tiny", key_b)
        marks["stopped"] = wait_for(lambda: stats.deploy_pending_timeouts == 1, timeout=10)
        marks["t_stopped"] = time.time()
        marks["prom"] = stats.prometheus()
        n = sum(stats.scored.values())
        time.sleep(0.5)
        marks["idle"] = sum(stats.scored.values()) - n
        shutil.copy(staged, tmp_path / "models" / "b.vsb")
        marks["b_loaded"] = wait_for(lambda: stats.key_in_use.get("f") == key_b, timeout=10)
    th = _when_scored(flow, 10, scenario)
    run_main(flow)
    th.join()
    assert marks["stopped"], "the superseded model never stopped scoring"
    assert marks["idle"] <= 1, marks["idle"]   # at most a run already in flight
    assert prom_value(marks["prom"], "veriseg_deploy_pending_timeouts_total") == 1
    said = [r.getMessage() for r in caplog.records if "stops scoring" in r.getMessage()]
    assert len(said) == 1 and key_a[:12] in said[0] and "VERISEG_PENDING_DEPLOY_MAX_S" in said[0]
    assert marks["b_loaded"]
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    summary = json.loads((cfg.out / "summary.json").read_text())
    keys = [r["model_key"] for r in rows]
    n_a = keys.count(key_a)
    assert [r["seq"] for r in rows] == list(range(80)) and keys == [key_a] * n_a + [key_b] * (80 - n_a)
    # the streams see the stop with the next model event (a reader poll, 0.05 s here)
    late = [(r["seq"], round(score_start(r) - marks["t_stopped"], 3)) for r in rows
            if r["model_key"] == key_a and score_start(r) > marks["t_stopped"] + 0.2]
    assert not late, late
    assert summary["deploy_pending_timeouts"] == 1 and summary["revoked"] == []
    assert summary["deploy_pending"] == {}


def test_a_fifo_in_place_of_the_seal_secret_is_refused_not_waited_on(tmp_path):
    """A FIFO named anchor-seal.key held the flow at start for good (an open that waits for
    a writer); now it is one line."""
    from operators.anchor_seal import SECRET_FILE, SealError, load_secret
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    os.mkfifo(home / SECRET_FILE, 0o600)
    got: list = []

    def load():
        try:
            load_secret(home, out)
        except SealError as e:
            got.append(str(e))
    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():   # let the blocked open return, then fail
        os.close(os.open(home / SECRET_FILE, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("load_secret waited on the FIFO")
    assert len(got) == 1 and "\n" not in got[0] and "regular file" in got[0], got


def test_a_deploy_whose_blob_arrives_later_is_kept_and_applied(tmp_path, caplog):
    """B is deployed before its blob reached this edge: the flow keeps scoring with the
    superseded A (one line, a metric), stops when A is revoked, and swaps to B once its
    blob arrives in the model folder."""
    import shutil
    reg, blob_a, key_a = _registered(tmp_path, name="a.vsb")
    reg.deploy("tiny", key_a)
    staged = tmp_path / "staging" / "b.vsb"
    key_b = make_blob(staged, shift=1)
    reg.register(key_b, "tiny", "")      # found only by scanning the model folder
    key_c, cfg, flow = _model_c_and_slow_flow(tmp_path, reg, tmp_path / "staging")
    marks = {}

    def scenario():
        reg.deploy("tiny", key_b)
        marks["pending"] = wait_for(lambda: flow.context.stats.deploy_pending.get("key") == key_b, timeout=5)
        marks["prom"] = flow.context.stats.prometheus()
        n = sum(flow.context.stats.scored.values())
        marks["kept_scoring"] = wait_for(lambda: sum(flow.context.stats.scored.values()) >= n + 5, timeout=5)
        marks["t_revoke"] = time.time()
        reg.revoke(key_a, "compromised")
        time.sleep(0.3)
        shutil.copy(staged, tmp_path / "models" / "b.vsb")
        marks["b_loaded"] = wait_for(lambda: flow.context.stats.key_in_use.get("f") == key_b, timeout=5)
        if not marks["b_loaded"]:
            reg.deploy("tiny", key_c)    # let the paused replay end
    th = _when_scored(flow, 10, scenario)
    run_main(flow)
    th.join()
    assert marks["pending"] and marks["kept_scoring"]
    assert prom_value(marks["prom"], "veriseg_deploy_pending", deployment="tiny", version="2",
                      key=key_b) == 1
    said = [r.getMessage() for r in caplog.records if "still scoring with the superseded" in r.getMessage()]
    assert len(said) == 1 and key_a[:12] in said[0] and key_b in said[0]
    assert marks["b_loaded"], "the deploy was dropped: its blob arrived and the flow never took it"
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    summary = json.loads((cfg.out / "summary.json").read_text())
    _assert_revocation_honoured(rows, summary, key_a, marks["t_revoke"])
    keys = [r["model_key"] for r in rows]
    n_a = keys.count(key_a)
    assert [r["seq"] for r in rows] == list(range(80)) and keys == [key_a] * n_a + [key_b] * (80 - n_a)
    assert summary["deploy_pending"] == {}
