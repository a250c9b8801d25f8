"""Training loop: weighted cross-entropy (ENet weights), AdamW, warmup + cosine schedule,
EMA of the weights, checkpoints every epoch with resume, best checkpoint by val mIoU.

Robustness (``conditions``, ``consistency``): a share of the crops is given a weather, light
or sensor condition drawn by ``trainer.conditions.training_condition`` (never the benchmark's
draws).  With ``consistency`` > 0 each batch carries the clean crops too and the loss adds
AugMix's Jensen-Shannon term between the clean and the conditioned predictions (Hendrycks et
al., ICLR 2020), which asks the net to see the same classes whatever the weather; it costs a
second forward and backward pass per step.

Camera geometry (``geometry``): a share of the frames is seen by another camera
(``trainer.geometry.training_camera``: height, pitch, field of view, aspect, hood, lens) before
the crop; the image and its label move together, and a border the drive never saw is
labelled ``IGNORE_ID``, which the loss skips."""
from __future__ import annotations

import copy
import json
import math
import platform
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model_store.util import atomic_writer

from .batches import _AugmentedBatches, _batch_loader, _EpochSteps, default_workers  # noqa: F401
from .checkpoints import _ema_update, _restore_rng_state, _rng_state, build_model, load_checkpoint
from .config import TrainConfig
from .data import load_folder, synthetic_data, time_split
from .enet import count_macs, count_params
from .inference import evaluate_model, predict, to_tensor
from .losses import enet_class_weights, js_consistency, lovasz_softmax
from model_store.palette import IGNORE_ID

# the names other modules import from here, wherever they now live: the loop's batches
# (trainer.batches), checkpoints (trainer.checkpoints), settings (trainer.config), losses
# (trainer.losses) and the net on frames (trainer.inference)
__all__ = ["TrainConfig", "train", "enet_class_weights", "to_tensor", "predict", "load_checkpoint"]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available to torch")
    return torch.device(name)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
        _restore_rng_state(ck.get("rng") or {}, device)
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
            loss = F.cross_entropy(logits.float(), y, weight=w_t, ignore_index=IGNORE_ID)
            if cfg.consistency > 0:
                loss = loss + cfg.consistency * js_consistency(*logits.float().chunk(2))
            if cfg.lovasz > 0:
                loss = loss + cfg.lovasz * lovasz_softmax(logits, y, IGNORE_ID, stride=2)
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
