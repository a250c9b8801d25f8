"""bench.precision: every backend × precision this CPU runs, side by side; fp32 equals ONNX Runtime."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import need

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_precision_bench_runs_each_row_and_openvino_fp32_equals_onnx_runtime(tmp_path):
    pytest.importorskip("openvino")
    from bench import precision
    blob = REPO / "models" / "carla-enet.vsb"
    need(blob.exists(), "models/carla-enet.vsb")
    assert precision.main(["--blob", str(blob), "--rounds", "1", "--seconds", "0.01", "--frames", "2",
                           "--results", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "precision.json").read_text())["results"]
    assert r["same_class_as_ort_fp32"]["carla-enet.vsb, onnxruntime fp32"] == 1.0
    assert r["same_class_as_ort_fp32"]["carla-enet.vsb, openvino fp32"] == 1.0
    assert r["profiles"]["carla-enet.vsb, openvino fp32"]["precision"] == "fp32"
    assert r["ratio_to_ort_fp32"]["carla-enet.vsb, onnxruntime fp32"] == 1.0
    assert len(r["loadavg_before"]) == 3
