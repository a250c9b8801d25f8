"""Result anchoring: a Merkle tree over per-frame result digests, one root per batch.

Leaf (domain-separated from inner nodes by its first byte, every field length-prefixed
or fixed-size, so no two different inputs encode to the same bytes)::

    leaf  = BLAKE3(0x00 | u16 len | "veriseg/anchor/leaf/v2"
                   | u32 len | stream_id (UTF-8) | u64 seq | 32-byte model key
                   | u8 ndim | u32 dim * ndim | u64 len | class-map bytes (C order, uint8)
                   | u8 has_ts | i64 ts (microseconds, round(ts * 1e6); only if has_ts)
                   | u8 has_pos | u32 len | pos (UTF-8; only if has_pos))
    inner = BLAKE3(0x01 | left | right)

``ts`` and ``pos`` are the frame's timestamp and source position as its results line
states them, so a line claims nothing the leaf does not cover. A leaf with neither is
the v1 leaf (domain "veriseg/anchor/leaf/v1", the fields up to the class map only): batch
files written before v2 still verify, and their lines may not claim a ts or pos.

An odd node at the end of a level is promoted unchanged to the next level (no
duplication, so a tree of n leaves never equals a tree of n+1 leaves). A proof is the
list of siblings from the leaf upwards, each tagged with the side it sits on.

Only the 32-byte root goes on chain (``ModelRegistry.anchor``, with the stream's hash
``keccak256(stream_id UTF-8)``, the seq range and the model key; the contract records the
sender); the leaves (and optionally the proofs) stay off chain in a batch JSON file.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import blake3
import numpy as np

from model_store.util import atomic_write

from . import errors

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
LEAF_DOMAIN_V1 = b"veriseg/anchor/leaf/v1"   # stream, seq, key, class map
LEAF_DOMAIN = b"veriseg/anchor/leaf/v2"      # ... and the frame's ts and pos
BATCH_FORMAT = "veriseg-anchor-batch"
BATCH_VERSION = 1

__all__ = ["leaf_digest", "ts_micros", "node_digest", "MerkleTree", "verify_proof", "Leaf", "AnchorBatch",
           "AnchorBatcher", "Verification",
           "read_mask", "verify_frame", "proof_to_json", "proof_from_json"]


def _key32(model_key: str | bytes) -> bytes:
    from .values import key_bytes
    return key_bytes(model_key)


def ts_micros(ts) -> int:
    us = int(round(float(ts) * 1e6))
    if not -2**63 <= us < 2**63:
        raise ValueError(f"ts {ts} out of range for i64 microseconds")
    return us


def leaf_digest(stream_id: str, seq: int, model_key: str | bytes, class_map, *,
                ts: float | None = None, pos: str | None = None) -> bytes:
    """BLAKE3 digest of one frame's result (32 bytes). ``class_map`` is the uint8 class-id
    array the model produced (H x W); bytes are accepted and hashed as a 1-D map. ``ts``
    and ``pos`` (as the results line states them) make it a v2 leaf that binds them."""
    if isinstance(class_map, (bytes, bytearray, memoryview)):
        arr = np.frombuffer(bytes(class_map), dtype=np.uint8)
    else:
        arr = np.asarray(class_map)
        if arr.dtype != np.uint8:
            raise TypeError(f"class map must be uint8 class ids, got {arr.dtype}")
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
    if not 0 <= int(seq) < 2**64:
        raise ValueError(f"seq {seq} out of range for u64")
    v2 = ts is not None or pos is not None
    domain = LEAF_DOMAIN if v2 else LEAF_DOMAIN_V1
    sid = str(stream_id).encode("utf-8")
    h = blake3.blake3()
    h.update(LEAF_PREFIX)
    h.update(struct.pack(">H", len(domain)) + domain)
    h.update(struct.pack(">I", len(sid)) + sid)
    h.update(struct.pack(">Q", int(seq)))
    h.update(_key32(model_key))
    h.update(struct.pack(">B", arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape))
    data = np.ascontiguousarray(arr).tobytes()
    h.update(struct.pack(">Q", len(data)))
    h.update(data)
    if v2:
        h.update(b"\x00" if ts is None else b"\x01" + struct.pack(">q", ts_micros(ts)))
        if pos is None:
            h.update(b"\x00")
        else:
            p = str(pos).encode("utf-8")
            h.update(b"\x01" + struct.pack(">I", len(p)) + p)
    return h.digest()


def node_digest(left: bytes, right: bytes) -> bytes:
    return blake3.blake3(NODE_PREFIX + left + right).digest()


Proof = list[tuple[bytes, bool]]  # (sibling digest, sibling is on the left)


class MerkleTree:
    """Binary Merkle tree over leaf digests (odd last node promoted)."""

    def __init__(self, leaves: Sequence[bytes]):
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        for lf in leaves:
            if len(lf) != 32:
                raise ValueError("leaves are 32-byte digests")
        self.levels: list[list[bytes]] = [list(leaves)]
        level = self.levels[0]
        while len(level) > 1:
            nxt = [node_digest(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            self.levels.append(nxt)
            level = nxt

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    def __len__(self) -> int:
        return len(self.levels[0])

    def proof(self, index: int) -> Proof:
        if not 0 <= index < len(self):
            raise IndexError(f"leaf index {index} out of range (tree has {len(self)} leaves)")
        out: Proof = []
        for level in self.levels[:-1]:
            sib = index ^ 1
            if sib < len(level):
                out.append((level[sib], sib < index))
            index //= 2
        return out


def verify_proof(leaf: bytes, proof: Proof, root: bytes) -> bool:
    h = leaf
    for sib, sib_left in proof:
        if len(sib) != 32:
            return False
        h = node_digest(sib, h) if sib_left else node_digest(h, sib)
    return h == root


def proof_to_json(proof: Proof) -> list[str]:
    return [("L:" if left else "R:") + sib.hex() for sib, left in proof]


def proof_from_json(items: list[str]) -> Proof:
    out = []
    for it in items:
        side, _, hx = str(it).partition(":")
        if side not in ("L", "R") or len(hx) != 64:
            raise errors.BatchFormatError(f"proof step '{it}' is not 'L:<64 hex>' or 'R:<64 hex>'")
        out.append((bytes.fromhex(hx), side == "L"))
    return out


# --------------------------------------------------------------------------- batches


@dataclass
class Leaf:
    stream: str
    seq: int
    digest: bytes
    ts: float | None = None     # what the frame's results line claims (bound by a v2 leaf)
    pos: str | None = None

    def to_json(self) -> dict:
        d = {"stream": self.stream, "seq": self.seq, "digest": self.digest.hex()}
        if self.ts is not None:
            d["ts"] = self.ts
        if self.pos is not None:
            d["pos"] = self.pos
        return d

    @classmethod
    def from_json(cls, x: dict) -> "Leaf":
        ts, pos = x.get("ts"), x.get("pos")
        return cls(str(x["stream"]), int(x["seq"]), bytes.fromhex(x["digest"]),
                   None if ts is None else float(ts), None if pos is None else str(pos))


@dataclass
class AnchorBatch:
    """One anchored batch: leaves, root and where the root went on chain."""

    model_key: str
    leaves: list[Leaf]
    chain: dict | None = None        # {"tx_hash", "registry", "chain_id", "endpoint"}
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc)
                         .isoformat(timespec="seconds").replace("+00:00", "Z"))
    _tree: MerkleTree | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, model_key: str, records: Sequence[tuple[str, int, object]]) -> "AnchorBatch":
        """From (stream_id, seq, class_map[, ts, pos]) records scored by ``model_key``."""
        from .values import normalize_key
        mk = normalize_key(model_key)
        leaves = []
        for s, n, cm, *claims in records:
            ts, pos = (list(claims) + [None, None])[:2]
            leaves.append(Leaf(str(s), int(n), leaf_digest(s, n, mk, cm, ts=ts, pos=pos), ts, pos))
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

    def write(self, path: str | os.PathLike, include_proofs: bool = False) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(p, json.dumps(self.to_json(include_proofs), separators=(",", ":")) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike) -> tuple["AnchorBatch", dict]:
        """The batch and the raw JSON (which carries the claimed root and any proofs)."""
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise errors.BatchFormatError(f"batch file {p} does not exist") from None
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
        except (KeyError, TypeError, ValueError) as exc:
            raise errors.BatchFormatError(f"batch file {p} is malformed ({exc})") from None
        return b, d


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
        self._key: str | None = None
        self._leaves: list[Leaf] = []
        self.written: list[Path] = []
        if resume:
            from .values import normalize_key
            self._key = normalize_key(resume["model_key"])
            self._leaves = [Leaf.from_json(x) for x in resume["leaves"]]

    def add(self, stream_id: str, seq: int, model_key: str, class_map, *,
            ts: float | None = None, pos: str | None = None) -> Path | None:
        """Add a frame's result (its leaf is computed here); returns what ``send`` returned
        for a batch this closed, else None."""
        from .values import normalize_key
        mk = normalize_key(model_key)
        return self.add_leaf(mk, Leaf(str(stream_id), int(seq),
                                      leaf_digest(stream_id, seq, mk, class_map, ts=ts, pos=pos),
                                      ts, pos))

    def add_leaf(self, model_key: str, leaf: Leaf) -> Path | None:
        """Add a leaf computed already (``chain.results.frame_record(...).anchor_leaf``)."""
        from .values import normalize_key
        mk = normalize_key(model_key)
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


# --------------------------------------------------------------------------- verification


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a class-map PNG as written by the flow (single-channel uint8 class ids)."""
    import cv2
    p = Path(path)
    if not p.exists():
        raise errors.AnchorVerificationFailed(f"mask {p} does not exist", check="mask")
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise errors.AnchorVerificationFailed(f"mask {p} is not a readable image", check="mask")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim != 2 or img.dtype != np.uint8:
        raise errors.AnchorVerificationFailed(
            f"mask {p} is {img.dtype} with shape {img.shape}, expected a single-channel uint8 "
            "class map (not the colour overlay)", check="mask")
    return img


