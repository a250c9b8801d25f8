"""One stream of the source stage: a decoder thread filling a bounded buffer.

One partition per stream id (``FixedPartitionedSource``), so every stream keeps its own
position for Bytewax recovery (the snapshot is the next sequence number to read; file
sources seek there on resume).  Each partition runs a decoder thread that fills a bounded
buffer; ``next_batch`` never blocks, it only drains what is ready:

- file replay (video, image folder, CSV) never drops: the decoder waits when the buffer
  is full, ``next_batch`` hands over up to ``FILE_HANDOVER`` frames (or ``batch``, when
  larger), and it
  hands over nothing while the score has paused the stream for want of a valid model
  (``FlowContext.streams``, e.g. after a revocation until the next deploy);
- live sources (``gst:`` pipelines, ``rtsp://``) drop the *oldest* buffered frame when the
  buffer is full (counted as ``backpressure``), hand over one frame at a time (batch 1),
  and reconnect with exponential backoff when the camera goes away.

A frame that cannot be decoded is skipped, counted and reported in one line naming the
file and position; it never stops the stream.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Callable, Optional

from bytewax.inputs import StatefulSourcePartition

from chain.retries import Backoff

from ..frames import NOT_YET, Frame
from ..source_spec import SourceSpec
from ..telemetry import log, lower_thread_priority, name_os_thread
from .errors import BadFrame, StreamUnreadable
from .readers import Unreadable, open_reader

__all__ = ["StreamPartition", "DROP_REPORT_S"]

# a live stream losing frames says so at most this often (the counter has every drop)
DROP_REPORT_S = 10.0
# a file replay hands over up to this many frames a call (more when VERISEG_BATCH is larger):
# Bytewax's cost a call is shared by them (bench flow_ceiling); the score still runs them
# VERISEG_BATCH frames at a time
FILE_HANDOVER = 4
# a live stream buffers this many frames (VERISEG_QUEUE, when smaller): the flow may stall this
# long without a drop (133 ms at 30 FPS; Bytewax snapshots every sink at each 10 s epoch, and
# a sink's snapshot waits for its writer), while a flow slower than its camera for good
# drops the oldest instead of falling further behind
LIVE_BUFFER = 4
RECONNECT_FIRST_S = 0.5   # a live source's first reconnect delay; it doubles up to reconnect_max


class StreamPartition(StatefulSourcePartition):
    def __init__(self, ctx, spec: SourceSpec, start: int, *, queue: int, batch: int, loop: bool,
                 max_frames: Optional[int], prepare: Optional[Callable[[Frame], Frame]],
                 reconnect_max: float, colour: str, reader_factory=None, stall: float = 10.0,
                 max_pixels: Optional[int] = None, aux_nice: int = 0):
        self.stats, self.streams = ctx.stats, ctx.streams
        self.aux_nice = aux_nice
        self.flow_stop = ctx.stop      # set when the outputs failed: every stream ends
        self.spec = spec
        self.sid = spec.stream_id
        self.live = spec.live
        self.batch = 1 if self.live else max(FILE_HANDOVER, batch)
        self.cap = max(1, queue if not self.live else min(queue, LIVE_BUFFER))
        self.max_frames = max_frames
        self.prepare = prepare
        self.reconnect_max = reconnect_max
        self.stall = stall
        self.buf: deque = deque()
        self.drops_unreported, self.drop_reported_at = 0, None
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.finished = False
        self.next_seq = start        # snapshot: the next position not yet handed over
        self.emitted = 0
        self.idle_until = None
        try:
            self.reader = (reader_factory or open_reader)(spec, loop=loop, colour=colour)
        except (OSError, ValueError) as e:
            # e.g. a CSV that cannot be read: this stream ends with one line, the flow goes on
            self.reader = Unreadable(f"{spec.kind} source {spec.target!r}: {e}")
        if max_pixels is not None and hasattr(self.reader, "max_pixels"):
            self.reader.max_pixels = max_pixels
        self.total = None
        self.streams.started(self.sid)
        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True,
                                       name=f"veriseg-src-{self.sid}")
        self.thread.start()

    # decoder thread -------------------------------------------------------------------------
    def _drops_when_full(self) -> bool:
        return self.live and getattr(self.reader, "is_live", True)

    def _put(self, item):
        with self.cond:
            if self._drops_when_full():
                while len(self.buf) >= self.cap:
                    old = self.buf.popleft()
                    if isinstance(old, Frame):
                        self._dropped_oldest()
            else:
                while len(self.buf) >= self.cap and not self.stop.is_set():
                    self.cond.wait(0.2)
            self.buf.append(item)

    def _dropped_oldest(self):
        """Counted, and said: at the first drop, then at most once every DROP_REPORT_S with
        the count since the line before (a live camera can lose a fifth of its frames to a
        slow CPU, and the counter alone is only read by whoever scrapes it)."""
        self.stats.drop(self.sid, "backpressure")
        self.drops_unreported += 1
        now = time.monotonic()
        if self.drop_reported_at is None or now - self.drop_reported_at >= DROP_REPORT_S:
            since = ("so far" if self.drop_reported_at is None
                     else f"in the last {now - self.drop_reported_at:.0f} s")
            log.warning("stream %s: %d frame(s) dropped %s, the oldest first: the flow scores slower than "
                        "the source delivers (veriseg_frames_dropped_total, reason backpressure); to keep "
                        "up: a faster blob (int8: python -m trainer quantize), a GPU "
                        "(VERISEG_OPENVINO_DEVICE, or an NVIDIA one), or a lower source frame rate",
                        self.sid, self.drops_unreported, since)
            self.drops_unreported, self.drop_reported_at = 0, now

    def _run(self, start: int):
        name_os_thread()
        lower_thread_priority(self.aux_nice)
        backoff = Backoff(RECONNECT_FIRST_S, self.reconnect_max)
        attempt = 0
        reconnecting = False   # since a back-off, until a frame comes through
        produced = 0
        opened = False
        last_frame = time.monotonic()

        def back_off(why: str, close: bool, wait: bool = True) -> bool:
            """Count a reconnect, say why in one line, close the reader (``close``) and wait
            the backoff (``wait``), doubling it; False when the flow stopped meanwhile."""
            nonlocal attempt, opened, reconnecting
            if close:
                self.reader.close()
                opened = False
            attempt += 1
            reconnecting = True
            self.stats.add("reconnects", self.sid)
            if not wait:
                log.warning("stream %s: %s; reconnecting", self.sid, why)
                return True
            delay = backoff.next()
            log.warning("stream %s: %s; %s in %.1fs", self.sid, why, "reconnecting" if close else "retrying",
                        delay)
            return not self.stop.wait(delay)

        try:
            while not self.stop.is_set():
                if not opened:
                    try:
                        self.reader.open(start if attempt == 0 else self.reader.seq)
                        opened = True
                        if self.total is None and self.reader.total is not None:
                            self.total = self.reader.total
                            if self.max_frames is not None:
                                self.total = min(self.total, self.max_frames)
                            self.stats.totals[self.sid] = self.total
                        last_frame = time.monotonic()
                    except (ValueError, StreamUnreadable) as e:
                        self.stats.source_error(self.sid, str(e))
                        return
                    except (IOError, OSError, RuntimeError) as e:
                        if not self.live:
                            self.stats.source_error(self.sid, str(e))
                            return
                        if not back_off(str(e), close=False):
                            return
                        continue
                try:
                    t0 = time.perf_counter()
                    got = self.reader.read()
                except BadFrame as e:
                    self.stats.bad_frame(self.sid, str(e))
                    continue
                except StreamUnreadable as e:
                    self.stats.source_error(self.sid, str(e))
                    return
                except (IOError, OSError) as e:
                    if not self.live:
                        self.stats.source_error(self.sid, str(e))
                        return
                    if not back_off(str(e), close=True):
                        return
                    continue
                if got is NOT_YET:
                    if self.live and opened and time.monotonic() - last_frame > self.stall:
                        # a camera that stopped sending without an error: reconnect
                        back_off(f"no frame for {self.stall:.0f}s", close=True, wait=False)
                        last_frame = time.monotonic()
                    continue
                last_frame = time.monotonic()
                if got is None:
                    if self.live and getattr(self.reader, "reconnect_on_eos", False):
                        if not back_off("end of stream", close=True):
                            return
                        continue
                    return
                # reconnected once a frame came through, not at open: a camera that opens and
                # then fails (caps that do not negotiate) waits longer each time
                if reconnecting:
                    log.info("stream %s: reconnected", self.sid)
                    backoff.reset()
                    reconnecting = False
                dec_ms = (time.perf_counter() - t0) * 1e3
                frame = Frame(self.sid, got.seq, got.ts if got.ts is not None else time.time(),
                              got.pos, got.image, colour=got.colour, live=self.live,
                              decode_ms=dec_ms, orig_size=got.image.shape[:2], label=got.label)
                if self.prepare is not None:
                    try:
                        frame = self.prepare(frame)
                    except Exception as e:   # noqa: BLE001 - a bad frame must not stop the stream
                        self.stats.bad_frame(self.sid, f"{got.pos}: preprocessing failed: {e}")
                        continue
                self.stats.add("decoded", self.sid)
                self._put(dataclasses.replace(frame, t_emit=time.perf_counter()))
                produced += 1
                if self.max_frames is not None and produced >= self.max_frames:
                    return
        except Exception as e:  # noqa: BLE001 - report, end this stream, keep the flow alive
            self.stats.source_error(self.sid, f"decoder stopped: {type(e).__name__}: {e}")
        finally:
            try:
                self.reader.close()
            except Exception:  # noqa: BLE001
                pass
            self._put(None)   # end marker

    # Bytewax side ---------------------------------------------------------------------------
    def next_batch(self):
        if self.finished:
            raise StopIteration()
        if self.flow_stop.is_set():
            self.finished = True
            self.stop.set()
            with self.cond:
                self.cond.notify_all()
            self.streams.ended(self.sid)
            raise StopIteration()
        if self.streams.paused(self.sid) and not self._drops_when_full():
            self.idle_until = datetime.now(timezone.utc) + timedelta(milliseconds=20)
            return []
        out = []
        with self.cond:
            while self.buf and len(out) < self.batch:
                item = self.buf.popleft()
                if item is None:
                    self.finished = True
                    break
                out.append(item)
            self.cond.notify_all()
        if out:
            self.next_seq = out[-1].seq + 1
            self.emitted += len(out)
            self.idle_until = None
            return [(self.sid, f) for f in out]
        if self.finished:
            self.streams.ended(self.sid)
            raise StopIteration()
        self.idle_until = datetime.now(timezone.utc) + timedelta(milliseconds=2)
        return []

    def next_awake(self):
        return self.idle_until

    def snapshot(self):
        return self.next_seq

    def close(self):
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        self.thread.join(timeout=5)
        self.streams.ended(self.sid)
