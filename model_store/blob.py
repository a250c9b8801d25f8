"""Reading a blob: parse, verify, load (the layout is in ``model_store.blob_format``,
writing in ``model_store.blob_writer``; this module re-exports their public names).

Reading a blob file is bounded before anything is trusted:

- the prefix is checked against the file's size first (magic, version, header length at
  most MAX_HEADER_SIZE, the file at most MAX_BLOB_SIZE), so a huge or sparse file is
  refused unread; the content is hashed in CHUNK_SIZE pieces, never held whole by `verify`;
- given an expected key, the hash is compared before the header is parsed: nothing an
  attacker wrote is interpreted until its bytes are the trusted ones;
- the header is parsed (``model_store.header``) within bounds on depth, integer size, NaN
  and duplicate keys; anything else is `BadCard`, never a Python error.
"""

from __future__ import annotations

import io
import os
import stat
from typing import BinaryIO, Optional, Tuple, Union

import blake3
import zstandard

from . import errors
from . import graph as _graph
from .blob_format import (FORMAT_VERSION, KEY_SIZE, MAGIC, MAX_BLOB_SIZE, MAX_HEADER_SIZE,  # noqa: F401 - re-exported
                          MAX_RAW_SIZE, MAX_STORED_SIZE, PREFIX)
from .blob_key import BlobKey
from .blob_writer import pack, write  # noqa: F401 - re-exported
from .card import BodyInfo, ModelCard
from .graph_limits import DEFAULT_LIMITS, GraphLimits
from .header import MAX_INT_DIGITS, MAX_JSON_DEPTH, parse_card  # noqa: F401 - re-exported
from .secrets import decrypt, key_id

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "load",
    "pack",
    "read_header",
    "verify",
    "verify_card",
    "write",
]

CHUNK_SIZE = 1 << 20  # hashing reads this much at a time

Blob = Union[str, "os.PathLike[str]", bytes]


def read_header(path: Union[str, "os.PathLike[str]"]) -> ModelCard:
    """The card of a blob file, reading only its prefix and header (no hashing, no body)."""
    source = os.fspath(path)
    with _open(source) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            header_len = _check_prefix(f.read(PREFIX.size), source, size)
            header = f.read(header_len)
        except OSError as exc:
            raise _unreadable(source, exc) from None
    if len(header) < header_len:
        raise errors.Truncated(source, f"header declares {header_len} bytes but the file holds {len(header)}; re-copy the blob")
    return parse_card(header, source)


def verify(blob: Blob, expected_key: Optional[str] = None) -> BlobKey:
    """Check structure and key; return the key. Never decompresses."""
    return verify_card(blob, expected_key)[0]


def verify_card(blob: Blob, expected_key: Optional[str] = None) -> Tuple[BlobKey, ModelCard]:
    """Check structure and key; return (key, card). Never decompresses, never reads a file whole.

    Whatever the file holds, this raises only `errors.BlobError` subclasses (and ValueError for
    an `expected_key` that is not 64 hex characters): code that scans a folder of blobs can
    catch that one type, skip the file and name it.
    """
    if expected_key is not None:
        expected_key = BlobKey(expected_key)
    if isinstance(blob, (bytes, bytearray, memoryview)):
        data = bytes(blob)
        card, key = _check(io.BytesIO(data), len(data), "<bytes>", expected_key)
        return key, card
    source = os.fspath(blob)
    with _open(source) as f:
        try:
            card, key = _check(f, os.fstat(f.fileno()).st_size, source, expected_key)
        except OSError as exc:
            raise _unreadable(source, exc) from None
    return key, card


def load(blob: Blob, expected_key: str, *, decrypt_key: Optional[bytes] = None, check_graph: bool = True,
         limits: GraphLimits = DEFAULT_LIMITS) -> Tuple[ModelCard, bytes]:
    """Verify against the expected key, then decrypt and decompress under a hard size limit.

    Then the graph is checked against its card (`model_store.graph.check_graph`): it must
    be unambiguous, self-contained (no external data, no custom-op domains), within `limits`
    and be the graph the card describes, or an `errors.Undrivable` is raised.
    `check_graph=False` skips that, for benchmarks whose body is not a model.
    """
    if expected_key is None:
        raise ValueError("load needs the expected key: a blob's own key proves it is intact, not that it is the model you trust")
    expected_key = BlobKey(expected_key)
    data, source = _read(blob)
    # the bytes checked are the bytes decompressed: the file is read once, into memory
    card, _ = _check(io.BytesIO(data), len(data), source, expected_key)
    body_info = card.body
    assert body_info is not None  # _check guarantees it
    start = len(data) - KEY_SIZE - body_info.stored_size
    body = data[start : len(data) - KEY_SIZE]
    if body_info.encrypted:
        body = _decrypt(body_info, decrypt_key, body, data[:start], source)
    onnx_bytes = _decompress(body, body_info.raw_size, source)
    if check_graph:
        _graph.check_graph(card, onnx_bytes, source, limits)
    return card, onnx_bytes


