"""Image folders (a dataset folder pairs images/ with labels/ by stem) and CSV lists."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from ..frames import Decoded
from ..source_spec import IMAGE_EXTS
from .errors import BadFrame, printable
from .image_file import MAX_PIXELS, read_image

__all__ = ["ImageListReader"]


class ImageListReader:
    """Sorted image folder or CSV rows: (position label, image path, label path, timestamp)."""
    live = False
    max_pixels = MAX_PIXELS

    def __init__(self, entries: list, loop: bool = False, origin: str = ""):
        self.entries = entries
        self.loop = loop
        self.origin = origin

    @classmethod
    def from_dir(cls, folder: str, loop: bool = False) -> "ImageListReader":
        root = Path(folder)
        sub = root / "images"
        if sub.is_dir() and not any(p.suffix.lower() in IMAGE_EXTS for p in root.iterdir()):
            root = sub   # a dataset folder (images/ + labels/)
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        labels_dir = root.parent / "labels" if root.name == "images" else None
        entries = []
        for p in files:
            lab = None
            if labels_dir is not None and labels_dir.is_dir():
                for ext in (".png", p.suffix):
                    c = labels_dir / (p.stem + ext)
                    if c.is_file():
                        lab = str(c)
                        break
            entries.append((str(p), str(p), lab, None))
        return cls(entries, loop, origin=str(folder))

    @classmethod
    def from_csv(cls, path: str, loop: bool = False) -> "ImageListReader":
        base = Path(path).parent
        with open(path, "rb") as f:
            raw = f.read()
        # bytes that are not UTF-8 stay as they are (surrogateescape): on Linux such a cell
        # still names the file on disk, and messages show them as \\xNN
        text = raw.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
        dialect = "excel-tab" if ("\t" in text.splitlines()[0] if text else False) else "excel"
        rows: list = []
        reader = csv.reader(text.splitlines(), dialect=dialect)
        while True:
            try:
                rows.append(next(reader))
            except StopIteration:
                break
            except csv.Error as e:   # e.g. a field over the csv module's size limit
                rows.append(e)
        img_col, lab_col, ts_col = 0, 1, 2
        start = 0
        if rows and isinstance(rows[0], list):
            head = [c.strip().lower() for c in rows[0]]
            names_img = ("image", "path", "frame", "file", "filename", "image_path")
            if any(h in names_img for h in head):
                img_col = next(i for i, h in enumerate(head) if h in names_img)
                lab_col = next((i for i, h in enumerate(head) if h in ("label", "mask", "label_path")), None)
                ts_col = next((i for i, h in enumerate(head) if h in ("timestamp", "ts", "time")), None)
                start = 1
        entries = []
        for n, row in enumerate(rows[start:], start=start + 1):
            pos = f"{path}:row {n}"
            if isinstance(row, csv.Error):
                entries.append((pos, None, None, f"not a CSV row ({row})"))
                continue
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if img_col >= len(row) or not row[img_col].strip():
                entries.append((pos, None, None, "missing image column"))
                continue
            img = row[img_col].strip()
            if "\x00" in img:
                entries.append((f"{pos} ({printable(img)[:120]})", None, None,
                                "the image path contains a NUL byte"))
                continue
            img_p = Path(img) if Path(img).is_absolute() else base / img
            lab = row[lab_col].strip() if lab_col is not None and lab_col < len(row) else ""
            lab_p = (str(Path(lab) if Path(lab).is_absolute() else base / lab)) if lab else None
            ts = None
            if ts_col is not None and ts_col < len(row) and row[ts_col].strip():
                try:
                    ts = float(row[ts_col])
                except ValueError:
                    ts = None   # a label column that is not a timestamp: keep going
            entries.append((f"{pos} ({printable(img)[:200]})", str(img_p), lab_p, ts))
        return cls(entries, loop, origin=str(path))

    @property
    def total(self) -> Optional[int]:
        return None if self.loop else len(self.entries)

    def open(self, start: int = 0):
        self.seq = start

    def read(self) -> Optional[Decoded]:
        n = len(self.entries)
        if n == 0 or (not self.loop and self.seq >= n):
            return None
        seq = self.seq
        self.seq += 1
        pos, img_path, label, ts = self.entries[seq % n]
        if img_path is None:
            raise BadFrame(f"{pos}: {ts}")
        try:
            img = read_image(img_path, self.max_pixels)
        except BadFrame as e:
            raise BadFrame(printable(f"{pos}: {e}" if pos != img_path else str(e))) from None
        return Decoded(seq, pos, img, label=label, ts=ts)

    def close(self):
        pass
