"""The segment flow as a process: ``bytewax.run`` subprocesses (workers, refusals, the
committed defaults, a full disk), its Prometheus endpoint and an output that fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
from bytewax.testing import run_main

from dataflows.segment import build_flow
from tests.flow_fixtures import (env_for, make_blob, make_clip, make_folder, prom_value, read_jsonl,
                                 register_embedded)
from operators.config import load_config

from tests.dataflows.segment_runs import registered_model, slow_readers, when_scored


REPO = Path(__file__).resolve().parents[2]


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


def test_metrics_http_endpoint_while_running(tmp_path):
    import socket
    import urllib.request
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    reg, blob, key = registered_model(tmp_path)
    folder = make_folder(tmp_path / "f", n=30)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=0,
                              VERISEG_METRICS_PORT=port, VERISEG_METRICS_LINGER_S=0))
    flow = build_flow(cfg, registry=reg, reader_factory=slow_readers(0.02))
    got = {}

    def fetch():
        got["body"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    th = when_scored(flow, 5, fetch)
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
    reg, blob, key = registered_model(tmp_path)
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
    reg, blob, key = registered_model(tmp_path)
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


def test_output_failure_stops_the_flow_cleanly_in_process(tmp_path, monkeypatch):
    reg, blob, key = registered_model(tmp_path)
    folder = make_folder(tmp_path / "f", n=200)
    real = cv2.imwrite
    calls = {"n": 0}

    def flaky(path, img, params=None):
        calls["n"] += 1
        return False if calls["n"] > 5 else real(path, img, params or [])
    monkeypatch.setattr(cv2, "imwrite", flaky)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=0))
    with pytest.raises(RuntimeError) as ei:   # Bytewax wraps it ("error closing ...")
        run_main(build_flow(cfg, registry=reg, reader_factory=slow_readers(0.002)))
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
