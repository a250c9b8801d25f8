"""The batching rule: when the leaves of a stream close into an anchor batch (every N
leaves, a new model key or stream, a flush) and where a closed batch goes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from model_store.blob_key import BlobKey

from .anchor_batch import AnchorBatch, Leaf
from .merkle import leaf_digest
from .values import parse_key

SendHook = Callable[[AnchorBatch], "Path | None"]


class AnchorBatcher:
    """Collects the leaves of one stream scored by one model and closes a batch every
    ``every`` leaves, when the model key or the stream changes, or on :meth:`flush`.

    A closed batch goes to ``send``. The default hook anchors it on ``registry`` (when
    given) and writes it to ``out_dir`` as ``anchor-<first>-<last>-<root8>.json`` (without a
    registry with ``chain: null``; anchor it later with ``python -m chain anchor BATCH``).
    The flow's sink passes its own hook (write the sealed batch file, queue it for the
    sender thread that retries outages), so the batching rule has one owner.

    ``open_batch()`` is the batch still open, for a snapshot; pass it back as ``resume``
    to go on where it stopped (Bytewax recovery)."""

    def __init__(self, out_dir: str | os.PathLike | None = None, every: int = 100, registry=None,
                 include_proofs: bool = False, *, send: SendHook | None = None,
                 resume: dict | None = None):
        if every < 1:
            raise ValueError("every must be >= 1")
        if send is None and out_dir is None:
            raise ValueError("an AnchorBatcher needs out_dir (the default hook writes there) or send")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.every = every
        self.registry = registry
        self.include_proofs = include_proofs
        self.send: SendHook = send or self._anchor_and_write
        self._key: BlobKey | None = None
        self._leaves: list[Leaf] = []
        self.written: list[Path] = []
        if resume:
            self._key = parse_key(resume["model_key"])
            self._leaves = [Leaf.from_json(x) for x in resume["leaves"]]

    def add(self, stream_id: str, seq: int, model_key: str, class_map, *,
            ts: float | None = None, pos: str | None = None, frame: bytes | None = None,
            profile=None) -> Path | None:
        """Add a frame's result (its leaf is computed here); returns what ``send`` returned
        for a batch this closed, else None."""
        mk = parse_key(model_key)
        return self.add_leaf(mk, Leaf(str(stream_id), int(seq),
                                      leaf_digest(stream_id, seq, mk, class_map, ts=ts, pos=pos,
                                                  frame=frame, profile=profile),
                                      ts, pos, frame, profile))

    def add_leaf(self, model_key: str, leaf: Leaf) -> Path | None:
        """Add a leaf computed already (``chain.results.frame_record(...).anchor_leaf``)."""
        mk = parse_key(model_key)
        out = None
        if self._leaves and (mk != self._key or leaf.stream != self._leaves[-1].stream):
            out = self.flush()   # one anchor names one model and one stream
        self._key = mk
        self._leaves.append(leaf)
        if len(self._leaves) >= self.every:
            out = self.flush()
        return out

    def flush(self) -> Path | None:
        """Close the open batch (if any) and hand it to ``send``."""
        if not self._leaves:
            return None
        batch = AnchorBatch(self._key, self._leaves)
        self._leaves = []
        out = self.send(batch)
        if out is not None:
            self.written.append(Path(out))
        return out

    def open_batch(self) -> dict | None:
        """The leaves not yet in a closed batch and their model key (JSON), or None."""
        if not self._leaves:
            return None
        return {"model_key": self._key, "leaves": [lf.to_json() for lf in self._leaves]}

    def _anchor_and_write(self, batch: AnchorBatch) -> Path:
        path = self.out_dir / f"anchor-{batch.first_seq}-{batch.last_seq}-{batch.root.hex()[:8]}.json"
        try:
            if self.registry is not None:
                batch.anchor(self.registry)
        finally:   # written even when the chain refused it: the leaves are not lost
            batch.write(path, self.include_proofs)
        return path
