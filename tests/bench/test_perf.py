"""Smoke test of ``python -m bench perf``: the harness runs end to end on 4 tiny frames.

Speed figures are not checked (this is not a benchmark); only that every part of the
suite produced a result with the fields the tables of docs/performance.md are built from."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def test_launcher_reports_the_childs_own_peak_rss(tmp_path):
    from bench.perf import _spawn
    r = _spawn([sys.executable, "-S", "-c", "b = bytearray(80 << 20); b[::4096] = b'x' * len(b[::4096])"],
               log=tmp_path / "log")
    assert r["rc"] == 0
    assert 80 <= r["peak_rss_mib"] < 200, r


def test_timed_loop_counts_frames_and_latencies():
    from bench.perf import _timed_loop
    frames = np.zeros((6, 4, 4, 3), np.uint8)
    seen = []
    fps, lat = _timed_loop(lambda x: seen.append(len(x)), frames, 2, 0.0, 6)
    assert fps > 0 and len(lat) >= 3 and set(seen) == {2}


@pytest.mark.slow
def test_bench_perf_quick_runs_on_four_frames(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERISEG_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-m", "bench", "perf", "--quick", "--frames", "4", "--size", "64",
                        "--seconds", "0.2", "--random-model", "--out", "perf_test", "--work", str(tmp_path / "work"),
                        "--results", str(tmp_path)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    doc = json.loads((tmp_path / "perf_test.json").read_text())
    main = doc["results"]["main"]
    for k in ("ort_b1", "ort_b4", "torch", "flow_w1", "flow_w2"):
        assert "error" not in main[k], main[k]
        assert main[k]["fps"] > 0 and main[k]["peak_rss_mib"] > 0, main[k]
    assert main["flow_w1"]["frames"] == 4
    assert "ratio_vs_ort_b1" in main["flow_w1"]
    assert doc["results"]["inputs"]["batchnorm_nodes_in_export"] >= 0
    backends = doc["results"]["backends"]
    if "skipped" not in backends:     # OpenVINO installed: its rows ran, on the same frames
        for k in ("ort", "ov_latency", "ov_throughput", "ov_throughput_as_read"):
            assert "error" not in backends["raw"][k] and backends["raw"][k]["fps"] > 0, backends["raw"][k]
        assert backends["raw"]["ov_throughput"]["requests"] >= 2
        for b in ("onnxruntime", "openvino", "openvino_latency"):
            assert backends["flow"][b]["frames"] == 4, backends["flow"][b]
        assert backends["flow"]["openvino"]["provider"] == "OpenVINO CPU"
        assert backends["agreement"]["agreement_with_ort_fp32"]["openvino_fp32"] >= 0.999
        assert "| raw OpenVINO, THROUGHPUT hint |" in p.stdout
    assert len(doc["results"]["load_average_start"]) == 3
    assert doc["machine"]["cores"] >= 1


def test_graph_rewrites_are_exact_and_remove_the_layout_breaks():
    """trainer.optimize's rewrites give the same class maps; the channel padding is gone."""
    from trainer.export import export_random
    from trainer.optimize import channel_pad_as_conv, convtranspose_as_conv, op_counts
    from trainer.ort_session import run_model
    onnx = export_random("relu", 64)
    padconv = channel_pad_as_conv(onnx)
    sub = convtranspose_as_conv(padconv)
    assert "Pad" in op_counts(onnx) and "Pad" not in op_counts(padconv)
    assert "ConvTranspose" not in op_counts(sub) and op_counts(sub)["DepthToSpace"] == 3
    x = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    ref = run_model(onnx, x)
    assert (run_model(padconv, x) == ref).all()
    assert (run_model(sub, x) == ref).mean() > 0.999