# ---------------------------------------------------------------------------------------


def _read(blob: Blob) -> Tuple[bytes, str]:
    """The whole blob, read only once its prefix and size are within the limits."""
    if isinstance(blob, (bytes, bytearray, memoryview)):
        return bytes(blob), "<bytes>"
    source = os.fspath(blob)
    with _open(source) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            _check_prefix(f.read(PREFIX.size), source, size)
            f.seek(0)
            data = f.read(size)
            grew = f.read(1)
        except OSError as exc:
            raise _unreadable(source, exc) from None
    if grew:
        raise errors.TrailingBytes(source, f"file grew past {size} bytes while it was read; re-copy the blob")
    return data, source


def _open(source: str) -> BinaryIO:
    """Open a regular file for reading; a FIFO or device is refused instead of blocking on it."""
    try:
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise errors.Truncated(source, "no such file; check the path") from None
    except IsADirectoryError:
        raise errors.BadMagic(source, "is a directory; expected a .vsb blob file") from None
    except OSError as exc:
        raise _unreadable(source, exc) from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise _unreadable(source, exc) from None
    if stat.S_ISDIR(mode):
        os.close(fd)
        raise errors.BadMagic(source, "is a directory; expected a .vsb blob file")
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise errors.Unreadable(source, "is not a regular file (a pipe, socket or device); expected a .vsb blob file")
    return os.fdopen(fd, "rb")


def _unreadable(source: str, exc: OSError) -> errors.Unreadable:
    return errors.Unreadable(source, f"cannot be read ({exc.strerror or exc.__class__.__name__}); check the file and its permissions")


def _check_prefix(head: bytes, source: str, total: int) -> int:
    """Validate magic, version, header length and file size; return the header length."""
    if head[: len(MAGIC)] != MAGIC[: len(head)]:
        raise errors.BadMagic(source, f"starts with {head[:8]!r}; expected {MAGIC!r} (not a VeriSeg blob)")
    if len(head) < PREFIX.size:
        raise errors.Truncated(source, f"{total} bytes is shorter than the {PREFIX.size}-byte prefix; re-copy the blob")
    _, version, header_len = PREFIX.unpack(head)
    if version != FORMAT_VERSION:
        raise errors.UnsupportedVersion(source, f"format version {version}; this build reads version {FORMAT_VERSION}; upgrade veriseg or re-pack the model")
    if header_len > MAX_HEADER_SIZE:
        raise errors.OversizedHeader(source, f"header length {header_len} bytes; the limit is {MAX_HEADER_SIZE}")
    if total > MAX_BLOB_SIZE:
        raise errors.OversizedBlob(source, f"file is {total} bytes; no blob is over {MAX_BLOB_SIZE}; refusing it unread")
    return header_len


def _check(f: BinaryIO, size: int, source: str, expected_key: Optional[BlobKey]) -> Tuple[ModelCard, BlobKey]:
    """Structure and key of the blob in `f` (`size` bytes, `expected_key` normalised)."""
    f.seek(0)
    header_len = _check_prefix(f.read(PREFIX.size), source, size)
    header_end = PREFIX.size + header_len
    if size < header_end + KEY_SIZE:
        raise errors.Truncated(source, f"header declares {header_len} bytes but only {max(size - PREFIX.size, 0)} follow the prefix, with the key; re-copy the blob")
    header = f.read(header_len)
    if len(header) < header_len:
        raise errors.Truncated(source, f"file shrank to {PREFIX.size + len(header)} bytes while it was read; re-copy the blob")
    if expected_key is not None:
        # the trusted key first: nothing an attacker wrote is parsed before its bytes match
        key = _check_key(f, size, source, expected_key)
        card = parse_card(header, source)
        _check_lengths(card, header_end, size, source)
    else:
        card = parse_card(header, source)
        _check_lengths(card, header_end, size, source)  # before hashing: a wrong size costs no read
        key = _check_key(f, size, source, None)
    try:
        card.drive_spec()  # a card the flow cannot drive is refused here, not on every frame
    except errors.BlobError as exc:
        raise errors.resourced(exc, source) from None
    return card, key


