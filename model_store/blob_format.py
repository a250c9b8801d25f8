"""The `.vsb` byte layout and its size limits, and the one spelling of a blob key.

    magic "VSEGBLOB" | version u16 | header length u32 | header | body | key
    header = canonical JSON of the model card (UTF-8)
    body   = zstd(ONNX), optionally ChaCha20-Poly1305-encrypted
    key    = BLAKE3-256 of every byte before it (32 bytes)

The key is the model's identity: it goes on chain and into every result. The blob
carries its own key at the end so that corruption is caught with no outside
reference (`verify` without `--key`); trust still comes from comparing with an
expected key, which an attacker who rewrites the whole file cannot forge.

Reading is in ``model_store.blob``, writing in ``model_store.blob_writer`` and the header's
JSON in ``model_store.header``.
"""

from __future__ import annotations

import re
import struct
from typing import Union

MAGIC = b"VSEGBLOB"
FORMAT_VERSION = 1
MAX_HEADER_SIZE = 1 << 20  # 1 MiB: a card is a few KB; more is hostile or broken
MAX_RAW_SIZE = 2 << 30  # 2 GiB: ONNX's own protobuf limit
MAX_STORED_SIZE = MAX_RAW_SIZE + (MAX_RAW_SIZE >> 7)  # over zstd's worst-case growth plus the tag
KEY_SIZE = 32
PREFIX = struct.Struct(">8sHI")
MAX_BLOB_SIZE = PREFIX.size + MAX_HEADER_SIZE + MAX_STORED_SIZE + KEY_SIZE
_HEX_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


def normalize_key(key: Union[str, bytes]) -> str:
    """Accept a key as printed anywhere (upper case, 0x prefix) or as its 32 bytes (a
    contract's bytes32); return 64 lower-case hex. The one rule for a key's spelling."""
    if isinstance(key, (bytes, bytearray)):
        if len(key) != KEY_SIZE:
            raise ValueError(f"a blob key is {KEY_SIZE} bytes, got {len(key)}")
        return bytes(key).hex()
    if not isinstance(key, str) or not _HEX_KEY.match(key.strip()):
        raise ValueError(f"{key!r} is not a blob key; expected 64 hex characters")
    key = key.strip().lower()
    return key[2:] if key.startswith("0x") else key
