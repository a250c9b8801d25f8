"""One stream's retained frames (``VERISEG_KEEP_FRAMES``): the decoded pictures the
policy selects, written losslessly by ``chain.retained_frame`` into ``<stream>/frames/``,
and under a budget the oldest deleted so that the stream's kept frames fit in it.

A frame that cannot be written (a full disk, no permission) is an output error like a
mask that cannot be written: the sink stops the flow with one line and counts what it
drops.  A frame larger than a kept frame may be (``chain.retained_frame.MAX_FRAME_BYTES``:
no reader would take it back, so it could never be re-scored) is not written: it is counted
(``not_kept``) and said once a stream.  Frames kept by an earlier run of the stream count
against the budget.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path

from chain.retained_frame import FRAMES_DIR, MAX_FRAME_BYTES, READ_SUFFIXES, write_frame

from ..frames import ScoredFrame
from ..keep_frames import KeepFrames
from ..telemetry import log

__all__ = ["FrameKeeper"]


class FrameKeeper:
    def __init__(self, stream_dir: Path, policy: KeepFrames, stats, sid: str):
        self.dir = Path(stream_dir) / FRAMES_DIR
        self.policy, self.stats, self.sid = policy, stats, sid
        self.dir.mkdir(parents=True, exist_ok=True)
        self.kept: deque = deque()    # (path, bytes), oldest first
        self.too_large_said = False
        self.bytes = 0
        if policy.budget_bytes is not None:   # an earlier run's frames share the budget
            for p in sorted(q for q in self.dir.iterdir() if q.suffix in READ_SUFFIXES):
                self._account(p, p.stat().st_size)
            self._rotate()

    def keep(self, r: ScoredFrame) -> None:
        """Write ``r``'s decoded picture when the policy keeps its seq (``OSError`` when it
        cannot be written)."""
        if r.raw is None or not self.policy.keeps(r.seq):
            return
        if r.raw.nbytes > MAX_FRAME_BYTES:
            self.stats.add("not_kept", self.sid)
            if not self.too_large_said:
                h, w = r.raw.shape[:2]
                log.warning("stream %s: frame %d is %dx%d, %d MiB decoded, over the %d MiB a kept frame "
                            "may hold: not kept, so it cannot be re-scored (veriseg_frames_total, stage "
                            "not_kept); lower the source's resolution to keep its frames", self.sid, r.seq,
                            w, h, r.raw.nbytes >> 20, MAX_FRAME_BYTES >> 20)
                self.too_large_said = True
            return
        p = write_frame(self.dir.parent, r.seq, r.raw, r.raw_colour)
        self.stats.add("kept", self.sid)
        if self.policy.budget_bytes is not None:
            self._account(p, p.stat().st_size)
            self._rotate()

    def _account(self, path: Path, size: int) -> None:
        self.kept.append((path, size))
        self.bytes += size

    def _rotate(self) -> None:
        # the newest frame stays even when it alone is over the budget
        while self.bytes > self.policy.budget_bytes and len(self.kept) > 1:
            path, size = self.kept.popleft()
            self.bytes -= size
            try:
                path.unlink()
            except FileNotFoundError:
                pass   # deleted by someone else: its space is free all the same
            self.stats.add("rotated", self.sid)
            log.debug("stream %s: kept frame %s rotated out (budget %d bytes)", self.sid, path.name,
                      self.policy.budget_bytes)
