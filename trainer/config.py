"""``TrainConfig``: every setting of a training run, saved in each checkpoint (``load_checkpoint``
rebuilds the net from it)."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    data: str = "synthetic"          # a folder with images/ + labels/, or "synthetic"
    out: str = "runs/enet"
    epochs: int | None = None        # None with minutes: fitted to the budget after epoch 1
    minutes: float | None = None     # wall-clock budget for the whole run
    size: int = 320                  # training crop (the net is fully convolutional)
    load_size: int = 512             # frames are decoded once, resized to this square
    eval_size: int = 512             # validation input size (the deployed 512x512)
    batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    scale_min: float = 0.5
    scale_max: float = 1.5
    weight_c: float = 1.02           # class weights 1/ln(c + p)
    rare_crops: float = 0.0          # share of crops centred on a rare-class pixel (RareClassSampler)
    class_mix: float = 0.0           # share of samples given ClassMix from the next one in the batch
    conditions: float = 0.0          # share of samples given a weather/light/sensor condition (trainer.conditions)
    geometry: float = 0.0            # share of frames seen by another camera (trainer.geometry; 0: off)
    consistency: float = 0.0         # weight of the clean-vs-condition Jensen-Shannon loss (0: off)
    lovasz: float = 0.0              # weight of the Lovász-softmax loss beside the cross-entropy (0: off)
    init: str | None = None          # start from this checkpoint's (EMA) weights: a fine-tune
    variant: str = "relu"
    dropout: float = 0.1
    ema: float = 0.99                # 0 disables the weight average
    val_fraction: float = 0.2
    val_at: str = "end"              # which end of the drive validates: end | start
    gap: int = 10
    val_every: int = 1
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"                # auto (bf16 on CPU, fp16 on CUDA) | bf16 | fp16 | off
    channels_last: bool = True
    threads: int = 2
    workers: int | None = None       # augmenting processes (0: in the loop); None: by device
    limit: int | None = None         # use only the first N frames (tests)
    synthetic_n: int = 64
    progress: bool = True
    extra: dict = field(default_factory=dict)

