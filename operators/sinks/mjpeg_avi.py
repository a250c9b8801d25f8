"""Motion-JPEG AVI files whose frames are encoded by libjpeg-turbo.

OpenCV's ``VideoWriter`` encodes MJPG with FFmpeg's JPEG encoder: 2.8 ms of CPU a 512²
overlay frame, the largest single cost of the sinks (``bench flow_ceiling``). ``cv2.imencode``
(libjpeg-turbo, SIMD) encodes the same frame at a slightly higher PSNR in 0.8 ms, but
OpenCV has no way to put already-encoded frames into a video file, nor does any library
already installed here (PyAV would bring a second FFmpeg). The container is small and fixed,
so this module writes it:

    RIFF 'AVI '                                       (little endian, every chunk even-padded)
      LIST 'hdrl'
        'avih'  MainAVIHeader, 56 bytes: µs a frame, flags AVIF_HASINDEX, frames, 1 stream,
                width, height
        LIST 'strl'
          'strh'  AVIStreamHeader, 56 bytes: 'vids', 'MJPG', scale 1000, rate fps x 1000, frames
          'strf'  BITMAPINFOHEADER, 40 bytes: width, height, 1 plane, 24 bits, 'MJPG'
      LIST 'movi'
        '00dc'  one JPEG (baseline, libjpeg-turbo) a frame, in order
      'idx1'  16 bytes a frame: '00dc', AVIIF_KEYFRAME, offset from 'movi', length

The frame counts and the RIFF/movi sizes are written when the file is closed; a file cut
short by a crash has them at zero, and FFmpeg (and so OpenCV and every FFmpeg-based player)
still reads its frames by scanning 'movi'. AVI 1.0 sizes are 32-bit and readers expect a
RIFF under 1 GiB, so :class:`MjpegAvi` refuses a frame that would pass ``max_bytes`` and the
caller starts the next file (:class:`~operators.sinks.overlay.OverlayVideo` does).
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, Optional

import cv2
import numpy as np

__all__ = ["MjpegAvi", "SegmentFull", "QUALITY", "MAX_BYTES"]

QUALITY = 90          # JPEG quality: PSNR 29.0 dB on the sample clip's overlay, FFmpeg's writer 28.9
MAX_BYTES = 1 << 30   # AVI 1.0: readers expect a RIFF under 1 GiB
_AVIF_HASINDEX = 0x10
_AVIIF_KEYFRAME = 0x10
_HEADER_BYTES = 224   # RIFF..'movi' fourcc, below: where the first frame chunk starts
_MOVI_AT = _HEADER_BYTES - 4   # the 'movi' fourcc: index offsets and the movi size count from it


class SegmentFull(Exception):
    """The frame would take the file past ``max_bytes``: close it and open the next one."""


def _chunk(fourcc: bytes, payload: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def _list(kind: bytes, payload: bytes) -> bytes:
    return b"LIST" + struct.pack("<I", 4 + len(payload)) + kind + payload


class MjpegAvi:
    """One MJPG AVI file of ``size`` (width, height) BGR frames at ``fps``."""

    def __init__(self, path: Path, size: tuple[int, int], fps: float, *, quality: int = QUALITY,
                 max_bytes: int = MAX_BYTES):
        self.path = Path(path)
        self.width, self.height = (int(v) for v in size)
        self.rate = max(1, int(round((fps if fps > 0 else 10.0) * 1000)))
        self.params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
        self.max_bytes = max_bytes
        self.index: list[tuple[int, int]] = []    # (offset from 'movi', length) of each frame
        self.largest = 0
        self.f: Optional[BinaryIO] = open(self.path, "wb")
        header = self._header(frames=0, riff=0, movi=4)
        assert len(header) == _HEADER_BYTES
        self.f.write(header)
        self.end = len(header)

    def write(self, bgr: np.ndarray) -> None:
        """Append one frame (``uint8`` BGR, the file's size); raises SegmentFull when the
        file has no room left for it, ValueError for a frame of another size."""
        if bgr.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame of {bgr.shape[1]}x{bgr.shape[0]} in a {self.width}x{self.height} video")
        ok, jpeg = cv2.imencode(".jpg", bgr, self.params)
        if not ok:
            raise OSError(f"cannot encode a frame of {self.path} as JPEG")
        data = jpeg.tobytes()
        chunk = _chunk(b"00dc", data)
        index_after = 16 * (len(self.index) + 1) + 8
        if self.index and self.end + len(chunk) + index_after > self.max_bytes:
            raise SegmentFull(str(self.path))
        self.f.write(chunk)
        self.index.append((self.end - _MOVI_AT, len(data)))
        self.end += len(chunk)
        self.largest = max(self.largest, len(data))

    @property
    def frames(self) -> int:
        return len(self.index)

    def close(self) -> None:
        """Write the index and the sizes; the file is complete."""
        f, self.f = self.f, None
        if f is None:
            return
        try:
            idx = b"".join(struct.pack("<4sIII", b"00dc", _AVIIF_KEYFRAME, off, n) for off, n in self.index)
            f.write(_chunk(b"idx1", idx))
            movi = self.end - _MOVI_AT                # from the 'movi' fourcc to the last frame
            file_size = self.end + 8 + len(idx)
            f.seek(0)
            f.write(self._header(frames=len(self.index), riff=file_size - 8, movi=movi))
        finally:
            f.close()

    def _header(self, *, frames: int, riff: int, movi: int) -> bytes:
        w, h = self.width, self.height
        us = int(round(1e9 / self.rate))
        buf = self.largest + 8
        avih = struct.pack("<10I4I", us, buf * self.rate // 1000, 0, _AVIF_HASINDEX, frames, 0, 1, buf,
                           w, h, 0, 0, 0, 0)
        strh = struct.pack("<4s4sIHHIIIIIIiI4h", b"vids", b"MJPG", 0, 0, 0, 0, 1000, self.rate, 0,
                           frames, buf, -1, 0, 0, 0, w, h)
        strf = struct.pack("<IiiHH4sIiiII", 40, w, h, 1, 24, b"MJPG", w * h * 3, 0, 0, 0, 0)
        hdrl = _list(b"hdrl", _chunk(b"avih", avih) + _list(b"strl", _chunk(b"strh", strh) + _chunk(b"strf", strf)))
        return b"RIFF" + struct.pack("<I", riff) + b"AVI " + hdrl + b"LIST" + struct.pack("<I", movi) + b"movi"
