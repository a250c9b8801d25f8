"""bench.ov_argmax: both graphs of the shipped blob run, alternated, and agree on every pixel."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import need

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ov_argmax_runs_both_graphs_and_they_agree(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from bench import ov_argmax
    blob = REPO / "models" / "carla-enet.vsb"
    need(blob.exists(), "models/carla-enet.vsb")
    monkeypatch.setattr("bench._perf.inputs.carla_dir", lambda: None)   # the sample clip's frames
    assert ov_argmax.main(["--blob", str(blob), "--rounds", "2", "--seconds", "0.01", "--frames", "3",
                           "--results", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "ov_argmax.json").read_text())["results"]
    assert r["same_class"] == {"carla-enet.vsb": 1.0}
    assert set(r["median_cpu_ms"]) == {"carla-enet.vsb, as read", "carla-enet.vsb, arg-max innermost"}
    assert "TopK" in r["profile_ms"]["carla-enet.vsb, as read"]
    assert "Transpose" in r["profile_ms"]["carla-enet.vsb, arg-max innermost"]
