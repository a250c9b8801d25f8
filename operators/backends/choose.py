"""Which runtime scores: ``VERISEG_BACKEND`` and, for ``auto``, the measured preference.

auto: ONNX Runtime when one of its NVIDIA providers (TensorRT > CUDA) actually loads;
else OpenVINO when it is installed, on ``VERISEG_OPENVINO_DEVICE`` (``ov_devices``: an Intel
GPU when OpenVINO lists one, else the CPU; on a CPU 1.4x ONNX Runtime's FPS on the 512² ENet
with AVX2, 2.0x with AVX-512 VNNI, same graph and frames: ``python -m bench perf``;
at the card's fp32 its class maps equal ONNX Runtime's on the sample clip, ``bench precision``); else ONNX Runtime on the CPU.  ``VERISEG_PROVIDERS`` and ``VERISEG_REQUIRE_GPU`` are ONNX
Runtime settings: asking for CUDA/TensorRT or requiring a GPU means ONNX Runtime.
``VERISEG_PRECISION`` (:mod:`.precision`) reaches whichever runtime compiles: the card's
precision unless it says otherwise.
"""
from __future__ import annotations

from typing import Tuple

from . import ort, ov
from .base import Runner, ScoreError
from .precision import CHOICES

__all__ = ["BACKENDS", "compile_verified"]

BACKENDS = ("auto", "openvino", "onnxruntime")


def compile_verified(onnx: bytes, *, key: str, backend: str = "auto", providers: str = "auto",
                     require_gpu: bool = False, threads: int = 0, home=None,
                     hint: str = "throughput", spin: bool = False, ov_device: str = "auto",
                     precision: str = "card", arena_bytes: int = 0, batch: int = 1) -> Tuple[Runner, str]:
    """The verified ``onnx`` bytes compiled for blob ``key`` by the chosen runtime in
    ``precision`` (``VERISEG_PRECISION``), and why that runtime (one line for the log).
    ``batch``: the most frames a run will hold (ONNX Runtime's TensorRT engine is built
    for 1 to that many). Raises ScoreError (one line)."""
    backend = (backend or "auto").lower()
    if backend not in BACKENDS:
        raise ScoreError(f"unknown scoring backend {backend!r}: expected {', '.join(BACKENDS)}")
    precision = (precision or "card").lower()
    if precision not in CHOICES:
        raise ScoreError(f"unknown precision {precision!r}: expected {', '.join(CHOICES)}")
    ort_kw = dict(key=key, providers=providers, require_gpu=require_gpu, threads=threads, home=home, spin=spin,
                  precision=precision, arena_bytes=arena_bytes, max_batch=batch)
    ov_kw = dict(key=key, threads=threads, hint=hint, device=ov_device, precision=precision)
    if backend == "onnxruntime":
        return ort.build(onnx, **ort_kw), "VERISEG_BACKEND=onnxruntime"
    if backend == "openvino":
        if not ov.available():
            raise ScoreError("VERISEG_BACKEND=openvino but OpenVINO is not installed: pip install openvino, "
                             "or set VERISEG_BACKEND=auto")
        return ov.build(onnx, **ov_kw), "VERISEG_BACKEND=openvino"
    if require_gpu or providers in ("cuda", "tensorrt"):
        why = "VERISEG_REQUIRE_GPU=1" if require_gpu else f"VERISEG_PROVIDERS={providers}"
        return ort.build(onnx, **ort_kw), f"auto: {why} asks for ONNX Runtime's GPU providers"
    if ort.gpu_provider_available(providers):
        try:
            r = ort.build(onnx, **ort_kw)
        except ScoreError as e:   # the CPU it fell back to cannot run the precision asked for
            if not ov.available():
                raise
            r, no_gpu = None, f"ONNX Runtime refused it ({e})"
        if r is not None and r.device in ort.GPU_PROVIDERS:
            return r, f"auto: ONNX Runtime's {r.device} loaded (NVIDIA GPU)"
        if r is not None:
            no_gpu = f"ONNX Runtime's GPU providers did not load (it fell back to {r.device})"
            if not ov.available():
                return r, f"auto: {no_gpu}; OpenVINO is not installed"
            r.close()
    else:
        no_gpu = ("VERISEG_PROVIDERS=cpu" if providers == "cpu" else
                  "no NVIDIA GPU provider here (no driver, or a CPU-only ONNX Runtime)")
    if not ov.available():
        return ort.build(onnx, **dict(ort_kw, providers="cpu")), \
            f"auto: {no_gpu}; OpenVINO is not installed (pip install openvino: 1.4-2x the FPS on a CPU)"
    try:
        return ov.build(onnx, **ov_kw), \
            f"auto: {no_gpu}; OpenVINO {ov.version()} is installed (measured 1.4-2x ONNX Runtime on a CPU)"
    except ScoreError as e:
        return ort.build(onnx, **dict(ort_kw, providers="cpu")), \
            f"auto: {no_gpu}; OpenVINO refused this model ({e}), so ONNX Runtime on the CPU"
