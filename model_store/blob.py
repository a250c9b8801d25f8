"""The `.vsb` byte layout: pack, parse, verify, load.

    magic "VSEGBLOB" | version u16 | header length u32 | header | body | key
    header = canonical JSON of the model card (UTF-8)
    body   = zstd(ONNX), optionally ChaCha20-Poly1305-encrypted
    key    = BLAKE3-256 of every byte before it (32 bytes)

The key is the model's identity: it goes on chain and into every result. The blob
carries its own key at the end so that corruption is caught with no outside
reference (`verify` without `--key`); trust still comes from comparing with an
expected key, which an attacker who rewrites the whole file cannot forge.

Reading a blob file is bounded before anything is trusted:

- the prefix is checked against the file's size first (magic, version, header length at
  most MAX_HEADER_SIZE, the file at most MAX_BLOB_SIZE), so a huge or sparse file is
  refused unread; the content is hashed in CHUNK_SIZE pieces, never held whole by `verify`;
- given an expected key, the hash is compared before the header is parsed: nothing an
  attacker wrote is interpreted until its bytes are the trusted ones;
- the header is parsed only if it nests at most MAX_JSON_DEPTH arrays/objects (counted
  without recursion), its integers have at most MAX_INT_DIGITS characters, it has no
  NaN/Infinity and no duplicate keys; anything else is `BadCard`, never a Python error.

An encrypted body's 12-byte nonce is a keyed BLAKE3 of the header (with the nonce field
zeroed) and the compressed body, so one model packed with two cards never reuses a nonce.
Blobs packed before 2026-12 derived it from the body alone; they load unchanged (the
reader takes the nonce from the header), so the format version stays 1.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import re
import stat
import struct
from typing import BinaryIO, Optional, Tuple, Union

import blake3
import zstandard

from . import errors
from . import graph as _graph
from .card import BodyInfo, ModelCard
from .secrets import decrypt, encrypt, key_id, synthetic_nonce
from .util import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "load",
    "normalize_key",
    "pack",
    "read_header",
    "verify",
    "verify_card",
    "write",
]

MAGIC = b"VSEGBLOB"
FORMAT_VERSION = 1
MAX_HEADER_SIZE = 1 << 20  # 1 MiB: a card is a few KB; more is hostile or broken
MAX_RAW_SIZE = 2 << 30  # 2 GiB: ONNX's own protobuf limit
MAX_STORED_SIZE = MAX_RAW_SIZE + (MAX_RAW_SIZE >> 7)  # over zstd's worst-case growth plus the tag
KEY_SIZE = 32
_PREFIX = struct.Struct(">8sHI")
MAX_BLOB_SIZE = _PREFIX.size + MAX_HEADER_SIZE + MAX_STORED_SIZE + KEY_SIZE
MAX_JSON_DEPTH = 32  # a card nests 4 deep; json recurses once a level, so bound it first
MAX_INT_DIGITS = 40  # sizes and seeds fit; a 5000-digit number is hostile (and int() refuses it)
CHUNK_SIZE = 1 << 20  # hashing reads this much at a time
_HEX_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")

Blob = Union[str, "os.PathLike[str]", bytes]


def canonical_json(obj: object) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same card always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


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
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header
    body = compressed if encrypt_key is None else encrypt(encrypt_key, nonce, compressed, prefix)
    content = prefix + body
    return content + blake3.blake3(content).digest()


def write(path: Union[str, "os.PathLike[str]"], onnx_bytes: bytes, card: ModelCard, **kw) -> str:
    """Pack to a file (atomically: write then rename) and return the blob's key."""
    blob = pack(onnx_bytes, card, **kw)
    atomic_write(path, blob, fsync=True)
    return blob[-KEY_SIZE:].hex()


def read_header(path: Union[str, "os.PathLike[str]"]) -> ModelCard:
    """The card of a blob file, reading only its prefix and header (no hashing, no body)."""
    source = os.fspath(path)
    with _open(source) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            header_len = _check_prefix(f.read(_PREFIX.size), source, size)
            header = f.read(header_len)
        except OSError as exc:
            raise _unreadable(source, exc) from None
    if len(header) < header_len:
        raise errors.Truncated(source, f"header declares {header_len} bytes but the file holds {len(header)}; re-copy the blob")
    return _parse_card(header, source)


def verify(blob: Blob, expected_key: Optional[str] = None) -> str:
    """Check structure and key; return the key. Never decompresses."""
    return verify_card(blob, expected_key)[0]


def verify_card(blob: Blob, expected_key: Optional[str] = None) -> Tuple[str, ModelCard]:
    """Check structure and key; return (key, card). Never decompresses, never reads a file whole.

    Whatever the file holds, this raises only `errors.BlobError` subclasses (and ValueError for
    an `expected_key` that is not 64 hex characters): code that scans a folder of blobs can
    catch that one type, skip the file and name it.
    """
    if expected_key is not None:
        expected_key = normalize_key(expected_key)
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


