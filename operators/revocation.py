"""The keys that may no longer score in one flow, checked right before every model run.

A ``Revoked`` event adds its key here at once, before its update reaches a stream, so a
revocation stops scoring within one poll.  When the model reader fails, the flow *halts*:
every key then counts as revoked (fail safe), because revocations can no longer be seen.
"""
from __future__ import annotations

import threading

__all__ = ["RevokedKeys"]


class RevokedKeys:
    """Thread-safe set of revoked keys with their reasons, plus the fail-safe halt."""

    def __init__(self):
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()
        self._halted = ""

    def add(self, key: str, reason: str = "") -> None:
        with self._lock:
            self._keys[key] = reason

    def halt(self, reason: str) -> None:
        with self._lock:
            self._halted = reason or "halted"

    def __contains__(self, key) -> bool:
        return bool(self._halted) or key in self._keys

    def reason(self, key) -> str:
        return self._keys.get(key, "") or self._halted
