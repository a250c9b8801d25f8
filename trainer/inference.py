"""The torch net on uint8 frames: ``to_tensor`` (the ONNX graph's normalisation), ``predict``
(class maps) and ``evaluate_model`` (a confusion matrix over a folder's frames)."""
from __future__ import annotations

import numpy as np
import torch

from .data import MEAN, STD, FolderData
from model_store.metrics import ConfusionMatrix

__all__ = ["to_tensor", "predict", "evaluate_model"]


_MEAN = torch.tensor(MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(STD).view(1, 3, 1, 1)


def to_tensor(images, device=None) -> torch.Tensor:
    """uint8 NHWC RGB (array or tensor) -> normalised float NCHW (the same arithmetic as the
    ONNX graph)."""
    x = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    mean, std = _norm_constants(x.device)
    return (x - mean) / std


_NORM: dict = {}


def _norm_constants(device: torch.device):
    # kept on each device: no copy per batch, and none inside a CUDA graph capture
    if device not in _NORM:
        _NORM[device] = (_MEAN.to(device), _STD.to(device))
    return _NORM[device]


@torch.no_grad()
def predict(model, images: np.ndarray, batch: int = 4, device=None) -> np.ndarray:
    """uint8 NHWC RGB -> uint8 class maps [N, H, W]."""
    model.eval()
    device = device or next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch):
        out.append(model(to_tensor(images[i:i + batch], device)).argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def evaluate_model(model, data: FolderData, size: int, device) -> ConfusionMatrix:
    import cv2
    cm = ConfusionMatrix()
    imgs = data.images
    if imgs.shape[1:3] != (size, size):
        imgs = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in imgs])
    preds = predict(model, imgs, device=device)
    for p, t in zip(preds, data.labels):
        if p.shape != t.shape:
            p = cv2.resize(p, (t.shape[1], t.shape[0]), interpolation=cv2.INTER_NEAREST)
        cm.update(p, t)
    return cm
