"""The segment flow end to end on tiny ONNX models and a fake registry: sources, streams,
preprocessing, outputs and bad inputs."""

from __future__ import annotations

import json
import os
import struct
import threading

import cv2
import numpy as np
import pytest
from bytewax.testing import run_main

from dataflows.segment import build_flow
from tests.flow_fixtures import env_for, make_blob, make_clip, make_folder, prom_value, read_jsonl
from operators.config import ConfigError, load_config

from tests.dataflows.segment_runs import dominant_class, registered_model, run_flow


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
    reg, blob, _ = registered_model(tmp_path)
    run_flow(tmp_path, f"dir:{make_folder(tmp_path / 'f', n=2)}", blob, reg, VERISEG_AUX_NICE=7,
         VERISEG_ANCHOR_EVERY=0, VERISEG_VIDEO=0)
    assert seen == {"decoder": 7, "writer": 7}


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


def test_video_end_to_end_outputs_and_keys(tmp_path):
    reg, blob, key = registered_model(tmp_path)
    clip = make_clip(tmp_path / "clip.avi", n=20)
    cfg = run_flow(tmp_path, clip, blob, reg, VERISEG_ANCHOR_EVERY=8)
    out = cfg.out
    rows = read_jsonl(out / "clip" / "results.jsonl")
    assert [r["seq"] for r in rows] == list(range(20))
    assert {r["model_key"] for r in rows} == {key}
    for r in rows:
        assert r["stream"] == "clip" and r["pos"].endswith(f"#{r['seq']}")
        assert abs(sum(r["shares"].values()) - 1) < 1e-3
        assert {"decode", "score", "sink", "wait"} <= set(r["latency_ms"])
        # the tiny model's class is (R // 20) % 13 and frame i has R = (i % 13) * 20 + 5
        assert dominant_class(out / "clip" / r["mask"]) == r["seq"] % 13
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
    reg, blob, key = registered_model(tmp_path)
    folder = make_folder(tmp_path / "frames", n=10, bad=4)
    cfg = run_flow(tmp_path, f"dir:{folder}", blob, reg, VERISEG_ANCHOR_EVERY=0)
    rows = read_jsonl(cfg.out / "frames" / "results.jsonl")
    assert [r["seq"] for r in rows] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["bad"] == 1 and summary["bad_frames"] == {"frames": 1}
    assert "0004.png" in summary["bad_frame_reports"][0]
    assert all(dominant_class(cfg.out / "frames" / r["mask"]) == r["seq"] % 13 for r in rows)


def test_video_with_an_undecodable_frame_in_the_middle(tmp_path):
    reg, blob, key = registered_model(tmp_path)
    clip = make_clip(tmp_path / "bad.avi", n=16, zero_frame=7)
    cfg = run_flow(tmp_path, clip, blob, reg, VERISEG_ANCHOR_EVERY=0)
    rows = read_jsonl(cfg.out / "bad" / "results.jsonl")
    assert [r["seq"] for r in rows] == [i for i in range(16) if i != 7]
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["bad"] == 1 and summary["bad_frame_reports"][0].endswith(
        "bad.avi#7: frame could not be decoded")
    assert all(dominant_class(cfg.out / "bad" / r["mask"]) == r["seq"] % 13 for r in rows)


def test_csv_source_with_labels_timestamps_and_bad_rows(tmp_path):
    reg, blob, key = registered_model(tmp_path)
    folder = make_folder(tmp_path / "imgs", n=4)
    csv = tmp_path / "frames.csv"
    csv.write_text("image,label,timestamp\n"
                   "imgs/0000.png,labels/0000.png,100.5\n"
                   "imgs/0001.png,,101.5\n"
                   "imgs/missing.png,,102\n"
                   ",,\n"
                   f"{folder / '0003.png'},,103.5\n")
    cfg = run_flow(tmp_path, f"csv:{csv}", blob, reg, VERISEG_ANCHOR_EVERY=0)
    rows = read_jsonl(cfg.out / "frames" / "results.jsonl")
    assert [(r["seq"], r["ts"]) for r in rows] == [(0, 100.5), (1, 101.5), (3, 103.5)]
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["bad"] == 1 and "row 4" in summary["bad_frame_reports"][0]
    assert "missing.png" in summary["bad_frame_reports"][0]


def test_two_streams_and_micro_batches(tmp_path):
    reg, blob, key = registered_model(tmp_path)
    a = make_clip(tmp_path / "a.avi", n=12)
    d = make_folder(tmp_path / "b", n=7)
    cfg = run_flow(tmp_path, f"{a};cam2@dir:{d}", blob, reg, VERISEG_ANCHOR_EVERY=0,
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
        reg, blob, key = registered_model(d, shift=shift)
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
            assert all(dominant_class(cfg.out / sid / r["mask"]) == r["seq"] % 13 for r in rows)
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


def test_missing_default_blob_is_one_config_line(tmp_path, monkeypatch):
    import operators.config as config
    monkeypatch.setattr(config, "DEFAULT_MODEL", tmp_path / "models" / "carla-enet.vsb")
    clip = make_clip(tmp_path / "c.avi", n=2)
    with pytest.raises(ConfigError) as ei:
        load_config({"VERISEG_SOURCE": str(clip)})
    assert str(ei.value).startswith("VERISEG_MODEL: blob file") and "\n" not in str(ei.value)


def test_bad_inputs_in_a_folder_are_skipped_and_named(tmp_path):
    import struct
    import zlib
    reg, blob, key = registered_model(tmp_path)
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
