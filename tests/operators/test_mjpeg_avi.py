"""operators.sinks.mjpeg_avi: the overlay's MJPG AVI, checked against its spec by hand and
read back by FFmpeg and by OpenCV's own AVI reader, whole, cut short and in segments."""
from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from operators.frames import ScoredFrame
from operators.sinks.mjpeg_avi import QUALITY, MjpegAvi, SegmentFull
from operators.sinks.overlay import OverlayVideo


def pictures(n: int, size=(48, 64)) -> list[np.ndarray]:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    return [np.dstack([(xx * 4 + i * 9) % 256, (yy * 5) % 256, np.full((h, w), 40 * i % 256)]).astype(np.uint8)
            for i in range(n)]


def read_all(path, api=cv2.CAP_FFMPEG) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path), api)
    assert cap.isOpened(), path
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, im = cap.read()
        if not ok:
            break
        frames.append(im)
    cap.release()
    return frames, fps


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255.0 ** 2 / max(1e-9, float(np.mean((a.astype(float) - b) ** 2))))


def chunks(data: bytes, start: int, end: int):
    """(fourcc, payload offset, size) of every chunk in data[start:end]."""
    at = start
    while at < end:
        fourcc, size = data[at:at + 4], struct.unpack("<I", data[at + 4:at + 8])[0]
        yield fourcc, at + 8, size
        at += 8 + size + size % 2


def test_the_file_is_the_spec_s_riff_tree(tmp_path):
    path = tmp_path / "o.avi"
    avi = MjpegAvi(path, (64, 48), fps=12.5)
    for p in pictures(5):
        avi.write(p)
    avi.close()
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"AVI "
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    top = list(chunks(data, 12, len(data)))
    assert [(c, data[o:o + 4]) for c, o, _ in top[:2]] == [(b"LIST", b"hdrl"), (b"LIST", b"movi")]
    assert top[2][0] == b"idx1" and len(top) == 3
    _, hdrl, hdrl_size = top[0]
    avih = data[hdrl + 12:hdrl + 12 + 56]
    us, _, _, flags, frames, _, streams, _, w, h = struct.unpack("<10I", avih[:40])
    assert (us, flags & 0x10, frames, streams, w, h) == (80_000, 0x10, 5, 1, 64, 48)
    strh_at = hdrl + 4 + 8 + 56 + 12 + 8
    kind, handler, *_rest = struct.unpack("<4s4sIHHIIIIIIiI4h", data[strh_at:strh_at + 56])
    scale, rate, _start, length = _rest[4:8]
    assert (kind, handler, scale, rate, length) == (b"vids", b"MJPG", 1000, 12_500, 5)
    _, movi, movi_size = top[1]
    frames_in_movi = list(chunks(data, movi + 4, movi + movi_size))
    assert [c for c, _, _ in frames_in_movi] == [b"00dc"] * 5
    _, idx, idx_size = top[2]
    entries = [struct.unpack("<4sIII", data[idx + 16 * i:idx + 16 * i + 16]) for i in range(idx_size // 16)]
    assert len(entries) == 5
    for ckid, flags, off, size in entries:
        at = movi + off                  # offsets count from the 'movi' fourcc
        assert (ckid, flags) == (b"00dc", 0x10)
        assert data[at:at + 4] == b"00dc" and struct.unpack("<I", data[at + 4:at + 8])[0] == size
        jpeg = data[at + 8:at + 8 + size]
        assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"   # a whole JPEG


def test_ffmpeg_and_opencv_read_back_every_frame(tmp_path):
    path = tmp_path / "o.avi"
    shots = pictures(7)
    avi = MjpegAvi(path, (64, 48), fps=10)
    for p in shots:
        avi.write(p)
    avi.close()
    jpegs = [cv2.imdecode(cv2.imencode(".jpg", p, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1], cv2.IMREAD_COLOR)
             for p in shots]
    own, fps = read_all(path, cv2.CAP_OPENCV_MJPEG)     # libjpeg, as the frames were encoded
    assert fps == pytest.approx(10) and len(own) == 7
    assert all(np.array_equal(g, j) for g, j in zip(own, jpegs))
    ffmpeg, fps = read_all(path, cv2.CAP_FFMPEG)         # another decoder: the same pictures
    assert fps == pytest.approx(10) and len(ffmpeg) == 7
    assert all(g.shape == (48, 64, 3) and psnr(g, j) > 30 for g, j in zip(ffmpeg, jpegs))


def test_a_file_cut_short_by_a_crash_still_gives_its_frames_to_ffmpeg(tmp_path):
    path = tmp_path / "o.avi"
    avi = MjpegAvi(path, (64, 48), fps=10)
    for p in pictures(6):
        avi.write(p)
    avi.f.flush()                    # the process dies here: no index, sizes still zero
    got, _ = read_all(path)
    assert len(got) == 6


def test_a_frame_of_another_size_is_refused(tmp_path):
    avi = MjpegAvi(tmp_path / "o.avi", (64, 48), fps=10)
    with pytest.raises(ValueError, match="48"):
        avi.write(np.zeros((64, 48, 3), np.uint8))
    avi.close()


def test_the_overlay_starts_the_next_segment_before_a_file_passes_its_limit(tmp_path):
    one = MjpegAvi(tmp_path / "probe.avi", (64, 48), fps=10)
    one.write(pictures(1)[0])
    per_frame = one.end - 224
    one.close()
    video = OverlayVideo(tmp_path, [("a", (255, 0, 0))] * 13, fps=10,
                         max_bytes=224 + 3 * per_frame + 8 + 3 * 16 + 400)
    for i, p in enumerate(pictures(10)):
        video.write(ScoredFrame("s", i, 0.0, str(i), np.full(p.shape[:2], i % 13, np.uint8), "ab" * 32,
                                image=p, colour="BGR"))
    video.close()
    files = sorted(tmp_path.glob("overlay*.avi"), key=lambda f: f.stat().st_mtime_ns)
    assert len(files) >= 3 and all(f.stat().st_size <= video.max_bytes for f in files)
    assert sum(len(read_all(f)[0]) for f in files) == 10
    with pytest.raises(SegmentFull):
        full = MjpegAvi(tmp_path / "full.avi", (64, 48), fps=10, max_bytes=224 + per_frame + 30)
        for p in pictures(3):
            full.write(p)
