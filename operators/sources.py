"""The source window: Bytewax sources that decode frames in a background thread.

One partition per stream id (``FixedPartitionedSource``), so every stream keeps its own
position for Bytewax recovery (the snapshot is the next sequence number to read; file
sources seek there on resume).  Each partition runs a decoder thread that fills a bounded
buffer; ``next_batch`` never blocks, it only drains what is ready:

- file replay (video, image folder, CSV) never drops: the decoder waits when the buffer
  is full, ``next_batch`` hands over up to ``batch`` frames (micro-batching), and it
  hands over nothing while the score has paused the stream for want of a valid model
  (``FlowContext.streams``, e.g. after a revocation until the next deploy);
- live sources (``gst:`` pipelines, ``rtsp://``) drop the *oldest* buffered frame when the
  buffer is full (counted as ``backpressure``), hand over one frame at a time (batch 1),
  and reconnect with exponential backoff when the camera goes away.

A frame that cannot be decoded is skipped, counted and reported in one line naming the
file and position; it never stops the stream.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, Optional

import cv2
import numpy as np
import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from .config import IMAGE_EXTS, SourceSpec
from .context import FlowContext
from .frames import NOT_YET, Decoded, Frame
from .telemetry import log, lower_thread_priority

__all__ = ["read_frames", "FrameSource", "open_reader", "VideoReader", "ImageListReader", "GstReader",
           "gst_available", "check_pipeline"]

# --- readers: the blocking decode side ------------------------------------------------------
class _Skip(Exception):
    """A frame that could not be decoded (message names file and position)."""


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
        """The next frame; None at the end; raises _Skip for a frame that cannot be decoded."""
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
                raise _Skip(f"{self.path}#{idx}: frame could not be decoded")
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


def _imread(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    try:
        size = Path(path).stat().st_size
        # a frame file larger than any uncompressed frame within the limit (16-bit RGBA:
        # 8 bytes a pixel) is not read into memory
        if size > max_pixels * 8 + (1 << 20):
            raise _Skip(f"{path}: file of {size} bytes is larger than any frame within "
                        f"VERISEG_MAX_PIXELS={max_pixels}; not read")
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise _Skip(f"{path}: cannot read ({e.strerror or e})")
    except ValueError as e:   # e.g. a NUL byte in a path from a CSV row
        raise _Skip(f"{path!r}: not a usable file name ({e})")
    if data.size == 0:
        raise _Skip(f"{path}: empty file")
    # checked before decoding: a 2 MB PNG of zeros can declare 30000x30000 and would
    # decode into 2.7 GB
    wh = declared_size(data[:65536].tobytes())
    if wh is not None:
        w, h = wh
        if w <= 0 or h <= 0:
            raise _Skip(f"{path}: header declares {w}x{h} pixels; not an image")
        if w * h > max_pixels:
            raise _Skip(f"{path}: header declares {w}x{h} = {w * h} pixels, over the limit of "
                        f"{max_pixels} (VERISEG_MAX_PIXELS); not decoded")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise _Skip(f"{path}: cannot decode ({str(e).strip().splitlines()[-1][:120]})")
    if img is None or img.size == 0:
        raise _Skip(f"{path}: not a decodable image")
    if img.dtype != np.uint8:
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        else:
            raise _Skip(f"{path}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.ndim != 3:
        raise _Skip(f"{path}: {img.ndim}-dimensional image (expected height x width x channels)")
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif img.shape[2] == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] != 3:
        raise _Skip(f"{path}: {img.shape[2]} channels (expected 1, 3 or 4)")
    return img


def _printable(s: str) -> str:
    """A CSV cell for a message: undecodable bytes as \\xNN, control characters escaped
    (a log line must stay one line and encodable)."""
    s = s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


class ImageListReader:
    """Sorted image folder or CSV rows: (position label, image path, label path, timestamp)."""
    live = False
    max_pixels = MAX_PIXELS

    def __init__(self, entries: list, loop: bool = False, origin: str = ""):
        self.entries = entries
        self.loop = loop
        self.origin = origin

    @classmethod
    def from_dir(cls, folder: str, loop: bool = False) -> "ImageListReader":
        root = Path(folder)
        sub = root / "images"
        if sub.is_dir() and not any(p.suffix.lower() in IMAGE_EXTS for p in root.iterdir()):
            root = sub   # a dataset folder (images/ + labels/)
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        labels_dir = root.parent / "labels" if root.name == "images" else None
        entries = []
        for p in files:
            lab = None
            if labels_dir is not None and labels_dir.is_dir():
                for ext in (".png", p.suffix):
                    c = labels_dir / (p.stem + ext)
                    if c.is_file():
                        lab = str(c)
                        break
            entries.append((str(p), str(p), lab, None))
        return cls(entries, loop, origin=str(folder))

    @classmethod
    def from_csv(cls, path: str, loop: bool = False) -> "ImageListReader":
        base = Path(path).parent
        with open(path, "rb") as f:
            raw = f.read()
        # bytes that are not UTF-8 stay as they are (surrogateescape): on Linux such a cell
        # still names the file on disk, and messages show them as \\xNN
        text = raw.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
        dialect = "excel-tab" if ("\t" in text.splitlines()[0] if text else False) else "excel"
        rows: list = []
        reader = csv.reader(text.splitlines(), dialect=dialect)
        while True:
            try:
                rows.append(next(reader))
            except StopIteration:
                break
            except csv.Error as e:   # e.g. a field over the csv module's size limit
                rows.append(e)
        img_col, lab_col, ts_col = 0, 1, 2
        start = 0
        if rows and isinstance(rows[0], list):
            head = [c.strip().lower() for c in rows[0]]
            names_img = ("image", "path", "frame", "file", "filename", "image_path")
            if any(h in names_img for h in head):
                img_col = next(i for i, h in enumerate(head) if h in names_img)
                lab_col = next((i for i, h in enumerate(head) if h in ("label", "mask", "label_path")), None)
                ts_col = next((i for i, h in enumerate(head) if h in ("timestamp", "ts", "time")), None)
                start = 1
        entries = []
        for n, row in enumerate(rows[start:], start=start + 1):
            pos = f"{path}:row {n}"
            if isinstance(row, csv.Error):
                entries.append((pos, None, None, f"not a CSV row ({row})"))
                continue
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if img_col >= len(row) or not row[img_col].strip():
                entries.append((pos, None, None, "missing image column"))
                continue
            img = row[img_col].strip()
            if "\x00" in img:
                entries.append((f"{pos} ({_printable(img)[:120]})", None, None,
                                "the image path contains a NUL byte"))
                continue
            img_p = Path(img) if Path(img).is_absolute() else base / img
            lab = row[lab_col].strip() if lab_col is not None and lab_col < len(row) else ""
            lab_p = (str(Path(lab) if Path(lab).is_absolute() else base / lab)) if lab else None
            ts = None
            if ts_col is not None and ts_col < len(row) and row[ts_col].strip():
                try:
                    ts = float(row[ts_col])
                except ValueError:
                    ts = None   # a label column that is not a timestamp: keep going
            entries.append((f"{pos} ({_printable(img)[:200]})", str(img_p), lab_p, ts))
        return cls(entries, loop, origin=str(path))

    @property
    def total(self) -> Optional[int]:
        return None if self.loop else len(self.entries)

    def open(self, start: int = 0):
        self.seq = start

    def read(self) -> Optional[Decoded]:
        n = len(self.entries)
        if n == 0 or (not self.loop and self.seq >= n):
            return None
        seq = self.seq
        self.seq += 1
        pos, img_path, label, ts = self.entries[seq % n]
        if img_path is None:
            raise _Skip(f"{pos}: {ts}")
        try:
            img = _imread(img_path, self.max_pixels)
        except _Skip as e:
            raise _Skip(_printable(f"{pos}: {e}" if pos != img_path else str(e))) from None
        return Decoded(seq, pos, img, label=label, ts=ts)

    def close(self):
        pass


# --- GStreamer ------------------------------------------------------------------------------
@functools.cache
def _load_gst():
    """(Gst module, None) or (None, why not): GStreamer is initialised once per process."""
    try:
        import gi
        gi.require_version("Gst", "1.0")
        gi.require_version("GstApp", "1.0")
        from gi.repository import Gst, GstApp  # noqa: F401 - GstApp gives appsink its methods
        Gst.init(None)
        return Gst, None
    except Exception as e:  # ImportError, ValueError (no typelib)
        return None, f"{type(e).__name__}: {e}"


def _gst():
    gst, why = _load_gst()
    if gst is None:
        raise RuntimeError(f"GStreamer/PyGObject not available ({why}); install the gst extra "
                           "and the gstreamer1.0 packages")
    return gst


def _gerr(e) -> str:
    return str(getattr(e, "message", None) or e).strip().splitlines()[0]


def check_pipeline(kind: str, target: str, colour: str = "BGR") -> None:
    """Parse a ``gst:`` launch string without running it; ValueError (one line) if bad."""
    r = GstReader(kind, target, colour)
    Gst = _gst()
    try:
        pipe = Gst.parse_launch(r.launch_string())
    except Exception as e:
        raise ValueError(f"VERISEG_SOURCE: bad GStreamer pipeline {target!r}: {_gerr(e)}") from None
    pipe.set_state(Gst.State.NULL)


def gst_available() -> bool:
    try:
        _gst()
        return True
    except RuntimeError:
        return False


class GstReader:
    """A GStreamer launch string ending in an appsink (one is appended when missing).

    Pulls with ``try_pull_sample`` (never the blocking ``pull-sample`` signal), checks
    ``is_eos`` and the bus for errors.  ``rtsp://`` URLs become an ``rtspsrc`` pipeline.
    """
    live = True
    total = None

    def __init__(self, kind: str, target: str, colour: str = "BGR", reconnect_on_eos: bool = None):
        self.kind = kind
        self.target = target
        self.colour = colour if colour in ("RGB", "BGR") else "BGR"
        self.reconnect_on_eos = (kind == "rtsp") if reconnect_on_eos is None else reconnect_on_eos
        self.pipeline = None
        self.sink = None
        self.seq = 0
        self.is_live = True

    def launch_string(self) -> str:
        tail = (f"videoconvert ! video/x-raw,format={self.colour} ! "
                f"appsink name=veriseg_sink")
        if self.kind == "rtsp":
            return (f"rtspsrc location={self.target} latency=100 ! decodebin ! {tail}")
        desc = self.target
        if "appsink" not in desc:
            desc = f"{desc} ! {tail}"
        return desc

    def open(self, start: int = 0):
        Gst = _gst()
        self.seq = max(self.seq, start)
        desc = self.launch_string()
        try:
            pipe = Gst.parse_launch(desc)
        except Exception as e:
            raise ValueError(f"bad GStreamer pipeline {desc!r}: {_gerr(e)}") from None
        sink = pipe.get_by_name("veriseg_sink")
        if sink is None:
            it = pipe.iterate_sinks()
            while True:
                res, el = it.next()
                if res != Gst.IteratorResult.OK:
                    break
                if el.get_factory() and el.get_factory().get_name() == "appsink":
                    sink = el
                    break
        if sink is None:
            raise IOError(f"GStreamer pipeline has no appsink: {desc!r}")
        sink.set_property("emit-signals", False)
        sink.set_property("sync", False)
        # no silent drops inside GStreamer: the decoder thread pulls continuously and the
        # bounded buffer behind it drops the oldest frame, counted
        sink.set_property("max-buffers", 2)
        sink.set_property("drop", False)
        self.pipeline, self.sink = pipe, sink
        self.bus = pipe.get_bus()
        ret = pipe.set_state(Gst.State.PAUSED)
        if ret != Gst.StateChangeReturn.FAILURE:
            live = ret == Gst.StateChangeReturn.NO_PREROLL
            ret = pipe.set_state(Gst.State.PLAYING)
            if ret == Gst.StateChangeReturn.NO_PREROLL:
                live = True
        if ret == Gst.StateChangeReturn.FAILURE:
            err = self._bus_error() or "state change to PLAYING failed"
            self.close()
            raise IOError(f"GStreamer pipeline {self.target!r}: {err}")
        # a live source (camera, RTSP, is-live=true) does not preroll: it drops under
        # backpressure; a non-live pipeline (a file) is replayed without drops
        self.is_live = self.kind == "rtsp" or live

    def _bus_error(self) -> Optional[str]:
        Gst = _gst()
        if self.bus is None:
            return None
        msg = self.bus.pop_filtered(Gst.MessageType.ERROR)
        if msg is None:
            return None
        err, dbg = msg.parse_error()
        return f"{err.message}"

    def read(self, timeout: float = 0.1):
        """The next frame; NOT_YET when none arrived in ``timeout``; None at the end of the
        stream; raises IOError on a pipeline error, _Skip for a buffer it cannot read."""
        Gst = _gst()
        sample = self.sink.try_pull_sample(int(timeout * Gst.SECOND))
        if sample is None:
            err = self._bus_error()
            if err:
                raise IOError(f"{self.kind} {self.target!r}: {err}")
            if self.sink.is_eos():
                return None
            return NOT_YET
        seq = self.seq
        self.seq += 1
        buf = sample.get_buffer()
        caps = sample.get_caps()
        st = caps.get_structure(0)
        w, h = st.get_value("width"), st.get_value("height")
        fmt = st.get_value("format")
        pts = buf.pts
        ok, info = buf.map(Gst.MapFlags.READ)
        if not ok:
            raise _Skip(f"{self.kind} {self.target!r} frame {seq}: cannot map buffer")
        try:
            if fmt in ("RGB", "BGR"):
                ch = 3
            elif fmt == "GRAY8":
                ch = 1
            else:
                raise _Skip(f"{self.kind} frame {seq}: unsupported format {fmt} (add videoconvert ! "
                            "video/x-raw,format=BGR before the appsink)")
            data = np.frombuffer(info.data, dtype=np.uint8)
            if h <= 0 or w <= 0 or data.size < h * w * ch:
                raise _Skip(f"{self.kind} frame {seq}: buffer of {data.size} bytes for {w}x{h} {fmt}")
            stride = data.size // h
            img = data[: h * stride].reshape(h, stride)[:, : w * ch].reshape(h, w, ch).copy()
        finally:
            buf.unmap(info)
        if ch == 1:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
            fmt = "BGR"
        pos = f"{self.kind}:{self.target[:60]}#pts={pts if pts != Gst.CLOCK_TIME_NONE else 'none'}"
        return Decoded(seq, pos, img, colour=fmt)

    def close(self):
        if self.pipeline is not None:
            Gst = _gst()
            self.pipeline.set_state(Gst.State.NULL)
            self.pipeline.get_state(Gst.SECOND)
        self.pipeline = self.sink = self.bus = None


class _Unreadable:
    """Stands in for a reader that could not be built: opening it ends the stream with
    the reason (a ValueError: logged in one line, never retried)."""
    live = False
    total = None
    seq = 0

    def __init__(self, why: str):
        self.why = _printable(why)

    def open(self, start: int = 0):
        raise ValueError(self.why)

    def close(self):
        pass


def open_reader(spec: SourceSpec, loop: bool = False, colour: str = "BGR"):
    if spec.kind == "video":
        return VideoReader(spec.target, loop=loop)
    if spec.kind == "dir":
        return ImageListReader.from_dir(spec.target, loop=loop)
    if spec.kind == "csv":
        return ImageListReader.from_csv(spec.target, loop=loop)
    if spec.kind in ("gst", "rtsp"):
        return GstReader(spec.kind, spec.target, colour=colour)
    raise ValueError(f"unknown source kind {spec.kind!r}")


# --- the Bytewax partition ------------------------------------------------------------------
class _Partition(StatefulSourcePartition):
    def __init__(self, ctx, spec: SourceSpec, start: int, *, queue: int, batch: int, loop: bool,
                 max_frames: Optional[int], prepare: Optional[Callable[[Frame], Frame]],
                 reconnect_max: float, colour: str, reader_factory=None, stall: float = 10.0,
                 max_pixels: Optional[int] = None):
        self.stats, self.streams = ctx.stats, ctx.streams
        self.flow_stop = ctx.stop      # set when the outputs failed: every stream ends
        self.spec = spec
        self.sid = spec.stream_id
        self.live = spec.live
        self.batch = 1 if self.live else max(1, batch)
        self.cap = max(1, queue if not self.live else min(queue, 2))
        self.max_frames = max_frames
        self.prepare = prepare
        self.reconnect_max = reconnect_max
        self.stall = stall
        self.buf: deque = deque()
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.finished = False
        self.next_seq = start        # snapshot: the next position not yet handed over
        self.emitted = 0
        self.idle_until = None
        try:
            self.reader = (reader_factory or open_reader)(spec, loop=loop, colour=colour)
        except (OSError, ValueError) as e:
            # e.g. a CSV that cannot be read: this stream ends with one line, the flow goes on
            self.reader = _Unreadable(f"{spec.kind} source {spec.target!r}: {e}")
        if max_pixels is not None and hasattr(self.reader, "max_pixels"):
            self.reader.max_pixels = max_pixels
        self.total = None
        self.streams.started(self.sid)
        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True,
                                       name=f"veriseg-src-{self.sid}")
        self.thread.start()

    # decoder thread -------------------------------------------------------------------------
    def _drops_when_full(self) -> bool:
        return self.live and getattr(self.reader, "is_live", True)

    def _put(self, item):
        with self.cond:
            if self._drops_when_full():
                while len(self.buf) >= self.cap:
                    old = self.buf.popleft()
                    if isinstance(old, Frame):
                        self.stats.drop(self.sid, "backpressure")
            else:
                while len(self.buf) >= self.cap and not self.stop.is_set():
                    self.cond.wait(0.2)
            self.buf.append(item)

    def _run(self, start: int):
        lower_thread_priority()
        backoff = 0.5
        attempt = 0
        produced = 0
        opened = False
        last_frame = time.monotonic()
        try:
            while not self.stop.is_set():
                if not opened:
                    try:
                        self.reader.open(start if attempt == 0 else self.reader.seq)
                        opened = True
                        if self.total is None and self.reader.total is not None:
                            self.total = self.reader.total
                            if self.max_frames is not None:
                                self.total = min(self.total, self.max_frames)
                            self.stats.totals[self.sid] = self.total
                        if attempt:
                            log.info("stream %s: reconnected", self.sid)
                        backoff = 0.5
                        last_frame = time.monotonic()
                    except ValueError as e:
                        self.stats.source_error(self.sid, str(e))
                        return
                    except (IOError, OSError, RuntimeError) as e:
                        if not self.live:
                            self.stats.source_error(self.sid, str(e))
                            return
                        attempt += 1
                        self.stats.add("reconnects", self.sid)
                        log.warning("stream %s: %s; retrying in %.1fs", self.sid, e, backoff)
                        if self.stop.wait(backoff):
                            return
                        backoff = min(backoff * 2, self.reconnect_max)
                        continue
                try:
                    t0 = time.perf_counter()
                    got = self.reader.read()
                except _Skip as e:
                    self.stats.bad_frame(self.sid, str(e))
                    continue
                except (IOError, OSError) as e:
                    if not self.live:
                        self.stats.source_error(self.sid, str(e))
                        return
                    self.reader.close()
                    opened = False
                    attempt += 1
                    self.stats.add("reconnects", self.sid)
                    log.warning("stream %s: %s; reconnecting in %.1fs", self.sid, e, backoff)
                    if self.stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, self.reconnect_max)
                    continue
                if got is NOT_YET:
                    if self.live and opened and time.monotonic() - last_frame > self.stall:
                        # a camera that stopped sending without an error: reconnect
                        self.reader.close()
                        opened = False
                        attempt += 1
                        self.stats.add("reconnects", self.sid)
                        log.warning("stream %s: no frame for %.0fs; reconnecting", self.sid, self.stall)
                        last_frame = time.monotonic()
                    continue
                last_frame = time.monotonic()
                if got is None:
                    if self.live and getattr(self.reader, "reconnect_on_eos", False):
                        self.reader.close()
                        opened = False
                        attempt += 1
                        self.stats.add("reconnects", self.sid)
                        log.warning("stream %s: end of stream; reconnecting in %.1fs", self.sid, backoff)
                        if self.stop.wait(backoff):
                            return
                        backoff = min(backoff * 2, self.reconnect_max)
                        continue
                    return
                dec_ms = (time.perf_counter() - t0) * 1e3
                frame = Frame(self.sid, got.seq, got.ts if got.ts is not None else time.time(),
                              got.pos, got.image, colour=got.colour, live=self.live,
                              decode_ms=dec_ms, orig_size=got.image.shape[:2], label=got.label)
                if self.prepare is not None:
                    try:
                        frame = self.prepare(frame)
                    except Exception as e:   # noqa: BLE001 - a bad frame must not stop the stream
                        self.stats.bad_frame(self.sid, f"{got.pos}: preprocessing failed: {e}")
                        continue
                self.stats.add("decoded", self.sid)
                self._put(dataclasses.replace(frame, t_emit=time.perf_counter()))
                produced += 1
                if self.max_frames is not None and produced >= self.max_frames:
                    return
        except Exception as e:  # noqa: BLE001 - report, end this stream, keep the flow alive
            self.stats.source_error(self.sid, f"decoder stopped: {type(e).__name__}: {e}")
        finally:
            try:
                self.reader.close()
            except Exception:  # noqa: BLE001
                pass
            self._put(None)   # end marker

    # Bytewax side ---------------------------------------------------------------------------
    def next_batch(self):
        if self.finished:
            raise StopIteration()
        if self.flow_stop.is_set():
            self.finished = True
            self.stop.set()
            with self.cond:
                self.cond.notify_all()
            self.streams.ended(self.sid)
            raise StopIteration()
        if self.streams.paused(self.sid) and not self._drops_when_full():
            self.idle_until = datetime.now(timezone.utc) + timedelta(milliseconds=20)
            return []
        out = []
        with self.cond:
            while self.buf and len(out) < self.batch:
                item = self.buf.popleft()
                if item is None:
                    self.finished = True
                    break
                out.append(item)
            self.cond.notify_all()
        if out:
            self.next_seq = out[-1].seq + 1
            self.emitted += len(out)
            self.idle_until = None
            return [(self.sid, f) for f in out]
        if self.finished:
            self.streams.ended(self.sid)
            raise StopIteration()
        self.idle_until = datetime.now(timezone.utc) + timedelta(milliseconds=2)
        return []

    def next_awake(self):
        return self.idle_until

    def snapshot(self):
        return self.next_seq

    def close(self):
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        self.thread.join(timeout=5)
        self.streams.ended(self.sid)


class FrameSource(FixedPartitionedSource):
    """Frames of every configured stream, as ``(stream_id, Frame)``; ``ctx`` is the flow's
    ``FlowContext`` (counters, pauses, the stop event)."""

    def __init__(self, ctx, specs: Iterable[SourceSpec], *, queue: int = 8, batch: int = 4,
                 loop: bool = False, max_frames: Optional[int] = None,
                 prepare: Optional[Callable[[Frame], Frame]] = None, reconnect_max: float = 30.0,
                 colour: str = "BGR", reader_factory=None, stall: float = 10.0,
                 max_pixels: Optional[int] = None):
        self.ctx = ctx
        self.specs = {s.stream_id: s for s in specs}
        self.kw = dict(queue=queue, batch=batch, loop=loop, max_frames=max_frames, prepare=prepare,
                       reconnect_max=reconnect_max, colour=colour, reader_factory=reader_factory,
                       stall=stall, max_pixels=max_pixels)

    def list_parts(self):
        return list(self.specs)

    def build_part(self, step_id, for_part, resume_state):
        start = int(resume_state or 0)
        if resume_state:
            log.info("stream %s: resuming at position %d", for_part, start)
        return _Partition(self.ctx, self.specs[for_part], start, **self.kw)


@operator
def read_frames(step_id: str, flow: Dataflow, ctx: FlowContext,
                reader_factory: Optional[Callable] = None, keep_raw: bool = False) -> Stream:
    """``(stream_id, Frame)`` of every configured stream, at the model's input size and
    colour order.  The decoder thread does that work (it overlaps scoring), so the
    ``preprocess`` window is a no-op check here; the score adapts frames to a model swapped
    in with another input.  ``keep_raw``: each frame also keeps the picture as decoded
    (the evaluation grid)."""
    cfg, pre = ctx.config, ctx.preprocessor
    if keep_raw:
        def prepare(f):
            f = dataclasses.replace(f, raw=f.image)
            return pre(f) if pre is not None else f
    else:
        prepare = pre
    frames = op.input("decode", flow, FrameSource(
        ctx, cfg.sources, queue=cfg.queue, batch=ctx.batch, loop=cfg.loop,
        max_frames=cfg.max_frames, prepare=prepare, reconnect_max=cfg.reconnect_max,
        colour=pre.colour if pre is not None else "BGR", reader_factory=reader_factory,
        stall=cfg.stall, max_pixels=cfg.max_pixels))
    if pre is None:
        return frames

    def preprocess(item):
        sid, f = item
        return item if pre.ready(f) else (sid, pre(f))
    return op.map("preprocess", frames, preprocess)
