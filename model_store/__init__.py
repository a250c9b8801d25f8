"""Keyed, compressed, self-describing model blobs (the paper's ASTORE).

    key = write("model.vsb", onnx_bytes, card)
    card, onnx_bytes = load("model.vsb", expected_key=key)
"""

from . import errors
from .blob import FORMAT_VERSION, load, normalize_key, pack, read_header, verify, verify_card, write
from .card import CARLA_CLASSES, BodyInfo, ClassInfo, ModelCard, TensorSpec, utc_now
from .secrets import generate_secret, read_secret

__all__ = [
    "CARLA_CLASSES",
    "FORMAT_VERSION",
    "BodyInfo",
    "ClassInfo",
    "ModelCard",
    "TensorSpec",
    "errors",
    "generate_secret",
    "load",
    "normalize_key",
    "pack",
    "read_header",
    "read_secret",
    "utc_now",
    "verify",
    "verify_card",
    "write",
]
