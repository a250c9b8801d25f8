"""Evaluate a checkpoint (.pt), an ONNX model (.onnx) or a blob (.vsb) on a folder dataset.

Metrics are computed at the labels' native resolution: frames are resized to the network
input (area), the predicted class maps are resized back with nearest neighbour.
Writes ``report.json``, ``confusion.png``, ``grid.png`` (Figure-6 style) to ``--out``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np

from .data import load_folder, time_split
from .metrics import ConfusionMatrix, confusion_image, format_table, grid_image, hood_mask, resize_prediction

__all__ = ["make_predictor", "evaluate_folder", "load_split", "main"]


def make_predictor(model_path, size: int = 512, threads: int = 2, use_ema: bool = True):
    """A function uint8 NHWC RGB [N, size, size, 3] -> uint8 [N, size, size], and a description."""
    p = Path(model_path)
    if p.suffix == ".pt":
        import torch
        from .checkpoints import load_checkpoint
        from .inference import predict
        torch.set_num_threads(threads)
        net, ck = load_checkpoint(p, use_ema=use_ema)
        w = "EMA" if use_ema and ck.get("ema") is not None else "raw"
        return (lambda x: predict(net, x)), f"pytorch checkpoint {p} ({w} weights, epoch {ck['state']['epoch']})"
    from .export import ort_session
    if p.suffix == ".vsb":
        from model_store import load, verify
        key = verify(p)
        _, onnx_bytes = load(p, key)
        desc = f"blob {p} key {key}"
    else:
        onnx_bytes = p.read_bytes()
        desc = f"onnx {p}"
    sess = ort_session(onnx_bytes, threads)
    return (lambda x: np.concatenate([sess.run(["classes"], {"image": x[i:i + 1]})[0] for i in range(len(x))])), \
        desc + f" ({sess.get_providers()[0]})"


def evaluate_folder(predict, data, size: int = 512, grid_n: int = 6, batch: int = 4):
    """(summary dict, overall ConfusionMatrix, grid image)."""
    cm, cm_nohood = ConfusionMatrix(), ConfusionMatrix()
    h, w = data.labels.shape[1:]
    keep = ~hood_mask(h, w)
    grid_sel = set(np.linspace(0, len(data) - 1, grid_n).astype(int).tolist()) if grid_n else set()
    g_imgs, g_truth, g_pred = [], [], []
    t0 = time.time()
    for i in range(0, len(data), batch):
        imgs = data.images[i:i + batch]
        x = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in imgs])
        preds = predict(x)
        for j, p in enumerate(preds):
            t = data.labels[i + j]
            p = resize_prediction(p, h, w)
            cm.update(p, t)
            cm_nohood.update(p, t, keep)
            if i + j in grid_sel:
                g_imgs.append(imgs[j]); g_truth.append(t); g_pred.append(p)
    s = cm.summary()
    s_nh = cm_nohood.summary()
    s["without_hood"] = {"rows_excluded_from": int(keep.argmin(0)[0]) if not keep.all() else None,
                         "pixel_accuracy": s_nh["pixel_accuracy"], "mean_iou": s_nh["mean_iou"],
                         "car_accuracy": s_nh["per_class"]["Car"]["accuracy"],
                         "car_iou": s_nh["per_class"]["Car"]["iou"]}
    s["confusion_matrix"] = cm.matrix.tolist()
    s["frames"] = len(data)
    s["seconds"] = round(time.time() - t0, 1)
    grid = grid_image(g_imgs, g_truth, g_pred) if g_imgs else None
    return s, cm, grid


def load_split(a, limit: int | None = None):
    """The frames of ``a.data`` at native size, cut to ``a.split`` (val | train | all) by the
    time split of ``a.val_fraction``, ``a.gap``, ``a.val_at``: what evaluate and robustness score."""
    data = load_folder(a.data, None, limit=limit)
    if a.split != "all":
        tr, va = time_split(len(data), a.val_fraction, a.gap, a.val_at)
        data = data.subset(va if a.split == "val" else tr)
    return data


def main(a) -> int:
    data = load_split(a)
    predict, desc = make_predictor(a.model, a.size, a.threads, use_ema=not a.no_ema)
    s, cm, grid = evaluate_folder(predict, data, a.size, a.grid)
    s["model"] = desc
    s["split"] = {"name": a.split, "frames": f"{data.names[0]}..{data.names[-1]}", "val_fraction": a.val_fraction,
                  "val_at": a.val_at, "gap": a.gap}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(s, indent=1))
    cv2.imwrite(str(out / "confusion.png"), cv2.cvtColor(confusion_image(cm), cv2.COLOR_RGB2BGR))
    if grid is not None:
        cv2.imwrite(str(out / "grid.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(f"{desc}: {len(data)} frames ({a.split})")
    print(format_table(s))
    nh = s["without_hood"]
    print(f"Car without the hood rows: accuracy {100 * nh['car_accuracy']:.1f}%, IoU {100 * nh['car_iou']:.1f}%; "
          f"pixel accuracy without them {100 * nh['pixel_accuracy']:.1f}%")
    print(f"wrote {out}/report.json, confusion.png, grid.png")
    return 0
