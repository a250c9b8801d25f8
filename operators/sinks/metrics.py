"""The flow's metrics: ``metrics.prom`` every second (and over HTTP), the progress line and
``summary.json`` at the end.  The metrics themselves are the flow's prometheus_client
registry (:class:`operators.telemetry.Stats`)."""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from model_store.util import atomic_write
from prometheus_client import start_http_server, write_to_textfile

from ..telemetry import log

__all__ = ["MetricsPublisher", "process_suffix", "write_summary"]


class MetricsPublisher:
    """Writes ``metrics.prom`` every second (``write_to_textfile``: written aside, then
    renamed) and, when a port is set, serves the flow's registry with prometheus_client's
    own HTTP server on ``host`` (loopback unless VERISEG_METRICS_HOST says otherwise), from
    the first user's acquire until ``close``: ``linger`` seconds after the last release, so
    that a scraper polling every few seconds still reads the final counts."""

    def __init__(self, stats, out: Path, port: Optional[int] = None, progress: bool = False,
                 host: str = "127.0.0.1", linger: float = 0.0, suffix: str = ""):
        self.stats = stats
        self.out = out
        self.suffix = suffix   # process_suffix
        self.port = port
        self.host = host
        self.linger = linger
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
                try:
                    self.server, _ = start_http_server(self.port, addr=self.host,
                                                       registry=self.stats.registry)
                    log.info("metrics on http://%s:%d/metrics", self.host, self.port)
                except OSError as e:
                    log.error("VERISEG_METRICS_PORT=%d: cannot listen on %s: %s", self.port,
                              self.host, e.strerror or e)
                    self.server = None
            self.thread = threading.Thread(target=self._run, daemon=True, name="veriseg-metrics")
            self.thread.start()

    def release(self):
        """One user done; the last one stops the file writer and writes the final counts
        (the HTTP server stays up until ``close``)."""
        with self.lock:
            self.users -= 1
            last = self.users <= 0
        if last:
            self.stop.set()
            if self.thread is not None:
                self.thread.join(timeout=5)
            self.thread = None
            self._write()
            if self.progress:
                self._progress(final=True)
        return last

    def close(self):
        """Keeps serving the final counts ``linger`` seconds (said in one line), then stops
        the HTTP server: the flow's end would otherwise fall between two scrapes and its last
        counts would never reach the scraper."""
        if self.server is None:
            return
        if self.linger > 0:
            log.info("flow ended: http://%s:%d/metrics stays up %g s for a last scrape "
                     "(VERISEG_METRICS_LINGER_S)", self.host, self.port, self.linger)
            time.sleep(self.linger)
        self.server.shutdown()
        self.server.server_close()
        self.server = None

    def _write(self):
        path = self.out / f"metrics{self.suffix}.prom"
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            write_to_textfile(str(path), self.stats.registry)
        except OSError as e:
            log.error("cannot write %s: %s", path, e.strerror or e)

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


def process_suffix(process_id: Optional[str] = None) -> str:
    """'' in a single-process run; '.p<N>' for process N of a multi-process run (``-i`` on
    the command line, else ``process_id``: BYTEWAX_PROCESS_ID), so that each process writes
    its own summary and metrics file."""
    pid = process_id
    argv = sys.argv
    for i, a in enumerate(argv):
        if a in ("-i", "--process-id") and i + 1 < len(argv):
            pid = argv[i + 1]
        elif a.startswith("--process-id="):
            pid = a.split("=", 1)[1]
    return f".p{pid}" if pid not in (None, "") else ""


def write_summary(stats, out: Path, extra: Optional[dict] = None, suffix: str = "") -> dict:
    snap = stats.snapshot()
    doc = {"fps": round(stats.fps(), 3), "scored": sum(snap["frames_scored"].values()),
           "dropped": sum(sum(d.values()) for d in snap["frames_dropped"].values()),
           "bad": sum(snap["bad_frames"].values())}
    doc.update(snap)
    if extra:
        doc.update(extra)
    try:
        atomic_write(Path(out) / f"summary{suffix}.json", json.dumps(doc, indent=1))
    except OSError as e:
        log.error("cannot write %s: %s", Path(out) / "summary.json", e.strerror or e)
    log.info("done: %d frames scored at %.1f FPS, %d dropped, %d bad; outputs in %s",
             doc["scored"], doc["fps"], doc["dropped"], doc["bad"], out)
    return doc
