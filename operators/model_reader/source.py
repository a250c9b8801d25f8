"""The model reader as a Bytewax input and the ``verified_models`` operator.

One partition per stream id, emitting ``(stream_id, ModelLoaded | ModelRevoked)``; a
partition ends when its stream's frame source has ended in this process (Bytewax places
same-named partitions of the two inputs on the same worker).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from ..context import FlowContext
from .watcher import ModelWatcher

__all__ = ["verified_models", "ModelReaderSource"]


class ReaderPartition(StatefulSourcePartition):
    def __init__(self, watcher: ModelWatcher, sid: str):
        self.w = watcher
        self.sid = sid
        self.i = watcher.start_index()
        self.awake = None
        watcher.start()

    def next_batch(self):
        with self.w.cond:
            new = self.w.updates[self.i:]
            self.i = len(self.w.updates)
        if new:
            self.awake = None
            return [(self.sid, u) for u in new]
        if self.w.streams.done(self.sid):
            if self.w.sids and self.w.streams.all_done(self.w.sids):
                self.w.stop.set()   # the follower thread ends with the last stream
            raise StopIteration()
        self.awake = datetime.now(timezone.utc) + timedelta(milliseconds=20)
        return []

    def next_awake(self):
        return self.awake

    def snapshot(self):
        return None   # on resume the watcher re-verifies and re-emits the model in use

    def close(self):
        pass


class ModelReaderSource(FixedPartitionedSource):
    def __init__(self, watcher: ModelWatcher, stream_ids: Iterable[str]):
        self.watcher = watcher
        self.sids = list(stream_ids)

    def list_parts(self):
        return list(self.sids)

    def build_part(self, step_id, for_part, resume_state):
        return ReaderPartition(self.watcher, for_part)


@operator
def verified_models(step_id: str, flow: Dataflow, ctx: FlowContext) -> Stream:
    """``(stream_id, ModelLoaded | ModelRevoked)``: the model verified at start, then every
    verified hot swap and revocation the watcher follows, one partition per stream (Bytewax
    places it on the worker of that stream's frames, so the events meet them in order)."""
    return op.input("follow", flow, ModelReaderSource(ctx.watcher, ctx.config.stream_ids))
