"""Deployment-time optimisations of an exported ENet (used by ``python -m bench perf``).

Nothing here changes the exported graph's contract (uint8 NHWC RGB in, uint8 class map
out, argmax inside the graph); it only offers faster variants of the same model:

- :func:`op_counts` / :func:`batchnorm_nodes`: check that the exporter folded every batch
  norm into its convolution (``export_onnx`` exports in eval mode with constant folding);
- :func:`ort_optimized`: the model as ONNX Runtime rewrites it (fusions), saved offline so
  a device skips the optimiser at start (``basic``/``extended`` only: the ``all`` level adds
  layout transforms specific to the CPU it ran on);
- :func:`quantize_int8`: static int8 QDQ quantisation with calibration on real frames
  (``onnxruntime.quantization``), per-channel weights by default;
- :func:`pixel_agreement` / :func:`pixel_accuracy`: what a variant changes in the output.

CLI::

    python -m trainer.optimize MODEL.onnx --int8 --calib ../shared/data/carla -o model-int8.onnx
    python -m trainer.optimize MODEL.onnx --pad-as-conv -o model-fast.onnx   # exact, ~8% less CPU
    python -m trainer.optimize MODEL.onnx --check        # batch-norm / op census
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from .ort_session import run_model

__all__ = ["op_counts", "batchnorm_nodes", "ort_optimized", "channel_pad_as_conv",
           "convtranspose_as_conv",
           "quantize_int8", "calibration_frames", "pixel_agreement", "pixel_accuracy"]


def op_counts(onnx_bytes: bytes) -> dict:
    import onnx
    m = onnx.load_from_string(onnx_bytes)
    return dict(collections.Counter(n.op_type for n in m.graph.node))


def batchnorm_nodes(onnx_bytes: bytes) -> int:
    return op_counts(onnx_bytes).get("BatchNormalization", 0)


def ort_optimized(onnx_bytes: bytes, level: str = "extended") -> bytes:
    """The graph after ONNX Runtime's optimiser at ``level`` (basic | extended | all)."""
    import onnxruntime as ort
    lv = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = lv
        so.optimized_model_filepath = os.path.join(tmp, "opt.onnx")
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        return Path(so.optimized_model_filepath).read_bytes()


def _used_opsets_only(m):
    """ORT saves every domain it knows in opset_import; keep the ones the nodes use."""
    used = {n.domain for n in m.graph.node} | {""}
    keep = [o for o in m.opset_import if o.domain in used]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    return m


