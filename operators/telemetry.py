"""The counters of one flow: frames, drops, bad frames, latency, model in use.

Every step of a flow reports to its context's ``Stats`` (thread-safe); the metrics sink
renders it as Prometheus text and the summary JSON.  Each built flow has its own.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections import defaultdict, deque

import numpy as np

__all__ = ["Stats", "log", "lower_thread_priority"]


def lower_thread_priority() -> None:
    """Make the calling helper thread (decoder, writer) yield to ORT's threads: they then
    run in the gaps of inference instead of stalling its parallel loops.
    ``VERISEG_AUX_NICE`` (default 0 = off) is the niceness added on Linux."""
    import os
    try:
        n = int(os.environ.get("VERISEG_AUX_NICE", "0") or 0)
    except ValueError:
        n = 0
    if n > 0 and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, n))
        except OSError:
            pass

log = logging.getLogger("veriseg.flow")
if not log.handlers:
    _h = logging.StreamHandler(sys.stderr)
    _h.setFormatter(logging.Formatter("veriseg: %(message)s"))
    log.addHandler(_h)
    log.setLevel(logging.INFO)
    log.propagate = False

_STAGES = ("decode", "preprocess", "wait", "score", "sink", "total")


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        with self._lock:
            self.t0 = time.time()
            self.t_first = None
            self.t_last = None
            self.decoded = defaultdict(int)
            self.scored = defaultdict(int)
            self.written = defaultdict(int)
            self.dropped = defaultdict(lambda: defaultdict(int))   # stream -> reason -> n
            self.bad = defaultdict(int)
            self.bad_reports: list[str] = []
            self.reconnects = defaultdict(int)
            self.source_errors: dict[str, str] = {}   # stream -> why it ended early
            self.by_key = defaultdict(int)
            self.key_in_use: dict[str, str] = {}
            self.models_loaded: list[dict] = []
            self.models_refused: list[dict] = []
            self.revoked: list[dict] = []
            self.anchors = 0
            self.anchor_failures = 0
            self.anchors_refused = 0     # batch files the flow did not write and seal: never sent
            self.bad_model_files = 0     # files in a model folder that are not readable blobs
            self.bad_model_file_reports: list[str] = []
            self.deploy_pending: dict = {}   # a deploy waiting for its blob: name, version, key, since
            self.error = None
            self.provider = None       # ONNX Runtime provider in use
            self.batches = defaultdict(int)
            self.lat = {s: deque(maxlen=20000) for s in _STAGES}
            self.totals = {}     # stream -> expected frames (file replay)
            self.recent = deque(maxlen=256)   # perf_counter of recent results (FPS now)

    # -- counters -----------------------------------------------------------------
    def add(self, attr: str, stream: str, n: int = 1):
        with self._lock:
            getattr(self, attr)[stream] += n

    def drop(self, stream: str, reason: str, n: int = 1):
        with self._lock:
            self.dropped[stream][reason] += n

    def bad_frame(self, stream: str, message: str):
        with self._lock:
            self.bad[stream] += 1
            if len(self.bad_reports) < 1000:
                self.bad_reports.append(message)
        log.warning("skipped bad frame: %s", message)

    def bad_model_file(self, message: str):
        """A file in a model folder that is no readable blob: skipped, named, counted."""
        with self._lock:
            self.bad_model_files += 1
            if len(self.bad_model_file_reports) < 1000:
                self.bad_model_file_reports.append(message)
        log.warning("skipped model file: %s", message)

    def source_error(self, stream: str, message: str):
        """A file source that could not be opened or read: the stream ends (one line)."""
        with self._lock:
            self.source_errors[stream] = message
        log.error("stream %s: %s", stream, message)

    def scored_batch(self, stream: str, key: str, n: int, lat: dict):
        now = time.perf_counter()
        with self._lock:
            self.scored[stream] += n
            self.by_key[key] += n
            self.key_in_use[stream] = key
            self.batches[n] += 1
            t = time.time()
            if self.t_first is None:
                self.t_first = t
            self.t_last = t
            for k, v in lat.items():
                if k in self.lat:
                    self.lat[k].append(v)
            for _ in range(n):
                self.recent.append(now)

    def latency(self, stage: str, ms: float):
        with self._lock:
            self.lat[stage].append(ms)

    # -- views --------------------------------------------------------------------
    def fps(self) -> float:
        with self._lock:
            n = sum(self.scored.values())
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
        with self._lock:
            return {
                "frames_decoded": dict(self.decoded),
                "frames_scored": dict(self.scored),
                "frames_written": dict(self.written),
                "frames_dropped": {s: dict(d) for s, d in self.dropped.items()},
                "bad_frames": dict(self.bad),
                "bad_frame_reports": list(self.bad_reports[:100]),
                "reconnects": dict(self.reconnects),
                "source_errors": dict(self.source_errors),
                "frames_by_model_key": dict(self.by_key),
                "model_key_in_use": dict(self.key_in_use),
                "models_loaded": list(self.models_loaded),
                "models_refused": list(self.models_refused),
                "revoked": list(self.revoked),
                "error": self.error,
                "anchors_sent": self.anchors,
                "anchor_failures": self.anchor_failures,
                "anchors_refused": self.anchors_refused,
                "bad_model_files": self.bad_model_files,
                "bad_model_file_reports": list(self.bad_model_file_reports[:100]),
                "deploy_pending": dict(self.deploy_pending),
                "provider": self.provider,
                "batch_sizes": {str(k): v for k, v in sorted(self.batches.items())},
                "latency": pct,
                "wall_s": round(time.time() - self.t0, 3),
            }

    def prometheus(self) -> str:
        s = self.snapshot()
        fps = self.fps_now()
        lines = [
            "# HELP veriseg_frames_total Frames by stream and stage.",
            "# TYPE veriseg_frames_total counter",
        ]
        for stage, key in (("decoded", "frames_decoded"), ("scored", "frames_scored"),
                           ("written", "frames_written")):
            for stream, n in sorted(s[key].items()):
                lines.append(f'veriseg_frames_total{{stream="{stream}",stage="{stage}"}} {n}')
        lines += ["# HELP veriseg_frames_dropped_total Frames dropped by stream and reason.",
                  "# TYPE veriseg_frames_dropped_total counter"]
        for stream, d in sorted(s["frames_dropped"].items()):
            for reason, n in sorted(d.items()):
                lines.append(f'veriseg_frames_dropped_total{{stream="{stream}",reason="{reason}"}} {n}')
        lines += ["# TYPE veriseg_bad_frames_total counter"]
        for stream, n in sorted(s["bad_frames"].items()):
            lines.append(f'veriseg_bad_frames_total{{stream="{stream}"}} {n}')
        lines += ["# TYPE veriseg_source_errors_total counter"]
        for stream in sorted(s["source_errors"]):
            lines.append(f'veriseg_source_errors_total{{stream="{stream}"}} 1')
        lines += ["# TYPE veriseg_reconnects_total counter"]
        for stream, n in sorted(s["reconnects"].items()):
            lines.append(f'veriseg_reconnects_total{{stream="{stream}"}} {n}')
        lines += ["# HELP veriseg_fps Frames scored per second (recent).", "# TYPE veriseg_fps gauge",
                  f"veriseg_fps {fps:.3f}",
                  "# HELP veriseg_model_in_use 1 for the model key each stream scores with.",
                  "# TYPE veriseg_model_in_use gauge"]
        for stream, key in sorted(s["model_key_in_use"].items()):
            lines.append(f'veriseg_model_in_use{{stream="{stream}",key="{key}"}} 1')
        lines += ["# HELP veriseg_latency_ms Per-stage latency per frame.", "# TYPE veriseg_latency_ms summary"]
        for stage, d in sorted(s["latency"].items()):
            lines.append(f'veriseg_latency_ms{{stage="{stage}",quantile="0.5"}} {d["p50_ms"]}')
            lines.append(f'veriseg_latency_ms{{stage="{stage}",quantile="0.99"}} {d["p99_ms"]}')
            lines.append(f'veriseg_latency_ms_count{{stage="{stage}"}} {d["n"]}')
        lines += ["# TYPE veriseg_anchors_total counter", f"veriseg_anchors_total {s['anchors_sent']}",
                  "# TYPE veriseg_anchors_refused_total counter",
                  f"veriseg_anchors_refused_total {s['anchors_refused']}",
                  "# TYPE veriseg_models_refused_total counter",
                  f"veriseg_models_refused_total {len(s['models_refused'])}",
                  "# TYPE veriseg_bad_model_files_total counter",
                  f"veriseg_bad_model_files_total {s['bad_model_files']}",
                  "# HELP veriseg_deploy_pending 1 while a deploy waits for its blob (the "
                  "superseded key keeps scoring).",
                  "# TYPE veriseg_deploy_pending gauge"]
        p = s["deploy_pending"]
        if p:
            lines.append(f'veriseg_deploy_pending{{deployment="{p["name"]}",version="{p["version"]}",'
                         f'key="{p["key"]}"}} 1')
        else:
            lines.append("veriseg_deploy_pending 0")
        return "\n".join(lines) + "\n"

