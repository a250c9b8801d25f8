"""Retained frames: the decoded frames a device keeps so that anyone can re-run the model
on them (``chain.rescore``), stored losslessly next to the masks of their stream::

    <stream>/frames/<seq>.<order>.vsf     seq zero-padded to 6 digits; order bgr | rgb | gray

The name states the colour order the frame was decoded in, which the frame digest hashes
(``chain.frame_digest``): reading the file back gives the very array, in the very order,
that the device hashed into its leaf.

The file (VSF, "VeriSeg frame"), all integers little-endian::

    offset  size  field
    0       4     magic b"VSF1"
    4       4     height H, u32, 1..65535
    8       4     width W, u32, 1..65535
    12      1     channels C, u8: 3 for bgr and rgb, 1 for gray (must agree with the name)
    13      ...   one zstd frame, to the end of the file, declaring its content size, which must be H*W*C: the
                  pixels row by row (H x W x C, C fastest), each byte replaced by its
                  difference mod 256 from the same channel of the pixel to its left
                  (the first pixel of a row is kept as is)

The delta makes a camera frame compress like PNG's "sub" filter does, and zstd level 1
writes it about five times faster than PNG (an 800x600 frame: ~4 ms and ~590 KB against
~20 ms and ~630 KB for PNG level 1; docs/design.md). A reader checks the header and the
declared size against the limits before it allocates anything.

``python -m chain frame FILE -o FRAME.png`` turns a kept frame into a PNG any viewer opens;
the reader also accepts such a PNG (``<seq>.<order>.png``) where an auditor holds one.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np
import zstandard

from model_store.util import atomic_write, one_line

from . import errors
from .files import PathRefused, open_regular
from .frame_digest import COLOUR_ORDERS

__all__ = ["FRAMES_DIR", "SUFFIX", "READ_SUFFIXES", "MAX_FRAME_BYTES", "FrameFormatError",
           "encode_frame", "decode_frame", "frame_file", "frame_names", "find_frame",
           "read_frame", "write_frame", "viewable"]

FRAMES_DIR = "frames"
SUFFIX = ".vsf"
#: what the reader takes: kept frames, and PNGs made from them for viewing
READ_SUFFIXES = (SUFFIX, ".png")
#: the largest decoded frame read back (an 8K RGB frame is ~100 MB)
MAX_FRAME_BYTES = 256 << 20
#: the largest file read: the largest frame that zstd could not shrink (its compress bound
#: adds 1/256), the header and zstd's framing
_MAX_FILE_BYTES = MAX_FRAME_BYTES + (MAX_FRAME_BYTES >> 8) + 4096
MAGIC = b"VSF1"
_HEADER = struct.Struct("<4sIIB")
_MAX_SIDE = 65535
_ZSTD_LEVEL = 1


class FrameFormatError(ValueError):
    """The bytes are not a VSF frame within the limits (one line says why)."""


def _delta(image: np.ndarray) -> np.ndarray:
    d = image.copy()
    d[:, 1:] -= image[:, :-1]     # uint8 arithmetic wraps: the difference mod 256
    return d


def encode_frame(image: np.ndarray) -> bytes:
    """The VSF bytes of a uint8 H x W x C (C 1 or 3) frame."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"a frame is uint8 H x W x 1|3, not {image.dtype} {image.shape}")
    h, w, c = image.shape
    if not (1 <= h <= _MAX_SIDE and 1 <= w <= _MAX_SIDE):
        raise ValueError(f"a frame's sides are 1..{_MAX_SIDE} pixels, not {h}x{w}")
    payload = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_content_size=True).compress(
        _delta(np.ascontiguousarray(image)).tobytes())
    return _HEADER.pack(MAGIC, h, w, c) + payload


def decode_frame(data: bytes) -> np.ndarray:
    """The uint8 H x W x C frame of VSF bytes; FrameFormatError for anything else."""
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise FrameFormatError("not a VSF frame (no VSF1 header)")
    _, h, w, c = _HEADER.unpack_from(data)
    size = h * w * c
    if not (1 <= h <= _MAX_SIDE and 1 <= w <= _MAX_SIDE) or c not in (1, 3):
        raise FrameFormatError(f"a VSF header of {h}x{w}x{c} is out of range")
    if size > MAX_FRAME_BYTES:
        raise FrameFormatError(f"a {h}x{w}x{c} frame is over {MAX_FRAME_BYTES >> 20} MiB")
    payload = data[_HEADER.size:]
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise FrameFormatError(f"the pixels are not a zstd frame ({one_line(exc)})") from None
    if declared != size:   # also -1: no size declared
        raise FrameFormatError(f"the pixels declare {declared} bytes, the header {h}x{w}x{c}")
    # one frame, read to its end: zstd refuses to write past the size its header declares
    # (checked above), and what follows the frame is refused, not ignored
    reader = zstandard.ZstdDecompressor().decompressobj()
    try:
        raw = reader.decompress(payload)
    except zstandard.ZstdError as exc:
        raise FrameFormatError(f"the pixels do not decompress ({one_line(exc)})") from None
    if not reader.eof:
        raise FrameFormatError("the pixels' zstd frame is cut short")
    if reader.unused_data:
        raise FrameFormatError(f"{len(reader.unused_data)} bytes follow the pixels' zstd frame; "
                               "a VSF file holds one frame")
    if len(raw) != size:
        raise FrameFormatError(f"the pixels hold {len(raw)} bytes, the header {h}x{w}x{c}")
    delta = np.frombuffer(raw, np.uint8).reshape(h, w, c)
    return np.cumsum(delta, axis=1, dtype=np.uint8)   # undoes the delta, mod 256


