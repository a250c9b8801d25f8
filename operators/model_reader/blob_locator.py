"""Finding the blob file of a key: its registered URI, then the model folders."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import unquote, urlparse

import model_store
from model_store.util import first_line

__all__ = ["BlobLocator"]


class BlobLocator:
    """Finds the blob file holding a key: its registered URI, then the model folders."""

    def __init__(self, dirs: Iterable[Path], stats=None):
        self.stats = stats   # counts the files that are no readable blob
        self.dirs = []
        for d in dirs:
            d = Path(d).expanduser()
            if d not in self.dirs:
                self.dirs.append(d)
        self._keys: dict[tuple, str] = {}

    def _key_of(self, path: Path) -> Optional[str]:
        try:
            st = path.stat()
        except OSError:
            return None
        sig = (str(path), st.st_size, st.st_mtime_ns)
        if sig not in self._keys:
            self._keys[sig] = ""
            try:   # raises only BlobError, whatever the file holds (hostile headers included)
                self._keys[sig] = model_store.verify(str(path))
            except model_store.errors.BlobError as e:
                if self.stats is not None:   # skip it; the scan goes on
                    self.stats.bad_model_file(first_line(e))
        return self._keys[sig] or None

    def find(self, key: str, uri: str = "") -> Optional[Path]:
        cands = []
        if uri:
            p = urlparse(uri)
            if p.scheme in ("file", ""):
                cands.append(Path(unquote(p.path if p.scheme else uri)).expanduser())
        for d in self.dirs:
            if d.is_dir():
                cands.extend(sorted(d.glob("*.vsb")))
        for c in cands:
            if c.is_file() and self._key_of(c) == key:
                return c
        return None
