"""Training loop: weighted cross-entropy (ENet weights), AdamW, warmup + cosine schedule,
EMA of the weights, checkpoints every epoch with resume, best checkpoint by val mIoU.

Robustness (``conditions``, ``consistency``): a share of the crops is given a weather, light
or sensor condition drawn by ``trainer.conditions.training_condition`` (never the benchmark's
draws).  With ``consistency`` > 0 each batch carries the clean crops too and the loss adds
AugMix's Jensen-Shannon term between the clean and the conditioned predictions (Hendrycks et
al., ICLR 2020), which asks the net to see the same classes whatever the weather; it costs a
second forward and backward pass per step."""
from __future__ import annotations

import copy
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model_store.util import atomic_writer

from .conditions import training_condition
from .data import (MEAN, STD, FolderData, RareClassSampler, augment, class_mix, load_folder, synthetic_data,
                   time_split)
from .enet import ENet, count_macs, count_params
from .metrics import ConfusionMatrix
from .palette import NUM_CLASSES

__all__ = ["TrainConfig", "train", "enet_class_weights", "to_tensor", "predict", "load_checkpoint"]


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
    consistency: float = 0.0         # weight of the clean-vs-condition Jensen-Shannon loss (0: off)
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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available to torch")
    return torch.device(name)


def enet_class_weights(labels: np.ndarray, c: float = 1.02, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """ENet's class weights w = 1 / ln(c + p_class), p = pixel share in the training labels."""
    counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes].astype(np.float64)
    p = counts / max(1.0, counts.sum())
    return (1.0 / np.log(c + p)).astype(np.float32)


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


def js_consistency(clean: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between two batches of per-pixel class distributions
    (logits [N, C, H, W]), averaged over pixels: AugMix's consistency term for two views."""
    p, q = F.softmax(clean, 1), F.softmax(other, 1)
    m = (0.5 * (p + q)).clamp(1e-7, 1).log()
    return 0.5 * (F.kl_div(m, p, reduction="none").sum(1).mean() + F.kl_div(m, q, reduction="none").sum(1).mean())


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig) -> ENet:
    return ENet(NUM_CLASSES, variant=cfg.variant, dropout=cfg.dropout)


