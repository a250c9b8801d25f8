"""Optional body encryption with a device secret (ChaCha20-Poly1305).

The paper's ASTORE cannot be reverse engineered; an encrypted body gives that to an
ONNX model. The blob key covers the ciphertext, so anyone can verify a blob against
the chain; only a holder of the secret can run it.

The nonce is synthetic (a keyed hash of the header and the plaintext), so packing is
deterministic and a nonce repeats only for the identical card and plaintext under the same
secret: the same (secret, nonce) never authenticates two different messages.
"""

from __future__ import annotations

import os
import struct
from typing import Optional, Union

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

__all__ = ["decrypt", "encrypt", "generate_secret", "key_id", "read_secret", "synthetic_nonce"]

SECRET_SIZE = 32


def generate_secret() -> bytes:
    return os.urandom(SECRET_SIZE)


def read_secret(path: Union[str, "os.PathLike[str]"]) -> bytes:
    """A secret file holds 32 raw bytes or 64 hex characters (whitespace ignored)."""
    with open(path, "rb") as f:
        raw = f.read()
    text = raw.strip()
    if len(text) == 2 * SECRET_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(raw) == SECRET_SIZE:
        return raw
    raise ValueError(f"{os.fspath(path)}: expected a {SECRET_SIZE}-byte secret (raw, or {2 * SECRET_SIZE} hex characters), found {len(raw)} bytes")


def key_id(secret: bytes) -> str:
    """A public name for a secret: says which secret a blob needs without revealing it."""
    _check(secret)
    return blake3.blake3(secret, derive_key_context="veriseg 2026-11 blob key id").hexdigest()[:16]


def synthetic_nonce(secret: bytes, header: bytes, plaintext: bytes) -> bytes:
    """A 12-byte nonce bound to the header (the AAD, nonce zeroed) and the plaintext."""
    _check(secret)
    nonce_key = blake3.blake3(secret, derive_key_context="veriseg 2026-12 blob nonce of header and body").digest()
    h = blake3.blake3(key=nonce_key)
    h.update(struct.pack(">Q", len(header)))  # length-prefixed: no two (header, body) splits collide
    h.update(header)
    h.update(plaintext)
    return h.digest()[:12]


def encrypt(secret: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    _check(secret)
    return ChaCha20Poly1305(secret).encrypt(nonce, plaintext, aad)


def decrypt(secret: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> Optional[bytes]:
    """The plaintext, or None when the tag does not authenticate."""
    _check(secret)
    if len(nonce) != 12:
        return None
    try:
        return ChaCha20Poly1305(secret).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        return None


def _check(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) != SECRET_SIZE:
        raise ValueError(f"a blob secret is {SECRET_SIZE} bytes; got {len(secret) if isinstance(secret, bytes) else type(secret).__name__}")
