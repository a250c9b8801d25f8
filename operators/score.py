"""The score stage: the per-stream scoring logic and the ``score`` operator.

:class:`ScoreLogic` is a ``stateful_batch`` logic per stream id: it receives the stream's
frames and model events in order, holds frames that arrive while no valid model is loaded
in a bounded queue (oldest dropped and counted; a file replay is paused instead), checks
the flow's revoked keys right before every run is submitted (a revocation stops scoring at
once, even before its event reaches the stream) and scores micro-batches.

Scoring is pipelined: a run is submitted to the backend (``Runner.submit``: an OpenVINO
async request, or ONNX Runtime on a worker thread) and the logic returns to Bytewax, which
meanwhile hands the previous results to the sinks and the next frame in; up to the
runner's ``depth`` runs are in flight per stream and their results leave in frame order.
Runs submitted before a revocation was known finish and are emitted (they passed the check).
Every submission goes through the flow's :class:`~operators.batching.Batcher`, which may
score the frames of several streams in one run (``VERISEG_BATCH``); each stream still
submits, checks and collects its own frames.
"""
from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Optional

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from model_store.drive import postprocess, to_tensor
from model_store.util import first_line

from .context import FlowContext
from .frames import Frame, ModelEvent, ModelLoaded, ModelRevoked, ScoredFrame, StreamEnd
from .backends import Pending
from .sessions import ScoreError, SessionEntry
from .telemetry import log

__all__ = ["score", "ScoreLogic"]

# how soon a stream with runs in flight and no new frame looks for their results again
_POLL = timedelta(milliseconds=2)


@dataclass
class _InFlight:
    entry: SessionEntry      # the model it was submitted to (a hot swap does not change it)
    chunk: list              # its frames
    pending: Pending
    t0: float                # perf_counter at submission, right after the revocation check


