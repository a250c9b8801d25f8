"""Verifying one anchored frame: its class map against the batch's leaf, the leaf's proof
against the root, the root against the registry's anchor record, and no conflicting anchor
of the same frame by another device."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_store.blob_key import BlobKey
from model_store.util import one_line

from . import errors
from .anchor_batch import AnchorBatch
from .files import PathRefused, open_regular
from .merkle import leaf_digest, proof_from_json, verify_proof

MAX_MASK_BYTES = 64 << 20   # a 4K class map is ~8 MiB uncompressed


def decode_mask(data: bytes, where: str) -> np.ndarray:
    """A class-map PNG's bytes as the flow writes them (single-channel uint8 class ids)."""
    import cv2
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        raise errors.AnchorVerificationFailed(f"mask {where} is not a readable image", check="mask")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim != 2 or img.dtype != np.uint8:
        raise errors.AnchorVerificationFailed(
            f"mask {where} is {img.dtype} with shape {img.shape}, expected a single-channel uint8 "
            "class map (not the colour overlay)", check="mask")
    return img


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a class-map PNG at ``path`` (a regular file: a FIFO is refused, never waited on)."""
    p = Path(path)
    try:
        with open_regular(p) as f:
            data = f.read(MAX_MASK_BYTES + 1)
    except FileNotFoundError:
        raise errors.AnchorVerificationFailed(f"mask {p} does not exist", check="mask") from None
    except (OSError, PathRefused) as e:
        raise errors.AnchorVerificationFailed(f"mask {one_line(e)}", check="mask") from None
    if len(data) > MAX_MASK_BYTES:
        raise errors.AnchorVerificationFailed(f"mask {p} is larger than {MAX_MASK_BYTES} bytes",
                                              check="mask")
    return decode_mask(data, str(p))


@dataclass
class Verification:
    stream: str
    seq: int
    model_key: BlobKey
    root: str
    block: int
    key_state: str  # active | revoked | unregistered | unknown
    leaf: str = ""                # the proven leaf (hex) and the claims it binds
    ts: float | None = None
    pos: str | None = None
    frame: str | None = None      # the decoded frame's digest (hex) and the execution
    profile: dict | None = None   # profile a v3 leaf binds

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
    leaf = leaf_digest(stream, seq, batch.model_key, class_map, ts=rec.ts, pos=rec.pos,
                       frame=rec.frame, profile=rec.profile)
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
                        rec.ts, rec.pos, None if rec.frame is None else rec.frame.hex(),
                        None if rec.profile is None else rec.profile.as_dict(), rec_chain.anchorer)


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
