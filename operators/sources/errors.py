"""What a reader raises for one frame it cannot decode, and how a message shows a name."""
from __future__ import annotations

__all__ = ["BadFrame", "StreamUnreadable", "printable"]


class BadFrame(Exception):
    """A frame that could not be decoded (the message names file and position): skipped,
    counted and reported in one line; the stream goes on."""


class StreamUnreadable(Exception):
    """A stream the flow cannot read at all (e.g. a pixel format it cannot take): the stream
    ends with one line and a source error; retrying would fail the same way."""


def printable(s: str) -> str:
    """A CSV cell for a message: undecodable bytes as \\xNN, control characters escaped
    (a log line must stay one line and encodable)."""
    s = s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
