"""Scoring backends: one module per runtime, one that chooses.

| module | what |
|---|---|
| ``base`` | ``Runner`` (``run``/``submit``, the device used, the key compiled for), ``ScoreError`` |
| ``ort`` | ONNX Runtime: providers (TensorRT > CUDA > CPU), TensorRT cache per key, worker thread |
| ``ov`` | OpenVINO: compiled from the verified bytes in memory, AsyncInferQueue, no model cache |
| ``choose`` | ``VERISEG_BACKEND=auto|openvino|onnxruntime`` -> a compiled ``Runner`` and why |
"""
from .base import Pending, Port, Runner, ScoreError, cpu_threads
from .choose import BACKENDS, compile_verified

__all__ = ["BACKENDS", "compile_verified", "Runner", "Pending", "Port", "ScoreError", "cpu_threads"]
