"""One stream's outputs: a writer thread turns each scored frame into its mask, results
line, overlay frame and anchor leaf.

The scoring thread only enqueues (bounded queue: a slow disk slows the flow, it never drops
results); PNG and MJPG encoding release the GIL.  Recovery: the snapshot is the byte
length of ``results.jsonl``, the open anchor batch (``AnchorBatcher.open_batch``) and the
video segment; on resume the file is truncated back to that length and masks are
rewritten by name, so outputs after a restart hold each frame once.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import cv2
import numpy as np
from bytewax.outputs import StatefulSinkPartition

from chain.anchoring import AnchorBatcher
from chain.results import frame_record
from model_store.util import one_line

from ..anchor_seal import write_sealed
from ..frames import ScoredFrame
from ..telemetry import lower_thread_priority, name_os_thread
from .frames import FrameKeeper
from .overlay import OverlayVideo

if TYPE_CHECKING:
    from .result_sink import ResultSink

__all__ = ["ResultPartition", "NullPartition"]

# class maps gain nothing from PNG row filters: no filter + RLE is 4x faster than the
# default (0.43 vs 1.7 ms at 512², 9 vs 10 KB)
_PNG_OPTS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    _PNG_OPTS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


class ResultPartition(StatefulSinkPartition):
    def __init__(self, sink: "ResultSink", sid: str, resume):
        self.sink = sink
        self.sid = sid
        self.dir = sink.out / sid
        self.dir.mkdir(parents=True, exist_ok=True)
        self.masks_dir = self.dir / "masks"
        if sink.masks:
            self.masks_dir.mkdir(exist_ok=True)
        self.frames = (FrameKeeper(self.dir, sink.keep_frames, sink.stats, sid)
                       if sink.keep_frames.on else None)
        resume = resume or {}
        self.jsonl_path = self.dir / "results.jsonl"
        self.jsonl = None
        if sink.jsonl:
            off = int(resume.get("jsonl_bytes", 0))
            mode = "r+b" if (resume and self.jsonl_path.exists()) else "wb"
            self.jsonl = open(self.jsonl_path, mode)
            if mode == "r+b":
                self.jsonl.truncate(off)
                self.jsonl.seek(off)
        self.video = (OverlayVideo(self.dir, sink.classes, fps=sink.fps, scale=sink.video_scale,
                                   segment=int(resume.get("video_segment", -1)))
                      if sink.video else None)
        self.names = [n for n, _ in sink.classes]
        # chain.anchoring owns the batching rule (every N leaves, a new key closes a batch);
        # the flow seals each closed batch and queues it for the sender thread
        self.batcher = (AnchorBatcher(every=sink.anchor_every, send=self._send_batch,
                                      resume=resume.get("open_batch"))
                        if sink.anchor_every else None)
        self.q: "queue.Queue" = queue.Queue(maxsize=64)
        self.err: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"veriseg-sink-{sid}")
        self.thread.start()
        sink.metrics.acquire()

    # -- writer thread ----------------------------------------------------------------
    def _run(self):
        name_os_thread()
        lower_thread_priority(self.sink.aux_nice)
        while True:
            item = self.q.get()
            try:
                if item is None:
                    return
                if isinstance(item, threading.Event):
                    try:
                        if self.jsonl is not None and not self.sink.failed:
                            self.jsonl.flush()
                    finally:
                        item.set()
                    continue
                if self.sink.failed:
                    self.sink.stats.drop(self.sid, "output_error")
                else:
                    self._write(item)
            except Exception as e:  # noqa: BLE001 - disk full, permissions: stop the flow cleanly
                self.sink.fail(f"stream {self.sid}: writing outputs to {self.dir} failed: {one_line(e)}")
            finally:
                self.q.task_done()

    def _write(self, r: ScoredFrame):
        t0 = time.perf_counter()
        mask = None
        class_map = r.class_map
        if self.sink.mask_size == "frame" and r.orig_size and class_map.shape[:2] != tuple(r.orig_size):
            # the frame's own pixels (as labels are); the mask, its line and its leaf agree
            h, w = r.orig_size
            class_map = cv2.resize(np.ascontiguousarray(class_map), (w, h), interpolation=cv2.INTER_NEAREST)
        if self.sink.masks:
            mask = f"masks/{r.seq:06d}.png"
            if not cv2.imwrite(str(self.dir / mask), class_map, _PNG_OPTS):
                raise OSError(f"cannot write {self.dir / mask}")
        # chain.results owns the line and its leaf: anchor-verify recomputes both the same way
        record = frame_record(r.stream_id, r.seq, r.model_key, class_map, ts=r.ts, pos=r.pos,
                              class_names=[n for n, _ in r.classes] if r.classes else self.names,
                              batch=r.batch, mask=mask, frame=r.frame_digest, profile=r.profile,
                              with_shares=self.jsonl is not None,
                              with_leaf=self.batcher is not None)
        if self.frames is not None:
            self.frames.keep(r)
        if self.video is not None and r.image is not None:
            self.video.write(r)
        if self.batcher is not None:
            self.batcher.add_leaf(r.model_key, record.anchor_leaf)
        lat = dict(r.latency_ms)
        now = time.perf_counter()
        lat["sink"] = round((now - t0) * 1e3, 3)
        if r.t_emit:   # decode start to written: the frame's end-to-end latency in the flow
            lat["total"] = round(lat.get("decode", 0) + lat.get("preprocess", 0)
                                 + (now - r.t_emit) * 1e3, 3)
            self.sink.stats.latency("total", lat["total"])
        if self.jsonl is not None:
            line = dict(record.line, latency_ms=lat)
            self.jsonl.write((json.dumps(line, separators=(",", ":")) + "\n").encode())
        self.sink.stats.latency("sink", lat["sink"])
        self.sink.stats.add("written", self.sid)
        for view in self.sink.views:   # a reference: a view encodes on demand
            view.offer(r, lat.get("total"))

    def _send_batch(self, batch) -> Path:
        path = (self.sink.out / "anchors" / self.sid /
                f"{batch.first_seq:06d}-{batch.last_seq:06d}.json")
        write_sealed(path, batch, self.sink.secret)
        if self.sink.sender is not None:
            self.sink.sender.submit(path, batch)
        return path

    # -- bytewax side -----------------------------------------------------------------
    def write_batch(self, values):
        for r in values:
            if not isinstance(r, ScoredFrame):
                continue   # StreamEnd
            if r.stream_id != self.sid:
                raise RuntimeError(f"result of stream {r.stream_id} routed to partition {self.sid}")
            if self.sink.failed:
                self.sink.stats.drop(self.sid, "output_error")
                continue
            self.q.put(r)

    def _flush(self):
        ev = threading.Event()
        self.q.put(ev)
        ev.wait()

    def snapshot(self):
        self._flush()
        return {"jsonl_bytes": self.jsonl.tell() if self.jsonl is not None else 0,
                "video_segment": self.video.segment if self.video is not None else -1,
                "open_batch": self.batcher.open_batch() if self.batcher is not None else None}

    def close(self):
        self._flush()
        self.q.put(None)
        self.thread.join()
        try:
            if self.batcher is not None and not self.sink.failed:
                self.batcher.flush()
            if self.video is not None:
                self.video.close()
            if self.jsonl is not None:
                if self.sink.failed:   # do not retry a flush that already failed
                    try:
                        self.jsonl.close()
                    except OSError:
                        pass
                else:
                    self.jsonl.close()
        except Exception as e:  # noqa: BLE001
            self.sink.fail(f"stream {self.sid}: closing outputs in {self.dir} failed: {one_line(e)}")
        self.sink.part_closed(self.sid)


class NullPartition(StatefulSinkPartition):
    """Stands in for a stream whose output folder could not be created."""

    def __init__(self, sink, sid):
        self.sink, self.sid = sink, sid
        sink.metrics.acquire()

    def write_batch(self, values):
        self.sink.stats.drop(self.sid, "output_error", sum(isinstance(r, ScoredFrame) for r in values))

    def snapshot(self):
        return None

    def close(self):
        self.sink.part_closed(self.sid)
