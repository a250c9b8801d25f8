"""Export a checkpoint to ONNX (uint8 NHWC RGB in, uint8 class map out, normalisation and
argmax inside the graph), check it against PyTorch, and pack it into a .vsb blob."""
from __future__ import annotations

import datetime as _dt
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import MEAN, STD
from .palette import CLASS_NAMES, NUM_CLASSES

__all__ = ["Deployable", "export_onnx", "check_equivalence", "ort_session", "build_card", "main"]


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
    return buf.getvalue()


def ort_session(onnx_bytes: bytes, threads: int = 2, providers=("CPUExecutionProvider",)):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, so, providers=list(providers))


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


def build_card(ck: dict, size: int, opset: int, metrics: dict, name: str = "carla-enet"):
    """A model_store.ModelCard filled from the checkpoint (training parameters, metrics)."""
    from model_store import CARLA_CLASSES, ModelCard, TensorSpec
    cfg, meta, state = ck["config"], ck.get("meta", {}), ck.get("state", {})
    tp = {k: cfg[k] for k in ("size", "load_size", "batch", "lr", "weight_decay", "scale_min", "scale_max",
                              "weight_c", "variant", "dropout", "ema", "val_fraction", "gap", "seed", "amp")}
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
    from .train import load_checkpoint
    torch.set_num_threads(2)
    net, ck = load_checkpoint(a.checkpoint, use_ema=not a.no_ema)
    onnx_bytes = export_onnx(net, a.size, a.opset)
    print(f"exported ONNX: {len(onnx_bytes)} bytes, opset {a.opset}")
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
    metrics = json.loads(Path(a.metrics).read_text()) if a.metrics else {
        k: v for k, v in ck.get("metrics", {}).items() if not isinstance(v, dict)}
    metrics = dict(metrics, onnx_equivalence={k: round(v, 6) for k, v in eq.items()})
    from model_store import write
    card = build_card(ck, a.size, a.opset, metrics, a.name)
    key = write(out, onnx_bytes, card)
    print(f"wrote {out} ({out.stat().st_size} bytes), key {key}")
    if a.register or a.deploy:
        from chain import connect
        reg = connect(chain=a.chain, registry=a.registry)
        reg.register(key, a.name, uri=str(out))
        print(f"registered {key} as {a.name}")
        if a.deploy:
            v = reg.deploy(a.deploy, key)
            print(f"deployed {a.deploy} -> {key} (version {v})")
    return 0