def load_checkpoint(path, map_location="cpu", use_ema: bool = True):
    """(model in eval mode, checkpoint dict).  Uses the EMA weights when present."""
    ck = torch.load(path, map_location=map_location, weights_only=False)
    cfg = TrainConfig(**ck["config"])
    model = build_model(cfg)
    sd = ck["ema"] if use_ema and ck.get("ema") is not None else ck["model"]
    model.load_state_dict(sd)
    model.eval()
    return model, ck


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def cpu_bf16_is_fast() -> bool:
    """Whether oneDNN has native bf16 kernels here (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _autocast(device: torch.device, amp: str):
    if amp == "auto":
        # bf16 trains ~2x faster than fp32 on a CPU with AVX512-BF16, but without native
        # kernels it is emulated: 6.5x *slower* than fp32 on an AVX2-only EPYC (one thread,
        # ENet, batch 2 at 384², 4.4 s vs 0.68 s a step)
        amp = "fp16" if device.type == "cuda" else ("bf16" if cpu_bf16_is_fast() else "off")
    if amp == "off":
        return torch.autocast(device.type, enabled=False), None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if (amp == "fp16" and device.type == "cuda") else None
    return torch.autocast(device.type, dtype=dtype), scaler


def _eta(elapsed_s: float, epoch: int, total: int | None) -> str:
    """', ETA 12 min' from the mean epoch time so far (elapsed_s counts earlier sessions of a
    resumed run too), when the epoch count is known."""
    if not total or epoch <= 0 or epoch >= total:
        return ""
    return f", ETA {elapsed_s / epoch * (total - epoch) / 60:.0f} min"


def _ema_update(ema: dict, model: torch.nn.Module, decay: float) -> None:
    # one multi-tensor kernel per op, not two per tensor: on a GPU the per-tensor loop's
    # ~500 launches a step cost more than ENet's own forward pass
    with torch.no_grad():
        e, m = [], []
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                e.append(ema[k])
                m.append(v)
            else:
                ema[k].copy_(v)
        torch._foreach_mul_(e, decay)
        torch._foreach_add_(e, m, alpha=1 - decay)


class _AugmentedBatches(torch.utils.data.Dataset):
    """Item k is step k of the run: epoch k // steps, its frames from that epoch's permutation
    and their augmentation from a generator seeded by (seed, epoch, step), so a batch is the
    same whichever process makes it, however many there are, and a resumed run goes on exactly."""

    def __init__(self, data: FolderData, cfg: TrainConfig, steps_per_epoch: int):
        self.data, self.cfg, self.steps = data, cfg, steps_per_epoch
        self.rare = RareClassSampler(data.labels) if cfg.rare_crops > 0 else None

    def __len__(self):
        return 1 << 40          # indexed by the sampler, never iterated

    def __getitem__(self, k: int):
        cfg, (epoch, i) = self.cfg, divmod(k, self.steps)
        perm = np.random.default_rng([cfg.seed, epoch]).permutation(len(self.data))
        rng = np.random.default_rng([cfg.seed, epoch, i])
        pairs = []
        for j in perm[i * cfg.batch:(i + 1) * cfg.batch]:
            focus = None
            # draws only when the option is on: the default recipe keeps its random stream
            if self.rare is not None and rng.random() < cfg.rare_crops:
                j, focus = self.rare.draw(rng)
            pairs.append(augment(self.data.images[j], self.data.labels[j], rng, cfg.size,
                                 (cfg.scale_min, cfg.scale_max), focus=focus))
        if cfg.class_mix > 0 and len(pairs) > 1:
            src = list(pairs)
            for n in range(len(pairs)):
                if rng.random() < cfg.class_mix:
                    pairs[n] = class_mix(*pairs[n], *src[(n + 1) % len(src)], rng)
        images = np.stack([p[0] for p in pairs])
        labels = np.stack([p[1] for p in pairs])
        if cfg.conditions <= 0:     # draws only when on: the recipe without it keeps its stream
            return images, labels
        cond = images.copy()
        for n in range(len(pairs)):
            if rng.random() < cfg.conditions:
                cond[n] = training_condition(images[n], labels[n], rng)
        if cfg.consistency > 0:
            return np.concatenate([images, cond]), labels
        return cond, labels


class _EpochSteps(torch.utils.data.Sampler):
    """The step indices of ``epoch`` (set before each pass; persistent workers keep the sampler)."""

    def __init__(self, steps_per_epoch: int):
        self.steps, self.epoch = steps_per_epoch, 0

    def __iter__(self):
        return iter(range(self.epoch * self.steps, (self.epoch + 1) * self.steps))

    def __len__(self):
        return self.steps


def _rng_state(device: torch.device) -> dict:
    st = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _quiet_worker(_):
    import cv2
    # 0, not 1: a forked child inherits OpenCV's thread pool without its threads, and
    # resizing it to 1 there hangs; 0 runs every call inline
    cv2.setNumThreads(0)
    torch.set_num_threads(1)


def default_workers(device: torch.device) -> int:
    """0 on the CPU, where augmenting beside the loop only takes cores from the compute threads;
    on a GPU as many as the machine spares (up to 8), since in the loop it starves the GPU."""
    return 0 if device.type == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))


def _batch_loader(data: FolderData, cfg: TrainConfig, steps_per_epoch: int, device: torch.device):
    w = cfg.workers if cfg.workers is not None else default_workers(device)
    sampler = _EpochSteps(steps_per_epoch)
    loader = torch.utils.data.DataLoader(
        _AugmentedBatches(data, cfg, steps_per_epoch), batch_size=None, sampler=sampler, num_workers=w,
        persistent_workers=w > 0, prefetch_factor=4 if w else None, pin_memory=device.type == "cuda",
        worker_init_fn=_quiet_worker if w else None,
        # its own generator: each new pass would otherwise draw a seed from the global one,
        # shifting dropout's random stream with the worker count
        generator=torch.Generator(),
        timeout=300 if w else 0,      # a stuck worker raises instead of stalling the run
        multiprocessing_context=_worker_start_method() if w else None)
    return loader, sampler


def _worker_start_method() -> str:
    """fork shares the decoded frames copy-on-write (spawn would pickle them to every worker),
    but not once OpenVINO is loaded in this process: a child forked from its TBB thread pool
    hung, or crashed the parent, in the test suite after the flow's OpenVINO tests. Then
    forkserver, whose children start from a clean process."""
    import multiprocessing as mp
    methods = mp.get_all_start_methods()
    if "fork" in methods and "openvino" not in sys.modules:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def train(cfg: TrainConfig, resume: bool = False, log=print) -> dict:
    """Train; returns the summary dict also written to ``out/summary.json``."""
    torch.set_num_threads(cfg.threads)
    seed_all(cfg.seed)
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_load = time.time()
    if cfg.data == "synthetic":
        data = synthetic_data(cfg.synthetic_n, cfg.load_size, cfg.load_size, seed=cfg.seed)
    else:
        data = load_folder(cfg.data, cfg.load_size, limit=cfg.limit)
    tr_idx, va_idx = time_split(len(data), cfg.val_fraction, cfg.gap, cfg.val_at)
    train_d, val_d = data.subset(tr_idx), data.subset(va_idx)
    val_desc = f"val {len(val_d)} ({val_d.names[0]}..{val_d.names[-1]}), gap {cfg.gap}" if len(val_d) \
        else "no validation (--val-fraction 0: final fit on every frame; the last checkpoint is the result)"
    log(f"data: {len(data)} frames loaded in {time.time() - t_load:.1f}s; train {len(train_d)} "
        f"({train_d.names[0]}..{train_d.names[-1]}), {val_desc}")

    weights = enet_class_weights(train_d.labels, cfg.weight_c)
    log("class weights: " + " ".join(f"{w:.2f}" for w in weights))
    model = build_model(cfg).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.init and not resume:
        # a fine-tune starts from the weights the source run would ship (its EMA), with a fresh
        # optimiser and schedule
        src, _ = load_checkpoint(cfg.init)
        model.load_state_dict(src.state_dict())
        log(f"init: weights from {cfg.init}")
    ema = copy.deepcopy(model.state_dict()) if cfg.ema > 0 else None
    steps_per_epoch = max(1, len(train_d) // cfg.batch)
    state = {"epoch": 0, "step": 0, "best_miou": -1.0, "epochs": cfg.epochs, "elapsed": 0.0}
    w_t = torch.tensor(weights, device=device)
    # before a resume restores the random state: counting MACs builds (and so draws) a model
    meta = {"params": count_params(model), "gmacs_512": count_macs(build_model(cfg), 64) * 64 / 1e9,
            "device": str(device), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "argv": sys.argv, "train_frames": len(train_d), "val_frames": len(val_d),
            "train_range": [train_d.names[0], train_d.names[-1]],
            "val_range": [val_d.names[0], val_d.names[-1]] if len(val_d) else None,
            "class_weights": [round(float(w), 4) for w in weights]}
    last = out / "last.pt"
    if resume:
        if not last.exists():
            raise FileNotFoundError(f"--resume: {last} not found")
        ck = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        ema = ck.get("ema")
        state = ck["state"]
        if cfg.epochs is not None and cfg.epochs != state["epochs"]:
            log(f"--epochs {cfg.epochs}: extending/shortening the run from {state['epochs']} epochs")
            state["epochs"] = cfg.epochs
        rng_state = ck.get("rng") or {}
        # map_location moved the saved states to the device; both setters take CPU tensors
        if "torch" in rng_state:
            torch.set_rng_state(rng_state["torch"].cpu())
        if "cuda" in rng_state and device.type == "cuda":
            torch.cuda.set_rng_state(rng_state["cuda"].cpu())   # dropout's stream on the GPU
        log(f"resumed from {last}: epoch {state['epoch']}, best mIoU {state['best_miou']:.4f}")
    loader, sampler = _batch_loader(train_d, cfg, steps_per_epoch, device)
    (out / "config.json").write_text(json.dumps({"config": asdict(cfg), "meta": meta}, indent=1))
    log(f"model: ENet/{cfg.variant}, {meta['params']} params, {meta['gmacs_512']:.3f} GMAC at 512x512; "
        f"device {device}, {loader.num_workers} augmenting workers")

    t_start = time.time() - state["elapsed"]
    time_based = cfg.minutes is not None and state["epochs"] is None
    if cfg.minutes is None and state["epochs"] is None:
        raise ValueError("give --epochs or --minutes (or both)")
    metrics_f = open(out / "metrics.jsonl", "a")
    epoch = state["epoch"]
    while True:
        total_epochs = state["epochs"]
        if total_epochs is not None and epoch >= total_epochs:
            break
        if cfg.minutes is not None and epoch > 0 and \
                time.time() - t_start + 0.5 * state.get("last_epoch_s", 0) > cfg.minutes * 60:
            log("time budget used up")
            break
        model.train()
        t_ep = time.time()
        sampler.epoch = epoch
        total_steps = (total_epochs or 1000) * steps_per_epoch
        warm = int(cfg.warmup_epochs * steps_per_epoch)
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{total_epochs or '?'}",
                   # a bar only on a terminal: redirected to a log file it is a wall of \r frames
                   disable=not (cfg.progress and sys.stderr.isatty()), leave=False, mininterval=2,
                   file=sys.stderr)
        loss_sum = torch.zeros((), device=device)   # summed on the device: no sync per step
        ctx, scaler = _autocast(device, cfg.amp)
        for i, (xb, yb) in enumerate(bar):
            x = to_tensor(xb, device)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = yb.to(device, non_blocking=True).long()
            if len(x) != len(y):    # consistency: clean crops, then the same crops conditioned
                y = torch.cat([y, y])
            if time_based:   # --minutes without --epochs: cosine over the wall-clock budget
                frac = (time.time() - t_start) / (cfg.minutes * 60)
                f = _lr_factor(int(frac * 100000), 100000, 0) if state["step"] >= warm \
                    else (state["step"] + 1) / max(1, warm)
            else:
                f = _lr_factor(state["step"], total_steps, warm)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * f
            with ctx:
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, weight=w_t)
            if cfg.consistency > 0:
                loss = loss + cfg.consistency * js_consistency(*logits.float().chunk(2))
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            if ema is not None:
                _ema_update(ema, model, cfg.ema if state["step"] > warm else 0.9)
            state["step"] += 1
            loss_sum += loss.detach()
            if not bar.disable and i % 10 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / (i + 1):.4f}", lr=f"{cfg.lr * f:.2e}")
        bar.close()
        loss_sum = loss_sum.item()
        epoch += 1
        state["epoch"] = epoch
        t_train = time.time() - t_ep
        state["last_epoch_s"] = time.time() - t_ep
        rec = {"epoch": epoch, "step": state["step"], "loss": loss_sum / steps_per_epoch,
               "lr": opt.param_groups[0]["lr"], "train_s": round(t_train, 1)}
        if len(val_d) and (epoch % cfg.val_every == 0 or epoch == state["epochs"] or
                           (time_based and time.time() - t_start + 1.5 * t_train > cfg.minutes * 60)):
            t_v = time.time()
            emodel = model
            if ema is not None:
                emodel = build_model(cfg).to(device)
                emodel.load_state_dict(ema)
            cm = evaluate_model(emodel, val_d, cfg.eval_size, device)
            s = cm.summary()
            rec.update(val_pixel_accuracy=s["pixel_accuracy"], val_miou=s["mean_iou"],
                       val_mean_class_accuracy=s["mean_class_accuracy"],
                       val_class_accuracy={k: v["accuracy"] for k, v in s["per_class"].items()},
                       val_iou={k: v["iou"] for k, v in s["per_class"].items()}, val_s=round(time.time() - t_v, 1))
            if s["mean_iou"] is not None and s["mean_iou"] > state["best_miou"]:
                state["best_miou"] = s["mean_iou"]
                state["best_epoch"] = epoch
                rec["best"] = True
        state["elapsed"] = time.time() - t_start
        rec["elapsed_s"] = round(state["elapsed"], 1)
        metrics_f.write(json.dumps(rec) + "\n")
        metrics_f.flush()
        ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "ema": ema, "state": state,
              "config": asdict(cfg), "meta": meta, "metrics": rec, "rng": _rng_state(device)}
        with atomic_writer(last) as f:
            torch.save(ck, f)
        if rec.get("best"):
            with atomic_writer(out / "best.pt") as f:
                torch.save(ck, f)
        log(f"epoch {epoch}/{state['epochs'] or '?'} loss {rec['loss']:.4f} " +
            (f"val acc {rec['val_pixel_accuracy']:.4f} mIoU {rec['val_miou']:.4f} " if "val_miou" in rec else "") +
            f"({t_train:.0f}s train, {rec['elapsed_s'] / 60:.1f} min total{_eta(state['elapsed'], epoch, state['epochs'])})")
    metrics_f.close()
    summary = {"epochs": epoch, "steps": state["step"], "elapsed_s": round(state["elapsed"], 1),
               "best_epoch": state.get("best_epoch"), "best_val_miou": state["best_miou"], "meta": meta}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
