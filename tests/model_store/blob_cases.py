"""Helpers the blob format's tests share: cards, resealed and edited blobs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import blake3

import model_store as ms
from model_store.blob import MAGIC
from model_store.canonical import canonical_json


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


def body_span(data: bytes) -> range:
    """Offsets of the body: after the header, before the trailing key."""
    (header_len,) = struct.unpack(">I", data[10:14])
    return range(14 + header_len, len(data) - 32)


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