def frame_names(seq: int) -> list[str]:
    """The names frame ``seq`` may be kept under in a stream's frames folder, in the order
    a reader looks for them."""
    return [f"{int(seq):06d}.{order.lower()}{suffix}"
            for suffix in READ_SUFFIXES for order in COLOUR_ORDERS]


def frame_file(stream_dir: str | os.PathLike, seq: int, colour: str) -> Path:
    """Where frame ``seq`` of a stream (its output folder) decoded in ``colour`` is kept."""
    if colour not in COLOUR_ORDERS:
        raise ValueError(f"frame colour order must be one of {', '.join(COLOUR_ORDERS)}, not {colour!r}")
    return Path(stream_dir) / FRAMES_DIR / f"{int(seq):06d}.{colour.lower()}{SUFFIX}"


def find_frame(stream_dir: str | os.PathLike, seq: int) -> Path | None:
    """The retained frame ``seq`` of a stream's output folder, or None when none is kept."""
    for name in frame_names(seq):
        p = Path(stream_dir) / FRAMES_DIR / name
        if p.is_file():
            return p
    return None


def write_frame(stream_dir: str | os.PathLike, seq: int, image: np.ndarray, colour: str) -> Path:
    """Keep a decoded frame (uint8 H x W x C in ``colour`` order); returns its path.
    ``OSError`` when it cannot be written (a full disk, no permission)."""
    p = frame_file(stream_dir, seq, colour)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(p, encode_frame(image))   # a crash mid-write leaves no torn frame


def _order_of(p: Path) -> str:
    parts = p.name.split(".")
    colour = parts[-2].upper() if len(parts) >= 3 else ""
    if colour not in COLOUR_ORDERS or p.suffix.lower() not in READ_SUFFIXES:
        raise errors.AnchorVerificationFailed(
            f"frame missing: {p} is not a retained frame (expected <seq>.<order>.vsf or "
            "<seq>.<order>.png, order bgr, rgb or gray)", check="frame_missing")
    return colour


def read_frame(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """A retained frame as it was decoded: (uint8 H x W x C, colour order). Raises
    AnchorVerificationFailed (check ``frame_missing``) for a missing or unreadable file."""
    p = Path(path)
    colour = _order_of(p)
    try:   # a regular file only, opened without following a symlink or waiting on a FIFO
        with open_regular(p, follow=False) as f:
            data = f.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise errors.AnchorVerificationFailed(
            f"frame missing: {p} does not exist; the device did not keep this frame "
            "(VERISEG_KEEP_FRAMES) or it was rotated out", check="frame_missing") from None
    except (OSError, PathRefused) as exc:
        raise errors.AnchorVerificationFailed(
            f"frame missing: {p} cannot be read as a regular file ({one_line(exc)})",
            check="frame_missing") from None
    if len(data) > _MAX_FILE_BYTES:
        raise errors.AnchorVerificationFailed(
            f"frame missing: {p} is over {MAX_FRAME_BYTES >> 20} MiB", check="frame_missing")
    channels = COLOUR_ORDERS[colour]
    if p.suffix.lower() == SUFFIX:
        try:
            img = decode_frame(data)
        except FrameFormatError as exc:
            raise errors.AnchorVerificationFailed(
                f"frame missing: {p} is not a readable frame: {exc}", check="frame_missing") from None
    else:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is not None and img.ndim == 2:
            img = img[..., None]
        if img is not None and colour == "RGB":
            img = np.ascontiguousarray(img[..., ::-1])   # a PNG shows true colours: cv2 reads BGR
    if img is None or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != channels:
        raise errors.AnchorVerificationFailed(
            f"frame missing: {p} is not a readable {colour} uint8 picture", check="frame_missing")
    return img, colour


def viewable(image: np.ndarray, colour: str) -> bytes:
    """A retained frame as PNG bytes any viewer shows in its true colours (lossless: read
    back under the same ``<seq>.<order>.png`` name it is the very array)."""
    picture = image[..., ::-1] if colour == "RGB" else image   # cv2 writes BGR arrays as RGB PNGs
    ok, png = cv2.imencode(".png", np.ascontiguousarray(picture))
    if not ok:
        raise ValueError("cannot encode the frame as PNG")
    return png.tobytes()
