"""The counters of one flow: frames, drops, bad frames, latency, model in use.

Every step of a flow reports to its context's ``Stats`` (thread-safe).  The counts live in
prometheus_client metrics on a ``CollectorRegistry`` of that flow alone (never the global
default registry: two flows in one process keep their own); the metrics sink exposes the
registry (``metrics.prom``, HTTP) and the summary JSON reads the same metrics back.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections import defaultdict, deque
from typing import Optional

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from model_store.display import PrintableLogs

__all__ = ["Stats", "log", "lower_thread_priority", "name_os_thread", "DROP_REASONS", "FRAME_STAGES"]

_PR_SET_NAME = 15   # prctl(2): the calling thread's name, 15 bytes and a NUL


def lower_thread_priority(n: int) -> None:
    """Make the calling helper thread yield to the scoring threads: it then runs in the gaps
    of inference instead of stalling its parallel loops.  ``n`` is the niceness added on
    Linux (0: none; the decoder and writers take ``VERISEG_AUX_NICE``)."""
    import os
    if n > 0 and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, n))
        except OSError:
            pass


def name_os_thread() -> None:
    """Give the calling thread its Python name in the OS too (Linux, 15 bytes), so that
    ``top -H`` and ``bench flow_ceiling``'s CPU a stage tell the decoder, writer and
    inference threads apart (Python before 3.14 leaves every thread named ``python``)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        name = threading.current_thread().name.encode("ascii", "replace")[:15]
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (OSError, AttributeError, ValueError):
        pass


log = logging.getLogger("veriseg.flow")
if not log.handlers:
    _h = logging.StreamHandler(sys.stderr)
    _h.setFormatter(logging.Formatter("veriseg: %(message)s"))
    _h.addFilter(PrintableLogs())   # names and reasons from cards and the chain: no raw ESC
    log.addHandler(_h)
    log.setLevel(logging.INFO)
    log.propagate = False

_STAGES = ("decode", "preprocess", "wait", "score", "sink", "total")
#: the ``stage`` label of veriseg_frames_total
FRAME_STAGES = ("decoded", "scored", "written")
#: the ``reason`` label of veriseg_frames_dropped_total: a live source's full buffer, no valid
#: model to score with, a run that failed, outputs that could not be written
DROP_REASONS = ("backpressure", "no_model", "score_error", "output_error")
#: seconds; a CPU frame scores in ~5-60 ms, a stalled sink or decoder shows up past 0.5 s
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


def _counts(metric, label: str, **match) -> dict:
    """``{label value: count}`` of a counter's samples whose other labels match, leaving out
    the series still at 0 (they exist for the scraper's sake; 0 for any other value)."""
    out: dict = defaultdict(int)
    for fam in metric.collect():
        for s in fam.samples:
            if (s.name.endswith("_total") and s.value
                    and all(s.labels.get(k) == v for k, v in match.items())):
                out[s.labels[label]] = int(s.value)
    return out


def _total(metric) -> int:
    return int(sum(s.value for fam in metric.collect() for s in fam.samples if s.name.endswith("_total")))


