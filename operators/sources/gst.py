"""GStreamer pipelines (``gst:``) and RTSP cameras (``rtsp://``) through an appsink."""
from __future__ import annotations

import functools
import re
from typing import Optional

import cv2
import numpy as np

from ..frames import NOT_YET, Decoded
from .errors import BadFrame, StreamUnreadable

__all__ = ["GstReader", "gst_available", "check_pipeline", "READABLE_FORMATS"]

#: raw video formats a frame can be read in (GRAY8 is converted to the model's colour order,
#: BGR and RGB are swapped to it by the preprocessor)
READABLE_FORMATS = ("BGR", "RGB", "GRAY8")

_FORMAT_FIELD = re.compile(r"format=\(string\)(\{[^}]*\}|[\w-]+)")
_FIX = "end the pipeline with videoconvert ! video/x-raw,format=BGR ! appsink"


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


def _not_negotiated(debug: Optional[str]) -> bool:
    """The bus error of a pipeline whose caps do not fit together: GStreamer says it as
    "Internal data stream error" with the flow return in the debug text."""
    return "not-negotiated" in (debug or "")


def _formats(caps) -> str:
    """The formats ``caps`` offer, e.g. ``I420`` or ``{ I420, NV12 }`` ('any' when unset)."""
    found = _FORMAT_FIELD.findall(caps.to_string()) if caps is not None else []
    return ", ".join(dict.fromkeys(found)) or "any"


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
        # a live source (camera, RTSP, is-live=true) does not preroll: it drops under
        # backpressure; a non-live pipeline (a file) is replayed without drops
        self.is_live = self.kind == "rtsp" or live
        if ret == Gst.StateChangeReturn.FAILURE:
            exc = self._bus_failure() or IOError(f"{self.kind} {self.target!r}: state change to "
                                                 "PLAYING failed")
            self.close()
            raise exc

    def readable_caps(self) -> str:
        """Every format the flow reads, the model's colour order first: a converter in front
        of the appsink then produces what the model takes (no swap later), and a pipeline
        that already fixed BGR, RGB or GRAY8 still fits."""
        order = [self.colour] + [f for f in READABLE_FORMATS if f != self.colour]
        return "; ".join(f"video/x-raw,format={f}" for f in order)

    def _give_caps(self, Gst, sink) -> None:
        """A user's bare ``appsink`` accepts anything, so ``videoconvert ! appsink`` hands it
        the converter's first format (ABGR64_LE), one bad frame per buffer: the appsink gets
        the flow's readable caps, narrowed by any caps the user set on it. Caps that leave
        nothing the flow can read end the stream at start with one line instead."""
        ours = Gst.Caps.from_string(self.readable_caps())
        caps = sink.get_property("caps")
        if caps is None or caps.is_any() or caps.is_empty():
            sink.set_property("caps", ours)
            return
        both = ours.intersect_full(caps, Gst.CapsIntersectMode.FIRST)
        if both.is_empty():
            st = caps.get_structure(0)
            raise StreamUnreadable(f"{self.kind} {self.target!r}: the appsink's caps ask for "
                                   f"{st.get_name()}, format={_formats(caps)}; the flow reads "
                                   f"video/x-raw in {', '.join(READABLE_FORMATS)} ({_FIX}, or a bare appsink)")
        sink.set_property("caps", both)

    def _bus_failure(self) -> Optional[Exception]:
        """The pipeline's error as the exception to raise, or None when there is none.

        Caps that do not negotiate are a configuration error: a non-live pipeline would fail
        the same way on every restart, so its stream ends (StreamUnreadable); a live one may
        be a camera whose format changes, so it is an IOError the source backs off from.
        Either way the line says which formats meet at the appsink."""
        Gst = _gst()
        if self.bus is None:
            return None
        msg = self.bus.pop_filtered(Gst.MessageType.ERROR)
        if msg is None:
            return None
        err, dbg = msg.parse_error()
        if not _not_negotiated(dbg):
            return IOError(f"{self.kind} {self.target!r}: {err.message}")
        pad = self.sink.get_static_pad("sink") if self.sink is not None else None
        offered = _formats(pad.peer_query_caps(None)) if pad is not None else "unknown"
        why = (f"{self.kind} {self.target!r}: the pipeline's caps do not negotiate (the appsink "
               f"takes video/x-raw in {', '.join(READABLE_FORMATS)}; the element before it offers "
               f"format={offered}); {_FIX}")
        return IOError(why) if self.is_live else StreamUnreadable(why)

    def read(self, timeout: float = 0.1):
        """The next frame; NOT_YET when none arrived in ``timeout``; None at the end of the
        stream; raises IOError on a pipeline error, BadFrame for a buffer it cannot read."""
        Gst = _gst()
        sample = self.sink.try_pull_sample(int(timeout * Gst.SECOND))
        if sample is None:
            exc = self._bus_failure()
            if exc is not None:
                raise exc
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
                raise StreamUnreadable(f"{self.kind} {self.target!r}: unsupported format {fmt}; {_FIX}")
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
        if ch == 1:   # to the model's order directly: the preprocessor swaps BGR/RGB only
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB if self.colour == "RGB" else cv2.COLOR_GRAY2BGR)
            fmt = self.colour
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
