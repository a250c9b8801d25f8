"""Video files through OpenCV."""
from __future__ import annotations

from typing import Optional

import cv2

from ..frames import Decoded
from .errors import BadFrame

__all__ = ["VideoReader"]


class VideoReader:
    """OpenCV video file. ``seq`` is the running frame count (keeps growing when looping)."""
    live = False

    def __init__(self, path: str, loop: bool = False):
        self.path = path
        self.loop = loop
        self.cap = None
        self.count = 0
        self.idx = 0

    @property
    def total(self) -> Optional[int]:
        return None if self.loop else (self.count or None)

    def _open(self):
        cap = cv2.VideoCapture(self.path)
        if not cap.isOpened():
            raise IOError(f"cannot open video {self.path!r}")
        self.cap = cap
        self.count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)

    def open(self, start: int = 0):
        self._open()
        self.seq = start
        self.idx = start % self.count if (self.loop and self.count) else start
        self._fails = 0
        if self.idx:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, self.idx)

    def read(self) -> Optional[Decoded]:
        """The next frame; None at the end; raises BadFrame for a frame that cannot be decoded."""
        while True:
            seq, idx = self.seq, self.idx
            ok, img = self.cap.read()
            if ok and img is not None and img.size:
                self.seq += 1
                self.idx += 1
                self._fails = 0
                return Decoded(seq, f"{self.path}#{idx}", img)
            if self.count and idx < self.count - 1 and self._fails < 64:
                # a frame in the middle failed to decode: skip it and carry on
                # (FFmpeg moves past the bad packet; the next read gives the next frame)
                self._fails += 1
                self.seq += 1
                self.idx += 1
                raise BadFrame(f"{self.path}#{idx}: frame could not be decoded")
            if self.loop and (self.count or idx > 0):
                self.cap.release()
                self._open()
                self.idx = 0
                self._fails = 0
                continue
            return None

    def close(self):
        if self.cap is not None:
            self.cap.release()
            self.cap = None
