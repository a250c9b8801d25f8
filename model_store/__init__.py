"""Keyed, compressed, self-describing model blobs (the paper's ASTORE).

    key = write("model.vsb", onnx_bytes, card)
    card, onnx_bytes = load("model.vsb", expected_key=key)
    spec = card.drive_spec()          # how the flow drives it (refuses what it cannot)
    x = preprocess(frame_bgr, spec)   # reference pre/postprocessing, numpy
    ids = postprocess(session.run([spec.output_name], {spec.input_name: x})[0], spec)
"""

from . import errors
from .blob_key import BlobKey, InvalidBlobKey
from .blob import FORMAT_VERSION, load, pack, read_header, verify, verify_card, write
from .card import BodyInfo, ModelCard, Preprocessing, TensorSpec, utc_now
from .classes import CARLA_CLASSES, MAX_CLASSES, ClassInfo, classes_from_json
from .drive import NO_CLASS, palette_lut, postprocess, preprocess
from .drive_spec import DriveSpec
from .graph import check_graph, read_graph
from .graph_limits import DEFAULT_LIMITS, GraphLimits
from .secrets import generate_secret, read_secret

__all__ = [
    "CARLA_CLASSES",
    "DEFAULT_LIMITS",
    "FORMAT_VERSION",
    "MAX_CLASSES",
    "NO_CLASS",
    "BlobKey",
    "BodyInfo",
    "ClassInfo",
    "DriveSpec",
    "GraphLimits",
    "InvalidBlobKey",
    "ModelCard",
    "Preprocessing",
    "TensorSpec",
    "check_graph",
    "classes_from_json",
    "errors",
    "generate_secret",
    "load",
    "pack",
    "palette_lut",
    "postprocess",
    "preprocess",
    "read_graph",
    "read_header",
    "read_secret",
    "utc_now",
    "verify",
    "verify_card",
    "write",
]
