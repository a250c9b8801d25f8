"""Writing a blob: a model and its card packed into the `.vsb` layout, to bytes or a file.

An encrypted body's 12-byte nonce is a keyed BLAKE3 of the header (with the nonce field
zeroed) and the compressed body, so one model packed with two cards never reuses a nonce.
Blobs whose nonce was derived from the body alone load the same way (the reader takes
the nonce from the header), so both derivations share format version 1.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Union

import blake3
import zstandard

from .blob_format import FORMAT_VERSION, KEY_SIZE, MAGIC, MAX_HEADER_SIZE, MAX_RAW_SIZE, PREFIX
from .blob_key import BlobKey
from .card import BodyInfo, ModelCard
from .canonical import canonical_json
from .secrets import encrypt, key_id, synthetic_nonce
from .util import atomic_write


def pack(onnx_bytes: bytes, card: ModelCard, *, encrypt_key: Optional[bytes] = None, level: int = 3) -> bytes:
    """Serialise a model and its card into a blob. Same inputs, same bytes, same key."""
    if not isinstance(onnx_bytes, (bytes, bytearray, memoryview)) or len(onnx_bytes) == 0:
        raise ValueError("pack needs the ONNX model as non-empty bytes")
    if len(onnx_bytes) > MAX_RAW_SIZE:
        raise ValueError(f"model is {len(onnx_bytes)} bytes; the limit is {MAX_RAW_SIZE}")
    compressed = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(bytes(onnx_bytes))
    body_info = BodyInfo(raw_size=len(onnx_bytes), stored_size=len(compressed), compression_level=level)
    if encrypt_key is not None:
        body_info = BodyInfo(
            raw_size=len(onnx_bytes),
            stored_size=len(compressed) + 16,  # the Poly1305 tag
            compression_level=level,
            encryption="chacha20-poly1305",
            key_id=key_id(encrypt_key),
            nonce="00" * 12,
        )
        # the nonce covers the card as well as the body: the same model under two cards
        # (two AADs) must not reuse (secret, nonce), or one Poly1305 key signs two messages
        draft = canonical_json(card.replace(body=body_info).to_dict())
        nonce = synthetic_nonce(encrypt_key, draft, compressed)
        body_info = dataclasses.replace(body_info, nonce=nonce.hex())
    header = canonical_json(card.replace(body=body_info).to_dict())
    if len(header) > MAX_HEADER_SIZE:
        raise ValueError(f"card is {len(header)} bytes as JSON; the limit is {MAX_HEADER_SIZE}")
    prefix = PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header
    body = compressed if encrypt_key is None else encrypt(encrypt_key, nonce, compressed, prefix)
    content = prefix + body
    return content + blake3.blake3(content).digest()


def write(path: Union[str, "os.PathLike[str]"], onnx_bytes: bytes, card: ModelCard, **kw) -> BlobKey:
    """Pack to a file (atomically: write then rename) and return the blob's key."""
    blob = pack(onnx_bytes, card, **kw)
    atomic_write(path, blob, fsync=True)
    return BlobKey(blob[-KEY_SIZE:])
