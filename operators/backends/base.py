"""What every scoring backend offers the score stage: a compiled model that runs a batch.

A :class:`Runner` is built from the ONNX bytes that ``model_store`` verified (never from a
path) and answers ``run(x) -> y`` with ONNX Runtime's contract: ``x`` the uint8 NHWC batch,
``y`` the graph's first output as a numpy array.  ``submit(x)`` starts the same run without
waiting; :meth:`Pending.result` returns ``(y, run_ms)``.  ``depth`` is how many runs the
score stage keeps in flight per stream so that its own work (stacking, emitting, the
revocation check) overlaps inference; results are always collected in submission order.
``profile`` is the :class:`chain.profile.ExecutionProfile` of what actually runs (backend,
device, precision, runtime version): every results line states it.
"""
from __future__ import annotations

import os
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from chain.profile import ExecutionProfile
from model_store.graph import ORT_TYPES

__all__ = ["ScoreError", "Port", "Pending", "FuturePending", "Runner", "cpu_threads", "RUN_TIMEOUT_S"]

# the longest a run may take before the score stage gives up on it (a hung device); a
# run that fails is reported as soon as the runtime raises
RUN_TIMEOUT_S = 120.0


# ONNX Runtime's spelling of a tensor type -> numpy's dtype name ('tensor(float)' -> 'float32')
_CARD_DTYPES = {ort: dtype for dtype, ort in ORT_TYPES.items() if dtype != "bfloat16"}


class ScoreError(RuntimeError):
    """A model that cannot be scored here (one line)."""


def cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Port:
    """A graph input or output as the runtime reports it, spelt as ONNX Runtime does
    (``type`` 'tensor(uint8)', ``shape`` ints or names), so one card check serves all."""
    name: str
    type: str
    shape: Tuple


class Pending:
    """One run started by :meth:`Runner.submit`."""

    def done(self) -> bool:   # pragma: no cover - interface
        """True once ``result`` would not wait."""
        raise NotImplementedError

    def result(self) -> Tuple[np.ndarray, float]:   # pragma: no cover - interface
        raise NotImplementedError


class FuturePending(Pending):
    """A run on a worker thread: its result, or the exception the runtime raised."""

    def __init__(self, fut: Future):
        self.fut = fut

    def done(self):
        return self.fut.done()

    def result(self):
        try:
            return self.fut.result(RUN_TIMEOUT_S)
        except FutureTimeout:
            raise ScoreError(f"run did not finish in {RUN_TIMEOUT_S:.0f} s") from None


class Runner:
    """A model compiled by one runtime for one blob key."""

    backend = ""                   # "onnxruntime" | "openvino"
    depth = 1                      # runs in flight per stream (1: synchronous)

    def __init__(self, key: str, native, inp: Port, out: Port, device: str, how: str,
                 profile: ExecutionProfile):
        self.key = key             # the verified key this model was compiled from
        self.native = native       # ORT InferenceSession / OpenVINO CompiledModel
        self.input, self.output = inp, out
        self.device = device       # what actually runs it (provider or OpenVINO device)
        self.how = how             # settings, for the log
        self.profile = profile     # backend, device, precision, runtime version: what the lines state

    def run(self, x: np.ndarray) -> np.ndarray:   # pragma: no cover - interface
        raise NotImplementedError

    def submit(self, x: np.ndarray) -> Pending:   # pragma: no cover - interface
        raise NotImplementedError

    def warm_up(self) -> None:
        """Run every in-flight slot once on a zero batch of the input's fixed shape.  A
        runtime does lazy work on a request's first run (OpenVINO: each stream's first
        inference, TensorRT: its engine); on a live 30 FPS camera that stall was seen to drop
        a frame in the first second (int8 blob, once).  Skipped for a shape with named dims."""
        dtype = _CARD_DTYPES.get(self.input.type)
        shape = self.input.shape
        if dtype is None or not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            return
        try:
            x = np.zeros(shape, np.dtype(dtype))
            for pending in [self.submit(x) for _ in range(max(1, self.depth))]:
                pending.result()
        except Exception:  # noqa: BLE001 - a model that fails on zeros fails on its frames, counted there
            pass

    def close(self) -> None:
        """Release worker threads (the native model is freed with the runner)."""

    def describe(self) -> str:
        return str(self.profile)
