"""The image-processing window: resize to the model input and fix the colour order.

The target comes from the blob's card (``card.inputs[0]``: shape N,H,W,3, colour order).
Frames already at the right size and order pass through untouched (the paper skips this
window for 512² frames).  All work is OpenCV (releases the GIL); the source runs it in its
decode thread so it overlaps scoring, and the flow's ``preprocess`` map step is then a
no-op check that only acts when the model changed its input under a running stream.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from .frames import Frame

__all__ = ["Preprocessor", "target_from_card"]


def _dim(v) -> Optional[int]:
    try:
        v = int(v)
    except (TypeError, ValueError):
        return None
    return v if v > 0 else None


def target_from_card(card) -> tuple[Optional[tuple[int, int]], str]:
    """((height, width) or None when dynamic, colour order) of the card's first input."""
    if card is None:
        return None, "RGB"
    spec = card.inputs[0]
    shape = tuple(spec.shape)
    layout = str(getattr(spec, "layout", None) or ("NHWC" if len(shape) == 4 else "HWC")).upper()
    colour = getattr(spec, "color_order", None) or getattr(spec, "colour_order", None) or "RGB"
    h = w = None
    if len(layout) == len(shape) and "H" in layout and "W" in layout:
        h, w = _dim(shape[layout.index("H")]), _dim(shape[layout.index("W")])
    size = (h, w) if h and w else None
    return size, str(colour).upper()


@dataclass(frozen=True)
class Preprocessor:
    size: Optional[tuple[int, int]]   # (height, width); None: keep the frame size
    colour: str = "RGB"               # colour order the model wants

    @classmethod
    def for_card(cls, card) -> "Preprocessor":
        size, colour = target_from_card(card)
        return cls(size, colour)

    def ready(self, frame: Frame) -> bool:
        img = frame.image
        return (frame.colour == self.colour
                and (self.size is None or img.shape[:2] == tuple(self.size))
                and img.flags.c_contiguous)

    def __call__(self, frame: Frame) -> Frame:
        """The frame at the model's size and colour order: a new Frame (the one given is
        returned as it is when it is ready already)."""
        if self.ready(frame):
            return frame
        t0 = time.perf_counter()
        img = frame.image
        colour = frame.colour
        if self.size is not None and img.shape[:2] != tuple(self.size):
            h, w = self.size
            shrink = img.shape[0] > h and img.shape[1] > w
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink and
                             (img.shape[0] >= 2 * h) else cv2.INTER_LINEAR)
        if colour != self.colour:
            if {colour, self.colour} == {"BGR", "RGB"}:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            else:
                raise ValueError(f"cannot convert colour order {colour} to {self.colour}")
            colour = self.colour
        return dataclasses.replace(
            frame, image=np.ascontiguousarray(img), colour=colour,
            orig_size=frame.orig_size or frame.image.shape[:2],
            preprocess_ms=frame.preprocess_ms + (time.perf_counter() - t0) * 1e3)
