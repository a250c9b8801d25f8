"""The training losses' parts: ENet's class weights for the cross-entropy, AugMix's
Jensen-Shannon consistency term and the Lovász-softmax loss (Berman, Rannen Triki and Blaschko,
CVPR 2018), a convex surrogate of each class's IoU that weighs a thin class's pixels by what
they do to its IoU, not by how many they are.

Ours, not a library's: segmentation-models-pytorch has it, but brings timm and a model zoo
for a function of twenty lines."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model_store.palette import NUM_CLASSES

__all__ = ["enet_class_weights", "js_consistency", "lovasz_softmax"]


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


def _lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """The gradient of the Lovász extension of the Jaccard loss at errors sorted descending
    (fg_sorted: 1 where that pixel is of the class)."""
    total = fg_sorted.sum()
    intersection = total - fg_sorted.cumsum(0)
    union = total + (1 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


def lovasz_softmax(logits: torch.Tensor, labels: torch.Tensor, ignore: int, stride: int = 1) -> torch.Tensor:
    """The Lovász-softmax loss of ``logits`` [N, C, H, W] against ``labels`` [N, H, W],
    averaged over the classes present in the batch; pixels labelled ``ignore`` do not count.
    ``stride`` > 1 uses every ``stride``-th pixel in each direction (each class sorts its
    errors over the batch: a quarter of the pixels is a quarter of the sorting)."""
    if stride > 1:
        logits, labels = logits[:, :, ::stride, ::stride], labels[:, ::stride, ::stride]
    probs = F.softmax(logits.float(), 1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    labels = labels.reshape(-1)
    keep = labels != ignore
    probs, labels = probs[keep], labels[keep]
    losses = []
    for c in torch.unique(labels).tolist():
        fg = (labels == c).float()
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[order])))
    return torch.stack(losses).mean() if losses else probs.sum() * 0.0
