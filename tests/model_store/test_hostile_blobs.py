"""Blobs built to hurt the reader: fuzzed bits, lengths and headers, hostile JSON, files
that are not files, huge or sparse ones; each is refused cheaply, with one line."""

from __future__ import annotations

import json
import os
import struct
import tracemalloc

import blake3
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import model_store as ms
from model_store import blob as blob_module
from model_store import errors
from model_store.blob import MAGIC
from model_store.canonical import canonical_json

from tests.model_store.blob_cases import GOLDEN_KEY, HOSTILE_HEADERS, body_span, hostile, make_card, reseal


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_bit_flip_is_refused(blob, data):
    key = ms.verify(blob)
    pos = data.draw(st.integers(0, len(blob) * 8 - 1))
    flipped = bytearray(blob)
    flipped[pos // 8] ^= 1 << (pos % 8)
    with pytest.raises(errors.BlobError):
        ms.verify(bytes(flipped), expected_key=key)
    with pytest.raises(errors.BlobError):
        ms.load(bytes(flipped), key)
    with pytest.raises(errors.BlobError):  # no outside key: the blob's own key catches it
        ms.verify(bytes(flipped))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_truncation_is_refused(blob, data):
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(errors.BlobError):
        ms.verify(blob[:cut])


def test_every_bit_of_the_header_region_is_covered(blob):
    """Exhaustive over the prefix and header: hypothesis samples, this proves."""
    (header_len,) = struct.unpack(">I", blob[10:14])
    for byte in range(14 + header_len):
        for bit in range(8):
            flipped = bytearray(blob)
            flipped[byte] ^= 1 << bit
            with pytest.raises(errors.BlobError):
                ms.verify(bytes(flipped))


def test_load_never_decompresses_before_the_key_check(blob, onnx_bytes, monkeypatch):
    calls = []
    real = zstandard.ZstdDecompressor

    def recording(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(blob_module.zstandard, "ZstdDecompressor", recording)
    key = ms.verify(blob)
    flipped = bytearray(blob)
    flipped[body_span(blob)[3]] ^= 1
    with pytest.raises(errors.KeyMismatch, match="corrupt or was modified"):
        ms.load(bytes(flipped), key)
    resealed = reseal(bytes(flipped))  # intact in itself, but not the trusted model
    with pytest.raises(errors.KeyMismatch, match="not the trusted model"):
        ms.load(resealed, key)
    assert calls == []
    assert ms.load(blob, key)[1] == onnx_bytes and calls == [1]  # the recorder does see a load


@pytest.mark.parametrize("name", list(HOSTILE_HEADERS))
def test_hostile_header_is_one_bad_card_with_and_without_key(name, tmp_path):
    data = hostile(HOSTILE_HEADERS[name])
    own_key = blake3.blake3(data[:-32]).hexdigest()
    path = tmp_path / "h.vsb"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(errors.BadCard):
            ms.verify(source)
        with pytest.raises(errors.BadCard):  # re-keyed: the key matches, the header is still refused
            ms.verify(source, expected_key=own_key)
        with pytest.raises(errors.BadCard):
            ms.verify_card(source)
        with pytest.raises(errors.BadCard):
            ms.load(source, own_key)
        with pytest.raises(errors.KeyMismatch, match="not the trusted model"):
            ms.verify(source, expected_key=GOLDEN_KEY)
    with pytest.raises(errors.BadCard):
        ms.read_header(path)


def test_brackets_inside_strings_do_not_count_as_nesting(onnx_bytes):
    card = make_card(description="[{" * 5000 + '\\"]' * 3, training_params={"note": "}" * 100})
    data = ms.pack(onnx_bytes, card)
    key, parsed = ms.verify_card(data)
    assert parsed.replace(body=None) == card and ms.load(data, key)[1] == onnx_bytes


def test_expected_key_is_compared_before_the_header_is_parsed(monkeypatch):
    parsed = []
    real = blob_module.parse_card
    monkeypatch.setattr(blob_module, "parse_card", lambda header, source: parsed.append(1) or real(header, source))
    data = hostile(HOSTILE_HEADERS["200000-deep arrays"])
    with pytest.raises(errors.KeyMismatch, match="not the trusted model"):
        ms.verify(data, expected_key=GOLDEN_KEY)
    with pytest.raises(errors.KeyMismatch, match="not the trusted model"):
        ms.load(data, GOLDEN_KEY)
    assert parsed == []
    with pytest.raises(errors.BadCard):
        ms.verify(data)
    assert parsed == [1]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


CARD_PATHS = [("name",), ("created",), ("classes",), ("classes", 0), ("classes", 0, "color"), ("inputs", 0),
              ("inputs", 0, "shape"), ("inputs", 0, "dtype"), ("outputs",), ("body",), ("body", "nonce"),
              ("body", "key_id"), ("body", "stored_size"), ("body", "encryption"), ("training_params",),
              ("metrics", "pixel_accuracy"), ("onnx_opset",)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(CARD_PATHS), value=json_values)
def test_any_json_value_in_any_card_field_is_a_blob_error_or_a_card(blob, where, value):
    header = json.loads(blob[14 : 14 + struct.unpack(">I", blob[10:14])[0]])
    node = header
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = value
    try:
        text = canonical_json(header)
    except ValueError:  # NaN/inf: write them as Python's json would, to reach the parser
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    data = hostile(text, blob[14 + struct.unpack(">I", blob[10:14])[0] : -32])
    key = blake3.blake3(data[:-32]).hexdigest()
    for expected in (None, key):
        try:
            ms.verify_card(data, expected)
        except errors.BlobError:
            pass


@settings(max_examples=300, deadline=None)
@given(header=st.binary(max_size=200) | st.text(alphabet="[]{}\\\":,0123456789.eE-tfnul ", max_size=200).map(str.encode))
def test_any_header_bytes_are_a_blob_error(header):
    data = hostile(header)
    for expected in (None, blake3.blake3(data[:-32]).hexdigest()):
        with pytest.raises(errors.BlobError):
            ms.verify_card(data, expected)


def test_a_pipe_or_directory_in_a_model_folder_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.vsb"
    os.mkfifo(fifo)  # open() on a FIFO would wait for a writer forever
    with pytest.raises(errors.Unreadable, match="not a regular file"):
        ms.verify_card(fifo)
    with pytest.raises(errors.Unreadable):
        ms.read_header(fifo)
    with pytest.raises(errors.Unreadable):
        ms.load(fifo, GOLDEN_KEY)
    (tmp_path / "dir.vsb").mkdir()
    with pytest.raises(errors.BadMagic, match="directory"):
        ms.verify_card(tmp_path / "dir.vsb")


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_sparse_8gib_file_is_refused_unread(tmp_path, blob):
    path = tmp_path / "sparse.vsb"
    (header_len,) = struct.unpack(">I", blob[10:14])
    with open(path, "wb") as f:
        f.write(blob[: 14 + header_len])  # a real prefix and card
        f.truncate(8 << 30)
    key = ms.verify(blob)

    def refuse_all():
        for call in (lambda: ms.verify(path), lambda: ms.verify(path, expected_key=key), lambda: ms.verify_card(path),
                     lambda: ms.read_header(path), lambda: ms.load(path, key)):
            with pytest.raises(errors.OversizedBlob, match="refusing it unread"):
                call()

    assert _peak_bytes(refuse_all) < 4 << 20


def test_declared_lengths_are_checked_before_hashing(tmp_path, blob, monkeypatch):
    path = tmp_path / "long.vsb"
    with open(path, "wb") as f:
        f.write(blob)
        f.truncate(len(blob) + (1 << 30))  # 1 GiB of sparse zeros after a valid blob
    monkeypatch.setattr(blob_module, "_check_key", lambda *a: pytest.fail("hashed before the lengths were checked"))
    with pytest.raises(errors.TrailingBytes, match="trailing"):
        ms.verify(path)


def test_verify_hashes_a_large_blob_in_chunks(tmp_path):
    """A 256 MiB body is hashed with a few MiB of memory: verify never holds the file."""
    stored = 256 << 20
    card = make_card().replace(body=ms.BodyInfo(raw_size=stored, stored_size=stored))
    header = canonical_json(card.to_dict())
    prefix = MAGIC + struct.pack(">HI", 1, len(header)) + header
    hasher = blake3.blake3(prefix)
    zeros = bytes(16 << 20)
    for _ in range(stored // len(zeros)):
        hasher.update(zeros)
    path = tmp_path / "big.vsb"
    with open(path, "wb") as f:
        f.write(prefix)
        f.seek(len(prefix) + stored)  # the body is a hole: zeros on read, no disk
        f.write(hasher.digest())
    del zeros
    keys = []
    peak = _peak_bytes(lambda: keys.append(ms.verify(path, expected_key=hasher.hexdigest())))
    assert keys == [hasher.hexdigest()]
    assert peak < 8 << 20, f"verify held {peak >> 20} MiB for a {stored >> 20} MiB body"
