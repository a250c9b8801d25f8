"""Evaluate a checkpoint (.pt), an ONNX model (.onnx) or a blob (.vsb) on a folder dataset.

Metrics are computed at the labels' native resolution: frames are resized to the network
input (area), the predicted class maps are resized back with nearest neighbour.
Writes ``report.json``, ``report.md``, ``confusion.png``, ``grid.png`` (Figure-6 style) to
``--out``.  Every frame is also scored on its own (pixel accuracy, mIoU over the classes in its
truth or prediction, Road accuracy): ``per_frame`` in the JSON and the table in ``report.md``
list them worst first, and the grid's frames (spread evenly over the split) stand in the same
order, each captioned with its name and pixel accuracy.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np

from model_store import load, verify
from model_store.metrics import ConfusionMatrix, confusion_image, format_table, grid_image, hood_mask, resize_prediction

from .data import load_folder, time_split
from .ort_session import ort_session

__all__ = ["make_predictor", "evaluate_folder", "frame_figures", "format_frames", "load_split", "main"]


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
    if p.suffix == ".vsb":
        key = verify(p)
        _, onnx_bytes = load(p, key)
        desc = f"blob {p} key {key}"
    else:
        onnx_bytes = p.read_bytes()
        desc = f"onnx {p}"
    sess = ort_session(onnx_bytes, threads)
    return (lambda x: np.concatenate([sess.run(["classes"], {"image": x[i:i + 1]})[0] for i in range(len(x))])), \
        desc + f" ({sess.get_providers()[0]})"


def frame_figures(pred: np.ndarray, truth: np.ndarray) -> dict:
    """One frame's pixel accuracy, mIoU and Road accuracy (None where the frame has no road)."""
    cm = ConfusionMatrix()
    cm.update(pred, truth)
    s = cm.summary()
    return {"pixel_accuracy": s["pixel_accuracy"], "mean_iou": s["mean_iou"],
            "road_accuracy": s["per_class"]["Road"]["accuracy"]}


def _worst_first(row: dict):
    # a frame without scored pixels has no accuracy: listed first, it is the one to look at
    return (-1.0 if row["pixel_accuracy"] is None else row["pixel_accuracy"], row["frame"])


def evaluate_folder(predict, data, size: int = 512, grid_n: int = 6, batch: int = 4):
    """(summary dict, overall ConfusionMatrix, grid image); the summary's ``per_frame`` lists
    every frame's figures worst first, and the grid shows its frames in that order."""
    cm, cm_nohood = ConfusionMatrix(), ConfusionMatrix()
    h, w = data.labels.shape[1:]
    keep = ~hood_mask(h, w)
    grid_sel = set(np.linspace(0, len(data) - 1, grid_n).astype(int).tolist()) if grid_n else set()
    tiles, per_frame = [], []
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
            row = {"frame": data.names[i + j], **frame_figures(p, t)}
            per_frame.append(row)
            if i + j in grid_sel:
                tiles.append((row, imgs[j], t, p))
    s = cm.summary()
    s_nh = cm_nohood.summary()
    s["without_hood"] = {"rows_excluded_from": int(keep.argmin(0)[0]) if not keep.all() else None,
                         "pixel_accuracy": s_nh["pixel_accuracy"], "mean_iou": s_nh["mean_iou"],
                         "car_accuracy": s_nh["per_class"]["Car"]["accuracy"],
                         "car_iou": s_nh["per_class"]["Car"]["iou"]}
    s["confusion_matrix"] = cm.matrix.tolist()
    s["frames"] = len(data)
    s["per_frame"] = sorted(per_frame, key=_worst_first)
    s["seconds"] = round(time.time() - t0, 1)
    tiles.sort(key=lambda tile: _worst_first(tile[0]))
    grid = grid_image([g[1] for g in tiles], [g[2] for g in tiles], [g[3] for g in tiles],
                      captions=[f"{g[0]['frame']} {_pct(g[0]['pixel_accuracy'])}%" for g in tiles]) if tiles else None
    return s, cm, grid


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def format_frames(per_frame: list[dict], limit: int | None = None) -> str:
    """Markdown: one row per frame as listed (worst first), the first ``limit`` of them."""
    rows = ["| # | frame | pixel acc. % | mIoU % | Road % |", "|---:|---|---:|---:|---:|"]
    for k, r in enumerate(per_frame[:limit], 1):
        rows.append(f"| {k} | {r['frame']} | {_pct(r['pixel_accuracy'])} | {_pct(r['mean_iou'])} | "
                    f"{_pct(r['road_accuracy'])} |")
    return "\n".join(rows)


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
    nh = s["without_hood"]
    hood_line = (f"Car without the hood rows: accuracy {_pct(nh['car_accuracy'])}%, IoU {_pct(nh['car_iou'])}%; "
                 f"pixel accuracy without them {_pct(nh['pixel_accuracy'])}%")
    (out / "report.md").write_text(
        f"# {desc}\n\n{len(data)} frames ({a.split}: {data.names[0]}..{data.names[-1]})\n\n"
        f"{format_table(s)}\n\n{hood_line}\n\n## Frames, worst first\n\n{format_frames(s['per_frame'])}\n")
    cv2.imwrite(str(out / "confusion.png"), cv2.cvtColor(confusion_image(cm), cv2.COLOR_RGB2BGR))
    if grid is not None:
        cv2.imwrite(str(out / "grid.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(f"{desc}: {len(data)} frames ({a.split})")
    print(format_table(s))
    print(hood_line)
    shown = min(10, len(s["per_frame"]))
    print(f"\nthe {shown} worst frames of {len(s['per_frame'])} (all in report.md, report.json per_frame):")
    print(format_frames(s["per_frame"], shown))
    print(f"wrote {out}/report.json, report.md, confusion.png, grid.png")
    return 0
