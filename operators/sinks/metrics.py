"""The flow's metrics: ``metrics.prom`` every second (and over HTTP), the progress line and
``summary.json`` at the end."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

from model_store.util import atomic_write

from ..telemetry import log

__all__ = ["MetricsPublisher", "process_suffix", "write_summary"]


class MetricsPublisher:
    """Writes ``metrics.prom`` every second and serves it over HTTP when a port is set."""

    def __init__(self, stats, out: Path, port: Optional[int] = None, progress: bool = False):
        self.stats = stats
        self.out = out
        self.port = port
        self.progress = progress
        self.stop = threading.Event()
        self.users = 0
        self.lock = threading.Lock()
        self.thread = None
        self.server = None

    def acquire(self):
        with self.lock:
            self.users += 1
            if self.thread is not None:
                return
            self.stop.clear()
            if self.port:
                stats = self.stats

                class H(BaseHTTPRequestHandler):
                    def do_GET(self):  # noqa: N802
                        body = stats.prometheus().encode()
                        self.send_response(200 if self.path in ("/", "/metrics") else 404)
                        self.send_header("Content-Type", "text/plain; version=0.0.4")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)

                    def log_message(self, *a):
                        pass
                try:
                    self.server = ThreadingHTTPServer(("0.0.0.0", self.port), H)
                    threading.Thread(target=self.server.serve_forever, daemon=True,
                                     name="veriseg-metrics-http").start()
                    log.info("metrics on http://0.0.0.0:%d/metrics", self.port)
                except OSError as e:
                    log.error("VERISEG_METRICS_PORT=%d: cannot listen: %s", self.port, e.strerror or e)
                    self.server = None
            self.thread = threading.Thread(target=self._run, daemon=True, name="veriseg-metrics")
            self.thread.start()

    def release(self):
        with self.lock:
            self.users -= 1
            last = self.users <= 0
        if last:
            self.stop.set()
            if self.thread is not None:
                self.thread.join(timeout=5)
            self.thread = None
            if self.server is not None:
                self.server.shutdown()
                self.server.server_close()
                self.server = None
            self._write()
            if self.progress:
                self._progress(final=True)
        return last

    def _write(self):
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(self.out / f"metrics{process_suffix()}.prom", self.stats.prometheus())
        except OSError as e:
            log.error("cannot write %s: %s", self.out / "metrics.prom", e.strerror or e)

    def _progress(self, final=False):
        done = dict(self.stats.written)
        parts = []
        for sid, n in sorted(done.items()):
            tot = self.stats.totals.get(sid)
            parts.append(f"{sid} {n}/{tot}" if tot else f"{sid} {n}")
        line = f"\r[veriseg] {' | '.join(parts) or 'starting'} frames, {self.stats.fps_now():.1f} fps"
        sys.stderr.write(line + ("\n" if final else "   "))
        sys.stderr.flush()

    def _run(self):
        t_next = time.monotonic()
        while not self.stop.wait(0.25):
            if self.progress:
                self._progress()
            if time.monotonic() >= t_next:
                self._write()
                t_next = time.monotonic() + 1.0


def process_suffix() -> str:
    """'' in a single-process run; '.p<N>' for process N of a multi-process run (-i/-a),
    so that each process writes its own summary and metrics file."""
    pid = os.environ.get("BYTEWAX_PROCESS_ID")
    argv = sys.argv
    for i, a in enumerate(argv):
        if a in ("-i", "--process-id") and i + 1 < len(argv):
            pid = argv[i + 1]
        elif a.startswith("--process-id="):
            pid = a.split("=", 1)[1]
    return f".p{pid}" if pid not in (None, "") else ""


def write_summary(stats, out: Path, extra: Optional[dict] = None) -> dict:
    snap = stats.snapshot()
    doc = {"fps": round(stats.fps(), 3), "scored": sum(snap["frames_scored"].values()),
           "dropped": sum(sum(d.values()) for d in snap["frames_dropped"].values()),
           "bad": sum(snap["bad_frames"].values())}
    doc.update(snap)
    if extra:
        doc.update(extra)
    try:
        atomic_write(Path(out) / f"summary{process_suffix()}.json", json.dumps(doc, indent=1))
    except OSError as e:
        log.error("cannot write %s: %s", Path(out) / "summary.json", e.strerror or e)
    log.info("done: %d frames scored at %.1f FPS, %d dropped, %d bad; outputs in %s",
             doc["scored"], doc["fps"], doc["dropped"], doc["bad"], out)
    return doc
