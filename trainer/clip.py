"""Write a sample clip (MJPG .avi) from consecutive frames of a folder dataset.

    python -m trainer clip --data ../shared/data/carla --first 0440 --frames 60 -o models/sample.avi
"""
from __future__ import annotations

from pathlib import Path

import cv2

from .data import find_pairs

__all__ = ["write_clip"]


def write_clip(data_dir, out, first: str | None = None, frames: int = 60, fps: float = 10.0,
               size: tuple[int, int] | None = None, quality: int = 90) -> dict:
    pairs = find_pairs(data_dir)
    stems = [p[0].stem for p in pairs]
    start = stems.index(first) if first else len(pairs) - frames
    sel = pairs[start:start + frames]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    for ip, _ in sel:
        img = cv2.imread(str(ip), cv2.IMREAD_COLOR)
        if size:
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        if writer is None:
            h, w = img.shape[:2]
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
            if not writer.isOpened():
                raise RuntimeError(f"{out}: OpenCV cannot open an MJPG writer")
            writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality)
        writer.write(img)
    writer.release()
    return {"path": str(out), "frames": len(sel), "first": sel[0][0].stem, "last": sel[-1][0].stem,
            "fps": fps, "size": [w, h], "bytes": out.stat().st_size}
