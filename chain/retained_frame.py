"""Retained frames: the decoded frames a device keeps so that anyone can re-run the model
on them (``chain.rescore``), stored losslessly next to the masks of their stream::

    <stream>/frames/<seq>.<order>.png     seq zero-padded to 6 digits; order bgr | rgb | gray

The PNG holds the decoded pixels exactly (lossless), written so that any viewer shows their
true colours; the name states the colour order the frame was decoded in, which the frame
digest hashes (``chain.frame_digest``): reading the file back gives the very array, in the
very order, that the device hashed into its leaf.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from model_store.util import one_line

from . import errors
from .files import PathRefused, open_regular
from .frame_digest import COLOUR_ORDERS

__all__ = ["FRAMES_DIR", "PNG_OPTIONS", "frame_file", "find_frame", "read_frame", "write_frame"]

FRAMES_DIR = "frames"
#: compression 1 with run-length matching: an 800x600 sample-clip frame takes ~17 ms and
#: 347 KB (a quarter of its 1.44 MB raw); OpenCV's default level 3 ~39 ms for 319 KB, level
#: 0 ~19 ms for 1.44 MB (busy 2-core EPYC, OpenCV 5.1)
#: the largest retained-frame file read back (an 8K RGB frame stored raw is ~100 MB)
MAX_FRAME_BYTES = 256 << 20
PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


def frame_file(stream_dir: str | os.PathLike, seq: int, colour: str) -> Path:
    """Where frame ``seq`` of a stream (its output folder) decoded in ``colour`` is kept."""
    if colour not in COLOUR_ORDERS:
        raise ValueError(f"frame colour order must be one of {', '.join(COLOUR_ORDERS)}, not {colour!r}")
    return Path(stream_dir) / FRAMES_DIR / f"{int(seq):06d}.{colour.lower()}.png"


def find_frame(stream_dir: str | os.PathLike, seq: int) -> Path | None:
    """The retained frame ``seq`` of a stream's output folder, or None when none is kept."""
    for colour in COLOUR_ORDERS:
        p = frame_file(stream_dir, seq, colour)
        if p.is_file():
            return p
    return None


def write_frame(stream_dir: str | os.PathLike, seq: int, image: np.ndarray, colour: str) -> Path:
    """Keep a decoded frame (uint8 H x W x C in ``colour`` order); returns its path.
    ``OSError`` when it cannot be written (a full disk, no permission)."""
    p = frame_file(stream_dir, seq, colour)
    p.parent.mkdir(parents=True, exist_ok=True)
    picture = image[..., ::-1] if colour == "RGB" else image   # cv2 writes BGR arrays as RGB PNGs
    if not cv2.imwrite(str(p), np.ascontiguousarray(picture), PNG_OPTIONS):
        raise OSError(f"cannot write {p}")
    return p


def read_frame(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """A retained frame as it was decoded: (uint8 H x W x C, colour order). Raises
    AnchorVerificationFailed (check ``frame_missing``) for a missing or unreadable file."""
    p = Path(path)
    colour = p.name.split(".")[-2].upper() if p.name.count(".") >= 2 else ""
    if colour not in COLOUR_ORDERS or p.suffix.lower() != ".png":
        raise errors.AnchorVerificationFailed(
            f"frame missing: {p} is not a retained frame (expected <seq>.bgr.png, <seq>.rgb.png "
            "or <seq>.gray.png)", check="frame_missing")
    try:   # a regular file only, opened without following a symlink or waiting on a FIFO
        with open_regular(p, follow=False) as f:
            data = f.read(MAX_FRAME_BYTES + 1)
    except FileNotFoundError:
        raise errors.AnchorVerificationFailed(
            f"frame missing: {p} does not exist; the device did not keep this frame "
            "(VERISEG_KEEP_FRAMES) or it was rotated out", check="frame_missing") from None
    except (OSError, PathRefused) as exc:
        raise errors.AnchorVerificationFailed(
            f"frame missing: {p} cannot be read as a regular file ({one_line(exc)})",
            check="frame_missing") from None
    if len(data) > MAX_FRAME_BYTES:
        raise errors.AnchorVerificationFailed(
            f"frame missing: {p} is over {MAX_FRAME_BYTES >> 20} MiB", check="frame_missing")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    channels = COLOUR_ORDERS[colour]
    if img is not None and img.ndim == 2 and channels == 1:
        img = img[..., None]
    if img is None or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != channels:
        raise errors.AnchorVerificationFailed(
            f"frame missing: {p} is not a readable {colour} uint8 picture", check="frame_missing")
    return (np.ascontiguousarray(img[..., ::-1]) if colour == "RGB" else img), colour
