"""The training losses' parts: ENet's class weights for the cross-entropy and AugMix's
Jensen-Shannon consistency term."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model_store.palette import NUM_CLASSES

__all__ = ["enet_class_weights", "js_consistency"]


def enet_class_weights(labels: np.ndarray, c: float = 1.02, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """ENet's class weights w = 1 / ln(c + p_class), p = pixel share in the training labels."""
    counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes].astype(np.float64)
    p = counts / max(1.0, counts.sum())
    return (1.0 / np.log(c + p)).astype(np.float32)


def js_consistency(clean: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between two batches of per-pixel class distributions
    (logits [N, C, H, W]), averaged over pixels: AugMix's consistency term for two views."""
    p, q = F.softmax(clean, 1), F.softmax(other, 1)
    m = (0.5 * (p + q)).clamp(1e-7, 1).log()
    return 0.5 * (F.kl_div(m, p, reduction="none").sum(1).mean() + F.kl_div(m, q, reduction="none").sum(1).mean())

