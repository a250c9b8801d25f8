"""Two helpers every package shares: atomic file writes and one-line error messages
(made ``printable``: no control character of a message reaches a terminal or a log).

They live in model_store because it is the base package (it imports nothing else of ours),
so chain, trainer, operators and dataflows can all use them without an import cycle.

    atomic_write(path, text_or_bytes)          # readers see the old file or the new one
    with atomic_writer(path) as f: torch.save(state, f)
    log.error("... failed: %s", first_line(exc))   # a log line, never a traceback
    print(f"error: {one_line(exc)}")               # a CLI refusal: the whole message, one line
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import IO, Iterator, Union

from .display import printable

__all__ = ["atomic_write", "atomic_writer", "first_line", "one_line"]

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_writer(path: PathLike, mode: str = "wb", *, fsync: bool = False) -> Iterator[IO]:
    """A file opened beside ``path`` that replaces it on a clean exit, and is removed on
    an error: a crash mid-write never leaves a torn ``path``. ``fsync`` also survives a
    power cut (the bytes reach the disk before the rename)."""
    p = Path(path)
    # a name no other writer (process or thread) can share, created exclusively
    tmp = p.with_name(f"{p.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: PathLike, data: Union[str, bytes], *, fsync: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns the path."""
    with atomic_writer(path, "w" if isinstance(data, str) else "wb", fsync=fsync) as f:
        f.write(data)
    return Path(path)


def first_line(err: Union[BaseException, str], limit: int = 300) -> str:
    """The first line of an error's message (its type's name when the message is empty),
    at most ``limit`` characters: what a log line needs, never a multi-line dump."""
    text = str(err).strip()
    if not text:
        return type(err).__name__ if isinstance(err, BaseException) else ""
    return printable(text.splitlines()[0])[:limit]


def one_line(err: Union[BaseException, str]) -> str:
    """An error's whole message folded onto one line; an OSError as ``file: reason``.
    For refusals a user reads (CLI exit lines), where no part of the message may be cut."""
    if isinstance(err, OSError) and err.filename:
        return printable(f"{err.filename}: {err.strerror or err}")
    return printable(" ".join(str(err).split()))
