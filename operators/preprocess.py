"""The image-processing stage: the frame's picture at the model's size and colour order.

What "the model's size" means comes from the card's DriveSpec (``model_store.drive`` owns
the rules): the input size for stretch, the aspect-kept fit for letterbox (the zero border
is added per batch by ``drive.to_tensor``, so the picture, the overlay and the class map
stay the frame's own field of view), the frame's own size for a dynamic-size graph.
Frames already at that size and order pass through untouched (the paper skips this
stage for 512² frames).  All work is OpenCV (releases the GIL); the source runs it in its
decode thread so it overlaps scoring, and the score step only acts when the model changed
its input under a running stream.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from model_store.drive import picture_size, resize_picture

from .frames import Frame

__all__ = ["Preprocessor"]


@dataclass(frozen=True)
class Preprocessor:
    size: Optional[tuple[int, int]]   # (height, width) of the model input; None: the frame's own
    colour: str = "RGB"               # colour order the model wants
    resize: str = "stretch"           # stretch | letterbox

    @classmethod
    def for_spec(cls, spec) -> "Preprocessor":
        """From a ``model_store.card.DriveSpec`` (``card.drive_spec()``)."""
        return cls(tuple(spec.size) if spec.size else None, spec.colour, spec.resize)

    @classmethod
    def for_card(cls, card) -> "Preprocessor":
        return cls.for_spec(card.drive_spec())

    def picture(self, frame: Frame) -> tuple[int, int]:
        """(height, width) the frame's picture takes in the model input."""
        return picture_size(frame.orig_size or frame.image.shape[:2], self.size, self.resize)

    def ready(self, frame: Frame) -> bool:
        img = frame.image
        return (frame.colour == self.colour and img.shape[:2] == self.picture(frame)
                and img.flags.c_contiguous)

    def __call__(self, frame: Frame) -> Frame:
        """The frame at the model's size and colour order: a new Frame (the one given is
        returned as it is when it is ready already)."""
        if self.ready(frame):
            return frame
        t0 = time.perf_counter()
        img = resize_picture(frame.image, self.picture(frame))
        colour = frame.colour
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
