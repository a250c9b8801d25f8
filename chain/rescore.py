"""Re-execution: does the registered model give the anchored mask on the retained frame?

A v3 leaf binds the decoded frame's digest and the execution profile, so anyone holding the
frame can re-run the model and compare. :func:`rescore_frame` takes a proven frame (its
Verification and class map), the model's blob and the retained frame, and:

1. verifies the blob against the anchored key (``model_store.load``) and the retained
   frame against the leaf's frame digest (``frame_mismatch`` otherwise);
2. runs the card's preprocessing (``model_store.drive``, the flow's own reference) and the
   graph on the reference backend, ONNX Runtime on the CPU in the graph's own types;
3. compares the anchored mask pixel by pixel with the reference:

   - anchored with the reference profile (onnxruntime, CPU, fp32): every pixel identical;
   - anchored with another profile (OpenVINO, a GPU, bf16, fp16): a pixel that differs
     passes when its anchored class scores within ``tolerance`` of the top score, the
     scores being the tensor the graph's final ArgMax/TopK reads (exposed as an extra graph
     output, in memory); a graph without one (it outputs ids its own way) is compared
     exactly;
   - any other pixel is a mismatch: ``rescore_mismatch``.

The tolerances (logit units, the gap ``top score - anchored class's score``) are in
:data:`TOLERANCES`; docs/security.md says how they were chosen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np
import onnx
import onnxruntime as ort

import model_store
from model_store.blob_key import BlobKey
from model_store.drive import picture_size, postprocess, to_frame

from . import errors
from .frame_digest import frame_digest
from .profile import ExecutionProfile
from .retained_frame import read_frame
from .values import parse_key

__all__ = ["TOLERANCES", "Rescore", "reference_profile", "rescore_frame", "disagreement_png"]

#: logit gap a differing pixel may have under another profile, by what runs the numbers:
#: the blob's quantised (int8) layers, else the profile's precision. Measured on the
#: sample clip (docs/security.md), with a margin above the largest gap seen.
TOLERANCES = {"fp32": 0.05, "bf16": 1.0, "fp16": 1.0, "int8": 1.5}

# nodes between the arg-max and the graph output that keep each pixel's id as it is
_PASS_THROUGH = {"Cast", "Squeeze", "Unsqueeze", "Reshape", "Identity", "Flatten"}
_QUANTISED = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
              "MatMulInteger", "DynamicQuantizeLinear"}


def reference_profile() -> ExecutionProfile:
    """The profile whose masks re-execution reproduces pixel for pixel."""
    return ExecutionProfile("onnxruntime", "CPU", "fp32", ort.__version__)


def _same_numerics(a: ExecutionProfile, b: ExecutionProfile) -> bool:
    # the runtime's version is stated, not compared: ORT's CPU kernels are stable across
    # releases for these graphs, and an auditor's ORT need not be the device's
    return (a.backend, a.device, a.precision) == (b.backend, b.device, b.precision)


@dataclass
class Rescore:
    """What re-running the model on one frame showed."""

    stream: str
    seq: int
    model_key: BlobKey
    profile: ExecutionProfile        # the anchored mask's
    reference: ExecutionProfile
    compared: int                    # pixels of the anchored mask
    identical: int                   # the same class as the reference
    within_tolerance: int            # another class, within `tolerance` of the top score
    tolerance: Optional[float]       # None: compared exactly
    max_gap: float = 0.0             # largest score gap of a differing pixel (0 when exact)
    disagree: np.ndarray = field(default=None, repr=False)   # bool H x W: pixels that differ
    exact_reason: str = ""           # why another profile was compared exactly

    @property
    def mismatched(self) -> int:
        return self.compared - self.identical - self.within_tolerance

    @property
    def ok(self) -> bool:
        return self.mismatched == 0

    def as_dict(self) -> dict:
        return {"stream": self.stream, "seq": self.seq, "model_key": self.model_key,
                "profile": self.profile.as_dict(), "reference": self.reference.as_dict(),
                "compared": self.compared, "identical": self.identical,
                "within_tolerance": self.within_tolerance, "mismatched": self.mismatched,
                "tolerance": self.tolerance, "max_gap": round(self.max_gap, 6)}

    def line(self) -> str:
        how = (f"within {self.tolerance:g} of the top score" if self.tolerance is not None
               else f"exact: {self.exact_reason}" if self.exact_reason else "exact")
        return (f"rescored: {self.compared} pixels compared, {self.identical} identical, "
                f"{self.within_tolerance} within tolerance ({how}; anchored with {self.profile}, "
                f"re-run with {self.reference})")

    def check(self) -> "Rescore":
        """Self, or AnchorVerificationFailed (check ``rescore_mismatch``)."""
        if not self.ok:
            what = (f"a class scoring more than {self.tolerance:g} below the top class (largest gap "
                    f"{self.max_gap:.4g})" if self.tolerance is not None else "another class than it gives")
            raise errors.AnchorVerificationFailed(
                f"rescore mismatch: {self.mismatched} of {self.compared} pixels disagree: the "
                f"anchored mask of stream '{self.stream}' seq {self.seq} gives them {what} when model "
                f"{self.model_key.short}… is re-run on the retained frame ({self.identical} identical, "
                f"{self.within_tolerance} within tolerance; anchored with {self.profile}); the "
                "device did not anchor what the model computes", check="rescore_mismatch")
        return self


def _unavailable(msg: str) -> errors.AnchorVerificationFailed:
    return errors.AnchorVerificationFailed(f"rescore unavailable: {msg}", check="rescore_unavailable")


def _scores_graph(model: onnx.ModelProto, output: str):
    """(graph bytes with the arg-max's scores as an extra output, their name, class axis),
    or None when ``output`` is not an ArgMax/TopK's result (through id-preserving nodes)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(output)
    while node is not None and node.op_type in _PASS_THROUGH:
        node = producers.get(node.input[0])
    if node is None or node.op_type not in ("ArgMax", "TopK"):
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "TopK" and not attrs.get("largest", 1):
        return None
    axis = int(attrs.get("axis", 0 if node.op_type == "ArgMax" else -1))
    scores = node.input[0]
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.input)
             + list(inferred.graph.output)}
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(onnx.helper.make_tensor_value_info(
        scores, types.get(scores, onnx.TensorProto.FLOAT), None))
    return exposed.SerializeToString(), scores, axis


