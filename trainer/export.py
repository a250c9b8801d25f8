"""Export a checkpoint to ONNX (uint8 NHWC RGB in, uint8 class map out, normalisation and
argmax inside the graph), check it against PyTorch, and pack it into a .vsb blob."""
from __future__ import annotations

import datetime as _dt
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model_store import CARLA_CLASSES, ModelCard, TensorSpec, write
from model_store.palette import NUM_CLASSES
from model_store.util import one_line

from .data import MEAN, RARE_TEMPERATURE, STD
from .enet import ENet
from .optimize import channel_pad_as_conv
from .ort_session import ort_session

__all__ = ["Deployable", "export_onnx", "random_enet", "export_random", "check_equivalence", "build_card",
           "main"]


class Deployable(nn.Module):
    """uint8 [N, H, W, 3] RGB -> uint8 [N, H, W] class ids."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("inv_std", (1.0 / torch.tensor(STD)).view(1, 3, 1, 1))

    def forward(self, image):
        x = image.permute(0, 3, 1, 2).to(torch.float32)
        x = (x - self.mean) * self.inv_std
        return self.net(x).argmax(1).to(torch.uint8)


def export_onnx(net: nn.Module, size: int = 512, opset: int = 17) -> bytes:
    """ONNX bytes of Deployable(net) with a dynamic batch dimension; batch norm is folded
    into the convolutions by the exporter (eval mode)."""
    net = net.float().eval().to(memory_format=torch.contiguous_format)
    model = Deployable(net).eval()
    dummy = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    buf = io.BytesIO()
    with torch.no_grad():
        try:
            torch.onnx.export(model, (dummy,), buf, input_names=["image"], output_names=["classes"],
                              dynamic_axes={"image": {0: "N"}, "classes": {0: "N"}}, opset_version=opset,
                              do_constant_folding=True, dynamo=False)
        except TypeError:   # very old torch without the dynamo switch
            torch.onnx.export(model, (dummy,), buf, input_names=["image"], output_names=["classes"],
                              dynamic_axes={"image": {0: "N"}, "classes": {0: "N"}}, opset_version=opset,
                              do_constant_folding=True)
    return _static_output_dims(buf.getvalue(), size)


def _static_output_dims(onnx_bytes: bytes, size: int) -> bytes:
    """The exporter leaves the output's H and W symbolic; they are fixed (size x size)."""
    import onnx
    m = onnx.load_from_string(onnx_bytes)
    dims = m.graph.output[0].type.tensor_type.shape.dim
    dims[0].dim_param = "N"
    for d in dims[1:]:
        d.Clear()
        d.dim_value = size
    onnx.checker.check_model(m)
    return m.SerializeToString()


def random_enet(variant: str = "relu", seed: int = 0):
    """trainer.enet.ENet with its (random) initial weights, eval mode.  The batch-norm
    statistics are randomised too so that folding them is not a no-op."""
    torch.manual_seed(seed)
    net = ENet(NUM_CLASSES, variant=variant)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def export_random(variant: str = "relu", size: int = 512, seed: int = 0) -> bytes:
    return export_onnx(random_enet(variant, seed), size)


def check_equivalence(net: nn.Module, onnx_bytes: bytes, images: np.ndarray) -> float:
    """Share of pixels where ONNX Runtime and PyTorch (fp32) give the same class."""
    sess = ort_session(onnx_bytes)
    model = Deployable(net.float().eval())
    same = total = 0
    for i in range(len(images)):
        x = images[i:i + 1]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = sess.run(["classes"], {"image": x})[0]
        if got.shape != ref.shape or got.dtype != np.uint8:
            raise AssertionError(f"ONNX output {got.shape} {got.dtype}, expected {ref.shape} uint8")
        same += int((got == ref).sum())
        total += ref.size
    return same / total


