"""What a checkpoint holds beside the weights and how it comes back: the net built from its
config (``load_checkpoint``), the EMA of the weights and the random state of a resumed run."""
from __future__ import annotations

import torch

from .config import TrainConfig
from .enet import ENet
from model_store.palette import NUM_CLASSES

__all__ = ["build_model", "load_checkpoint"]


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


def _rng_state(device: torch.device) -> dict:
    st = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def _restore_rng_state(rng_state: dict, device: torch.device) -> None:
    # map_location moved the saved states to the device; both setters take CPU tensors
    if "torch" in rng_state:
        torch.set_rng_state(rng_state["torch"].cpu())
    if "cuda" in rng_state and device.type == "cuda":
        torch.cuda.set_rng_state(rng_state["cuda"].cpu())   # dropout's stream on the GPU
