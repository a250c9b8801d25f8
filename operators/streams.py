"""Which streams of one flow have ended, and which file replays wait for a valid model.

The score pauses a file stream while no valid model may score it (after a revocation,
until the next deploy), so a replay waits instead of dropping frames; the source reads the
pause.  The model reader ends with the last stream.  Both hold only within one process:
across processes (``-i``) the bounded drop of the score applies instead.
"""
from __future__ import annotations

import threading
from typing import Iterable

__all__ = ["StreamControl"]


class StreamControl:
    def __init__(self):
        self._lock = threading.Lock()
        self._done: dict[str, threading.Event] = {}
        self._paused: set[str] = set()

    def _event(self, sid: str) -> threading.Event:
        with self._lock:
            ev = self._done.get(sid)
            if ev is None:
                ev = self._done[sid] = threading.Event()
            return ev

    def started(self, sid: str) -> None:
        self._event(sid).clear()

    def ended(self, sid: str) -> None:
        self._event(sid).set()

    def done(self, sid: str) -> bool:
        return self._event(sid).is_set()

    def all_done(self, sids: Iterable[str]) -> bool:
        return all(self.done(s) for s in sids)

    def pause(self, sid: str, paused: bool) -> None:
        """Pause (or resume) handing over a file stream's frames; live sources ignore it."""
        with self._lock:
            if paused:
                self._paused.add(sid)
            else:
                self._paused.discard(sid)

    def paused(self, sid: str) -> bool:
        with self._lock:
            return sid in self._paused
