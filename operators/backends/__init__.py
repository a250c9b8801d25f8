"""Scoring backends: one module per runtime, one that chooses.

| module | what |
|---|---|
| ``base`` | ``Runner`` (``run``/``submit``, the device used, the key compiled for), ``ScoreError`` |
| ``ort`` | ONNX Runtime: providers (TensorRT > CUDA > CPU), TensorRT cache per key, worker thread |
| ``ov`` | OpenVINO: compiled from the verified bytes in memory, precision pinned, a worker per request, no model cache |
| ``precision`` | ``VERISEG_PRECISION``: the card's precision (its float weights') unless told otherwise |
| ``choose`` | ``VERISEG_BACKEND=auto|openvino|onnxruntime`` -> a compiled ``Runner`` and why |
"""
from .base import Pending, Port, Runner, ScoreError, cpu_threads
from .choose import BACKENDS, compile_verified

__all__ = ["BACKENDS", "compile_verified", "preload", "Runner", "Pending", "Port", "ScoreError", "cpu_threads"]


def preload() -> None:
    """Load the runtimes' libraries (those installed) now.  Called before GStreamer loads its
    plugins: when ONNX Runtime or OpenVINO came after them, OpenVINO's first compile aborted
    the process (SIGABRT/SIGSEGV, "dlSym cannot locate method 'create_extensions'";
    OpenVINO 2026.4, ONNX Runtime 1.31, the distribution's GStreamer 1.x)."""
    import importlib
    for name in ("openvino", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
