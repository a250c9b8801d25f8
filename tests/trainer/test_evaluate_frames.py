"""python -m trainer evaluate per frame: every frame's pixel accuracy, mIoU and Road accuracy,
worst first in report.json and report.md, the grid's frames in the same order."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.data import FolderData, write_folder
from tests.trainer.tiny_models import argmax_onnx


def _frames():
    """Four 32x48 frames, ids 0..2 (and Road, 7, in frame 3), coloured so that the channel
    arg-max predicts a share of each right: frame 0 all, 1 none, 2 half, 3 all but its Road
    third (Road is predicted as 0)."""
    h, w = 32, 48
    lab = np.repeat((np.arange(w) // 16).astype(np.uint8)[None], h, 0)
    imgs, labs = [], []
    for right_rows in (h, 0, h // 2, h):
        img = np.zeros((h, w, 3), np.uint8)
        wrong = (lab + 1) % 3
        ids = np.where(np.arange(h)[:, None] < right_rows, lab, wrong)
        np.put_along_axis(img, ids[..., None].astype(np.intp), 255, 2)
        imgs.append(img)
        labs.append(lab.copy())
    labs[3][:, :16] = 7               # Road: predicted as 0, so Road accuracy 0 in frame 3
    return FolderData(np.stack(imgs), np.stack(labs), ["f0", "f1", "f2", "f3"])


def _argmax(x):
    return np.asarray(x).argmax(-1).astype(np.uint8)


def test_per_frame_figures_worst_first_and_the_grid_in_that_order(monkeypatch):
    import trainer.evaluate as ev
    from model_store.metrics import ConfusionMatrix
    data = _frames()
    shown = {}

    def record(images, truths, preds, captions=None, **kw):
        shown["captions"] = captions
        return np.zeros((4, 4, 3), np.uint8)
    monkeypatch.setattr(ev, "grid_image", record)
    s, _, _ = ev.evaluate_folder(_argmax, data, size=48, grid_n=4)
    rows = s["per_frame"]
    assert [r["frame"] for r in rows] == ["f1", "f2", "f3", "f0"]
    for r in rows:
        k = data.names.index(r["frame"])
        cm = ConfusionMatrix()
        cm.update(_argmax(data.images[k][None])[0], data.labels[k])
        assert r["pixel_accuracy"] == pytest.approx(cm.pixel_accuracy(), abs=1e-6)
        assert r["mean_iou"] == pytest.approx(cm.mean_iou(), abs=1e-6)
    assert [r["pixel_accuracy"] for r in rows] == pytest.approx([0.0, 0.5, 2 / 3, 1.0])
    assert rows[2]["road_accuracy"] == 0.0 and rows[0]["road_accuracy"] is None     # no Road in f1
    assert [c.split()[0] for c in shown["captions"]] == ["f1", "f2", "f3", "f0"]


def test_cli_writes_every_frame_worst_first(tmp_path, capsys):
    from trainer.__main__ import main
    write_folder(_frames(), tmp_path / "data")
    out = tmp_path / "out"
    rc = main(["evaluate", "--model", str(argmax_onnx(tmp_path / "m.onnx", 48)), "--data", str(tmp_path / "data"),
               "--split", "all", "--size", "48", "--grid", "3", "--out", str(out), "--threads", "1"])
    assert rc == 0
    doc = json.loads((out / "report.json").read_text())
    assert [r["frame"] for r in doc["per_frame"]] == ["f1", "f2", "f3", "f0"]
    md = (out / "report.md").read_text()
    order = [md.index(f"| {f} |") for f in ("f1", "f2", "f3", "f0")]
    assert order == sorted(order), "report.md does not list the frames worst first"
    assert (out / "grid.png").stat().st_size > 0
    assert "worst frames" in capsys.readouterr().out
