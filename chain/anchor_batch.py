"""An anchor batch: the leaves of one stream scored by one model, their root, where the root
went on chain, and the batch file (JSON, ``format: veriseg-anchor-batch``, version 1) that
keeps the leaves (and optionally the proofs) off chain."""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from model_store.blob_key import BlobKey
from model_store.util import atomic_write

from . import errors
from .files import PathRefused, open_regular
from .merkle import MerkleTree, leaf_digest, proof_to_json
from .profile import ExecutionProfile
from .values import parse_key

BATCH_FORMAT = "veriseg-anchor-batch"
BATCH_VERSION = 1


@dataclass
class Leaf:
    stream: str
    seq: int
    digest: bytes
    ts: float | None = None     # what the frame's results line claims (bound by a v2 leaf)
    pos: str | None = None
    frame: bytes | None = None  # the decoded frame's digest and the execution profile
    profile: ExecutionProfile | None = None   # (bound by a v3 leaf, always both)

    def to_json(self) -> dict:
        d = {"stream": self.stream, "seq": self.seq, "digest": self.digest.hex()}
        if self.ts is not None:
            d["ts"] = self.ts
        if self.pos is not None:
            d["pos"] = self.pos
        if self.frame is not None:
            d["frame"] = self.frame.hex()
        if self.profile is not None:
            d["profile"] = self.profile.as_dict()
        return d

    @classmethod
    def from_json(cls, x: dict) -> "Leaf":
        ts, pos, frame, profile = x.get("ts"), x.get("pos"), x.get("frame"), x.get("profile")
        if (frame is None) != (profile is None):
            raise ValueError("a leaf states both its frame digest and its profile, or neither")
        return cls(str(x["stream"]), int(x["seq"]), bytes.fromhex(x["digest"]),
                   None if ts is None else float(ts), None if pos is None else str(pos),
                   None if frame is None else bytes.fromhex(frame),
                   None if profile is None else ExecutionProfile.from_dict(profile))


@dataclass
class AnchorBatch:
    """One anchored batch: leaves, root and where the root went on chain."""

    model_key: BlobKey
    leaves: list[Leaf]
    chain: dict | None = None        # {"tx_hash", "registry", "chain_id", "endpoint"}
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc)
                         .isoformat(timespec="seconds").replace("+00:00", "Z"))
    _tree: MerkleTree | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.model_key = parse_key(self.model_key)

    @classmethod
    def build(cls, model_key: str, records: Sequence[tuple[str, int, object]]) -> "AnchorBatch":
        """From (stream_id, seq, class_map[, ts, pos[, frame, profile]]) records scored by
        ``model_key``."""
        mk = parse_key(model_key)
        leaves = []
        for s, n, cm, *claims in records:
            ts, pos, frame, profile = (list(claims) + [None] * 4)[:4]
            leaves.append(Leaf(str(s), int(n), leaf_digest(s, n, mk, cm, ts=ts, pos=pos, frame=frame,
                                                           profile=profile), ts, pos, frame, profile))
        return cls(mk, leaves)

    @property
    def tree(self) -> MerkleTree:
        if self._tree is None:
            self._tree = MerkleTree([lf.digest for lf in self.leaves])
        return self._tree

    @property
    def root(self) -> bytes:
        return self.tree.root

    @property
    def first_seq(self) -> int:
        return min(lf.seq for lf in self.leaves)

    @property
    def last_seq(self) -> int:
        return max(lf.seq for lf in self.leaves)

    @property
    def stream(self) -> str:
        """The one stream the batch covers (an anchor names one stream)."""
        streams = {lf.stream for lf in self.leaves}
        if len(streams) != 1:
            raise errors.BatchFormatError(
                f"a batch anchors one stream, this one has {len(streams)} "
                f"({', '.join(sorted(streams))[:120]}); batch each stream on its own")
        return next(iter(streams))

    def index_of(self, stream: str, seq: int) -> int | None:
        for i, lf in enumerate(self.leaves):
            if lf.stream == stream and lf.seq == seq:
                return i
        return None

    def anchor(self, registry) -> str:
        """Send the root to the registry (one transaction); records the tx in ``chain``."""
        tx = registry.anchor(self.root, self.model_key, self.first_seq, self.last_seq,
                             stream=self.stream)
        self.chain = {"tx_hash": tx, "registry": registry.address,
                      "chain_id": registry.chain_id, "endpoint": registry.endpoint,
                      "anchorer": getattr(registry, "sender", None)}
        return tx

    def to_json(self, include_proofs: bool = False) -> dict:
        d = {
            "format": BATCH_FORMAT, "version": BATCH_VERSION, "created": self.created,
            "model_key": self.model_key, "root": self.root.hex(),
            "first_seq": self.first_seq, "last_seq": self.last_seq,
            "leaf_count": len(self.leaves), "chain": self.chain,
            "leaves": [lf.to_json() for lf in self.leaves],
        }
        if include_proofs:
            d["proofs"] = [proof_to_json(self.tree.proof(i)) for i in range(len(self.leaves))]
        return d

    def write(self, path: str | os.PathLike, include_proofs: bool = False,
              extra: dict | None = None) -> Path:
        """The batch file, written atomically; ``extra`` adds fields (the flow's seal)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        doc = {**self.to_json(include_proofs), **(extra or {})}
        return atomic_write(p, json.dumps(doc, separators=(",", ":")) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike) -> tuple["AnchorBatch", dict]:
        """The batch and the raw JSON (which carries the claimed root and any proofs)."""
        p = Path(path)
        try:
            with open_regular(p) as f:   # a FIFO among the batch files never blocks a reader
                d = json.loads(f.read())
        except FileNotFoundError:
            raise errors.BatchFormatError(f"batch file {p} does not exist") from None
        except PathRefused as exc:
            raise errors.BatchFormatError(f"batch file {exc}") from None
        except (OSError, ValueError) as exc:
            raise errors.BatchFormatError(f"batch file {p} is not JSON ({exc})") from None
        if not isinstance(d, dict) or d.get("format") != BATCH_FORMAT:
            raise errors.BatchFormatError(f"{p} is not a VeriSeg anchor batch (format "
                                          f"{d.get('format') if isinstance(d, dict) else None!r})")
        if d.get("version") != BATCH_VERSION:
            raise errors.BatchFormatError(f"{p}: batch version {d.get('version')} is not "
                                          f"supported (expected {BATCH_VERSION})")
        try:
            leaves = [Leaf.from_json(x) for x in d["leaves"]]
            b = cls(str(d["model_key"]), leaves, chain=d.get("chain"), created=d.get("created", ""))
            if any(len(lf.digest) != 32 for lf in leaves) or not leaves:
                raise ValueError("leaves must be non-empty 32-byte digests")
            bytes.fromhex(d["root"])
        except (KeyError, TypeError, ValueError, errors.InvalidKey) as exc:
            raise errors.BatchFormatError(f"batch file {p} is malformed ({exc})") from None
        return b, d