class ScoreLogic(StatefulBatchLogic):
    """Per-stream scoring state: the model in use and the frames waiting for one."""

    def __init__(self, ctx, stream_id: Optional[str], *, batch: int = 4, pending: int = 64):
        self.sid = stream_id
        # the flow's shared parts (operators.context.FlowContext)
        self.stats, self.sessions, self.revoked = ctx.stats, ctx.sessions, ctx.revoked
        self.streams = ctx.streams
        self.batcher = ctx.batcher
        self.max_batch = max(1, batch)
        self.pending: deque = deque()
        self.inflight: deque = deque()    # _InFlight runs, oldest first (results in order)
        self.pending_cap = pending
        self.entry: Optional[SessionEntry] = None
        self.version = -1
        self.name = ""
        self.seen: set[int] = set()
        self.waiting_logged = False

    # -- model updates ----------------------------------------------------------------
    def _apply(self, u: ModelEvent):
        if u.uid in self.seen:
            return
        self.seen.add(u.uid)
        if isinstance(u, ModelRevoked):
            if not u.superseded:
                self.revoked.add(u.key, u.reason)
            self.sessions.drop(u.key)
            if self.entry is not None and self.entry.key == u.key:
                log.warning("stream %s: model %s %s (%s): scoring stopped until a valid model "
                            "arrives", self.sid, u.key.short,
                            "superseded" if u.superseded else "revoked", u.reason or "no reason given")
                self.entry = None
            return
        if u.key in self.revoked:
            log.warning("stream %s: refusing model %s: it is revoked", self.sid, u.key.short)
            return
        if u.version and u.name == self.name and u.version < self.version:
            log.warning("stream %s: refusing model %s: version %d is older than %d (no rollback)",
                        self.sid, u.key.short, u.version, self.version)
            return
        try:
            entry = self.sessions.get(u)
        except ScoreError as e:
            log.error("stream %s: %s", self.sid, e)
            self.stats.models_refused.append({"key": u.key, "reason": str(e)})
            return
        old = self.entry.key if self.entry is not None else None
        self.entry, self.version, self.name = entry, u.version, u.name
        self.streams.pause(self.sid, False)
        if old != u.key and self.sid is not None:
            what = f"{u.name} v{u.version}" if u.version else (u.name or "blob")
            log.info("stream %s: scoring with model %s (%s)%s", self.sid, u.key.short, what,
                     f", replacing {old.short}" if old else "")
        self.waiting_logged = False

    # -- frames -----------------------------------------------------------------------
    def _hold(self, frames):
        self.streams.pause(self.sid, True)
        for f in frames:
            if self.pending_cap <= 0:
                self.stats.drop(self.sid, "no_model")
                continue
            if len(self.pending) >= self.pending_cap:
                self.pending.popleft()
                self.stats.drop(self.sid, "no_model")
            self.pending.append(f)
        if frames and not self.waiting_logged:
            log.warning("stream %s: no valid model: a file replay pauses until one is deployed; a live "
                        "source keeps its newest %d frames waiting and drops older ones", self.sid,
                        self.pending_cap)
            self.waiting_logged = True

    def _usable(self) -> bool:
        e = self.entry
        if e is None:
            return False
        if e.key in self.revoked:
            log.warning("stream %s: model %s revoked (%s): scoring stopped", self.sid, e.key.short,
                        self.revoked.reason(e.key) or "no reason given")
            self.entry = None
            return False
        return True

    def _score(self, frames) -> list:
        if not frames and not self.pending:
            return []
        if not self._usable():
            self._hold(frames)
            return []
        if self.pending:
            frames = list(self.pending) + list(frames)
            self.pending.clear()
        out = []
        i = 0
        while i < len(frames):
            if not self._usable():
                self._hold(frames[i:])
                break
            e = self.entry
            cap = 1 if frames[i].live else self.max_batch
            if e.max_batch is not None:
                cap = min(cap, e.max_batch)
            chunk = frames[i:i + cap]
            i += len(chunk)
            out.extend(self._run(e, chunk))
        return out

    def _run(self, e: SessionEntry, chunk) -> list:
        """Start scoring ``chunk`` with ``e`` and return the results of earlier runs that
        are done (all but ``depth - 1`` of the runs in flight), in frame order."""
        chunk = [f if e.pre.ready(f) else e.pre(_decoded(f)) for f in chunk]
        imgs = [f.image for f in chunk]
        shapes = {im.shape for im in imgs}
        if len(shapes) > 1:   # mixed sizes (dynamic-size model, raw frames): one at a time
            res = []
            for f in chunk:
                res.extend(self._run(e, [f]))
            return res
        if e.spec is None:
            self._failed(chunk, f"model {e.key.short} has no card: the flow cannot tell how to drive it")
            return []
        # the card's pre/postprocessing (model_store.drive); a uint8 NHWC class-map graph
        # (the shipped ENet) gets the frames' bytes and its ids as they are
        x = to_tensor(imgs[0][None] if len(imgs) == 1 else np.stack(imgs), e.spec)
        t0 = time.perf_counter()
        self.inflight.append(_InFlight(e, chunk, self.batcher.submit(e.runner, x), t0))
        return self._collect(keep=self.batcher.depth(e.runner) - 1)

    def _collect(self, keep: int = 0) -> list:
        """Results of the runs in flight, oldest first: wait until at most ``keep`` remain,
        and take any later ones that have finished already."""
        res = []
        while self.inflight and (len(self.inflight) > keep or self.inflight[0].pending.done()):
            res.extend(self._finish(self.inflight.popleft()))
        return res

    def _finish(self, job: "_InFlight") -> list:
        e, chunk, t0 = job.entry, job.chunk, job.t0
        try:
            y, score_ms = job.pending.result()
        except Exception as err:  # noqa: BLE001 - one bad batch must not stop the stream
            self._failed(chunk, f"scoring failed ({first_line(err)})")
            return []
        try:   # the card's postprocessing, at the frames' picture size
            y = postprocess(y, e.spec, chunk[0].image.shape[:2])
        except ValueError as err:
            self._failed(chunk, f"model {e.key.short} gave an output the card does not describe ({first_line(err)})")
            return []
        # score: the runtime's own time for this run; in_flight: submitted to collected
        # (includes waiting behind the other run in flight)
        in_flight_ms = (time.perf_counter() - t0) * 1e3
        n = len(chunk)
        # frames of other streams may have shared the run (operators.batching)
        run = getattr(job.pending, "batch", n)
        res = []
        for j, f in enumerate(chunk):
            wait_ms = (t0 - f.t_emit) * 1e3 if f.t_emit else 0.0
            lat = {"decode": round(f.decode_ms, 3), "preprocess": round(f.preprocess_ms, 3),
                   "wait": round(wait_ms, 3), "score": round(score_ms, 3),
                   "score_per_frame": round(score_ms / run, 3), "in_flight": round(in_flight_ms, 3)}
            res.append(ScoredFrame(f.stream_id, f.seq, f.ts, f.pos, y[j], e.key, batch=run,
                                   latency_ms=lat, image=f.image, colour=f.colour,
                                   orig_size=f.orig_size, label=f.label, raw=f.raw,
                                   t_emit=f.t_emit, classes=e.classes, raw_colour=f.raw_colour,
                                   frame_digest=f.digest, profile=e.runner.profile))
        self.stats.scored_batch(self.sid, e.key, n, {"decode": chunk[0].decode_ms,
                                                "preprocess": chunk[0].preprocess_ms,
                                                "wait": res[0].latency_ms["wait"], "score": score_ms},
                                run_size=run if getattr(job.pending, "at", 0) == 0 else 0)
        return res

    def _failed(self, chunk, why: str) -> None:
        for f in chunk:
            self.stats.bad_frame(self.sid, f"{f.pos}: {why}")
        self.stats.drop(self.sid, "score_error", len(chunk))

    # -- bytewax hooks ----------------------------------------------------------------
    def on_batch(self, values):
        """``values``: ``(stream_id, Frame | ModelLoaded | ModelRevoked)`` in arrival order."""
        out = []
        frames = []
        for sid, v in values:
            if self.sid is None:
                self.sid = sid   # Bytewax builds the logic without its key
            if isinstance(v, (ModelLoaded, ModelRevoked)):
                out.extend(self._score(frames))
                frames = []
                self._apply(v)
            elif isinstance(v, Frame):
                frames.append(v)
        out.extend(self._score(frames))
        out.extend(self._collect(keep=len(self.inflight)))   # runs that finished meanwhile
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> Optional[datetime]:
        # runs still in flight and no new frame yet (a live source between frames, the
        # end of a replay), or frames restored from a snapshot with a model to score them:
        # look again shortly instead of holding them back
        if self.inflight or (self.pending and self.entry is not None):
            return datetime.now(timezone.utc) + _POLL
        return None

    def on_notify(self):
        out = self._score([])
        out.extend(self._collect(keep=len(self.inflight)))
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self):
        out = self._score([])
        out.extend(self._collect(keep=0))
        if self.pending:
            n = len(self.pending)
            self.stats.drop(self.sid, "no_model", n)
            log.warning("stream %s: input ended with %d frames still waiting for a valid model: "
                        "dropped", self.sid, n)
            self.pending.clear()
        if self.sid is not None:
            out.append(StreamEnd(self.sid))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self):
        """The frames handed over to this step and not emitted yet: those of the runs in
        flight and those of a file replay waiting for a model. The source's snapshot already
        counts them as read, so a restart from it would lose them; they are restored in
        front of the stream (:meth:`restore`) and scored again. The model is not kept: on a
        restart the model reader verifies and sends it again. A live stream's frames waiting
        for a model are not kept (up to ``VERISEG_PENDING`` camera frames a snapshot, while
        the model is revoked): a restart drops them, as it drops the camera's frames meanwhile."""
        frames = [f for job in self.inflight for f in job.chunk]
        frames += [f for f in self.pending if not f.live]
        return frames or None

    def restore(self, frames) -> None:
        """A snapshot's frames, oldest first, ahead of anything the stream sends next."""
        frames = list(frames or ())
        if frames and self.sid is None:
            self.sid = frames[0].stream_id   # Bytewax builds the logic without its key
        self.pending.extendleft(reversed(frames))


