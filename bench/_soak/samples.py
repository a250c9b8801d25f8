"""What a soak samples of the running flow (RSS of its process tree, the frame counters of its
``metrics.prom``) and the trend of the RSS samples."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .flow import STREAM


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                try:
                    kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
                except OSError:
                    continue
                todo += [int(k) for k in kids if int(k) not in out]
        except OSError:
            pass
    return out


def tree_rss_mib(pid: int) -> float:
    """VmRSS of a process and all its descendants, MiB."""
    return round(sum(_rss_kib(p) for p in _descendants(pid)) / 1024, 1)


def read_counters(metrics: Path, stream: str = STREAM) -> dict:
    c = {"decoded": 0, "scored": 0, "written": 0, "dropped": 0, "fps": 0.0}
    try:
        text = metrics.read_text()
    except OSError:
        return c
    from prometheus_client.parser import text_string_to_metric_families
    try:
        samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    except ValueError:      # caught mid-write cannot happen (renamed into place); be safe
        return c
    for s in samples:
        if s.name == "veriseg_frames_total" and s.labels.get("stream") == stream:
            c[s.labels["stage"]] = int(s.value)
        elif s.name == "veriseg_frames_dropped_total" and s.labels.get("stream") == stream:
            c["dropped"] += int(s.value)
        elif s.name == "veriseg_fps":
            c["fps"] = float(s.value)
    return c


def _slope(samples: list) -> Optional[float]:
    """Least-squares slope of (t s, MiB) samples, MiB per minute."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    den = sum((t - mt) ** 2 for t, _ in samples)
    if den <= 0:
        return None
    return round(60 * sum((t - mt) * (v - mv) for t, v in samples) / den, 3)
