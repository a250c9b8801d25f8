"""A blob key: the BLAKE3-256 of a blob's bytes, the model's identity on chain and in every
result. Parsed and spelled here, nowhere else.

    key = BlobKey("0xAB12...")     # hex in any case, with or without 0x, or the 32 bytes
    key == "ab12..."               # a str: equal to (and hashed as) its 64 lower-case hex
    key.bytes                      # the 32 bytes (a contract's bytes32)
    key.short                      # "ab12...": the 12 characters logs and messages name it by
    unpacked_key(onnx_bytes)       # what names a graph not packed into a blob (yet)
"""

from __future__ import annotations

import re
from typing import Union

import blake3

__all__ = ["BlobKey", "InvalidBlobKey", "KEY_SIZE", "SHORT_LENGTH", "unpacked_key"]

KEY_SIZE = 32
SHORT_LENGTH = 12   # 48 bits: unique among the keys one deployment ever sees
_HEX_KEY = re.compile(r"(0x)?[0-9a-fA-F]{64}")


class InvalidBlobKey(ValueError):
    """Something that is not a blob key (one line: what it was, what a key looks like)."""


class BlobKey(str):
    """A blob key as 64 lower-case hex characters; built from any spelling of one."""

    __slots__ = ()

    def __new__(cls, key: Union[str, bytes, bytearray, "BlobKey"]) -> "BlobKey":
        if isinstance(key, BlobKey):
            return key
        if isinstance(key, (bytes, bytearray)):
            if len(key) != KEY_SIZE:
                raise InvalidBlobKey(f"a blob key is {KEY_SIZE} bytes, got {len(key)}")
            return super().__new__(cls, bytes(key).hex())
        if not isinstance(key, str) or not _HEX_KEY.fullmatch(key.strip()):
            shown = repr(key) if len(repr(key)) <= 80 else repr(key)[:77] + "..."
            raise InvalidBlobKey(f"{shown} is not a blob key; expected 64 hex characters")
        return super().__new__(cls, key.strip().lower().removeprefix("0x"))

    @property
    def bytes(self) -> bytes:
        return bytes.fromhex(self)

    @property
    def short(self) -> str:
        return self[:SHORT_LENGTH]

    def __repr__(self) -> str:
        return f"BlobKey({str(self)!r})"


def unpacked_key(onnx_bytes: bytes) -> BlobKey:
    """The key that names an ONNX graph not packed into a blob (a quantisation candidate, a
    benchmark's reference): the BLAKE3 of its bytes, so no two graphs share a name or an
    engine cache. It is never a registered key: a blob's key hashes the whole blob."""
    return BlobKey(blake3.blake3(onnx_bytes).digest())
