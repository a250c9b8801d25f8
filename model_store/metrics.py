"""Segmentation metrics and report images (numpy + OpenCV only): what the trainer and
``dataflows.evaluate`` both measure accuracy with.

    cm = ConfusionMatrix()            # 13 classes
    cm.update(pred, truth)            # uint8 class maps of the same shape
    cm.summary()                      # dict: pixel_accuracy, mean_iou, per-class accuracy/IoU
"""
from __future__ import annotations

import cv2
import numpy as np

from .palette import CLASS_NAMES, NUM_CLASSES, colorize

__all__ = ["ConfusionMatrix", "HOOD_START_FRACTION", "hood_mask", "resize_prediction",
           "grid_image", "confusion_image", "format_table"]

#: The CARLA ego car's hood: rows >= 495 of 600 (its outline; rows 525+ are all hood).
HOOD_START_FRACTION = 495 / 600


def hood_mask(h: int, w: int, start_fraction: float = HOOD_START_FRACTION) -> np.ndarray:
    """bool [h, w]: True on the bottom rows that the ego hood can cover."""
    m = np.zeros((h, w), bool)
    m[int(round(h * start_fraction)):] = True
    return m


def resize_prediction(pred: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize of a class map to the label's native size."""
    if pred.shape == (h, w):
        return pred
    return cv2.resize(np.ascontiguousarray(pred, dtype=np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)


class ConfusionMatrix:
    """``matrix[t, p]`` counts pixels of true class t predicted as p."""

    def __init__(self, num_classes: int = NUM_CLASSES, names=CLASS_NAMES):
        self.n = num_classes
        self.names = tuple(names)[:num_classes]
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> None:
        pred = np.asarray(pred)
        truth = np.asarray(truth)
        if pred.shape != truth.shape:
            raise ValueError(f"prediction shape {pred.shape} != truth shape {truth.shape}; "
                             "resize the prediction with resize_prediction() first")
        t = truth.astype(np.int64).ravel()
        p = pred.astype(np.int64).ravel()
        keep = (t < self.n) & (p < self.n)
        if mask is not None:
            keep &= np.asarray(mask, bool).ravel()
        self.matrix += np.bincount(t[keep] * self.n + p[keep], minlength=self.n ** 2).reshape(self.n, self.n)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        self.matrix += other.matrix
        return self

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    def pixel_accuracy(self) -> float:
        return float(np.trace(self.matrix) / max(1, self.total))

    def class_accuracy(self) -> np.ndarray:
        """Recall per class (NaN where the class never occurs in the truth)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diag(self.matrix) / self.matrix.sum(1)

    def iou(self) -> np.ndarray:
        """IoU per class (NaN where the class is absent from both truth and prediction)."""
        tp = np.diag(self.matrix)
        with np.errstate(invalid="ignore", divide="ignore"):
            return tp / (self.matrix.sum(0) + self.matrix.sum(1) - tp)

    def mean_iou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def mean_accuracy(self) -> float:
        acc = self.class_accuracy()
        return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")

    def summary(self) -> dict:
        acc, iou = self.class_accuracy(), self.iou()
        support = self.matrix.sum(1)

        def f(x):
            return None if not np.isfinite(x) else round(float(x), 6)
        return {
            "pixel_accuracy": f(self.pixel_accuracy()),
            "mean_iou": f(self.mean_iou()),
            "mean_class_accuracy": f(self.mean_accuracy()),
            "pixels": self.total,
            "per_class": {name: {"accuracy": f(acc[i]), "iou": f(iou[i]),
                                 "share": f(support[i] / max(1, self.total))}
                          for i, name in enumerate(self.names)},
        }


def format_table(summary: dict) -> str:
    """Markdown table of per-class accuracy and IoU."""
    rows = ["| class | share % | accuracy % | IoU % |", "|---|---:|---:|---:|"]

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}"
    for name, d in summary["per_class"].items():
        rows.append(f"| {name} | {pct(d['share'])} | {pct(d['accuracy'])} | {pct(d['iou'])} |")
    rows.append(f"| **all** | 100 | **{pct(summary['pixel_accuracy'])}** (pixel acc.) | "
                f"**{pct(summary['mean_iou'])}** (mIoU) |")
    return "\n".join(rows)


def _text(img, s, org, scale=0.5, color=(255, 255, 255)):
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def grid_image(images, truths, preds, tile_width: int = 256, lut: np.ndarray | None = None,
               captions=None) -> np.ndarray:
    """Figure-6 style RGB grid: raw images (top row), ground truth (middle), prediction (bottom).
    ``lut``: uint8 [256, 3] RGB colour per id (a model's own classes); default the CARLA palette.
    ``captions``: a line per column, written at the foot of its prediction."""
    paint = colorize if lut is None else (lambda ids: lut[np.asarray(ids, dtype=np.uint8)])
    cols = []
    for img, t, p in zip(images, truths, preds):
        h, w = t.shape
        th = int(round(tile_width * h / w))
        tiles = [cv2.resize(np.asarray(img), (tile_width, th), interpolation=cv2.INTER_AREA),
                 cv2.resize(paint(t), (tile_width, th), interpolation=cv2.INTER_NEAREST),
                 cv2.resize(paint(resize_prediction(p, h, w)), (tile_width, th), interpolation=cv2.INTER_NEAREST)]
        cols.append(np.concatenate([np.pad(x, ((2, 2), (2, 2), (0, 0)), constant_values=255) for x in tiles], 0))
    grid = np.concatenate(cols, 1)
    for r, s in enumerate(("raw", "ground truth", "prediction")):
        _text(grid, s, (8, 20 + r * (grid.shape[0] // 3)))
    for k, s in enumerate(captions or ()):
        _text(grid, s, (8 + k * (tile_width + 4), grid.shape[0] - 10), scale=0.45)
    return grid


def confusion_image(cm: ConfusionMatrix, cell: int = 40) -> np.ndarray:
    """Row-normalised confusion matrix as an RGB image (rows: truth, columns: prediction)."""
    n = cm.n
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(cm.matrix / cm.matrix.sum(1, keepdims=True))
    left, top = 110, 110
    img = np.full((top + n * cell + 10, left + n * cell + 10, 3), 255, np.uint8)
    for i in range(n):
        for j in range(n):
            v = norm[i, j]
            c = tuple(int(x) for x in (255 * (1 - v), 255 * (1 - 0.6 * v), 255))
            y, x = top + i * cell, left + j * cell
            cv2.rectangle(img, (x, y), (x + cell - 1, y + cell - 1), c, -1)
            if v >= 0.005:
                cv2.putText(img, f"{100 * v:.0f}", (x + 6, y + cell // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX,
                            0.4, (0, 0, 0) if v < 0.6 else (255, 255, 255), 1, cv2.LINE_AA)
    for i, name in enumerate(cm.names):
        cv2.putText(img, name[:12], (4, top + i * cell + cell // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (0, 0, 0), 1, cv2.LINE_AA)
        # column labels, written vertically
        lab = np.full((18, 104, 3), 255, np.uint8)
        cv2.putText(lab, name[:12], (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        lab = np.rot90(lab)
        x = left + i * cell + (cell - 18) // 2
        img[4:4 + 104, x:x + 18] = lab
    return img