def _check_lengths(card: ModelCard, header_end: int, size: int, source: str) -> None:
    body = card.body
    assert body is not None  # parse_card guarantees it
    if body.raw_size > MAX_RAW_SIZE:
        raise errors.LengthMismatch(source, f"declared raw size {body.raw_size} bytes is over the {MAX_RAW_SIZE}-byte limit")
    if body.stored_size > MAX_STORED_SIZE:
        raise errors.LengthMismatch(source, f"declared stored size {body.stored_size} bytes is over the {MAX_STORED_SIZE}-byte limit")
    tag = 16 if body.encrypted else 0
    if body.stored_size < tag:
        raise errors.LengthMismatch(source, f"stored size {body.stored_size} is smaller than the {tag}-byte tag")
    expected_len = header_end + body.stored_size + KEY_SIZE
    if size < expected_len:
        raise errors.Truncated(source, f"expected {expected_len} bytes from its header, found {size}; re-copy the blob")
    if size > expected_len:
        raise errors.TrailingBytes(source, f"expected {expected_len} bytes from its header, found {size} ({size - expected_len} trailing); re-copy the blob")


def _check_key(f: BinaryIO, size: int, source: str, expected_key: Optional[BlobKey]) -> BlobKey:
    """Hash every byte before the key in chunks; compare with the stored and expected keys."""
    hasher = blake3.blake3()
    buf = memoryview(bytearray(CHUNK_SIZE))
    f.seek(0)
    left = size - KEY_SIZE
    while left:
        n = f.readinto(buf[: min(left, CHUNK_SIZE)])
        if not n:
            raise errors.Truncated(source, f"file shrank below {size} bytes while it was read; re-copy the blob")
        hasher.update(buf[:n])
        left -= n
    stored = f.read(KEY_SIZE)
    if len(stored) != KEY_SIZE:
        raise errors.Truncated(source, f"file shrank below {size} bytes while it was read; re-copy the blob")
    stored_key, actual_key = stored.hex(), hasher.hexdigest()
    if actual_key != stored_key:
        raise errors.KeyMismatch(source, f"content hashes to {actual_key} but the blob ends with key {stored_key}: it is corrupt or was modified; do not use it")
    if expected_key is not None and actual_key != expected_key:
        raise errors.KeyMismatch(source, f"key is {actual_key}, expected {expected_key}: this is not the trusted model")
    return BlobKey(actual_key)


def _decrypt(body_info: BodyInfo, secret: Optional[bytes], body: bytes, aad: bytes, source: str) -> bytes:
    if secret is None:
        raise errors.DecryptionFailed(source, f"body is encrypted for key id {body_info.key_id}; no decryption secret was given (pass --decrypt-key FILE)")
    if key_id(secret) != body_info.key_id:
        raise errors.DecryptionFailed(source, f"body is encrypted for key id {body_info.key_id}; the secret given has key id {key_id(secret)}")
    plain = decrypt(secret, bytes.fromhex(body_info.nonce or ""), body, aad)
    if plain is None:
        raise errors.DecryptionFailed(source, "authentication tag does not match: wrong secret or modified ciphertext")
    return plain


def _decompress(body: bytes, raw_size: int, source: str) -> bytes:
    """Stream-decompress at most raw_size + 1 bytes, so a bomb costs nothing past the limit."""
    chunks, got = [], 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True)
        while got <= raw_size:
            chunk = reader.read(min(16 << 20, raw_size + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except zstandard.ZstdError as exc:
        raise errors.CorruptBody(source, f"body does not decompress ({exc}); re-pack the model") from None
    out = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(out) > raw_size:
        raise errors.DecompressionLimitExceeded(source, f"body expands past its declared raw size of {raw_size} bytes (a decompression bomb); refusing it")
    if len(out) != raw_size:
        raise errors.CorruptBody(source, f"body decompresses to {len(out)} bytes, header declares {raw_size}")
    return out
