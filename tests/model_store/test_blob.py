"""The blob format: round trip, determinism, encryption, every refusal, the golden file."""

from __future__ import annotations

import json
import resource
import struct

import blake3
import pytest
import zstandard

import model_store as ms
from model_store import errors
from model_store.blob import MAGIC
from model_store.canonical import canonical_json

from tests.conftest import REPO, tiny_onnx

from tests.model_store.blob_cases import DATA, GOLDEN_KEY, make_card, reseal, with_header


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