def _session(onnx_bytes: bytes, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    # the flow's own ONNX Runtime settings (operators.backends.ort), CPU only
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=so, providers=["CPUExecutionProvider"])


def _bgr(image: np.ndarray, colour: str) -> np.ndarray:
    """The decoded frame in the order model_store.drive takes (BGR; per-channel resizing
    makes this the flow's own preprocessing whatever order it decoded in)."""
    if colour == "RGB":
        return np.ascontiguousarray(image[..., ::-1])
    if colour == "GRAY":
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)   # what the sources do with gray frames
    return image


def rescore_frame(v, class_map, blob: str | os.PathLike, frame: str | os.PathLike, *,
                  threads: int = 2) -> Rescore:
    """Re-run the model of a proven frame (``v``: chain.anchor_verify.Verification of a v3
    leaf; ``class_map``: its proven mask) on the retained ``frame`` file and compare; the
    caller decides what a mismatch means (:meth:`Rescore.check`). Raises
    AnchorVerificationFailed whose ``.check`` is rescore_unavailable, frame_missing or
    frame_mismatch."""
    if v.frame is None or v.profile is None:
        raise _unavailable(f"the leaf of stream '{v.stream}' seq {v.seq} binds no frame digest "
                           "(a v1/v2 leaf, written before frames were bound): nothing ties a "
                           "frame to the mask")
    try:
        profile = ExecutionProfile.from_dict(v.profile)
    except ValueError as e:
        raise _unavailable(f"the anchored profile is unreadable ({e})") from None
    key = parse_key(v.model_key)
    try:
        card, onnx_bytes = model_store.load(blob, expected_key=key)
        spec = card.drive_spec()
    except (model_store.errors.BlobError, OSError) as e:
        raise _unavailable(f"the blob {blob} is not model {key.short}… or cannot be "
                           f"driven ({e})") from None
    image, colour = read_frame(frame)
    got = frame_digest(image, colour)
    if got.hex() != v.frame:
        raise errors.AnchorVerificationFailed(
            f"frame mismatch: {frame} hashes to {got.hex()[:16]}…, the anchored leaf of stream "
            f"'{v.stream}' seq {v.seq} binds frame {v.frame[:16]}…; this is not the frame the "
            "device scored", check="frame_mismatch")

    bgr = _bgr(image, colour)
    x = model_store.preprocess(bgr, spec)
    picture = picture_size(bgr.shape[:2], spec)
    anchored = np.asarray(class_map)
    model = onnx.load_from_string(onnx_bytes)
    # one run gives the ids and, when the graph ends in an arg-max, the scores it read
    exposed = _scores_graph(model, spec.output_name)
    graph, names = (exposed[0], [spec.output_name, exposed[1]]) if exposed else (onnx_bytes, [spec.output_name])
    try:
        outputs = _session(graph, threads).run(names, {spec.input_name: x})
    except Exception as e:  # noqa: BLE001 - ORT raises several types
        raise _unavailable(f"ONNX Runtime cannot run model {key.short}…: {e}") from None
    y = outputs[0]
    ids = postprocess(y, spec)   # [1, h, w] at the output's resolution
    # which output pixel each mask pixel is: the flow's own path to the mask (the picture
    # size, then the frame's when VERISEG_MASK_SIZE=frame)
    h, w = ids.shape[1:]
    index = to_frame(np.arange(h * w, dtype=np.int32).reshape(1, h, w), spec, picture)[0]
    if anchored.shape != index.shape and anchored.shape == bgr.shape[:2]:
        index = cv2.resize(index, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_NEAREST)
    if anchored.shape != index.shape:
        raise errors.AnchorVerificationFailed(
            f"rescore mismatch: the anchored mask is {anchored.shape[1]}x{anchored.shape[0]}, the "
            f"model gives {index.shape[1]}x{index.shape[0]} (or the frame's "
            f"{bgr.shape[1]}x{bgr.shape[0]}) for this frame", check="rescore_mismatch")
    reference = ids[0].ravel()[index]
    disagree = anchored != reference
    result = Rescore(v.stream, v.seq, key, profile, reference_profile(), int(anchored.size),
                     int(anchored.size - disagree.sum()), 0, None, 0.0, disagree)
    if not disagree.any() or _same_numerics(profile, result.reference):
        return result
    kind = "int8" if any(n.op_type in _QUANTISED for n in model.graph.node) else profile.precision
    if exposed is None:
        result.exact_reason = "the graph's output is not an arg-max over scores"
        return result
    scores, axis = outputs[1], exposed[2]
    scores = np.moveaxis(scores, axis, -1)[0].astype(np.float32)   # h x w x classes
    scores = scores.reshape(-1, scores.shape[-1])[index[disagree]]
    picked = anchored[disagree].astype(np.int64)
    valid = picked < scores.shape[1]
    gap = np.full(picked.shape, np.inf, np.float32)
    gap[valid] = scores.max(axis=1)[valid] - scores[valid, picked[valid]]
    result.tolerance = TOLERANCES[kind]
    result.within_tolerance = int((gap <= result.tolerance).sum())
    result.max_gap = float(gap.max()) if gap.size else 0.0
    return result


def disagreement_png(frame: np.ndarray, colour: str, r: Rescore) -> bytes:
    """The retained frame (dimmed, at the mask's size) with the pixels whose anchored
    class differs from the re-run's in red (PNG bytes)."""
    bgr = _bgr(frame, colour)
    h, w = r.disagree.shape
    base = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA) if bgr.shape[:2] != (h, w) else bgr
    out = (base.astype(np.uint16) * 2 // 5).astype(np.uint8)
    out[r.disagree] = (0, 0, 255)
    ok, buf = cv2.imencode(".png", out)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()

