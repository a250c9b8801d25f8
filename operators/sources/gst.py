"""GStreamer pipelines (``gst:``) and RTSP cameras (``rtsp://``) through an appsink."""
from __future__ import annotations

import functools
from typing import Optional

import cv2
import numpy as np

from ..frames import NOT_YET, Decoded
from .errors import BadFrame, StreamUnreadable

__all__ = ["GstReader", "gst_available", "check_pipeline", "READABLE_FORMATS"]

#: raw video formats a frame can be read in (GRAY8 is converted to BGR)
READABLE_FORMATS = ("BGR", "RGB", "GRAY8")


@functools.cache
def _load_gst():
    """(Gst module, None) or (None, why not): GStreamer is initialised once per process."""
    from ..backends import preload
    preload()   # the runtimes before any GStreamer plugin, or OpenVINO's first compile aborts
    try:
        import gi
        gi.require_version("Gst", "1.0")
        gi.require_version("GstApp", "1.0")
        gi.require_version("GstVideo", "1.0")
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
        self._give_caps(Gst, sink)
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

    def _give_caps(self, Gst, sink) -> None:
        """A user's bare ``appsink`` accepts anything, so ``videoconvert ! appsink`` hands it
        the converter's first format (ABGR64_LE), one bad frame per buffer: give it the flow's
        caps. Caps the user set that ask for a format the flow cannot read end the stream at
        start with one line instead."""
        caps = sink.get_property("caps")
        if caps is None or caps.is_any() or caps.is_empty():
            sink.set_property("caps", Gst.Caps.from_string(f"video/x-raw,format={self.colour}"))
            return
        for i in range(caps.get_size()):
            st = caps.get_structure(i)
            fmt = st.get_value("format") if st.has_field("format") else None
            if st.get_name() != "video/x-raw" or (isinstance(fmt, str) and fmt not in READABLE_FORMATS):
                raise StreamUnreadable(f"{self.kind} {self.target!r}: the appsink's caps ask for "
                              f"{st.get_name()}{', format=' + fmt if isinstance(fmt, str) else ''}; the flow "
                              f"reads video/x-raw in {', '.join(READABLE_FORMATS)} (end the pipeline with "
                              "videoconvert ! video/x-raw,format=BGR ! appsink, or a bare appsink)")

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
        stream; raises IOError on a pipeline error, BadFrame for a buffer it cannot read."""
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
            raise BadFrame(f"{self.kind} {self.target!r} frame {seq}: cannot map buffer")
        try:
            if fmt not in READABLE_FORMATS:
                # the caps are the stream's, not this buffer's: every buffer would fail alike
                raise StreamUnreadable(f"{self.kind} {self.target!r}: unsupported format {fmt}; end the pipeline with "
                              "videoconvert ! video/x-raw,format=BGR ! appsink")
            ch = 1 if fmt == "GRAY8" else 3
            data = np.frombuffer(info.data, dtype=np.uint8)
            stride = self._row_stride(caps)
            if h <= 0 or w <= 0 or stride < w * ch or data.size < (h - 1) * stride + w * ch:
                raise BadFrame(f"{self.kind} frame {seq}: buffer of {data.size} bytes for {w}x{h} {fmt} "
                               f"(rows of {stride} bytes)")
            rows = np.lib.stride_tricks.as_strided(data, (h, w * ch), (stride, 1))
            img = rows.reshape(h, w, ch).copy()
        finally:
            buf.unmap(info)
        if ch == 1:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
            fmt = "BGR"
        pos = f"{self.kind}:{self.target[:60]}#pts={pts if pts != Gst.CLOCK_TIME_NONE else 'none'}"
        return Decoded(seq, pos, img, colour=fmt)

    def _row_stride(self, caps) -> int:
        """Bytes from one row to the next, as GStreamer lays the buffer out (rows of RGB/BGR
        are padded to 4 bytes: 37 px wide is 111 bytes of pixels in 112-byte rows)."""
        from gi.repository import GstVideo
        info = GstVideo.VideoInfo.new_from_caps(caps)
        return int(info.stride[0])

    def close(self):
        if self.pipeline is not None:
            Gst = _gst()
            self.pipeline.set_state(Gst.State.NULL)
            self.pipeline.get_state(Gst.SECOND)
        self.pipeline = self.sink = self.bus = None