def channel_pad_as_conv(onnx_bytes: bytes, check: bool = True) -> bytes:
    """The same model with every zero channel padding (``Pad`` of the downsampling
    bottlenecks' max-pool branch: C -> C' channels, zeros appended) written as a 1x1
    ``Conv`` with an identity weight matrix, on the graph after ORT's basic (portable)
    optimisations.

    Why: ORT's fastest CPU layout (NCHWc, level ``all``) has no ``Pad``; that one op sends
    every residual ``Add`` + ``Relu`` of the following bottlenecks back to plain NCHW, with a
    reorder before and after each (the ORT profile: ~25 reorders, unfused Adds).  A 1x1
    identity conv keeps the chain in NCHWc, so ORT fuses the ``Add`` and ``Relu`` into the
    convolutions.  The result is exact (x * 1.0 + 0.0 in fp32); ``check`` compares the class
    maps with the original on random frames."""
    import onnx
    from onnx import helper, numpy_helper
    m = onnx.load_from_string(ort_optimized(onnx_bytes, "basic"))
    m = onnx.shape_inference.infer_shapes(m)
    shapes = {vi.name: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
    inits = {i.name: i for i in m.graph.initializer}
    nodes = list(m.graph.node)
    done = 0
    for idx, n in enumerate(nodes):
        if n.op_type != "Pad" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        mode = next((a.s for a in n.attribute if a.name == "mode"), b"constant")
        if mode != b"constant" or (len(n.input) > 2 and n.input[2] and
                                   (n.input[2] not in inits or numpy_helper.to_array(inits[n.input[2]]).any())):
            continue
        pads = numpy_helper.to_array(inits[n.input[1]]).astype(int).tolist()
        si = shapes.get(n.input[0])
        if len(pads) != 8 or not si or len(si) != 4 or not isinstance(si[1], int):
            continue
        # only channels appended at the end: begins all 0, ends (0, P, 0, 0)
        if any(pads[:4]) or pads[4] or pads[6] or pads[7] or pads[5] <= 0:
            continue
        cin = si[1]
        cout = cin + pads[5]
        w = np.zeros((cout, cin, 1, 1), np.float32)
        w[np.arange(cin), np.arange(cin)] = 1.0
        wname = n.name + "_identity_w"
        m.graph.initializer.append(numpy_helper.from_array(w, wname))
        conv = helper.make_node("Conv", [n.input[0], wname], list(n.output), name=n.name + "_as_conv",
                                kernel_shape=[1, 1])
        m.graph.node.remove(n)
        m.graph.node.insert(idx, conv)
        done += 1
    out = _used_opsets_only(m).SerializeToString()
    if check:
        _check_same_class_maps(onnx_bytes, out, m, "channel_pad_as_conv", 1e-4)
    return out


def _check_same_class_maps(before: bytes, after: bytes, m, rewrite: str, tolerance: float) -> None:
    """A rewrite must not change the class maps on random frames (beyond float rounding)."""
    rng = np.random.default_rng(0)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    h, w_ = dims[1].dim_value or 64, dims[2].dim_value or 64
    x = rng.integers(0, 256, (2, h, w_, 3), dtype=np.uint8)
    a, b = run_model(before, x), run_model(after, x)
    if (a != b).mean() > tolerance:
        raise AssertionError(f"{rewrite} changed {100 * (a != b).mean():.3f}% of the pixels")


def convtranspose_as_conv(onnx_bytes: bytes, check: bool = True) -> bytes:
    """The same model with every 3x3 stride-2 transposed convolution (padding 1, output
    padding 1: ENet's upsampling bottlenecks) written as a 2x2 ``Conv`` producing 4x the
    channels followed by ``DepthToSpace`` (the sub-pixel form), on the graph after ORT's
    basic optimisations (batch norm already folded into the transposed conv).

    y[o, 2m+a, 2n+b] = sum_c x[c, m+di, n+dj] * W[c, o, ky, kx] with (di, ky) in {(0, 1)}
    for a = 0 and {(0, 2), (1, 0)} for a = 1 (same for columns): a 2x2 kernel over x padded
    by one row/column at the end, output channel o*4 + a*2 + b (DepthToSpace CRD).  ORT runs
    ``ConvTranspose`` as GEMM + col2im outside its NCHWc kernels; the ``Conv`` is NCHWc.
    Exact up to fp32 summation order; ``check`` compares the class maps."""
    import onnx
    from onnx import helper, numpy_helper
    m = onnx.load_from_string(ort_optimized(onnx_bytes, "basic"))
    inits = {i.name: i for i in m.graph.initializer}
    tap = {0: [(0, 1)], 1: [(0, 2), (1, 0)]}
    done = 0
    for n in list(m.graph.node):
        if n.op_type != "ConvTranspose" or n.input[1] not in inits:
            continue
        at = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)   # [Cin, Cout, 3, 3]
        if (w.shape[2:] != (3, 3) or list(at.get("strides", [1, 1])) != [2, 2] or at.get("group", 1) != 1
                or list(at.get("pads", [0, 0, 0, 0])) != [1, 1, 1, 1]
                or list(at.get("output_padding", [0, 0])) != [1, 1]
                or list(at.get("dilations", [1, 1])) != [1, 1] or at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            continue
        cin, cout = w.shape[:2]
        k = np.zeros((cout, 2, 2, cin, 2, 2), np.float32)      # [o, a, b, c, di, dj]
        for a_ in (0, 1):
            for b_ in (0, 1):
                for di, ky in tap[a_]:
                    for dj, kx in tap[b_]:
                        k[:, a_, b_, :, di, dj] = w[:, :, ky, kx].T
        k = k.reshape(cout * 4, cin, 2, 2)
        ins = [n.input[0], n.name + "_subpixel_w"]
        m.graph.initializer.append(numpy_helper.from_array(k, ins[1]))
        if len(n.input) > 2 and n.input[2]:
            bias = numpy_helper.to_array(inits[n.input[2]]).astype(np.float32)
            ins.append(n.name + "_subpixel_b")
            m.graph.initializer.append(numpy_helper.from_array(np.repeat(bias, 4), ins[2]))
        mid = n.output[0] + "_subpixel"
        idx = list(m.graph.node).index(n)
        conv = helper.make_node("Conv", ins, [mid], name=n.name + "_subpixel", kernel_shape=[2, 2], pads=[0, 0, 1, 1])
        d2s = helper.make_node("DepthToSpace", [mid], list(n.output), name=n.name + "_d2s", blocksize=2, mode="CRD")
        m.graph.node.remove(n)
        m.graph.node.insert(idx, d2s)
        m.graph.node.insert(idx, conv)
        done += 1
    out = _used_opsets_only(m).SerializeToString()
    if check and done:
        _check_same_class_maps(onnx_bytes, out, m, "convtranspose_as_conv", 1e-3)
    return out


def calibration_frames(root, size: int = 512, n: int = 50, val_fraction: float = 0.2, gap: int = 10):
    """(calibration images, validation images, validation labels) from a CARLA folder:
    ``n`` frames spread over the training part (first 80% minus the gap) for calibration,
    the time-split validation part (last 20%) for checking.  Images uint8 NHWC RGB."""
    from .data import load_folder, time_split
    d = load_folder(root, size)
    tr, va = time_split(len(d), val_fraction, gap)
    sel = np.linspace(tr[0], tr[-1], min(n, len(tr))).astype(int)
    return d.images[sel], d.images[va], d.labels[va]


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over preloaded frames."""

    def __init__(self, name: str, images: np.ndarray):
        self.name, self.images, self.i = name, images, 0

    def get_next(self):
        if self.i >= len(self.images):
            return None
        x = self.images[self.i:self.i + 1]
        self.i += 1
        return {self.name: x}

    def rewind(self):
        self.i = 0


def quantize_int8(onnx_bytes: bytes, calib: np.ndarray, *, per_channel: bool = True,
                  method: str = "minmax", activation: str = "u8", exclude_ops: Sequence[str] = (),
                  preprocess: bool = True, op_types: Sequence[str] = ("Conv", "ConvTranspose", "Add", "MaxPool",
                                                                        "Concat", "Relu", "Resize", "Pad")) -> bytes:
    """Static int8 QDQ model calibrated on ``calib`` (uint8 NHWC frames).

    Weights int8 (symmetric, per channel), activations uint8 (asymmetric) or int8: the
    recommended CPU setting with VNNI.  ``exclude_ops`` keeps some op types in float (e.g.
    the final classifier conv) when accuracy suffers.  The input normalisation (Sub, Mul) is
    left in float: quantised, its QLinearMul over the full-size image cost ~10 ms a frame."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Reader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "fp32.onnx")
        Path(src).write_bytes(onnx_bytes)
        if preprocess:
            pre = os.path.join(tmp, "pre.onnx")
            quant_pre_process(src, pre, skip_symbolic_shape=True)
            src = pre
        m = onnx.load(src)
        exclude = [n.name for n in m.graph.node if n.op_type in set(exclude_ops)]
        out = os.path.join(tmp, "int8.onnx")
        quantize_static(
            src, out, Reader(m.graph.input[0].name, calib), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=per_channel, reduce_range=False,
            activation_type=QuantType.QUInt8 if activation == "u8" else QuantType.QInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=exclude or None,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
            extra_options={"ActivationSymmetric": activation != "u8", "WeightSymmetric": True})
        return Path(out).read_bytes()


def pixel_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def pixel_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((pred == labels).mean())


def main(argv: Optional[Iterable[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.optimize", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="exported ONNX (uint8 NHWC in, uint8 class map out)")
    p.add_argument("--check", action="store_true", help="print the op census (batch norms must be 0)")
    p.add_argument("--int8", action="store_true", help="static int8 QDQ quantisation")
    p.add_argument("--calib", default="../shared/data/carla", help="CARLA folder for calibration")
    p.add_argument("--calib-n", type=int, default=50)
    p.add_argument("--per-tensor", action="store_true")
    p.add_argument("--pad-as-conv", action="store_true",
                   help="channel padding as 1x1 identity conv (exact; keeps ORT's NCHWc layout)")
    p.add_argument("--ort-level", choices=("basic", "extended", "all"), help="save ORT's optimised graph")
    p.add_argument("-o", "--output")
    a = p.parse_args(list(argv) if argv is not None else None)
    onnx_bytes = Path(a.model).read_bytes()
    import onnx
    size = onnx.load_from_string(onnx_bytes).graph.input[0].type.tensor_type.shape.dim[1].dim_value or 512
    if a.check or not (a.int8 or a.ort_level or a.pad_as_conv):
        ops = op_counts(onnx_bytes)
        print(" ".join(f"{k}:{v}" for k, v in sorted(ops.items())))
        print(f"BatchNormalization nodes: {ops.get('BatchNormalization', 0)}")
        return 1 if ops.get("BatchNormalization", 0) else 0
    out = onnx_bytes
    if a.pad_as_conv:
        out = channel_pad_as_conv(out)
    if a.int8:
        calib, val, lab = calibration_frames(a.calib, size, a.calib_n)
        fp32 = out
        out = quantize_int8(fp32, calib, per_channel=not a.per_tensor)
        ref, got = run_model(fp32, val), run_model(out, val)
        print(f"int8 vs fp32 identical pixels on {len(val)} validation frames: {100 * pixel_agreement(ref, got):.2f}%;"
              f" pixel accuracy fp32 {pixel_accuracy(ref, lab):.4f} int8 {pixel_accuracy(got, lab):.4f}")
    if a.ort_level:
        out = ort_optimized(out, a.ort_level)
    if not a.output:
        print("error: -o/--output is required", file=sys.stderr)
        return 2
    Path(a.output).write_bytes(out)
    print(f"wrote {a.output} ({len(out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
