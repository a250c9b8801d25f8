"""dataflows.evaluate: replay a labelled folder through the verified flow -> report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from bytewax.testing import run_main

from tests.flow_fixtures import FakeRegistry, env_for, frame_image, make_blob, register_embedded
from operators.config import load_config

REPO = Path(__file__).resolve().parents[2]


def _dataset(root: Path, n=12, size=(30, 44)):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"{i:04d}.jpg"), frame_image(i, size),
                    [cv2.IMWRITE_JPEG_QUALITY, 98])
        lab = np.full(size, i % 13, np.uint8)
        lab[:3] = (i + 1) % 13        # a strip the per-pixel model gets wrong
        cv2.imwrite(str(root / "labels" / f"{i:04d}.png"), lab)
    return root


def _registered(tmp_path, shift=0):
    reg = FakeRegistry()
    blob = tmp_path / "m.vsb"
    key = make_blob(blob, shift=shift)
    reg.register(key, "tiny", blob.as_uri())
    return reg, blob, key


def test_evaluate_report_at_label_resolution(tmp_path, capsys):
    from dataflows.evaluate import build_flow
    reg, blob, key = _registered(tmp_path)
    data = _dataset(tmp_path / "data")
    cfg = load_config(env_for(tmp_path, f"dir:{data}", blob, VERISEG_ANCHOR_EVERY=0))
    run_main(build_flow(cfg, registry=reg))
    ev = cfg.out / "eval"
    rep = json.loads((ev / "report.json").read_text())
    assert rep["frames"] == 12 and rep["frames_by_model_key"] == {key: 12}
    # labels are 30x44; 3 of 30 rows are deliberately wrong -> 90 % pixel accuracy
    assert rep["metrics"]["pixels"] == 12 * 30 * 44
    assert abs(rep["metrics"]["pixel_accuracy"] - 0.9) < 0.01
    conf = json.loads((ev / "confusion.json").read_text())
    assert np.array(conf["matrix"]).sum() == 12 * 30 * 44 and len(conf["classes"]) == 13
    grid = cv2.imread(str(ev / "grid.png"))
    assert grid is not None and grid.shape[1] > grid.shape[0]
    assert cv2.imread(str(ev / "confusion.png")) is not None
    assert "mIoU" in (ev / "report.md").read_text()
    out = capsys.readouterr().out
    assert "pixel accuracy 90" in out and "mIoU" in out


def test_evaluate_refuses_a_video_source(tmp_path):
    from dataflows.evaluate import build_flow
    from operators.config import ConfigError
    from tests.flow_fixtures import make_clip
    reg, blob, key = _registered(tmp_path)
    clip = make_clip(tmp_path / "c.avi", n=2)
    with pytest.raises(ConfigError, match="labelled dataset"):
        build_flow(load_config(env_for(tmp_path, clip, blob)), registry=reg)


@pytest.mark.slow
def test_evaluate_through_bytewax_run(tmp_path):
    blob = tmp_path / "m.vsb"
    make_blob(blob)
    register_embedded(tmp_path / "home", blob)
    data = _dataset(tmp_path / "data", n=5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERISEG_")}
    env.update(env_for(tmp_path, str(data), blob))
    env["PYTHONPATH"] = str(REPO)
    p = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.evaluate"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "pixel accuracy" in p.stdout and "mIoU" in p.stdout
    assert (tmp_path / "out" / "eval" / "report.json").exists()