@dataclass
class Verification:
    stream: str
    seq: int
    model_key: str
    root: str
    block: int
    key_state: str  # active | revoked | unregistered | unknown
    leaf: str = ""                # the proven leaf (hex) and the claims it binds
    ts: float | None = None
    pos: str | None = None

    anchorer: str = ""            # the device (address) that anchored the root

    def line(self) -> str:
        by = f" by device {self.anchorer}" if self.anchorer else ""
        return (f"verified: stream {self.stream} seq {self.seq} is in batch root {self.root}, "
                f"anchored in block {self.block}{by} for model {self.model_key} ({self.key_state})")


def verify_frame(batch_path: str | os.PathLike, stream: str, seq: int, class_map,
                 registry=None) -> Verification:
    """Check one frame's result against its batch and the chain. Raises
    AnchorVerificationFailed whose ``.check`` is one of: leaf_missing, leaf_mismatch,
    proof_invalid, root_not_anchored, model_key_mismatch, seq_out_of_range, stream_mismatch,
    anchor_history_incomplete, conflicting_anchor."""
    batch, raw = AnchorBatch.read(batch_path)
    claimed_root = bytes.fromhex(raw["root"])
    idx = batch.index_of(stream, seq)
    if idx is None:
        raise errors.AnchorVerificationFailed(
            f"leaf not in batch: {batch_path} has no result for stream '{stream}' seq {seq} "
            f"(it covers seq {batch.first_seq}..{batch.last_seq}); pick the batch file for "
            "that frame", check="leaf_missing")
    rec = batch.leaves[idx]
    leaf = leaf_digest(stream, seq, batch.model_key, class_map, ts=rec.ts, pos=rec.pos)
    if leaf != batch.leaves[idx].digest:
        raise errors.AnchorVerificationFailed(
            f"leaf mismatch: the mask's digest for stream '{stream}' seq {seq} under model "
            f"{batch.model_key} is {leaf.hex()[:16]}…, the batch recorded "
            f"{batch.leaves[idx].digest.hex()[:16]}…; the mask (or model key) is not the "
            "anchored result", check="leaf_mismatch")
    if raw.get("proofs") is not None:
        try:
            proof = proof_from_json(raw["proofs"][idx])
        except (IndexError, TypeError) as exc:
            raise errors.BatchFormatError(f"batch {batch_path}: no proof for leaf {idx}") from exc
    else:
        proof = batch.tree.proof(idx)
    if not verify_proof(leaf, proof, claimed_root):
        raise errors.AnchorVerificationFailed(
            f"proof invalid: the Merkle proof of stream '{stream}' seq {seq} does not lead to "
            f"the batch root {claimed_root.hex()}; the batch file was altered",
            check="proof_invalid")
    if registry is None:
        raise errors.AnchorVerificationFailed("no chain to check the root against",
                                              check="root_not_anchored")
    rec_chain = registry.anchor_record(claimed_root)
    if rec_chain is None:
        raise errors.AnchorVerificationFailed(
            f"root not anchored on chain: root {claimed_root.hex()} is unknown to registry "
            f"{registry.address} on {registry.endpoint}; wrong --chain/--registry, or the "
            "batch was never anchored (`python -m chain anchor BATCH`)", check="root_not_anchored")
    key, first, last, block = rec_chain.model_key, rec_chain.first_seq, rec_chain.last_seq, rec_chain.block
    if key != batch.model_key:
        raise errors.AnchorVerificationFailed(
            f"model key mismatch: the chain anchored root {claimed_root.hex()[:16]}… for model "
            f"{key}, the batch claims {batch.model_key}", check="model_key_mismatch")
    if not first <= seq <= last:
        raise errors.AnchorVerificationFailed(
            f"seq out of range: the chain anchored seq {first}..{last} for this root, not "
            f"{seq}", check="seq_out_of_range")
    from .values import stream_hash
    if rec_chain.stream_id != stream_hash(stream).hex():
        raise errors.AnchorVerificationFailed(
            f"stream mismatch: the chain anchored root {claimed_root.hex()[:16]}… for stream id "
            f"{rec_chain.stream_id[:16]}…, not stream '{stream}'", check="stream_mismatch")
    _check_conflicts(Path(batch_path), stream, seq, leaf, rec_chain, registry)
    try:
        key_state = registry.status(key).state
    except errors.ChainError:
        key_state = "unknown"
    return Verification(stream, seq, key, claimed_root.hex(), block, key_state, leaf.hex(),
                        rec.ts, rec.pos, rec_chain.anchorer)


