"""Opening a file without trusting its name: under a root folder by a relative name that
came from a request or a results line (``FileRoot``), or at a path an operator gave
(``open_regular``). The audit page, ``python -m chain anchor-verify`` and the flow's seal
key all open files through this module: nothing here ever blocks or reads a FIFO.

The name is checked before any file system call (no absolute path, no ``..`` or ``.``
part, no empty part, no backslash, NUL or ``%``: a ``%`` left after the server decoded the
URL once is a double-encoded ``/`` or ``..``), then opened one component at a time from the
root's descriptor with ``O_NOFOLLOW``: a symlink anywhere below the root is refused,
wherever it points, and nothing can be swapped in between a check and the open (no
``resolve()`` then ``open()`` gap). Only regular files are opened (a FIFO would block the
server; a device could be endless).

    root = FileRoot("out")
    with root.open("cam0/masks/000007.png") as f: data = f.read()
    with open_regular(key_path, follow=False) as f: secret = f.read(33)
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["FileRoot", "PathRefused", "MAX_NAME", "check_name", "open_regular"]

MAX_NAME = 512            # longest relative name accepted (the flow writes ~40 characters)
_FORBIDDEN = ("\\", "\x00", "%")


class PathRefused(Exception):
    """A name that does not denote a regular file under the root (said in one line;
    the server answers 404 without saying which rule refused it)."""


def check_name(name: str) -> list[str]:
    """The parts of a relative ``name``; raises PathRefused for anything else."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise PathRefused("empty or overlong name")
    if any(c in name for c in _FORBIDDEN) or any(ord(c) < 32 for c in name):
        raise PathRefused(f"{name!r}: backslash, NUL, control character or '%' in the name")
    if name.startswith("/"):
        raise PathRefused(f"{name!r}: absolute path")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise PathRefused(f"{name!r}: empty, '.' or '..' part")
    return parts


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)   # opening a FIFO never waits for a writer


def _regular(fd: int, what: str) -> BinaryIO:
    """``fd`` as a binary file when it is a regular file; closed and refused otherwise."""
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        regular = False
    if not regular:
        os.close(fd)
        raise PathRefused(f"{what}: not a regular file")
    return os.fdopen(fd, "rb")


def open_regular(path: str | os.PathLike, *, follow: bool = True) -> BinaryIO:
    """The regular file at ``path`` (an operator's own argument: absolute or relative, and
    a symlink followed unless ``follow`` is False), opened for reading without blocking;
    PathRefused (one line, naming it) for a FIFO, a device or a folder; OSError as ``open``
    raises it (a missing file, a symlink when ``follow`` is False: ELOOP)."""
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | (0 if follow else _NOFOLLOW))
    return _regular(fd, str(path))


class FileRoot:
    """Read-only access to the regular files under one folder."""

    def __init__(self, root: str | os.PathLike):
        # the root itself is the operator's choice (it may be a symlink); below it, none
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"{root} is not a folder")

    def open(self, name: str) -> BinaryIO:
        """The file ``name`` (relative, '/'-separated) opened for reading."""
        parts = check_name(name)
        dir_flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW
        fd = os.open(self.root, dir_flags)
        try:
            for part in parts[:-1]:
                try:
                    nxt = os.open(part, dir_flags, dir_fd=fd)
                except OSError:
                    raise PathRefused(f"{name!r}: no such folder (or a symlink)") from None
                os.close(fd)
                fd = nxt
            try:
                ffd = os.open(parts[-1], os.O_RDONLY | _NOFOLLOW | _NONBLOCK, dir_fd=fd)
            except OSError:
                raise PathRefused(f"{name!r}: no such file (or a symlink)") from None
        finally:
            os.close(fd)
        return _regular(ffd, repr(name))

    def read(self, name: str, limit: int) -> bytes:
        """The whole file, refused (PathRefused) when it is larger than ``limit`` bytes."""
        with self.open(name) as f:
            if os.fstat(f.fileno()).st_size > limit:
                raise PathRefused(f"{name!r}: larger than {limit} bytes")
            data = f.read(limit + 1)
        if len(data) > limit:
            raise PathRefused(f"{name!r}: larger than {limit} bytes")
        return data

    def is_file(self, name: str) -> bool:
        try:
            self.open(name).close()
            return True
        except PathRefused:
            return False