def ort_fps(onnx_bytes: bytes, size: int = 512, seconds: float = 8.0, threads: int = 2) -> float:
    sess = ort_session(onnx_bytes, threads)
    x = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    for _ in range(3):
        sess.run(["classes"], {"image": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(["classes"], {"image": x})
        n += 1
    return n / (time.perf_counter() - t0)


def _iso(ts=None) -> str:
    t = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc) if ts else _dt.datetime.now(_dt.timezone.utc)
    return t.replace(microsecond=0).isoformat().replace("+00:00", "Z")


# training options recorded on the card when a run turned them on (0 / off: left out)
RECIPE_OPTIONS = ("rare_crops", "class_mix", "conditions", "geometry", "consistency", "lovasz")


def build_card(ck: dict, size: int, opset: int, metrics: dict, name: str = "carla-enet"):
    """A model_store.ModelCard filled from the checkpoint (training parameters, metrics)."""
    cfg, meta, state = ck["config"], ck.get("meta", {}), ck.get("state", {})
    tp = {k: cfg[k] for k in ("size", "load_size", "batch", "lr", "weight_decay", "scale_min", "scale_max",
                              "weight_c", "variant", "dropout", "ema", "val_fraction", "gap", "seed", "amp")}
    tp["val_at"] = cfg.get("val_at", "end")          # checkpoints before the option validated at the end
    # the recipe's options that this run turned on: a blob read on its own says how it was trained
    tp.update({k: cfg[k] for k in RECIPE_OPTIONS if cfg.get(k)})
    if cfg.get("init"):
        tp["init"] = Path(cfg["init"]).name         # the file's name only: a local path says nothing elsewhere
    tp.update(epochs=state.get("epoch"), steps=state.get("step"), train_seconds=round(state.get("elapsed", 0)),
              params=meta.get("params"), gmacs_512=round(meta.get("gmacs_512", 0), 4),
              train_frames=meta.get("train_frames"), val_frames=meta.get("val_frames"),
              data="CARLA (pohsu/Lyft-Challenge stream1, frames 0021-0499), time split",
              device=meta.get("device"), torch=meta.get("torch"))
    created = _iso()
    return ModelCard(
        name=name,
        description=f"ENet ({cfg['variant']}) from the paper's appendix, trained on CARLA street scenes, 13 classes",
        algorithm="ENet", created=created, modified=created, training_params=tp, classes=CARLA_CLASSES,
        scoring_function=("uint8 NHWC RGB image N x %d x %d x 3 -> cast to float, (x - mean) / std with "
                          "mean=%s std=%s (0..255 scale) -> ENet logits -> argmax over 13 classes -> "
                          "uint8 class map N x %d x %d") % (size, size, [round(float(v), 3) for v in MEAN],
                                                             [round(float(v), 3) for v in STD], size, size),
        inputs=(TensorSpec("image", "uint8", ("N", size, size, 3), "NHWC", "RGB"),),
        outputs=(TensorSpec("classes", "uint8", ("N", size, size), "NHW", None),),
        metrics=metrics, onnx_opset=opset)


def main(a) -> int:
    from .checkpoints import load_checkpoint
    chain_config = None
    if a.register or a.deploy:   # a bad chain variable is one line before any work
        from chain.config import ChainConfig, ConfigError
        try:
            chain_config = ChainConfig.from_env()
        except ConfigError as exc:
            print(f"error: {'; '.join(exc.problems)}", file=sys.stderr)
            return 2
    torch.set_num_threads(2)
    net, ck = load_checkpoint(a.checkpoint, use_ema=not a.no_ema)
    onnx_bytes = export_onnx(net, a.size, a.opset)
    print(f"exported ONNX: {len(onnx_bytes)} bytes, opset {a.opset}")
    if not a.plain_graph:
        # Exact rewrite that keeps ORT's NCHWc layout through the downsampling bottlenecks
        # (+10-15 % CPU FPS, docs/performance.md); the check below still compares with PyTorch.
        onnx_bytes = channel_pad_as_conv(onnx_bytes)
        print(f"rewrote the channel Pads as identity 1x1 convs: {len(onnx_bytes)} bytes")
    rng = np.random.default_rng(0)
    rand = rng.integers(0, 256, (2, a.size, a.size, 3), dtype=np.uint8)
    eq = {"random": check_equivalence(net, onnx_bytes, rand)}
    if a.check_data:
        from .data import load_folder
        d = load_folder(a.check_data, a.size)
        sel = np.linspace(0, len(d) - 1, 8).astype(int)
        eq["real"] = check_equivalence(net, onnx_bytes, d.images[sel])
    print("ONNX vs PyTorch identical pixels: " + ", ".join(f"{k} {100 * v:.4f}%" for k, v in eq.items()))
    if min(eq.values()) < 0.999:
        print("ERROR: ONNX and PyTorch disagree on more than 0.1% of pixels")
        return 1
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".onnx":
        out.write_bytes(onnx_bytes)
        print(f"wrote {out}")
        return 0
    report = json.loads(Path(a.metrics).read_text()) if a.metrics else None
    if report is not None:
        metrics = {k: report[k] for k in ("pixel_accuracy", "mean_iou", "mean_class_accuracy", "per_class",
                                          "without_hood", "split", "frames", "robustness") if k in report}
        metrics["evaluated_at"] = "label native resolution (800x600), prediction resized back with nearest"
        metrics["measured_with"] = report.get("model")
        if report.get("note"):      # the report says itself what its figures are (e.g. in-sample)
            metrics["note"] = report["note"]
        elif not ck.get("meta", {}).get("val_frames"):
            # A final fit on every frame has no held-out frames of its own: the figures are the
            # time-split estimate of the same recipe, and the card must say so.
            metrics["note"] = ("time-split estimate of the training recipe, measured with the model named in "
                               "measured_with; this blob was then trained on every frame with the same recipe")
    else:
        metrics = {k: v for k, v in ck.get("metrics", {}).items() if not isinstance(v, dict)}
    metrics = dict(metrics, onnx_equivalence={k: round(v, 6) for k, v in eq.items()})
    card = build_card(ck, a.size, a.opset, metrics, a.name)
    key = write(out, onnx_bytes, card)
    print(f"wrote {out} ({out.stat().st_size} bytes), key {key}")
    fps = None
    if a.fps:
        fps = {"ort_cpu_fps_batch1": round(ort_fps(onnx_bytes, a.size, seconds=a.fps), 2), "threads": 2}
        print(f"ONNX Runtime CPU: {fps['ort_cpu_fps_batch1']} FPS at {a.size}x{a.size}, batch 1, 2 threads")
    if a.record:
        write_record(a, ck, key, out, card, report, eq, fps)
    if a.register or a.deploy:
        from chain import connect
        from chain.errors import ChainError
        try:
            reg = connect(chain=a.chain, registry=a.registry, config=chain_config)
            reg.register(key, a.name, uri=str(out))
            print(f"registered {key} as {a.name}")
            if a.deploy:
                v = reg.deploy(a.deploy, key)
                print(f"deployed {a.deploy} -> {key} (version {v})")
        except ChainError as exc:
            print(f"error: {one_line(exc)} (the blob is written: {out}; register it with "
                  f"python -m chain register)", file=sys.stderr)
            return 1
    return 0


ANTI_OVERFITTING = [
    "time split: train on frames 0021-0393, validate on 0404-0499 (10-frame gap), never a random split",
    "random scale (x0.5-1.5 of the 512x512 frame, clipped to the frame), aspect jitter (+-15%) and "
    "random crops of 384x384 (the net is fully convolutional; it is evaluated on the whole 512x512 frame)",
    "horizontal flips",
    "colour jitter: hue +-8/180, saturation x0.6-1.4, brightness x0.65-1.35, contrast x0.75-1.25, "
    "Gaussian blur (30%), Gaussian pixel noise",
    "spatial dropout (Dropout2d) in every bottleneck as in ENet: 0.01 in stage 1/4/5, 0.1 in stages 2-3",
    "AdamW decoupled weight decay",
    "exponential moving average of the weights (the EMA weights are exported)",
    "best checkpoint chosen by time-split validation mIoU, not by training loss",
    "class weights 1/ln(c + p) limit the dominance of sky/road/building",
]


def _against_overfitting(cfg: dict) -> list[str]:
    """The fixed list, plus the options this run turned on."""
    out = list(ANTI_OVERFITTING)
    if cfg.get("rare_crops"):
        out.append(f"rare-class crops: {cfg['rare_crops']:.0%} of crops are centred on a pixel of a class "
                   f"drawn with probability ~ exp((1 - share) / {RARE_TEMPERATURE}), so fences, vegetation "
                   "and shop fronts are seen far more often than their share of the drive")
    if cfg.get("class_mix"):
        out.append(f"ClassMix: {cfg['class_mix']:.0%} of samples get half the classes of another sample of the "
                   "batch pasted over them, so classes appear against backgrounds this drive never shows")
    if cfg.get("conditions"):
        out.append(f"weather, light and sensor conditions: {cfg['conditions']:.0%} of crops get a random draw of "
                   "rain (with wet road and overcast sky), wet road, dusk, night, fog, overcast or a sensor fault "
                   "(trainer.conditions.training_condition: other parameters and draws than the CARLA-C benchmark)")
    if cfg.get("geometry"):
        out.append(f"camera geometry: {cfg['geometry']:.0%} of frames are seen by a random other camera (height, "
                   "pitch, field of view, lens, shift, 16:9 or 2:1, the ego hood cut or enlarged; "
                   "trainer.geometry.training_camera), the label moved exactly with the pixels")
    if cfg.get("consistency"):
        out.append(f"Jensen-Shannon consistency (weight {cfg['consistency']}) between each crop's clean and "
                   "conditioned predictions (AugMix)")
    if cfg.get("lovasz"):
        out.append(f"Lovász-softmax loss (weight {cfg['lovasz']}) beside the cross-entropy: a surrogate of each "
                   "class's IoU, so thin classes count by their IoU, not their pixels")
    if cfg.get("init"):
        out.append(f"fine-tuned from {cfg['init']} (its EMA weights) with a fresh optimiser and schedule")
    return out


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def write_record(a, ck, key, out, card, report, eq, fps) -> None:
    """The training record next to the blob (models/carla-enet.json)."""
    import sys
    cfg, meta, state = ck["config"], ck.get("meta", {}), ck.get("state", {})
    rec = {
        "blob": {"path": str(out), "key": key, "bytes": out.stat().st_size, "name": card.name},
        "model": {"architecture": "ENet, paper appendix (stages 0-6), batch norm after every conv",
                  "variant": cfg["variant"], "params": meta.get("params"),
                  "gmacs_512": round(meta.get("gmacs_512", 0), 4),
                  "gflops_512": round(2 * meta.get("gmacs_512", 0), 4),
                  "paper": {"params": "0.2M", "gflops": 1.88}},
        "training": {"command": " ".join(["python -m trainer"] + [x for x in meta.get("argv", [])[1:]]),
                     "config": cfg, "epochs": state.get("epoch"), "steps": state.get("step"),
                     "best_epoch": state.get("best_epoch"), "best_val_miou_during_training": state.get("best_miou"),
                     "wall_clock_minutes": round(state.get("elapsed", 0) / 60, 1),
                     "hardware": {"device": meta.get("device"), "cpu": _cpu_name(), "threads": meta.get("threads"),
                                  "cuda": meta.get("cuda"), "torch": meta.get("torch")},
                     "data": {"source": "../shared/data/carla (pohsu/Lyft-Challenge stream1 frames 0021-0499, "
                                        "800x600, one CARLA drive)",
                              "train_frames": meta.get("train_frames"), "train_range": meta.get("train_range"),
                              "val_frames": meta.get("val_frames"), "val_range": meta.get("val_range")},
                     "class_weights": meta.get("class_weights"),
                     "against_overfitting": _against_overfitting(cfg)},
        "export": {"command": "python -m trainer " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py")
                   else " ".join(sys.argv), "onnx_opset": a.opset,
                   "onnx_vs_pytorch_identical_pixels": {k: round(v, 6) for k, v in eq.items()},
                   "weights": "EMA" if not a.no_ema and ck.get("ema") is not None else "raw",
                   "graph_rewrites": [] if a.plain_graph else ["channel_pad_as_conv"]},
        "validation": report,
        "speed": fps,
        "paper": {"pixel_accuracy": 0.921, "road_accuracy": 0.942, "car_accuracy": 0.971},
    }
    if report is not None:
        pc = report["per_class"]
        rec["vs_paper"] = {"pixel_accuracy": [report["pixel_accuracy"], 0.921],
                           "road_accuracy": [pc["Road"]["accuracy"], 0.942],
                           "car_accuracy": [pc["Car"]["accuracy"], 0.971],
                           "car_accuracy_without_hood_rows": report.get("without_hood", {}).get("car_accuracy")}
    Path(a.record).write_text(json.dumps(rec, indent=1, default=str) + "\n")
    print(f"wrote {a.record}")