def _leaf_in_batch_file(folder: Path, root: str, stream: str, seq: int) -> bytes | None:
    """The leaf for (stream, seq) in a batch file of ``folder`` whose root is ``root`` and
    whose tree really leads to it; None when there is no such file."""
    for p in sorted(folder.glob("*.json")):
        try:
            b, raw = AnchorBatch.read(p)
        except errors.ChainError:
            continue
        if raw.get("root") != root or b.root.hex() != root:
            continue
        i = b.index_of(stream, seq)
        if i is not None:
            return b.leaves[i].digest
    return None


def _check_conflicts(batch_path: Path, stream: str, seq: int, leaf: bytes, mine, registry) -> None:
    """No other device may have anchored the same frame with another result: one of two
    such anchors is forged, so neither proves the frame. An anchor with another root that
    covers the frame is a conflict unless its batch file (beside this one) holds the same
    leaf, or the same device anchored it for the same model: a device re-scoring its own
    stream (a restart, a recovery) anchors new leaves when their ts is the wall clock, and
    its key vouches for both (a batch it did not write is kept off chain by its seal)."""
    for other in registry.stream_anchors(stream):
        if other.root == mine.root or not other.first_seq <= seq <= other.last_seq:
            continue
        if other.anchorer == mine.anchorer and other.model_key == mine.model_key:
            continue
        if _leaf_in_batch_file(batch_path.parent, other.root, stream, seq) == leaf:
            continue
        raise errors.AnchorVerificationFailed(
            f"conflicting anchor: stream '{stream}' seq {seq} is covered by root "
            f"{mine.root[:16]}… (seq {mine.first_seq}..{mine.last_seq}, device {mine.anchorer}, "
            f"block {mine.block}) and by root {other.root[:16]}… (seq "
            f"{other.first_seq}..{other.last_seq}, device {other.anchorer}, block {other.block}) "
            "with another result; one of them is forged: revoke the anchorer role of the "
            "device that should not have anchored it", check="conflicting_anchor")
