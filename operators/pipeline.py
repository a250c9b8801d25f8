"""Wiring of the windows into one Bytewax dataflow (used by ``dataflows.*``).

::

    source ──► preprocess ──┐
                            ├─► merge ─► score (per stream: model in use, waiting frames) ─► sinks
    model_reader ───────────┘
"""
from __future__ import annotations

import dataclasses
import sys
import threading
from typing import Callable, Optional

import bytewax.operators as op

from .config import Config, ConfigError, load_config
from .context import FlowContext, VerisegFlow
from .model_reader import ModelRefused, ModelReaderSource, ModelWatcher, connect_registry
from .preprocess import Preprocessor
from .score import ScoreLogic
from .sinks import ResultSink, classes_of
from .sources import FrameSource, check_pipeline

__all__ = ["build_flow", "LockedRegistry", "startup_error", "flow_from_env"]


class LockedRegistry:
    """Serialises calls to one registry client shared by the model reader and the anchor
    sender (the embedded chain is not thread-safe)."""

    def __init__(self, reg):
        self._reg = reg
        self._lock = threading.RLock()

    def __getattr__(self, name):
        a = getattr(self._reg, name)
        if not callable(a):
            return a
        lock = self._lock

        def call(*args, **kw):
            with lock:
                return a(*args, **kw)
        return call


def _tag(kv):
    return kv[0], (kv[0], kv[1])


def build_flow(cfg: Optional[Config] = None, *, registry=None, decrypt_key: Optional[bytes] = None,
               sink_factory: Optional[Callable] = None, flow_id: str = "veriseg_segment",
               keep_raw: bool = False, reader_factory=None) -> VerisegFlow:
    """Build the segmentation flow with its own ``FlowContext`` (``flow.context``);
    raises ConfigError / ModelRefused (one line each).  ``sink_factory(ctx)`` replaces the
    result sink (``dataflows.evaluate``)."""
    cfg = cfg or load_config()
    problems = []
    for s in cfg.sources:
        if s.kind == "gst":
            try:
                check_pipeline(s.kind, s.target)
            except (ValueError, RuntimeError) as e:
                problems.append(str(e) if str(e).startswith("VERISEG_SOURCE") else
                                f"VERISEG_SOURCE: {e}")
    if problems:
        raise ConfigError(problems)
    ctx = FlowContext(cfg)
    if decrypt_key is None and cfg.decrypt_key_file is not None:
        from model_store import read_secret
        try:
            decrypt_key = read_secret(cfg.decrypt_key_file)
        except (OSError, ValueError) as e:
            raise ConfigError([f"VERISEG_DECRYPT_KEY: {cfg.decrypt_key_file}: {e}"]) from None
    reg = ctx.registry = LockedRegistry(registry if registry is not None else connect_registry(cfg))
    watcher = ctx.watcher = ModelWatcher(ctx, reg, decrypt_key=decrypt_key)
    first = ctx.first = watcher.resolve()
    pre = Preprocessor.for_card(first.card) if cfg.preprocess else None
    batch = cfg.batch
    if not batch:   # auto: batching helps GPUs; on this CPU it measured slower (cache)
        entry = ctx.sessions.get(first)
        batch = 4 if entry.provider in ("TensorrtExecutionProvider", "CUDAExecutionProvider") else 1
    colour = pre.colour if pre is not None else "BGR"
    if keep_raw:   # the evaluation grid shows the frame as decoded
        def prepare(f, _pre=pre):
            f = dataclasses.replace(f, raw=f.image)
            return _pre(f) if _pre is not None else f
    else:
        prepare = pre

    flow = VerisegFlow(flow_id, context=ctx)
    frames = op.input("source", flow, FrameSource(
        ctx, cfg.sources, queue=cfg.queue, batch=batch, loop=cfg.loop, max_frames=cfg.max_frames,
        prepare=prepare, reconnect_max=cfg.reconnect_max, colour=colour,
        reader_factory=reader_factory, stall=cfg.stall, max_pixels=cfg.max_pixels))
    if pre is not None:
        # the image-processing window; a no-op check when the decoder already did the work
        def preprocess(kv, _pre=pre):
            f = kv[1]
            return kv if _pre.ready(f) else (kv[0], _pre(f))
        frames = op.map("preprocess", frames, preprocess)
    models = op.input("model_reader", flow, ModelReaderSource(watcher, cfg.stream_ids))
    merged = op.merge("merge", frames, models)
    tagged = op.map("tag", merged, _tag)

    pending = cfg.pending

    class _Logic(ScoreLogic):
        def on_batch(self, values):
            if values and self.sid is None:
                self.sid = values[0][0]
            return super().on_batch([v for _, v in values])

    def builder(resume):
        lg = _Logic(ctx, None, batch=batch, pending=pending)
        # start with the model verified at build time (no startup race with the frames);
        # the model reader re-sends it (same uid: ignored) and then any later change
        lg._apply(first)
        return lg

    scored = op.stateful_batch("score", tagged, builder)
    if sink_factory is None:
        fps = 10.0
        for s in cfg.sources:
            if s.kind == "video":
                import cv2
                cap = cv2.VideoCapture(s.target)
                fps = float(cap.get(cv2.CAP_PROP_FPS) or 0) or 10.0
                cap.release()
                break
        progress = cfg.progress == "1" or (cfg.progress == "auto" and sys.stderr.isatty()
                                           and not any(s.live for s in cfg.sources))
        sink = ResultSink(ctx, cfg.out, cfg.stream_ids, classes=classes_of(first.card), masks=cfg.masks,
                          video=cfg.video, jsonl=cfg.jsonl, anchor_every=cfg.anchor_every,
                          registry=reg, metrics_port=cfg.metrics_port, progress=progress, fps=fps,
                          summary_extra={"config": _cfg_summary(cfg), "model": {
                              "key": first.key, "name": getattr(first.card, "name", None),
                              "source": first.source}},
                          video_scale=cfg.video_scale, home=cfg.home)
    else:
        sink = sink_factory(ctx)
    op.output("sinks", scored, sink)
    return flow


def _cfg_summary(cfg: Config) -> dict:
    return {"sources": [s.describe() for s in cfg.sources], "model": cfg.model, "chain": cfg.chain,
            "out": str(cfg.out), "providers": cfg.providers, "batch": cfg.batch,
            "anchor_every": cfg.anchor_every, "max_frames": cfg.max_frames, "loop": cfg.loop}


def startup_error(e: BaseException) -> "SystemExit":
    for line in str(e).splitlines() or [type(e).__name__]:
        print(f"veriseg: error: {line}", file=sys.stderr)
    return SystemExit(2)


def flow_from_env(build=build_flow) -> VerisegFlow:
    """The module-level ``flow`` of a dataflow module: one-line errors, exit status 2."""
    try:
        return build()
    except (ConfigError, ModelRefused) as e:
        raise startup_error(e) from None
