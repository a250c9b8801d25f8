"""Opening a file under a root folder by a relative name that came from a request.

The name is checked before any file system call (no absolute path, no ``..`` or ``.``
part, no empty part, no backslash, NUL or ``%``: a ``%`` left after the server decoded the
URL once is a double-encoded ``/`` or ``..``), then opened one component at a time from the
root's descriptor with ``O_NOFOLLOW``: a symlink anywhere below the root is refused,
wherever it points, and nothing can be swapped in between a check and the open (no
``resolve()`` then ``open()`` gap). Only regular files are opened (a FIFO would block the
server; a device could be endless).

    root = FileRoot("out")
    with root.open("cam0/masks/000007.png") as f: data = f.read()
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["FileRoot", "PathRefused", "MAX_NAME"]

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
        nofollow = getattr(os, "O_NOFOLLOW", 0)
        dir_flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | nofollow
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
                # O_NONBLOCK: opening a FIFO never waits for a writer
                ffd = os.open(parts[-1], os.O_RDONLY | nofollow | getattr(os, "O_NONBLOCK", 0),
                              dir_fd=fd)
            except OSError:
                raise PathRefused(f"{name!r}: no such file (or a symlink)") from None
        finally:
            os.close(fd)
        if not stat.S_ISREG(os.fstat(ffd).st_mode):
            os.close(ffd)
            raise PathRefused(f"{name!r}: not a regular file")
        return os.fdopen(ffd, "rb")

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
