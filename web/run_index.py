"""What a finished run's OUT_DIR holds, for the audit page: its anchor batches and, per
stream, the results line of each frame.

Built from OUT_DIR's own listing (no symlinked folder entered, no symlink listed), read
through ``chain.files.FileRoot``: a stream or batch is named by this index, never by a path
from a request. A file is read again only when its size or mtime changed.
"""
from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass, field
from typing import Optional

from chain.anchoring import AnchorBatch
from chain.errors import AnchorVerificationFailed, ChainError
from chain.files import FileRoot, PathRefused
from chain.results import MAX_LINE_BYTES, ResultsFile, frame_of, one_frame_line, parse_line

__all__ = ["Batch", "RunIndex", "MAX_BATCH_BYTES", "MAX_LINE_BYTES"]

MAX_BATCH_BYTES = 64 << 20


@dataclass
class Batch:
    id: str              # "<stream>/<file>": how the page names it (a key of the index)
    stream: str
    file: str            # relative to OUT_DIR
    first_seq: int
    last_seq: int
    model_key: str
    root: str
    tx: Optional[str]
    seqs: list = field(default_factory=list)

    def row(self, block) -> dict:
        return {"id": self.id, "stream": self.stream, "file": self.file,
                "first_seq": self.first_seq, "last_seq": self.last_seq,
                "model_key": self.model_key, "root": self.root, "tx": self.tx,
                "frames": len(self.seqs), "block": block}


class _Results:
    """(line number, offset, length) of every line per seq of one stream's ``results.jsonl``
    (lines picked by ``chain.results.frame_of``, the rule ``anchor-verify`` uses), rebuilt
    when the file changes."""

    def __init__(self, files: FileRoot, stream: str):
        self.files, self.stream = files, stream
        self.name = f"{stream}/results.jsonl"
        self.sig = None
        self.index: dict[int, list[tuple[int, int, int]]] = {}

    def _refresh(self):
        with self.files.open(self.name) as f:
            st = os.fstat(f.fileno())
            if (st.st_size, st.st_mtime_ns) == self.sig:
                return
            index, off = {}, 0
            for n, raw in enumerate(f, 1):
                size = len(raw)
                frame = frame_of(parse_line(raw))
                if frame is not None and frame[0] == self.stream:
                    index.setdefault(frame[1], []).append((n, off, size))
                off += size
            self.index, self.sig = index, (st.st_size, st.st_mtime_ns)

    def lines(self, seq: int) -> list[tuple[int, dict]]:
        """``(line number, record)`` of every line of ``seq``, as read now."""
        self._refresh()
        found = []
        with self.files.open(self.name) as f:
            for n, off, size in self.index.get(seq, ()):
                f.seek(off)
                rec = parse_line(f.read(size))
                if frame_of(rec) == (self.stream, seq):
                    found.append((n, rec))
        return found


class RunIndex:
    """The streams and anchor batches under ``files.root`` (``refresh`` rebuilds it; the
    other methods read it from any thread)."""

    def __init__(self, files: FileRoot):
        self.files = files
        self.out = files.root
        self.lock = threading.Lock()   # the index, rebuilt by one thread, read by others
        self.batches: dict[str, Batch] = {}
        self._batch_sig: dict[str, tuple] = {}
        self.results: dict[str, _Results] = {}

    @staticmethod
    def _listing(root_fd: int, rel: str) -> list[str]:
        """Names in the folder ``rel`` under ``root_fd`` (no symlinked folder is entered,
        no symlink listed)."""
        try:
            fd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
        except OSError:
            return []
        try:
            return sorted(n for n in os.listdir(fd)
                          if not stat.S_ISLNK(os.stat(n, dir_fd=fd, follow_symlinks=False).st_mode))
        finally:
            os.close(fd)

    def refresh(self) -> None:
        """Rebuild the index of streams and batches (a batch file is read again only when
        it changed)."""
        root_fd = os.open(self.out, os.O_RDONLY | os.O_DIRECTORY)
        try:
            streams = [s for s in self._listing(root_fd, ".") if s != "anchors"
                       and self.files.is_file(f"{s}/results.jsonl")]
            found = {}
            for s in self._listing(root_fd, "anchors"):
                for name in self._listing(root_fd, f"anchors/{s}"):
                    rel = f"anchors/{s}/{name}"
                    if not name.endswith(".json") or not self.files.is_file(rel):
                        continue
                    with self.files.open(rel) as f:
                        st = os.fstat(f.fileno())
                    sig = (st.st_size, st.st_mtime_ns)
                    old = self.batches.get(f"{s}/{name}")
                    if old is not None and self._batch_sig.get(old.id) == sig:
                        found[old.id] = old
                        continue
                    if st.st_size > MAX_BATCH_BYTES:
                        continue
                    try:
                        b, raw = AnchorBatch.read(self.out / rel)
                        stream = b.stream
                    except (ChainError, ValueError, OSError):
                        continue   # not a batch: not listed (the file is still served)
                    if stream != s:
                        continue   # a batch of another stream filed here: not this folder's
                    chain = raw.get("chain") or {}
                    found[f"{s}/{name}"] = Batch(f"{s}/{name}", s, rel, b.first_seq, b.last_seq,
                                                 b.model_key, str(raw["root"]),
                                                 chain.get("tx_hash"),
                                                 [lf.seq for lf in b.leaves])
                    self._batch_sig[f"{s}/{name}"] = sig
        finally:
            os.close(root_fd)
        with self.lock:
            self.batches = found
            for s in streams:
                self.results.setdefault(s, _Results(self.files, s))

    def sorted_batches(self) -> list[Batch]:
        with self.lock:
            return sorted(self.batches.values(), key=lambda b: (b.stream, b.first_seq))

    def has_stream(self, stream: str) -> bool:
        with self.lock:
            return stream in self.results

    def batch(self, bid: str) -> Batch:
        """The batch the page names ``bid``; PathRefused (404) when there is none."""
        with self.lock:
            b = self.batches.get(bid)
        if b is None:
            raise PathRefused(f"no batch {bid!r}")
        return b

    def frame_line(self, stream: str, seq: int) -> tuple[int, dict]:
        """The one ``(line number, record)`` of ``seq`` in ``stream``: what the page shows
        and verifies. AnchorVerificationFailed: none (``result_missing``), or two or more
        (``result_ambiguous``: the page shows none of them)."""
        with self.lock:
            res = self.results.get(stream)
        found = [] if res is None else res.lines(seq)
        if not found:
            raise AnchorVerificationFailed(f"result missing: {stream}/results.jsonl has no line "
                                           f"for stream '{stream}' seq {seq}", check="result_missing")
        return one_frame_line(found, f"{stream}/results.jsonl", stream, seq)

    def line(self, stream: str, seq: int) -> Optional[dict]:
        """The frame's one results line (None: none readable, or ambiguous)."""
        try:
            return self.frame_line(stream, seq)[1]
        except (AnchorVerificationFailed, PathRefused, OSError):
            return None

    def results_file(self, stream: str) -> ResultsFile:
        """``stream``'s results file under the page's root (its lines' masks stay under it)."""
        return ResultsFile(self.files, f"{stream}/results.jsonl")

    def mask_name(self, stream: str, seq: int) -> Optional[str]:
        """The mask the frame's line names, relative to OUT_DIR (None: no line or no mask)."""
        line = self.line(stream, seq)
        if not line or not isinstance(line.get("mask"), str):
            return None
        return self.results_file(stream).mask_name(line)
