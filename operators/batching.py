"""Frames of several streams scored in one run.

A GPU scores eight frames in one run about four times faster, per frame, than in eight runs
of one (DeepStream's ``nvstreammux`` and Savant batch their cameras for that reason). The
score stage keeps one logic per stream, so that order, the revocation check, recovery and
hot swaps stay per stream; :class:`Batcher` sits between those logics and the compiled
models and only decides *when* the runs they submit start, and with whom:

- every stream submits its own frames after its own revocation check, and collects its own
  results in its own order, exactly as with the runner alone (:class:`BatchPart` is a
  :class:`~operators.backends.Pending`);
- frames submitted for the same compiled model (``SessionEntry``: one per blob key) with
  the same shape join one open *group*; frames of two models never share a run, so every
  result keeps the key of the model that scored it;
- a group starts when it holds ``size`` frames, when its first frame has waited
  ``wait_ms``, or at once when a stream needs one of its results; nobody waits for frames
  that cannot come (the last stream of a replay, a revoked model).

``size`` 1 is the bare runner: nothing is grouped, nothing waits. There is no thread: the
wait is checked whenever a stream submits or looks for results (the score stage looks every
2 ms while a run is in flight).
"""
from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np

from .backends import Pending

__all__ = ["Batcher", "BatchPart", "GPU_AUTO_BATCH"]

# VERISEG_BATCH's auto value on an NVIDIA provider (1 on the CPU): the trainer's GPU figures
# gave ~4x the frames a second at batch 8 against 1 (torch, fp16, H200); TensorRT's engine
# is built for batches 1..this (operators.backends.ort.trt_profile)
GPU_AUTO_BATCH = 8


class _Group:
    """Frames waiting to be scored together by one runner, then the run that scores them."""

    __slots__ = ("runner", "shape", "parts", "frames", "opened", "pending")

    def __init__(self, runner, shape: tuple, opened: float):
        self.runner = runner
        self.shape = shape                # the frames' shape without the batch axis
        self.parts: list[np.ndarray] = []
        self.frames = 0
        self.opened = opened              # perf_counter when its first frame joined
        self.pending: Optional[Pending] = None

    def add(self, x: np.ndarray) -> int:
        at = self.frames
        self.parts.append(x)
        self.frames += len(x)
        return at

    def start(self) -> None:
        x = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)
        self.parts = []
        try:
            self.pending = self.runner.submit(x)
        except Exception as e:  # noqa: BLE001 - each stream's frames fail in their own result()
            self.pending = _Failed(e)


class _Failed(Pending):
    """A run that could not be started (a runner closed by a hot swap meanwhile)."""

    def __init__(self, error: BaseException):
        self.error = error

    def done(self) -> bool:
        return True

    def result(self):
        raise self.error


class BatchPart(Pending):
    """One stream's frames within a group: rows ``at`` to ``at + n`` of its result."""

    __slots__ = ("batcher", "group", "at", "n")

    def __init__(self, batcher: "Batcher", group: _Group, at: int, n: int):
        self.batcher, self.group, self.at, self.n = batcher, group, at, n

    @property
    def batch(self) -> int:
        """How many frames the run that scores these frames holds (known once it started)."""
        return self.group.frames

    def done(self) -> bool:
        g = self.group
        if g.pending is None:
            self.batcher.start_due()
        return g.pending is not None and g.pending.done()

    def result(self):
        g = self.group
        if g.pending is None:
            self.batcher.start_now(g)
        y, run_ms = g.pending.result()
        return y[self.at:self.at + self.n], run_ms


class Batcher:
    """Groups the frames that the streams of one flow submit, per compiled model."""

    def __init__(self, size: int = 1, wait_ms: float = 0.0):
        self.size = max(1, int(size))
        self.wait_s = max(0.0, float(wait_ms)) / 1e3
        self._open: dict[object, _Group] = {}    # runner -> its open group (by identity)
        self._lock = threading.Lock()

    def depth(self, runner) -> int:
        """Runs a stream keeps in flight: the runner's own, and at least two when grouping,
        so that a stream submitting its next frames never starts the group it just joined."""
        return runner.depth if self.size == 1 else max(2, runner.depth)

    def submit(self, runner, x: np.ndarray) -> Pending:
        """Score ``x`` (a batch of one stream's frames) with ``runner``, alone or together
        with other streams' frames."""
        if self.size == 1:
            return runner.submit(x)
        now = time.perf_counter()
        with self._lock:
            g = self._open.get(runner)
            if g is not None and (g.shape != x.shape[1:] or g.frames + len(x) > self.size):
                self._start(g)
                g = None
            if g is None:
                g = self._open[runner] = _Group(runner, x.shape[1:], now)
            part = BatchPart(self, g, g.add(x), len(x))
            if g.frames >= self.size:
                self._start(g)
            self._start_due(now)
        return part

    def start_due(self) -> None:
        """Start every group whose first frame has waited ``wait_ms``."""
        with self._lock:
            self._start_due(time.perf_counter())

    def start_now(self, g: _Group) -> None:
        """Start ``g`` now: a stream needs its result."""
        with self._lock:
            if g.pending is None:
                self._start(g)

    def _start_due(self, now: float) -> None:
        for g in [g for g in self._open.values() if now - g.opened >= self.wait_s]:
            self._start(g)

    def _start(self, g: _Group) -> None:
        if self._open.get(g.runner) is g:
            del self._open[g.runner]
        g.start()
