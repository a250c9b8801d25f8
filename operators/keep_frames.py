"""``VERISEG_KEEP_FRAMES``: which decoded frames a stream keeps for re-execution.

    off              keep none (the default): results stay provable, not re-checkable
    all              keep every frame
    every:N          keep the frames whose seq is a multiple of N
    budget:MB        keep every frame, and delete the oldest kept ones of the stream while
                     its kept frames take more than MB megabytes (10^6 bytes)
    every:N,budget:MB   both

Kept frames hold the decoded picture losslessly (``chain.retained_frame``), so an
auditor can re-run the registered model on them (``anchor-verify --rescore``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["KeepFrames"]

_FORMS = "off, all, every:N, budget:MB or every:N,budget:MB"


@dataclass(frozen=True)
class KeepFrames:
    every: int = 0                  # 0: keep none; 1: every frame
    budget_bytes: Optional[int] = None   # None: no limit

    @property
    def on(self) -> bool:
        return self.every > 0

    def keeps(self, seq: int) -> bool:
        return self.every > 0 and seq % self.every == 0

    @classmethod
    def parse(cls, text: str) -> "KeepFrames":
        """``ValueError`` (one line: the forms accepted) for anything else."""
        t = str(text).strip().lower()
        if t in ("", "off", "0", "none"):
            return cls()
        if t == "all":
            return cls(1)
        every, budget = None, None
        for part in t.split(","):
            name, _, value = part.strip().partition(":")
            try:
                n = int(value) if name == "every" else float(value) if name == "budget" else None
            except ValueError:
                n = None
            if name == "every" and every is None and n is not None and 1 <= n <= 1_000_000:
                every = n
            elif name == "budget" and budget is None and n is not None and 0 < n <= 1e9:
                budget = int(n * 1e6)
            else:
                raise ValueError(f"expected {_FORMS} (N a whole number in 1..1000000, MB a "
                                 f"number > 0), got {text!r}")
        return cls(every or 1, budget)

    def describe(self) -> str:
        if not self.on:
            return "off"
        what = "all" if self.every == 1 else f"every:{self.every}"
        return what + (f",budget:{self.budget_bytes / 1e6:g}" if self.budget_bytes else "")
