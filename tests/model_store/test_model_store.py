"""The blob format: round trip, determinism, every refusal, fuzzing, the golden file."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

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

from tests.conftest import REPO, tiny_onnx

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN_KEY = "8674470b2e0a69784dfdde27ea8c04d7fe24c8a0d4c8ac31c7c1098dc3ab7174"  # make_golden() prints it


def make_card(**changes) -> ms.ModelCard:
    card = ms.ModelCard(
        name="tiny",
        description="a three-class test model",
        algorithm="ArgMax",
        created="2026-11-25T12:00:00Z",
        modified="2026-11-25T12:00:00Z",
        training_params={"epochs": 1, "lr": 0.001},
        classes=ms.CARLA_CLASSES,
        scoring_function="uint8 NHWC RGB -> argmax channel (uint8 NHW)",
        inputs=(ms.TensorSpec("image", "uint8", ("N", 8, 8, 3), "NHWC", "RGB"),),
        outputs=(ms.TensorSpec("classes", "uint8", ("N", 8, 8), "NHW"),),
        metrics={"pixel_accuracy": 0.5},
        onnx_opset=17,
    )
    return card.replace(**changes) if changes else card


def reseal(data: bytes) -> bytes:
    """Recompute the trailing key, as an attacker who rewrites the whole file would."""
    return data[:-32] + blake3.blake3(data[:-32]).digest()


def with_header(blob: bytes, edit) -> bytes:
    """Rewrite the header through `edit(dict)`, fix the prefix length and the key."""
    (header_len,) = struct.unpack(">I", blob[10:14])
    header = json.loads(blob[14 : 14 + header_len])
    edit(header)
    new = canonical_json(header)
    return reseal(blob[:10] + struct.pack(">I", len(new)) + new + blob[14 + header_len :])


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return tiny_onnx()


@pytest.fixture(scope="module")
def blob(onnx_bytes) -> bytes:
    return ms.pack(onnx_bytes, make_card())


# --- round trip and determinism --------------------------------------------------------


def test_round_trip_file(tmp_path, onnx_bytes):
    path = tmp_path / "m.vsb"
    key = ms.write(path, onnx_bytes, make_card())
    assert ms.verify(path) == key
    card, model = ms.load(path, key)
    assert model == onnx_bytes
    assert card.replace(body=None) == make_card()
    assert card.body.raw_size == len(onnx_bytes)
    assert ms.read_header(path) == card
    assert card.input_size == (8, 8)


def test_load_accepts_key_as_printed_elsewhere(blob):
    key = ms.verify(blob)
    assert ms.load(blob, "0x" + key.upper())[1] == ms.load(blob, key)[1]


def test_pack_is_deterministic(tmp_path, onnx_bytes):
    assert ms.pack(onnx_bytes, make_card()) == ms.pack(onnx_bytes, make_card())
    k1 = ms.write(tmp_path / "a.vsb", onnx_bytes, make_card())
    k2 = ms.write(tmp_path / "b.vsb", onnx_bytes, make_card())
    assert k1 == k2
    assert (tmp_path / "a.vsb").read_bytes() == (tmp_path / "b.vsb").read_bytes()


def test_any_change_changes_the_key(onnx_bytes, blob):
    key = ms.verify(blob)
    assert ms.verify(ms.pack(onnx_bytes, make_card(description="other"))) != key
    assert ms.verify(ms.pack(onnx_bytes + b"\0", make_card())) != key
    assert ms.verify(ms.pack(onnx_bytes, make_card(), level=19)) != key


def test_encrypted_round_trip_and_verifiable_without_secret(onnx_bytes):
    secret = ms.generate_secret()
    sealed = ms.pack(onnx_bytes, make_card(), encrypt_key=secret)
    assert sealed == ms.pack(onnx_bytes, make_card(), encrypt_key=secret)  # deterministic too
    key = ms.verify(sealed)  # no secret needed
    assert onnx_bytes not in sealed
    card, model = ms.load(sealed, key, decrypt_key=secret)
    assert model == onnx_bytes and card.body.encryption == "chacha20-poly1305"


def test_encrypted_body_needs_the_right_secret(onnx_bytes):
    secret = ms.generate_secret()
    sealed = ms.pack(onnx_bytes, make_card(), encrypt_key=secret)
    key = ms.verify(sealed)
    with pytest.raises(errors.DecryptionFailed, match="no decryption secret"):
        ms.load(sealed, key)
    with pytest.raises(errors.DecryptionFailed, match="key id"):
        ms.load(sealed, key, decrypt_key=ms.generate_secret())


def test_encrypted_ciphertext_edit_fails_authentication(onnx_bytes):
    secret = ms.generate_secret()
    sealed = bytearray(ms.pack(onnx_bytes, make_card(), encrypt_key=secret))
    sealed[-40] ^= 1  # inside the ciphertext
    forged = reseal(bytes(sealed))
    with pytest.raises(errors.DecryptionFailed, match="authentication tag"):
        ms.load(forged, ms.verify(forged), decrypt_key=secret)


def test_secret_file_formats(tmp_path):
    secret = ms.generate_secret()
    (tmp_path / "hex").write_text(secret.hex() + "\n")
    (tmp_path / "raw").write_bytes(secret)
    (tmp_path / "bad").write_text("short")
    assert ms.read_secret(tmp_path / "hex") == secret == ms.read_secret(tmp_path / "raw")
    with pytest.raises(ValueError, match="32-byte secret"):
        ms.read_secret(tmp_path / "bad")


def test_load_requires_an_expected_key(blob):
    with pytest.raises(ValueError, match="expected key"):
        ms.load(blob, None)


# --- every refusal, each its own type, each naming the file -----------------------------


def test_bad_magic(tmp_path):
    path = tmp_path / "x.vsb"
    path.write_bytes(b"PK\x03\x04 not a blob at all, a zip")
    with pytest.raises(errors.BadMagic, match=str(path)):
        ms.verify(path)


def test_unsupported_version(blob):
    data = blob[:8] + struct.pack(">H", 99) + blob[10:]
    with pytest.raises(errors.UnsupportedVersion, match="format version 99"):
        ms.verify(reseal(data))


@pytest.mark.parametrize("keep", [0, 5, 13, 20, -33, -1])
def test_truncated(blob, keep):
    with pytest.raises(errors.Truncated):
        ms.verify(blob[:keep] if keep else b"")


def test_oversized_header(blob):
    data = blob[:10] + struct.pack(">I", 50 << 20) + blob[14:]
    with pytest.raises(errors.OversizedHeader, match="limit"):
        ms.verify(data)


def test_trailing_bytes(blob):
    with pytest.raises(errors.TrailingBytes, match="1 trailing"):
        ms.verify(blob + b"\0")


def test_length_mismatch_raw_size_over_limit(blob):
    forged = with_header(blob, lambda h: h["body"].update(raw_size=1 << 40))
    with pytest.raises(errors.LengthMismatch, match="raw size"):
        ms.verify(forged)


def test_key_mismatch_corrupt_content(blob):
    data = bytearray(blob)
    data[-40] ^= 0x10
    with pytest.raises(errors.KeyMismatch, match="corrupt or was modified"):
        ms.verify(bytes(data))


def test_key_mismatch_expected(onnx_bytes, blob):
    other = ms.verify(ms.pack(onnx_bytes, make_card(name="other")))
    with pytest.raises(errors.KeyMismatch, match="not the trusted model"):
        ms.load(blob, other)


def test_bad_card(blob):
    forged = with_header(blob, lambda h: h.update(created="yesterday"))
    with pytest.raises(errors.BadCard, match="ISO 8601"):
        ms.verify(forged)
    forged = with_header(blob, lambda h: h.update(surprise=1))
    with pytest.raises(errors.BadCard, match="card has unknown fields"):
        ms.verify(forged)


def test_non_canonical_header_refused(blob):
    (header_len,) = struct.unpack(">I", blob[10:14])
    pretty = json.dumps(json.loads(blob[14 : 14 + header_len]), indent=1).encode()
    data = reseal(blob[:10] + struct.pack(">I", len(pretty)) + pretty + blob[14 + header_len :])
    with pytest.raises(errors.BadCard, match="canonical"):
        ms.verify(data)


def test_corrupt_body_with_valid_key(blob, onnx_bytes):
    """A publisher-signed key over garbage still never reaches the runtime."""
    garbage = b"\x28\xb5\x2f\xfd" + b"\xff" * 40
    forged = with_header(blob, lambda h: h["body"].update(stored_size=len(garbage)))
    (header_len,) = struct.unpack(">I", forged[10:14])
    forged = reseal(forged[: 14 + header_len] + garbage + b"\0" * 32)
    with pytest.raises(errors.CorruptBody):
        ms.load(forged, ms.verify(forged))


def test_decompression_bomb_refused_without_the_memory(onnx_bytes):
    """1 GiB of zeros compresses to ~40 KB; declared raw size 1 KB. Refused, RSS flat."""
    cctx = zstandard.ZstdCompressor(level=1)
    chunks = cctx.compressobj()
    zeros = bytes(16 << 20)
    bomb = b"".join(chunks.compress(zeros) for _ in range(64)) + chunks.flush()
    card = make_card().replace(body=ms.BodyInfo(raw_size=1024, stored_size=len(bomb)))
    header = canonical_json(card.to_dict())
    content = MAGIC + struct.pack(">HI", 1, len(header)) + header + bomb
    data = content + blake3.blake3(content).digest()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(errors.DecompressionLimitExceeded, match="decompression bomb"):
        ms.load(data, ms.verify(data))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024, f"peak RSS grew {grown_kib} KiB while refusing a bomb"


def test_card_validation():
    with pytest.raises(errors.BadCard, match="layout"):
        ms.TensorSpec("image", "uint8", (1, 8, 8, 3), "NHW")
    with pytest.raises(errors.BadCard, match="dtype"):
        ms.TensorSpec("image", "complex", (1,), "N")
    with pytest.raises(errors.BadCard, match="finite"):
        make_card(metrics={"acc": float("nan")})
    with pytest.raises(errors.BadCard, match="before created"):
        make_card(modified="2020-01-01T00:00:00Z")
    with pytest.raises(errors.BadCard, match="class ids"):
        make_card(classes=ms.CARLA_CLASSES[1:])


def test_carla_classes_in_paper_order():
    names = [c.name for c in ms.CARLA_CLASSES]
    assert names == ["Unlabeled", "Building", "Fence", "Other", "Pedestrian", "Pole", "RoadLine",
                     "Road", "Sidewalk", "Vegetation", "Car", "Wall", "TrafficSign"]
    assert ms.CARLA_CLASSES[10].color == (0, 0, 142)


# --- fuzzing: any single bit flip or truncation is a clean refusal ----------------------


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


# --- golden file: an accidental format change fails here ---------------------------------


def make_golden() -> None:
    """Regenerate tests/data/golden.* (only on a deliberate format change)."""
    DATA.mkdir(exist_ok=True)
    (DATA / "golden.onnx").write_bytes(tiny_onnx())
    key = ms.write(DATA / "golden.vsb", tiny_onnx(), make_card())
    print(key)


def test_golden_blob_format_is_pinned():
    golden = (DATA / "golden.vsb").read_bytes()
    assert ms.verify(golden) == GOLDEN_KEY
    card, model = ms.load(golden, GOLDEN_KEY)
    assert model == (DATA / "golden.onnx").read_bytes()
    assert card.replace(body=None) == make_card()
    repacked = ms.pack(model, make_card())
    (header_len,) = struct.unpack(">I", golden[10:14])
    assert repacked[: 14 + header_len] == golden[: 14 + header_len], "prefix or header encoding changed"
    assert repacked == golden, "zstd output changed: bump FORMAT_VERSION or regenerate deliberately"


# --- CLI -----------------------------------------------------------------------------------


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "model_store", *map(str, args)], capture_output=True, text=True, cwd=cwd or REPO)


def body_span(data: bytes) -> range:
    """Offsets of the body: after the header, before the trailing key."""
    (header_len,) = struct.unpack(">I", data[10:14])
    return range(14 + header_len, len(data) - 32)


def test_cli_verify_intact_and_flipped(tmp_path):
    path = tmp_path / "g.vsb"
    path.write_bytes((DATA / "golden.vsb").read_bytes())
    ok = cli("verify", path)
    assert ok.returncode == 0 and ok.stdout.strip() == GOLDEN_KEY
    inspected = cli("inspect", path)
    assert inspected.returncode == 0 and GOLDEN_KEY in inspected.stdout
    data = bytearray(path.read_bytes())
    span = body_span(data)
    data[span[len(span) // 2]] ^= 4  # a body byte: only the hash can notice it (the card is intact)
    path.write_bytes(bytes(data))
    for args in ((), ("--key", GOLDEN_KEY)):
        bad = cli("verify", path, *args)
        assert bad.returncode == 1
        assert bad.stdout == ""
        assert len(bad.stderr.strip().splitlines()) == 1 and str(path) in bad.stderr
        assert "corrupt or was modified" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_pack_inspect_unpack(tmp_path):
    (tmp_path / "m.onnx").write_bytes(tiny_onnx())
    (tmp_path / "params.json").write_text(json.dumps({"epochs": 3}))
    packed = cli("pack", tmp_path / "m.onnx", "--name", "tiny", "--description", "d", "--params", tmp_path / "params.json",
                 "--created", "2026-11-25T12:00:00Z", "-o", tmp_path / "m.vsb")
    assert packed.returncode == 0, packed.stderr
    key = packed.stdout.strip().splitlines()[-1]
    info = json.loads(cli("inspect", tmp_path / "m.vsb", "--json").stdout)
    assert info["key"] == key
    assert info["card"]["inputs"][0] == {"name": "image", "dtype": "uint8", "shape": ["N", 8, 8, 3], "layout": "NHWC", "color_order": "RGB"}
    assert info["card"]["onnx_opset"] == 17 and info["card"]["training_params"] == {"epochs": 3}
    assert cli("unpack", tmp_path / "m.vsb", "--key", key, "-o", tmp_path / "out.onnx").returncode == 0
    assert (tmp_path / "out.onnx").read_bytes() == tiny_onnx()
    wrong = cli("unpack", tmp_path / "m.vsb", "--key", "0" * 64, "-o", tmp_path / "x.onnx")
    assert wrong.returncode == 1 and "not the trusted model" in wrong.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_cli_encrypted_pack_and_unpack(tmp_path):
    (tmp_path / "m.onnx").write_bytes(tiny_onnx())
    assert cli("keygen", "-o", tmp_path / "dev.key").returncode == 0
    packed = cli("pack", tmp_path / "m.onnx", "--name", "t", "--description", "d", "--encrypt-key", tmp_path / "dev.key", "-o", tmp_path / "m.vsb")
    key = packed.stdout.strip().splitlines()[-1]
    assert cli("verify", tmp_path / "m.vsb").stdout.strip() == key
    locked = cli("unpack", tmp_path / "m.vsb", "--key", key, "-o", tmp_path / "o.onnx")
    assert locked.returncode == 1 and "no decryption secret" in locked.stderr
    opened = cli("unpack", tmp_path / "m.vsb", "--key", key, "--decrypt-key", tmp_path / "dev.key", "-o", tmp_path / "o.onnx")
    assert opened.returncode == 0 and (tmp_path / "o.onnx").read_bytes() == tiny_onnx()


def test_cli_refusals_are_one_line(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    for args in (
        ("verify", tmp_path / "missing.vsb"),
        ("inspect", tmp_path / "junk.onnx"),
        ("pack", tmp_path / "junk.onnx", "--name", "n", "--description", "d", "-o", tmp_path / "o.vsb"),
        ("verify", DATA / "golden.vsb", "--key", "xyz"),
    ):
        result = cli(*args)
        assert result.returncode == 1, args
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr


def test_inspect_never_decompresses(blob, tmp_path):
    """A body that cannot decompress still inspects: inspect reads only header and key."""
    garbage = b"\xff" * 64
    forged = with_header(blob, lambda h: h["body"].update(stored_size=len(garbage)))
    (header_len,) = struct.unpack(">I", forged[10:14])
    forged = reseal(forged[: 14 + header_len] + garbage + b"\0" * 32)
    (tmp_path / "f.vsb").write_bytes(forged)
    assert cli("inspect", tmp_path / "f.vsb").returncode == 0


def test_cli_keygen_writes_mode_600_and_never_overwrites(tmp_path):
    from model_store.cli import main

    path = tmp_path / "dev.key"
    old_umask = os.umask(0o022)  # the usual umask: it would leave a 0o644 request group/world-readable
    try:
        assert main(["keygen", "-o", str(path)]) == 0
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o600
    secret = path.read_bytes()
    again = cli("keygen", "-o", path)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    assert path.read_bytes() == secret


# --- the key is checked before anything is decompressed or parsed ---------------------------


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


# --- hostile headers (re-keyed, so the blob's own key matches): one BadCard, never a Python error


def hostile(header: bytes, body: bytes = b"\x28\xb5\x2f\xfd") -> bytes:
    """A blob with these header bytes, resealed: its own key matches, as an attacker would make it."""
    content = MAGIC + struct.pack(">HI", 1, len(header)) + header + body
    return content + blake3.blake3(content).digest()


def _card_header(**replace_raw) -> bytes:
    """The canonical header of make_card() with raw JSON text spliced in for some values."""
    header = canonical_json(make_card().replace(body=ms.BodyInfo(raw_size=10, stored_size=4)).to_dict())
    for old, new in replace_raw.items():
        assert old.encode() in header
        header = header.replace(old.encode(), new.encode(), 1)
    return header


HOSTILE_HEADERS = {
    "5000-digit integer": b"9" * 5000,
    "5000-digit integer in a card": _card_header(**{'"epochs":1': '"epochs":' + "9" * 5000}),
    "200000-deep arrays": b"[" * 200_000 + b"]" * 200_000,
    "200000-deep objects": b'{"":' * 200_000 + b"0" + b"}" * 200_000,
    "deep arrays in a card": _card_header(**{'"epochs":1': '"epochs":' + "[" * 100_000 + "]" * 100_000}),
    "unclosed deep arrays": b"[" * 500_000,
    "huge float": _card_header(**{'"lr":0.001': '"lr":1e999'}),
    "NaN": _card_header(**{'"lr":0.001': '"lr":NaN'}),
    "-Infinity": _card_header(**{'"lr":0.001': '"lr":-Infinity'}),
    "duplicate keys": _card_header(**{'"epochs":1': '"epochs":1,"epochs":1'}),
    "lone surrogate": _card_header(**{'"name":"tiny"': '"name":"\\ud800"'}),
    "not UTF-8": _card_header(**{'"name":"tiny"': '"name":"\xff"'}).replace("\xff".encode(), b"\xff"),
    "nonce of the wrong type": _card_header(**{'"encryption":"none"': '"encryption":"chacha20-poly1305"',
                                               '"key_id":null': '"key_id":"00112233445566ff"', '"nonce":null': '"nonce":5'}),
    "nonce not hex": _card_header(**{'"encryption":"none"': '"encryption":"chacha20-poly1305"',
                                     '"key_id":null': '"key_id":"00112233445566ff"', '"nonce":null': '"nonce":"' + "z" * 24 + '"'}),
    "empty": b"",
    "null": b"null",
    "a bare list": b"[]",
}


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


@pytest.mark.parametrize("name", ["5000-digit integer", "200000-deep arrays", "200000-deep objects"])
def test_cli_on_hostile_headers_is_one_clean_line(name, tmp_path):
    """Also under the recursion limit py-evm raises, where recursing into the nesting crashes in C."""
    path = tmp_path / "h.vsb"
    path.write_bytes(hostile(HOSTILE_HEADERS[name]))
    own_key = blake3.blake3(path.read_bytes()[:-32]).hexdigest()
    high_limit = ("import sys; sys.setrecursionlimit(1_000_000); from model_store.cli import main; "
                  "sys.exit(main(sys.argv[1:]))")
    for args in (("verify", path), ("verify", path, "--key", own_key), ("verify", path, "--key", GOLDEN_KEY),
                 ("inspect", path), ("inspect", path, "--json")):
        for result in (cli(*args), subprocess.run([sys.executable, "-c", high_limit, *map(str, args)],
                                                  capture_output=True, text=True, cwd=REPO)):
            assert result.returncode == 1, (args, result.returncode, result.stderr[-300:])
            assert result.stdout == ""
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and "Traceback" not in result.stderr
            expect = "not the trusted model" if GOLDEN_KEY in args else "header"
            assert expect in lines[0]


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


# --- huge and sparse files: sizes first, hashing in chunks ---------------------------------------


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


# --- the AEAD nonce covers the card ------------------------------------------------------------


def test_one_model_under_two_cards_never_reuses_a_nonce(onnx_bytes):
    secret = ms.generate_secret()
    a = ms.pack(onnx_bytes, make_card(), encrypt_key=secret)
    b = ms.pack(onnx_bytes, make_card(description="the same weights, another card"), encrypt_key=secret)
    (key_a, card_a), (key_b, card_b) = ms.verify_card(a), ms.verify_card(b)
    assert card_a.body.nonce != card_b.body.nonce
    assert ms.load(a, key_a, decrypt_key=secret)[1] == onnx_bytes == ms.load(b, key_b, decrypt_key=secret)[1]
    assert a == ms.pack(onnx_bytes, make_card(), encrypt_key=secret)  # still deterministic


def test_blob_sealed_with_a_body_only_nonce_still_loads(onnx_bytes):
    """Blobs packed before the nonce covered the card read their nonce from the header: they load."""
    from model_store.secrets import encrypt, key_id

    secret = ms.generate_secret()
    compressed = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(onnx_bytes)
    nonce_key = blake3.blake3(secret, derive_key_context="veriseg 2026-11 blob nonce").digest()
    nonce = blake3.blake3(compressed, key=nonce_key).digest()[:12]  # the old derivation
    body = ms.BodyInfo(raw_size=len(onnx_bytes), stored_size=len(compressed) + 16, encryption="chacha20-poly1305",
                       key_id=key_id(secret), nonce=nonce.hex())
    header = canonical_json(make_card().replace(body=body).to_dict())
    prefix = MAGIC + struct.pack(">HI", 1, len(header)) + header
    content = prefix + encrypt(secret, nonce, compressed, prefix)
    old = content + blake3.blake3(content).digest()
    assert ms.load(old, ms.verify(old), decrypt_key=secret)[1] == onnx_bytes


def test_shipped_unencrypted_blob_keeps_its_key():
    shipped = REPO / "models" / "carla-enet.vsb"
    if not shipped.exists():
        pytest.skip("models/carla-enet.vsb is not in this checkout")
    # the key its training record names (a new blob ships with a new record, never alone)
    assert ms.verify(shipped) == json.loads((REPO / "models" / "carla-enet.json").read_text())["blob"]["key"]