class _Derived:
    """Metrics read at scrape time from state other modules keep (the refused models'
    list, the pending deploy) rather than counted as they change."""

    def __init__(self, stats: "Stats"):
        self.stats = stats

    def collect(self):
        s = self.stats
        c = CounterMetricFamily("veriseg_models_refused", "Model updates refused (see summary.json).")
        c.add_metric([], len(s.models_refused))
        yield c
        c = CounterMetricFamily("veriseg_deploy_pending_timeouts", "Superseded models stopped "
                                "because a newer deploy's blob did not arrive within "
                                "VERISEG_PENDING_DEPLOY_MAX_S.")
        c.add_metric([], s.deploy_pending_timeouts)
        yield c
        g = GaugeMetricFamily("veriseg_deploy_pending", "1 while a deploy waits for its blob (the "
                              "superseded key scores for at most VERISEG_PENDING_DEPLOY_MAX_S).",
                              labels=["deployment", "version", "key"])
        p = dict(s.deploy_pending)
        if p:
            g.add_metric([str(p["name"]), str(p["version"]), str(p["key"])], 1)
        yield g


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self.registry = r = CollectorRegistry()
        self._frames = Counter("veriseg_frames", "Frames by stream and stage.", ["stream", "stage"],
                               registry=r)
        self._dropped = Counter("veriseg_frames_dropped", "Frames dropped by stream and reason.",
                                ["stream", "reason"], registry=r)
        self._bad = Counter("veriseg_bad_frames", "Frames skipped as unreadable.", ["stream"], registry=r)
        self._source_errors = Counter("veriseg_source_errors", "Streams ended early by an error.",
                                      ["stream"], registry=r)
        self._reconnects = Counter("veriseg_reconnects", "Live source reconnects.", ["stream"], registry=r)
        self._by_key = Counter("veriseg_model_frames", "Frames scored by model key.", ["key"], registry=r)
        self._anchors = Counter("veriseg_anchors", "Anchor batches sent.", registry=r)
        self._anchor_failures = Counter("veriseg_anchor_failures", "Anchor batches not sent (kept "
                                        "on disk, resent at the next start).", registry=r)
        self._anchors_refused = Counter("veriseg_anchors_refused", "Batch files this flow did not "
                                        "write and seal: never sent.", registry=r)
        self._bad_model_files = Counter("veriseg_bad_model_files", "Files in a model folder that "
                                        "are no readable blob.", registry=r)
        self._latency = Histogram("veriseg_latency_seconds", "Per-stage latency per frame.", ["stage"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self._in_use = Gauge("veriseg_model_in_use", "1 for the model key each stream scores with.",
                             ["stream", "key"], registry=r)
        self._runtime = Gauge("veriseg_runtime_info", "1 for the backend and provider that score.",
                              ["backend", "provider"], registry=r)
        Gauge("veriseg_fps", "Frames scored per second (recent).", registry=r).set_function(self.fps_now)
        r.register(_Derived(self))
        with self._lock:
            self.t0 = time.time()
            self.t_first = None
            self.t_last = None
            self.bad_reports: list[str] = []
            self.source_errors: dict[str, str] = {}   # stream -> why it ended early
            self.key_in_use: dict[str, str] = {}
            self.models_loaded: list[dict] = []
            self.models_refused: list[dict] = []
            self.revoked: list[dict] = []
            self.bad_model_file_reports: list[str] = []
            self.deploy_pending: dict = {}   # a deploy waiting for its blob: name, version, key, since
            self.deploy_pending_timeouts = 0   # superseded models stopped after the maximum wait
            self.error = None
            self._provider: Optional[str] = None   # ONNX Runtime provider (or device) in use
            self._backend: Optional[str] = None
            self.batches = defaultdict(int)
            self.lat = {s: deque(maxlen=20000) for s in _STAGES}   # exact percentiles for summary.json
            self.totals = {}     # stream -> expected frames (file replay)
            self.recent = deque(maxlen=256)   # perf_counter of recent results (FPS now)

    # -- read back from the metrics (the summary, the progress line, tests) -------------
    decoded = property(lambda self: _counts(self._frames, "stream", stage="decoded"))
    scored = property(lambda self: _counts(self._frames, "stream", stage="scored"))
    written = property(lambda self: _counts(self._frames, "stream", stage="written"))
    kept = property(lambda self: _counts(self._frames, "stream", stage="kept"))        # VERISEG_KEEP_FRAMES
    rotated = property(lambda self: _counts(self._frames, "stream", stage="rotated"))  # kept, then deleted
    not_kept = property(lambda self: _counts(self._frames, "stream", stage="not_kept"))  # too large to read back
    bad = property(lambda self: _counts(self._bad, "stream"))
    reconnects = property(lambda self: _counts(self._reconnects, "stream"))
    by_key = property(lambda self: _counts(self._by_key, "key"))
    anchors = property(lambda self: _total(self._anchors))
    anchor_failures = property(lambda self: _total(self._anchor_failures))
    anchors_refused = property(lambda self: _total(self._anchors_refused))
    bad_model_files = property(lambda self: _total(self._bad_model_files))

    @property
    def dropped(self) -> dict:
        """stream -> reason -> frames (0 for any other stream or reason)."""
        out: dict = defaultdict(lambda: defaultdict(int))
        for fam in self._dropped.collect():
            for s in fam.samples:
                if s.name.endswith("_total") and s.value:
                    out[s.labels["stream"]][s.labels["reason"]] = int(s.value)
        return out

    @property
    def provider(self) -> Optional[str]:
        return self._provider

    @provider.setter
    def provider(self, value: Optional[str]) -> None:
        self._provider = value
        self._runtime_changed()

    @property
    def backend(self) -> Optional[str]:
        """The runtime that scores (onnxruntime, openvino); None until a session loads."""
        return self._backend

    @backend.setter
    def backend(self, value: Optional[str]) -> None:
        self._backend = value
        self._runtime_changed()

    def _runtime_changed(self) -> None:
        self._runtime.clear()
        if self._provider or self._backend:
            backend = self._backend or ("onnxruntime" if str(self._provider).endswith(
                "ExecutionProvider") else "")
            self._runtime.labels(backend=backend, provider=self._provider or "").set(1)

    # -- counters -----------------------------------------------------------------
    def known_stream(self, stream: str) -> None:
        """Every counter of ``stream`` at 0 from the start: a labelled counter has no series
        until its first increment, and a dashboard's query for drops or bad frames should
        read 0, not nothing."""
        for stage in FRAME_STAGES:
            self._frames.labels(stream=stream, stage=stage)
        for reason in DROP_REASONS:
            self._dropped.labels(stream=stream, reason=reason)
        for counter in (self._bad, self._source_errors, self._reconnects):
            counter.labels(stream=stream)

    def add(self, attr: str, stream: str, n: int = 1):
        """``attr``: decoded | scored | written | kept | rotated | not_kept | reconnects."""
        if attr == "reconnects":
            self._reconnects.labels(stream=stream).inc(n)
        elif attr in ("decoded", "scored", "written", "kept", "rotated", "not_kept"):
            self._frames.labels(stream=stream, stage=attr).inc(n)
        else:
            raise ValueError(f"Stats.add: unknown counter {attr!r}")

    def drop(self, stream: str, reason: str, n: int = 1):
        self._dropped.labels(stream=stream, reason=reason).inc(n)

    def bad_frame(self, stream: str, message: str):
        self._bad.labels(stream=stream).inc()
        with self._lock:
            if len(self.bad_reports) < 1000:
                self.bad_reports.append(message)
        log.warning("skipped bad frame: %s", message)

    def bad_model_file(self, message: str):
        """A file in a model folder that is no readable blob: skipped, named, counted."""
        self._bad_model_files.inc()
        with self._lock:
            if len(self.bad_model_file_reports) < 1000:
                self.bad_model_file_reports.append(message)
        log.warning("skipped model file: %s", message)

    def source_error(self, stream: str, message: str):
        """A file source that could not be opened or read: the stream ends (one line)."""
        with self._lock:
            first = stream not in self.source_errors
            self.source_errors[stream] = message
        if first:
            self._source_errors.labels(stream=stream).inc()
        log.error("stream %s: %s", stream, message)

    def anchor_sent(self):
        self._anchors.inc()

    def anchor_failed(self):
        self._anchor_failures.inc()

    def anchor_refused(self):
        self._anchors_refused.inc()

    def scored_batch(self, stream: str, key: str, n: int, lat: dict, run_size: Optional[int] = None):
        """``n`` frames of ``stream`` scored by ``key``; ``run_size``: the size of the run
        they were part of, counted once per run (0: another stream's part counts it)."""
        now = time.perf_counter()
        self._frames.labels(stream=stream, stage="scored").inc(n)
        self._by_key.labels(key=key).inc(n)
        with self._lock:
            old = self.key_in_use.get(stream)
            self.key_in_use[stream] = key
            if run_size != 0:
                self.batches[run_size or n] += 1
            t = time.time()
            if self.t_first is None:
                self.t_first = t
            self.t_last = t
            for k, v in lat.items():
                if k in self.lat:
                    self.lat[k].append(v)
            for _ in range(n):
                self.recent.append(now)
        if old != key:
            if old is not None:
                self._in_use.remove(stream, old)
            self._in_use.labels(stream=stream, key=key).set(1)
        for k, v in lat.items():
            if k in self.lat:
                self._latency.labels(stage=k).observe(v / 1000.0)

    def latency(self, stage: str, ms: float):
        with self._lock:
            self.lat[stage].append(ms)
        self._latency.labels(stage=stage).observe(ms / 1000.0)

    # -- views --------------------------------------------------------------------
    def fps(self) -> float:
        n = sum(self.scored.values())
        with self._lock:
            if not n or self.t_first is None or self.t_last is None or self.t_last <= self.t_first:
                return 0.0
            return (n - 1) / (self.t_last - self.t_first) if n > 1 else 0.0

    def fps_now(self) -> float:
        with self._lock:
            r = list(self.recent)
        if len(r) < 2 or r[-1] <= r[0]:
            return 0.0
        return (len(r) - 1) / (r[-1] - r[0])

    def percentiles(self) -> dict:
        with self._lock:
            out = {}
            for k, d in self.lat.items():
                if d:
                    a = np.fromiter(d, float)
                    out[k] = {"p50_ms": round(float(np.percentile(a, 50)), 3),
                              "p99_ms": round(float(np.percentile(a, 99)), 3),
                              "mean_ms": round(float(a.mean()), 3), "n": int(a.size)}
            return out

    def snapshot(self) -> dict:
        pct = self.percentiles()
        counts = {"frames_decoded": dict(self.decoded), "frames_scored": dict(self.scored),
                  "frames_written": dict(self.written), "frames_kept": dict(self.kept),
                  "frames_rotated": dict(self.rotated), "frames_not_kept": dict(self.not_kept),
                  "frames_dropped": {s: dict(d) for s, d in self.dropped.items()},
                  "bad_frames": dict(self.bad), "reconnects": dict(self.reconnects),
                  "frames_by_model_key": dict(self.by_key), "anchors_sent": self.anchors,
                  "anchor_failures": self.anchor_failures, "anchors_refused": self.anchors_refused,
                  "bad_model_files": self.bad_model_files}
        with self._lock:
            return {
                **counts,
                "bad_frame_reports": list(self.bad_reports[:100]),
                "source_errors": dict(self.source_errors),
                "model_key_in_use": dict(self.key_in_use),
                "models_loaded": list(self.models_loaded),
                "models_refused": list(self.models_refused),
                "revoked": list(self.revoked),
                "error": self.error,
                "bad_model_file_reports": list(self.bad_model_file_reports[:100]),
                "deploy_pending": dict(self.deploy_pending),
                "deploy_pending_timeouts": self.deploy_pending_timeouts,
                "provider": self._provider,
                "backend": self._backend,
                "batch_sizes": {str(k): v for k, v in sorted(self.batches.items())},
                "latency": pct,
                "wall_s": round(time.time() - self.t0, 3),
            }

    def prometheus(self) -> str:
        """The flow's metrics in the Prometheus text format."""
        return generate_latest(self.registry).decode()
