"""ONNX Runtime on the CPU for the trainer's own checks (export against PyTorch, FPS,
evaluation of an exported model, the int8 gate, graph rewrites): one session recipe, so
every figure the trainer prints comes from the same settings."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

__all__ = ["ort_session", "run_model", "class_maps", "describe"]


def ort_session(onnx_bytes: bytes, threads: int = 2, providers=("CPUExecutionProvider",)):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, so, providers=list(providers))


def class_maps(sess, images: np.ndarray) -> np.ndarray:
    """The session's first output for each image, one at a time (batch 1, as the graphs
    are exported)."""
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: images[i:i + 1]})[0] for i in range(len(images))])


def run_model(onnx_bytes: bytes, images: np.ndarray, threads: int = 2) -> np.ndarray:
    """Class maps of ``images`` (one at a time) through ONNX Runtime CPU."""
    return class_maps(ort_session(onnx_bytes, threads), images)


def describe(sess) -> str:
    """What ran a graph, for a report: runtime, version and provider."""
    return f"onnxruntime {ort.__version__} {sess.get_providers()[0]}"
