"""The sink stage: ``write_results`` and its ``ResultSink`` (one partition per stream).

Output layout under ``VERISEG_OUT``::

    <stream>/results.jsonl        one line per frame: ids, model key, class shares, latency
    <stream>/masks/<seq>.png      single-channel class ids (seq zero-padded to 6 digits)
    <stream>/frames/<seq>.<order>.vsf   decoded frames kept for re-execution (VERISEG_KEEP_FRAMES)
    <stream>/overlay.avi          colour overlay video (MJPG; PyPI OpenCV has no H.264)
    anchors/<stream>/<first>-<last>.json   chain.anchoring batch: leaves, proofs, root, tx
    metrics.prom                  Prometheus text, rewritten every second
    summary.json                  written at the end
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Iterable, Optional

import bytewax.operators as op
import cv2
from bytewax.dataflow import Stream, operator
from bytewax.outputs import FixedPartitionedSink

from model_store.util import one_line

from ..anchor_seal import SealError, load_secret
from ..context import FlowContext
from ..keep_frames import KeepFrames
from ..telemetry import log
from .anchors import AnchorSender, resend_unsent
from .metrics import MetricsPublisher, process_suffix, write_summary
from .overlay import classes_of
from .partition import NullPartition, ResultPartition

__all__ = ["write_results", "result_sink", "ResultSink"]


def _finish_with_error(msg: str):
    """Under ``python -m bytewax.run``: one line and exit status 1 once the flow has wound
    down (Bytewax would otherwise print a long traceback); elsewhere (run_main, tests)
    raise."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name == "bytewax.run":
        print(f"veriseg: error: {msg}", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)
    raise RuntimeError(msg)


class ResultSink(FixedPartitionedSink):
    def __init__(self, ctx, out: Path, stream_ids: Iterable[str], *, classes=None, masks=True,
                 mask_size: str = "model", keep_frames: KeepFrames = KeepFrames(),
                 video=True, jsonl=True, anchor_every: int = 0, registry=None, metrics_port=None,
                 progress=False, fps: float = 10.0, summary_extra: Optional[dict] = None,
                 video_scale: float = 1.0, home: Optional[Path] = None,
                 metrics_host: str = "127.0.0.1", metrics_linger: float = 0.0, aux_nice: int = 0,
                 file_suffix: str = ""):
        self.stats, self.revoked = ctx.stats, ctx.revoked
        self.aux_nice = aux_nice
        self.flow_stop = ctx.stop   # set when the outputs fail: the sources end
        self.views = list(ctx.views)   # each is offered the newest frame per stream
        self.out = Path(out)
        self.video_scale = video_scale
        self.sids = list(stream_ids)
        self.classes = tuple(classes or classes_of(None))
        self.masks, self.video, self.jsonl = masks, video, jsonl
        self.mask_size = mask_size
        self.keep_frames = keep_frames
        self.anchor_every = anchor_every
        self.registry = registry
        self.fps = fps
        self.summary_extra = summary_extra or {}
        self.file_suffix = file_suffix   # metrics.process_suffix
        self.metrics = MetricsPublisher(self.stats, self.out, metrics_port, progress, metrics_host,
                                        metrics_linger, file_suffix)
        self.sender = None
        self._closed: set = set()
        self._lock = threading.Lock()
        self.failed: Optional[str] = None
        self.secret: Optional[bytes] = None   # seals the batch files this flow writes
        if anchor_every and home is not None:
            try:
                self.secret = load_secret(home, self.out)
            except SealError as e:
                log.warning("anchor batches cannot be sealed (%s): a batch not anchored by the end "
                            "of this run is not re-sent at the next start", e)

    def list_parts(self):
        return list(self.sids)

    def part_fn(self, item_key: str) -> int:
        # one partition per stream: Bytewax indexes into the sorted partition names
        return sorted(self.sids).index(item_key)

    def fail(self, msg: str):
        with self._lock:
            first = self.failed is None
            if first:
                self.failed = msg
        if first:
            log.error("%s; stopping the flow", msg)
            self.stats.error = msg
            self.flow_stop.set()

    def build_part(self, step_id, for_part, resume_state):
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.fail(f"cannot create the output folder {self.out}: {one_line(e)}")
        if self.failed:
            return NullPartition(self, for_part)
        with self._lock:
            if self.anchor_every and self.registry is not None and self.sender is None:
                self.sender = AnchorSender(self.registry, self.out, self.secret,
                                           stats=self.stats, revoked=self.revoked)
            if self.sender is not None:
                resend_unsent(self.out / "anchors" / for_part, secret=self.secret,
                              registry=self.registry, sender=self.sender, stats=self.stats)
        try:
            return ResultPartition(self, for_part, resume_state)
        except OSError as e:
            self.fail(f"stream {for_part}: cannot open outputs in {self.out / for_part}: {one_line(e)}")
            return NullPartition(self, for_part)

    def part_closed(self, sid: str):
        with self._lock:
            self._closed.add(sid)
            last = self.metrics.release()
            sender = self.sender if last else None
            if last:
                self.sender = None
        if sender is not None:
            sender.close()
        if last:
            for view in self.views:
                view.close()
        if last:
            extra = dict(self.summary_extra)
            # the outputs failed, or the model reader failed safe (it stopped the sources)
            failed = self.failed or self.stats.error
            if failed:
                extra["error"] = failed
            write_summary(self.stats, self.out, extra, self.file_suffix)
            self.metrics.close()
            if failed:
                _finish_with_error(failed)


def _video_fps(cfg) -> float:
    """Frame rate of the overlay video: the first video source's, else 10."""
    for s in cfg.source:
        if s.kind == "video":
            cap = cv2.VideoCapture(s.target)
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0)
            cap.release()
            return fps or 10.0
    return 10.0


def _config_summary(cfg) -> dict:
    return {"sources": [s.describe() for s in cfg.source], "model": cfg.model, "chain": cfg.chain,
            "out": str(cfg.out), "providers": cfg.providers, "batch": cfg.batch or 0,
            "anchor_every": cfg.anchor_every, "max_frames": cfg.max_frames, "loop": cfg.loop}


def result_sink(ctx: FlowContext) -> ResultSink:
    """The sink of the segment flow as the configuration asks for it."""
    cfg, first = ctx.config, ctx.first
    progress = cfg.progress == "1" or (cfg.progress == "auto" and sys.stderr.isatty()
                                       and not any(s.live for s in cfg.source))
    model = {"key": first.key, "name": getattr(first.card, "name", None), "source": first.source}
    return ResultSink(ctx, cfg.out, cfg.stream_ids, classes=classes_of(first.card),
                      masks=cfg.masks, mask_size=cfg.mask_size, keep_frames=cfg.keep_frames,
                      video=cfg.video, jsonl=cfg.jsonl,
                      anchor_every=cfg.anchor_every, registry=ctx.registry,
                      metrics_port=cfg.metrics_port, metrics_host=cfg.metrics_host,
                      metrics_linger=cfg.metrics_linger_s, progress=progress, fps=_video_fps(cfg),
                      summary_extra={"config": _config_summary(cfg), "model": model},
                      video_scale=cfg.video_scale, home=cfg.home, aux_nice=cfg.aux_nice,
                      file_suffix=process_suffix(cfg.process_id))


@operator
def write_results(step_id: str, scored: Stream, ctx: FlowContext) -> None:
    """Masks, overlay video, JSON lines, anchor batches, metrics and the summary of every
    stream under ``VERISEG_OUT``."""
    op.output("write", scored, result_sink(ctx))