def load(blob: Blob, expected_key: str, *, decrypt_key: Optional[bytes] = None, check_graph: bool = True) -> Tuple[ModelCard, bytes]:
    """Verify against the expected key, then decrypt and decompress under a hard size limit.

    Then the graph is checked against its card (`model_store.graph.check_graph`): it must
    be self-contained (no external data, no custom-op domains) and be the graph the card
    describes, or an `errors.Undrivable` is raised. `check_graph=False` skips that, for
    benchmarks whose body is not a model.
    """
    if expected_key is None:
        raise ValueError("load needs the expected key: a blob's own key proves it is intact, not that it is the model you trust")
    expected_key = normalize_key(expected_key)
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
        _graph.check_graph(card, onnx_bytes, source)
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
            _check_prefix(f.read(_PREFIX.size), source, size)
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
    if len(head) < _PREFIX.size:
        raise errors.Truncated(source, f"{total} bytes is shorter than the {_PREFIX.size}-byte prefix; re-copy the blob")
    _, version, header_len = _PREFIX.unpack(head)
    if version != FORMAT_VERSION:
        raise errors.UnsupportedVersion(source, f"format version {version}; this build reads version {FORMAT_VERSION}; upgrade veriseg or re-pack the model")
    if header_len > MAX_HEADER_SIZE:
        raise errors.OversizedHeader(source, f"header length {header_len} bytes; the limit is {MAX_HEADER_SIZE}")
    if total > MAX_BLOB_SIZE:
        raise errors.OversizedBlob(source, f"file is {total} bytes; no blob is over {MAX_BLOB_SIZE}; refusing it unread")
    return header_len


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NESTING_STEP = [0] * 256
for _b in b"[{":
    _NESTING_STEP[_b] = 1
for _b in b"]}":
    _NESTING_STEP[_b] = -1


def _json_depth(text: bytes) -> int:
    """How deep arrays and objects nest, counted in a loop (json.loads would recurse).

    Strings are cut out the way the JSON scanner reads them, so a bracket inside a string
    does not count; what json would recurse into is exactly what is counted.
    """
    brackets = _JSON_STRING.sub(b"", text).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_NESTING_STEP.__getitem__, brackets)), default=0)


def _json_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise ValueError(f"a {len(text)}-character integer; the limit is {MAX_INT_DIGITS}")
    return int(text)


def _json_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _json_object(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup[:40]!r}")
    return obj


def _parse_card(header: bytes, source: str) -> ModelCard:
    """The card from untrusted header bytes; any defect is BadCard, never a Python error."""
    depth = _json_depth(header)
    if depth > MAX_JSON_DEPTH:
        raise errors.BadCard(source, f"header nests {depth} levels deep; a card nests at most {MAX_JSON_DEPTH}; do not use this file")
    try:
        parsed = json.loads(header.decode("utf-8"), parse_int=_json_int, parse_constant=_json_constant,
                            object_pairs_hook=_json_object)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise errors.BadCard(source, f"header is not a card's UTF-8 JSON ({exc.__class__.__name__}: {exc}); do not use this file") from None
    try:
        canonical = canonical_json(parsed)
    except (TypeError, ValueError) as exc:
        raise errors.BadCard(source, f"header has values canonical JSON cannot hold ({exc}); do not use this file") from None
    if canonical != header:
        raise errors.BadCard(source, "header is not canonical JSON (sorted keys, no whitespace)")
    try:
        card = ModelCard.from_dict(parsed)
    except errors.BadCard as exc:
        raise errors.BadCard(source, str(exc).split(": ", 1)[1]) from None
    if card.body is None:
        raise errors.BadCard(source, "header has no body section; re-pack the model with model_store.pack")
    return card


def _check(f: BinaryIO, size: int, source: str, expected_key: Optional[str]) -> Tuple[ModelCard, str]:
    """Structure and key of the blob in `f` (`size` bytes, `expected_key` normalised)."""
    f.seek(0)
    header_len = _check_prefix(f.read(_PREFIX.size), source, size)
    header_end = _PREFIX.size + header_len
    if size < header_end + KEY_SIZE:
        raise errors.Truncated(source, f"header declares {header_len} bytes but only {max(size - _PREFIX.size, 0)} follow the prefix, with the key; re-copy the blob")
    header = f.read(header_len)
    if len(header) < header_len:
        raise errors.Truncated(source, f"file shrank to {_PREFIX.size + len(header)} bytes while it was read; re-copy the blob")
    if expected_key is not None:
        # the trusted key first: nothing an attacker wrote is parsed before its bytes match
        key = _check_key(f, size, source, expected_key)
        card = _parse_card(header, source)
        _check_lengths(card, header_end, size, source)
    else:
        card = _parse_card(header, source)
        _check_lengths(card, header_end, size, source)  # before hashing: a wrong size costs no read
        key = _check_key(f, size, source, None)
    try:
        card.drive_spec()  # a card the flow cannot drive is refused here, not on every frame
    except errors.BlobError as exc:
        raise errors.resourced(exc, source) from None
    return card, key


def _check_lengths(card: ModelCard, header_end: int, size: int, source: str) -> None:
    body = card.body
    assert body is not None  # _parse_card guarantees it
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


def _check_key(f: BinaryIO, size: int, source: str, expected_key: Optional[str]) -> str:
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
    return actual_key


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
