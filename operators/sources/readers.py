"""The reader of each kind of source (the blocking decode side)."""
from __future__ import annotations

from ..source_spec import SourceSpec
from .errors import printable
from .gst import GstReader
from .image_list import ImageListReader
from .video import VideoReader

__all__ = ["open_reader", "Unreadable"]


class Unreadable:
    """Stands in for a reader that could not be built: opening it ends the stream with
    the reason (a ValueError: logged in one line, never retried)."""
    live = False
    total = None
    seq = 0

    def __init__(self, why: str):
        self.why = printable(why)

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