def _decoded(f: Frame) -> Frame:
    """The frame to adapt to a model swapped in with another input: its picture as decoded
    when it was kept (a kept frame is re-run from that picture, ``chain.rescore``), else the
    picture it has."""
    if f.raw is None:
        return f
    return dataclasses.replace(f, image=f.raw, colour=f.raw_colour)


def _keep_key(item):
    sid, value = item
    return sid, (sid, value)


@operator
def score(step_id: str, frames: Stream, models: Stream, ctx: FlowContext) -> Stream:
    """``(stream_id, ScoredFrame | StreamEnd)``: each stream's frames scored by the model its
    model events say, in order.  The events are merged into the frames by stream id, so a
    hot swap or a revocation reaches a stream between two of its frames."""
    merged = op.merge("with_models", frames, models)
    keyed = op.map("keep_key", merged, _keep_key)
    cfg, first = ctx.config, ctx.first

    def per_stream(resume_state):
        logic = ScoreLogic(ctx, None, batch=ctx.batch, pending=cfg.pending)
        # start with the model verified at build time (no startup race with the frames);
        # the model reader re-sends it (same uid: ignored) and then any later change
        logic._apply(first)
        logic.restore(resume_state)
        return logic
    return op.stateful_batch("per_stream", keyed, per_stream)
