"""One image file decoded safely: its declared size is checked before decoding.

A 2 MB PNG of zeros can declare 30000 x 30000 pixels and would decode into 2.7 GB, so the
header is read first (PNG, JPEG, BMP, TIFF, WebP, PNM) and a frame over
``VERISEG_MAX_PIXELS`` is skipped, counted and named without being decoded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from .errors import BadFrame

__all__ = ["MAX_PIXELS", "declared_size", "read_image"]

#: default of VERISEG_MAX_PIXELS: 8K (33 MP) fits; a header claiming more is refused
MAX_PIXELS = 40_000_000


def _u16(b: bytes, o: int, big: bool) -> int:
    return int.from_bytes(b[o:o + 2], "big" if big else "little")


def _u32(b: bytes, o: int, big: bool) -> int:
    return int.from_bytes(b[o:o + 4], "big" if big else "little")


def declared_size(head: bytes) -> Optional[tuple[int, int]]:
    """(width, height) an image file's header declares, read without decoding (PNG, JPEG,
    BMP, TIFF, WebP, PNM); None for a format not recognised here (OpenCV then applies its
    own 2^30-pixel limit)."""
    b = bytes(head)
    try:
        if b.startswith(b"\x89PNG\r\n\x1a\n") and b[12:16] == b"IHDR":
            return _u32(b, 16, True), _u32(b, 20, True)
        if b.startswith(b"\xff\xd8"):
            i = 2
            while i + 9 < len(b):
                if b[i] != 0xFF:
                    return None
                m = b[i + 1]
                if m == 0xFF:                       # fill byte
                    i += 1
                    continue
                if m in (0x01, 0xD8) or 0xD0 <= m <= 0xD7:
                    i += 2
                    continue
                if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):   # start of frame
                    return _u16(b, i + 7, True), _u16(b, i + 5, True)
                i += 2 + _u16(b, i + 2, True)
            return None
        if b.startswith(b"BM") and len(b) >= 26:
            return abs(int.from_bytes(b[18:22], "little", signed=True)), \
                abs(int.from_bytes(b[22:26], "little", signed=True))
        if b[:4] in (b"II*\x00", b"MM\x00*"):
            big = b[:2] == b"MM"
            o = _u32(b, 4, big)
            w = h = None
            for k in range(min(_u16(b, o, big), 64)):
                e = o + 2 + 12 * k
                tag, typ = _u16(b, e, big), _u16(b, e + 2, big)
                val = _u16(b, e + 8, big) if typ == 3 else _u32(b, e + 8, big)
                if tag == 256:
                    w = val
                elif tag == 257:
                    h = val
            return (w, h) if w is not None and h is not None else None
        if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
            kind = b[12:16]
            if kind == b"VP8X":
                return (int.from_bytes(b[24:27], "little") + 1, int.from_bytes(b[27:30], "little") + 1)
            if kind == b"VP8L":
                v = _u32(b, 21, False)
                return (v & 0x3FFF) + 1, ((v >> 14) & 0x3FFF) + 1
            if kind == b"VP8 ":
                return _u16(b, 26, False) & 0x3FFF, _u16(b, 28, False) & 0x3FFF
            return None
        if len(b) > 2 and b[0:1] == b"P" and b[1:2] in b"123456":
            toks = []
            for line in b[2:4096].split(b"\n"):
                toks += line.split(b"#")[0].split()
                if len(toks) >= 2:
                    return int(toks[0]), int(toks[1])
    except (IndexError, ValueError):
        return None
    return None


def read_image(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    try:
        size = Path(path).stat().st_size
        # a frame file larger than any uncompressed frame within the limit (16-bit RGBA:
        # 8 bytes a pixel) is not read into memory
        if size > max_pixels * 8 + (1 << 20):
            raise BadFrame(f"{path}: file of {size} bytes is larger than any frame within "
                        f"VERISEG_MAX_PIXELS={max_pixels}; not read")
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise BadFrame(f"{path}: cannot read ({e.strerror or e})")
    except ValueError as e:   # e.g. a NUL byte in a path from a CSV row
        raise BadFrame(f"{path!r}: not a usable file name ({e})")
    if data.size == 0:
        raise BadFrame(f"{path}: empty file")
    # checked before decoding: a 2 MB PNG of zeros can declare 30000x30000 and would
    # decode into 2.7 GB
    wh = declared_size(data[:65536].tobytes())
    if wh is not None:
        w, h = wh
        if w <= 0 or h <= 0:
            raise BadFrame(f"{path}: header declares {w}x{h} pixels; not an image")
        if w * h > max_pixels:
            raise BadFrame(f"{path}: header declares {w}x{h} = {w * h} pixels, over the limit of "
                        f"{max_pixels} (VERISEG_MAX_PIXELS); not decoded")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise BadFrame(f"{path}: cannot decode ({str(e).strip().splitlines()[-1][:120]})")
    if img is None or img.size == 0:
        raise BadFrame(f"{path}: not a decodable image")
    if img.dtype != np.uint8:
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        else:
            raise BadFrame(f"{path}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.ndim != 3:
        raise BadFrame(f"{path}: {img.ndim}-dimensional image (expected height x width x channels)")
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif img.shape[2] == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] != 3:
        raise BadFrame(f"{path}: {img.shape[2]} channels (expected 1, 3 or 4)")
    return img
