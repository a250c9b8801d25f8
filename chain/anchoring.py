"""Result anchoring: a Merkle tree over per-frame result digests, one root per batch.

Leaf (domain-separated from inner nodes by its first byte, every field length-prefixed
or fixed-size, so no two different inputs encode to the same bytes)::

    leaf  = BLAKE3(0x00 | u16 len | "veriseg/anchor/leaf/v1"
                   | u32 len | stream_id (UTF-8) | u64 seq | 32-byte model key
                   | u8 ndim | u32 dim * ndim | u64 len | class-map bytes (C order, uint8))
    inner = BLAKE3(0x01 | left | right)

An odd node at the end of a level is promoted unchanged to the next level (no
duplication, so a tree of n leaves never equals a tree of n+1 leaves). A proof is the
list of siblings from the leaf upwards, each tagged with the side it sits on.

Only the 32-byte root goes on chain (``ModelRegistry.anchor``); the leaves (and
optionally the proofs) stay off chain in a batch JSON file.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import blake3
import numpy as np

from . import errors

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
LEAF_DOMAIN = b"veriseg/anchor/leaf/v1"
BATCH_FORMAT = "veriseg-anchor-batch"
BATCH_VERSION = 1

__all__ = ["leaf_digest", "node_digest", "MerkleTree", "verify_proof", "Leaf", "AnchorBatch",
           "AnchorBatcher", "Verification",
           "read_mask", "verify_frame", "result_lines", "verify_result_line", "proof_to_json",
           "proof_from_json"]


def _key32(model_key: str | bytes) -> bytes:
    from .client import key_bytes
    return key_bytes(model_key)


def leaf_digest(stream_id: str, seq: int, model_key: str | bytes, class_map) -> bytes:
    """BLAKE3 digest of one frame's result (32 bytes). ``class_map`` is the uint8 class-id
    array the model produced (H x W); bytes are accepted and hashed as a 1-D map."""
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
    sid = str(stream_id).encode("utf-8")
    h = blake3.blake3()
    h.update(LEAF_PREFIX)
    h.update(struct.pack(">H", len(LEAF_DOMAIN)) + LEAF_DOMAIN)
    h.update(struct.pack(">I", len(sid)) + sid)
    h.update(struct.pack(">Q", int(seq)))
    h.update(_key32(model_key))
    h.update(struct.pack(">B", arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape))
    data = np.ascontiguousarray(arr).tobytes()
    h.update(struct.pack(">Q", len(data)))
    h.update(data)
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
        """From (stream_id, seq, class_map) records scored by ``model_key``."""
        from .client import normalize_key
        mk = normalize_key(model_key)
        leaves = [Leaf(str(s), int(n), leaf_digest(s, n, mk, cm)) for s, n, cm in records]
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

    def index_of(self, stream: str, seq: int) -> int | None:
        for i, lf in enumerate(self.leaves):
            if lf.stream == stream and lf.seq == seq:
                return i
        return None

    def anchor(self, registry) -> str:
        """Send the root to the registry (one transaction); records the tx in ``chain``."""
        tx = registry.anchor(self.root, self.model_key, self.first_seq, self.last_seq)
        self.chain = {"tx_hash": tx, "registry": registry.address,
                      "chain_id": registry.chain_id, "endpoint": registry.endpoint}
        return tx

    def to_json(self, include_proofs: bool = False) -> dict:
        d = {
            "format": BATCH_FORMAT, "version": BATCH_VERSION, "created": self.created,
            "model_key": self.model_key, "root": self.root.hex(),
            "first_seq": self.first_seq, "last_seq": self.last_seq,
            "leaf_count": len(self.leaves), "chain": self.chain,
            "leaves": [{"stream": lf.stream, "seq": lf.seq, "digest": lf.digest.hex()}
                       for lf in self.leaves],
        }
        if include_proofs:
            d["proofs"] = [proof_to_json(self.tree.proof(i)) for i in range(len(self.leaves))]
        return d

    def write(self, path: str | os.PathLike, include_proofs: bool = False) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(include_proofs), separators=(",", ":")) + "\n")
        os.replace(tmp, p)
        return p

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
            leaves = [Leaf(str(x["stream"]), int(x["seq"]), bytes.fromhex(x["digest"]))
                      for x in d["leaves"]]
            b = cls(str(d["model_key"]), leaves, chain=d.get("chain"), created=d.get("created", ""))
            if any(len(lf.digest) != 32 for lf in leaves) or not leaves:
                raise ValueError("leaves must be non-empty 32-byte digests")
            bytes.fromhex(d["root"])
        except (KeyError, TypeError, ValueError) as exc:
            raise errors.BatchFormatError(f"batch file {p} is malformed ({exc})") from None
        return b, d


class AnchorBatcher:
    """Collects frame results and anchors one batch every ``every`` frames (or when the
    model key changes, or on :meth:`flush`). Batches are written to ``out_dir`` as
    ``anchor-<first>-<last>-<root8>.json``. Without a registry the batch is written with
    ``chain: null`` (anchor it later with ``python -m chain anchor BATCH``)."""

    def __init__(self, out_dir: str | os.PathLike, every: int = 100, registry=None,
                 include_proofs: bool = False):
        if every < 1:
            raise ValueError("every must be >= 1")
        self.out_dir = Path(out_dir)
        self.every = every
        self.registry = registry
        self.include_proofs = include_proofs
        self._key: str | None = None
        self._leaves: list[Leaf] = []
        self.written: list[Path] = []

    def add(self, stream_id: str, seq: int, model_key: str, class_map) -> Path | None:
        from .client import normalize_key
        mk = normalize_key(model_key)
        out = None
        if self._key is not None and mk != self._key:
            out = self.flush()
        self._key = mk
        self._leaves.append(Leaf(str(stream_id), int(seq), leaf_digest(stream_id, seq, mk, class_map)))
        if len(self._leaves) >= self.every:
            out = self.flush()
        return out

    def flush(self) -> Path | None:
        if not self._leaves:
            return None
        batch = AnchorBatch(self._key, self._leaves)
        self._leaves = []
        path = self.out_dir / f"anchor-{batch.first_seq}-{batch.last_seq}-{batch.root.hex()[:8]}.json"
        if self.registry is not None:
            try:
                batch.anchor(self.registry)
            finally:
                batch.write(path, self.include_proofs)
        else:
            batch.write(path, self.include_proofs)
        self.written.append(path)
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

    def line(self) -> str:
        return (f"verified: stream {self.stream} seq {self.seq} is in batch root {self.root}, "
                f"anchored in block {self.block} for model {self.model_key} ({self.key_state})")


def verify_frame(batch_path: str | os.PathLike, stream: str, seq: int, class_map,
                 registry=None) -> Verification:
    """Check one frame's result against its batch and the chain. Raises
    AnchorVerificationFailed whose ``.check`` is one of: leaf_missing, leaf_mismatch,
    proof_invalid, root_not_anchored, model_key_mismatch, seq_out_of_range."""
    batch, raw = AnchorBatch.read(batch_path)
    claimed_root = bytes.fromhex(raw["root"])
    idx = batch.index_of(stream, seq)
    if idx is None:
        raise errors.AnchorVerificationFailed(
            f"leaf not in batch: {batch_path} has no result for stream '{stream}' seq {seq} "
            f"(it covers seq {batch.first_seq}..{batch.last_seq}); pick the batch file for "
            "that frame", check="leaf_missing")
    leaf = leaf_digest(stream, seq, batch.model_key, class_map)
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
    on_chain = registry.anchor_of(claimed_root)
    if on_chain is None:
        raise errors.AnchorVerificationFailed(
            f"root not anchored on chain: root {claimed_root.hex()} is unknown to registry "
            f"{registry.address} on {registry.endpoint}; wrong --chain/--registry, or the "
            "batch was never anchored (`python -m chain anchor BATCH`)", check="root_not_anchored")
    key, first, last, block = on_chain
    if key != batch.model_key:
        raise errors.AnchorVerificationFailed(
            f"model key mismatch: the chain anchored root {claimed_root.hex()[:16]}… for model "
            f"{key}, the batch claims {batch.model_key}", check="model_key_mismatch")
    if not first <= seq <= last:
        raise errors.AnchorVerificationFailed(
            f"seq out of range: the chain anchored seq {first}..{last} for this root, not "
            f"{seq}", check="seq_out_of_range")
    try:
        key_state = registry.status(key).state
    except errors.ChainError:
        key_state = "unknown"
    return Verification(stream, seq, key, claimed_root.hex(), block, key_state)


def _class_shares(class_map, names) -> dict:
    """What the flow's sink writes as a results line's ``shares``: class -> fraction of the
    pixels (5 decimals), classes absent from the map left out."""
    arr = np.asarray(class_map)
    counts = np.bincount(arr.ravel(), minlength=len(names or ()))
    tot = max(1, arr.size)
    return {(names[i] if names and i < len(names) else str(i)): round(int(c) / tot, 5)
            for i, c in enumerate(counts.tolist()) if c}


def result_lines(results_path: str | os.PathLike, stream: str, seq: int) -> list:
    """``(line number, record)`` of every ``results.jsonl`` line for (stream, seq); raises
    AnchorVerificationFailed (check ``result_missing``) when there is none or the file
    cannot be read."""
    p = Path(results_path)
    found = []
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue   # a torn or garbled line is not this frame's record
                if isinstance(rec, dict) and rec.get("stream") == stream and rec.get("seq") == seq:
                    found.append((n, rec))
    except OSError as exc:
        raise errors.AnchorVerificationFailed(f"results file {p} cannot be read ({exc})",
                                              check="result_missing") from None
    if not found:
        raise errors.AnchorVerificationFailed(
            f"result missing: {p} has no line for stream '{stream}' seq {seq}", check="result_missing")
    return found


def verify_result_line(results_path: str | os.PathLike, v: Verification, class_map,
                       class_names=None) -> dict:
    """Check the ``results.jsonl`` line of a frame that :func:`verify_frame` proved: it must
    name the anchored model key, carry the anchored leaf and the class shares of the proven
    class map. ``class_names`` (the card's, by class id) makes the shares check exact;
    without them shares are compared by value only. Returns the line; raises
    AnchorVerificationFailed whose ``.check`` is one of: result_missing,
    result_model_key_mismatch, result_leaf_mismatch, result_shares_mismatch."""
    from .client import normalize_key
    p = Path(results_path)
    found = result_lines(p, v.stream, v.seq)
    leaf = leaf_digest(v.stream, v.seq, v.model_key, class_map).hex()
    want = _class_shares(class_map, class_names)
    for n, rec in found:   # every line for the frame must hold (a second, edited copy too)
        where = f"{p} line {n} (stream '{v.stream}' seq {v.seq})"
        try:
            key = normalize_key(str(rec.get("model_key")))
        except Exception:  # noqa: BLE001 - any unparsable key is a mismatch
            key = str(rec.get("model_key"))
        if key != v.model_key:
            raise errors.AnchorVerificationFailed(
                f"result model key mismatch: {where} says model {rec.get('model_key')}, the "
                f"chain anchored this result for {v.model_key}", check="result_model_key_mismatch")
        if "leaf" in rec and rec["leaf"] != leaf:
            raise errors.AnchorVerificationFailed(
                f"result leaf mismatch: {where} records leaf {str(rec['leaf'])[:16]}…, the proven "
                f"result is {leaf[:16]}…", check="result_leaf_mismatch")
        if "shares" in rec:
            got = rec["shares"]
            ok = isinstance(got, dict) and all(isinstance(x, (int, float)) for x in got.values())
            if ok and class_names:
                ok = got == want
            elif ok:
                ok = sorted(got.values()) == sorted(want.values())
            if not ok:
                raise errors.AnchorVerificationFailed(
                    f"result shares mismatch: {where} has class shares "
                    f"{json.dumps(got, sort_keys=True)[:200]}, the proven class map gives "
                    f"{json.dumps(want, sort_keys=True)[:200]}",
                    check="result_shares_mismatch")
    return found[0][1]
