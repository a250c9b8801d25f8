"""``VERISEG_SOURCE``: one or more streams, each a video file, an image folder, a CSV
list, a GStreamer pipeline or an RTSP camera, optionally named ``ID@``.

A stream id names the stream's folder under ``VERISEG_OUT`` (masks, ``results.jsonl``,
the overlay video): it is one safe path component (letters, digits, ``_ . -``, at most 64)
that is not ``.`` or ``..``. An ``ID@`` that is not is refused at start; a default id (the
file's name without its extension, other characters as ``_``) that would be only dots
(a file named ``...avi``) is the source's kind instead (``video``, ``dir``, ``csv``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SourceSpec", "parse_sources", "stream_id_of", "is_safe_stream_id", "VIDEO_EXTS",
           "IMAGE_EXTS"]

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class SourceSpec:
    """One input stream. ``kind``: video | dir | csv | gst | rtsp."""
    stream_id: str
    kind: str
    target: str

    @property
    def live(self) -> bool:
        return self.kind in ("gst", "rtsp")

    def describe(self) -> str:
        return f"{self.stream_id}={self.kind}:{self.target}"


_ID_RE = re.compile(r"^([A-Za-z0-9_.-]{1,64})@(.+)$")
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")
_ID_OK = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def is_safe_stream_id(sid: str) -> bool:
    """One path component the flow may write under VERISEG_OUT: never ``.`` or ``..``."""
    return bool(_ID_OK.fullmatch(sid)) and sid.strip(".") != ""


def _default_id(stem: str, kind: str) -> str:
    sid = _SAFE_ID.sub("_", stem)[:48]
    return sid if is_safe_stream_id(sid) else kind


def _classify(spec: str) -> tuple[str, str]:
    s = spec.strip()
    low = s.lower()
    if low.startswith("dir:"):
        return "dir", s[4:]
    if low.startswith("csv:"):
        return "csv", s[4:]
    if low.startswith("gst:"):
        return "gst", s[4:].strip()
    if low.startswith(("rtsp://", "rtsps://")):
        return "rtsp", s
    if low.startswith("file:"):
        s = s[5:]
        if s.startswith("//"):
            s = s[2:]
    if s.startswith("/dev/video"):
        return "gst", f"v4l2src device={s}"
    p = Path(s).expanduser()
    if p.is_dir():
        return "dir", s
    if p.suffix.lower() == ".csv":
        return "csv", s
    return "video", s


def parse_sources(value: str, problems: list[str]) -> tuple[SourceSpec, ...]:
    parts = [p.strip() for p in value.split(";") if p.strip()]
    if not parts:
        problems.append(f"VERISEG_SOURCE: expected at least one source, got {value!r}")
        return ()
    specs: list[SourceSpec] = []
    seen: set[str] = set()
    counters: dict[str, int] = {}
    for part in parts:
        sid = None
        m = _ID_RE.match(part)
        if m:
            sid, part = m.group(1), m.group(2).strip()
            if not is_safe_stream_id(sid):
                problems.append(f"VERISEG_SOURCE: stream id {sid!r} would write outside its "
                                "folder of VERISEG_OUT: name it with letters, digits, '_' or "
                                "'-' (not only dots)")
                continue
        kind, target = _classify(part)
        if not target:
            problems.append(f"VERISEG_SOURCE: {kind}: needs a value after the prefix, got {part!r}")
            continue
        if kind in ("video", "dir", "csv"):
            p = Path(target).expanduser()
            if kind == "dir" and not p.is_dir():
                problems.append(f"VERISEG_SOURCE: image folder {target!r} does not exist")
                continue
            if kind != "dir" and not p.is_file():
                problems.append(f"VERISEG_SOURCE: {('video file' if kind == 'video' else 'CSV file')} "
                                f"{target!r} does not exist")
                continue
            target = str(p)
        if sid is None:
            if kind in ("video", "dir", "csv"):
                base = _default_id(Path(target).stem, kind)
            else:
                n = counters.get(kind, 0)
                counters[kind] = n + 1
                base = f"{kind}{n}"
            sid = base
            k = 1
            while sid in seen:
                sid = f"{base}_{k}"
                k += 1
        elif sid in seen:
            problems.append(f"VERISEG_SOURCE: stream id {sid!r} is used twice")
            continue
        seen.add(sid)
        specs.append(SourceSpec(sid, kind, target))
    return tuple(specs)


def stream_id_of(path: Path) -> str:
    """The stream id a file source gets when it is not named ``ID@``."""
    return _default_id(path.stem, "video")
