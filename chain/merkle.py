"""The anchoring Merkle tree: how a frame's result becomes a leaf, how leaves become a root,
and the proofs from a leaf to it.

Leaf (domain-separated from inner nodes by its first byte, every field length-prefixed
or fixed-size, so no two different inputs encode to the same bytes)::

    leaf  = BLAKE3(0x00 | u16 len | "veriseg/anchor/leaf/v3"
                   | u32 len | stream_id (UTF-8) | u64 seq | 32-byte model key
                   | u8 ndim | u32 dim * ndim | u64 len | class-map bytes (C order, uint8)
                   | u8 has_ts | i64 ts (microseconds, round(ts * 1e6); only if has_ts)
                   | u8 has_pos | u32 len | pos (UTF-8; only if has_pos)
                   | 32-byte frame digest (chain.frame_digest: the decoded frame)
                   | u32 len | execution profile (chain.profile.ExecutionProfile.encode()))
    inner = BLAKE3(0x01 | left | right)

``ts`` and ``pos`` are the frame's timestamp and source position as its results line
states them, so a line claims nothing the leaf does not cover. The frame digest binds the
picture the model was given and the profile the numerics it ran with, so anyone holding
the frame can re-run the registered model on it and compare (``chain.rescore``).

Older leaves still verify: v2 (domain "veriseg/anchor/leaf/v2") ends after ``pos``; v1
(domain "veriseg/anchor/leaf/v1") ends after the class map, and its lines may not claim a
ts or pos. A leaf is v3 when it has a frame digest and a profile (always both), v2 when it
has a ts or pos, v1 otherwise.

An odd node at the end of a level is promoted unchanged to the next level (no
duplication, so a tree of n leaves never equals a tree of n+1 leaves). A proof is the
list of siblings from the leaf upwards, each tagged with the side it sits on.
"""

from __future__ import annotations

import struct
from typing import Sequence

import blake3
import numpy as np

from . import errors
from .profile import ExecutionProfile
from .values import parse_key

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
LEAF_DOMAIN_V1 = b"veriseg/anchor/leaf/v1"   # stream, seq, key, class map
LEAF_DOMAIN_V2 = b"veriseg/anchor/leaf/v2"   # ... and the frame's ts and pos
LEAF_DOMAIN = b"veriseg/anchor/leaf/v3"      # ... and the frame digest and execution profile


def ts_micros(ts) -> int:
    us = int(round(float(ts) * 1e6))
    if not -2**63 <= us < 2**63:
        raise ValueError(f"ts {ts} out of range for i64 microseconds")
    return us


def leaf_digest(stream_id: str, seq: int, model_key: str | bytes, class_map, *,
                ts: float | None = None, pos: str | None = None, frame: bytes | None = None,
                profile: ExecutionProfile | None = None) -> bytes:
    """BLAKE3 digest of one frame's result (32 bytes). ``class_map`` is the uint8 class-id
    array the model produced (H x W); bytes are accepted and hashed as a 1-D map. ``ts``
    and ``pos`` (as the results line states them) make it a v2 leaf that binds them; a
    ``frame`` digest (32 bytes) and the ``profile`` together make it a v3 leaf."""
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
    if (frame is None) != (profile is None):
        raise ValueError("a v3 leaf binds both the frame digest and the execution profile")
    v3 = frame is not None
    if v3 and (not isinstance(frame, (bytes, bytearray)) or len(frame) != 32):
        raise ValueError("the frame digest is 32 bytes")
    if v3 and not isinstance(profile, ExecutionProfile):
        raise TypeError(f"profile must be an ExecutionProfile, not {type(profile).__name__}")
    v2 = v3 or ts is not None or pos is not None
    domain = LEAF_DOMAIN if v3 else LEAF_DOMAIN_V2 if v2 else LEAF_DOMAIN_V1
    sid = str(stream_id).encode("utf-8")
    h = blake3.blake3()
    h.update(LEAF_PREFIX)
    h.update(struct.pack(">H", len(domain)) + domain)
    h.update(struct.pack(">I", len(sid)) + sid)
    h.update(struct.pack(">Q", int(seq)))
    h.update(parse_key(model_key).bytes)
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
    if v3:
        prof = profile.encode()
        h.update(bytes(frame))
        h.update(struct.pack(">I", len(prof)) + prof)
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
