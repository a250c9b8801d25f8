"""The `.vsb` byte layout and its size limits.

    magic "VSEGBLOB" | version u16 | header length u32 | header | body | key
    header = canonical JSON of the model card (UTF-8)
    body   = zstd(ONNX), optionally ChaCha20-Poly1305-encrypted
    key    = BLAKE3-256 of every byte before it (32 bytes)

The key is the model's identity: it goes on chain and into every result. The blob
carries its own key at the end so that corruption is caught with no outside
reference (`verify` without `--key`); trust still comes from comparing with an
expected key, which an attacker who rewrites the whole file cannot forge.

Reading is in ``model_store.blob``, writing in ``model_store.blob_writer``, the header's
JSON in ``model_store.header`` and the key's spelling in ``model_store.blob_key``.
"""

from __future__ import annotations

import struct

from .blob_key import KEY_SIZE

MAGIC = b"VSEGBLOB"
FORMAT_VERSION = 1
MAX_HEADER_SIZE = 1 << 20  # 1 MiB: a card is a few KB; more is hostile or broken
MAX_RAW_SIZE = 2 << 30  # 2 GiB: ONNX's own protobuf limit
MAX_STORED_SIZE = MAX_RAW_SIZE + (MAX_RAW_SIZE >> 7)  # over zstd's worst-case growth plus the tag
PREFIX = struct.Struct(">8sHI")
MAX_BLOB_SIZE = PREFIX.size + MAX_HEADER_SIZE + MAX_STORED_SIZE + KEY_SIZE

