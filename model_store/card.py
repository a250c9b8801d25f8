"""The model card: what a blob says about the model inside it.

The card is the blob's header. It is validated on construction and on load, so a
card that exists is a card the edge can act on (input size, colour order, classes).

The card's classes are in ``model_store.classes``, how the flow drives the model it
describes (``ModelCard.drive_spec()``) in ``model_store.drive_spec``, and the checks of its
JSON fields in ``model_store.card_fields``; this module re-exports their public names.

Cards written before the `preprocessing` and `output_kind` fields describe a uint8 NHWC
RGB -> uint8 class-map graph; the defaults of the new fields say exactly that, and a card
whose new fields are the defaults serialises to the same bytes it always did (same blob,
same key).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Tuple, Union

from .card_fields import as_list, build, check_json, fail, fields_of
from .classes import CARLA_CLASSES, MAX_CLASSES, ClassInfo, classes_from_json  # noqa: F401 - re-exported
from .drive_spec import CLASS_MAP_DTYPES, INPUT_DTYPES, OUTPUT_KINDS, SCORE_DTYPES, DriveSpec, drive_spec_of  # noqa: F401

__all__ = [
    "BodyInfo",
    "CARLA_CLASSES",
    "ClassInfo",
    "DriveSpec",
    "MAX_CLASSES",
    "ModelCard",
    "Preprocessing",
    "TensorSpec",
    "classes_from_json",
    "utc_now",
]

DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64"})
COLOR_ORDERS = frozenset({"RGB", "BGR", "GRAY"})
COMPRESSIONS = frozenset({"zstd"})
ENCRYPTIONS = frozenset({"none", "chacha20-poly1305"})
_ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")  # fullmatch: no trailing newline
_HEX = re.compile(r"[0-9a-f]+")
RESIZE_MODES = frozenset({"stretch", "letterbox"})

Dim = Union[int, str]


def utc_now() -> str:
    """The current time as the card stores it: ISO 8601, UTC, whole seconds."""
    return datetime.now(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class TensorSpec:
    """A typed model input or output. Symbolic dims (e.g. "N") mark a dynamic batch."""

    name: str
    dtype: str
    shape: Tuple[Dim, ...]
    layout: str
    color_order: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise fail(f"tensor name {self.name!r}; expected a non-empty string")
        if self.dtype not in DTYPES:
            raise fail(f"tensor {self.name!r} dtype {self.dtype!r}; expected one of {sorted(DTYPES)}")
        shape = tuple(self.shape)
        for d in shape:
            ok_int = isinstance(d, int) and not isinstance(d, bool) and d > 0
            ok_sym = isinstance(d, str) and d.isidentifier()
            if not (ok_int or ok_sym):
                raise fail(f"tensor {self.name!r} dim {d!r}; expected a positive integer or a name")
        if not isinstance(self.layout, str) or len(self.layout) != len(shape):
            raise fail(f"tensor {self.name!r} layout {self.layout!r} does not match shape {list(shape)}")
        if self.color_order is not None and self.color_order not in COLOR_ORDERS:
            raise fail(f"tensor {self.name!r} colour order {self.color_order!r}; expected one of {sorted(COLOR_ORDERS)}")
        object.__setattr__(self, "shape", shape)

    def dim(self, axis: str) -> Dim:
        """The size of the axis named by its layout letter, e.g. spec.dim("H")."""
        return self.shape[self.layout.index(axis)]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Preprocessing:
    """What the graph cannot say about its input: value scale, normalisation, resizing.

    For a float input the flow computes, in float32, x * scale, then (x - mean) / std
    per channel (in the card's colour order), on the 0..255 pixel values. A uint8 input
    gets the pixel bytes as they are, so scale must be 1 and mean/std unset. `size` is
    the (height, width) to resize to when the graph's height/width are dynamic (unset: the
    frame's own size). The defaults are what a card without this field always meant.
    """

    scale: float = 1.0
    mean: Optional[Tuple[float, float, float]] = None
    std: Optional[Tuple[float, float, float]] = None
    resize: str = "stretch"
    size: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        if not _finite(self.scale) or self.scale <= 0:
            raise fail(f"preprocessing scale {self.scale!r}; expected a positive number")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is None:
                continue
            v = tuple(v)
            if len(v) != 3 or not all(_finite(x) for x in v):
                raise fail(f"preprocessing {name} {getattr(self, name)!r}; expected three numbers (one per channel)")
            if name == "std" and not all(x > 0 for x in v):
                raise fail(f"preprocessing std {v!r}; expected three positive numbers")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if (self.mean is None) != (self.std is None):
            raise fail("preprocessing mean and std go together; give both (std 1 1 1 for a mean alone)")
        if self.resize not in RESIZE_MODES:
            raise fail(f"preprocessing resize {self.resize!r}; expected one of {sorted(RESIZE_MODES)}")
        if self.size is not None:
            size = tuple(self.size)
            if len(size) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size):
                raise fail(f"preprocessing size {self.size!r}; expected two positive integers (height, width)")
            object.__setattr__(self, "size", size)
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def is_default(self) -> bool:
        return self == Preprocessing()


@dataclass(frozen=True)
class BodyInfo:
    """How the body is stored. Filled in by `pack`; never written by hand."""

    raw_size: int
    stored_size: int
    compression: str = "zstd"
    compression_level: int = 3
    encryption: str = "none"
    key_id: Optional[str] = None
    nonce: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("raw_size", "stored_size", "compression_level"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise fail(f"body {name} {v!r}; expected a non-negative integer")
        if self.compression not in COMPRESSIONS:
            raise fail(f"body compression {self.compression!r}; expected one of {sorted(COMPRESSIONS)}")
        if self.encryption not in ENCRYPTIONS:
            raise fail(f"body encryption {self.encryption!r}; expected one of {sorted(ENCRYPTIONS)}")
        encrypted = self.encryption != "none"
        if encrypted != (self.key_id is not None) or encrypted != (self.nonce is not None):
            raise fail("body key_id and nonce must be set exactly when the body is encrypted")
        # decryption reads both; a wrong type here must be a refusal, not a crash there
        for name, length in (("key_id", 16), ("nonce", 24)):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, str) and len(v) == length and _HEX.fullmatch(v)):
                raise fail(f"body {name} {v!r}; expected {length} lower-case hex characters")

    @property
    def encrypted(self) -> bool:
        return self.encryption != "none"


@dataclass(frozen=True)
class ModelCard:
    """Everything the paper's ASTORE carries besides the weights, validated."""

    name: str
    description: str
    algorithm: str
    created: str
    modified: str
    training_params: Mapping[str, Any]
    classes: Tuple[ClassInfo, ...]
    scoring_function: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    metrics: Mapping[str, Any] = field(default_factory=dict)
    onnx_opset: int = 17
    body: Optional[BodyInfo] = None
    # left out of the JSON when default, so a card without it keeps its bytes (and its key)
    preprocessing: Preprocessing = Preprocessing()
    output_kind: Optional[str] = None  # None: class_map for an integer output, logits for a float one

    def __post_init__(self) -> None:
        for name in ("name", "algorithm", "scoring_function"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise fail(f"{name} {v!r}; expected a non-empty string")
        if not isinstance(self.description, str):
            raise fail(f"description {self.description!r}; expected a string")
        for name in ("created", "modified"):
            v = getattr(self, name)
            if not isinstance(v, str) or not _ISO_UTC.fullmatch(v):
                raise fail(f"{name} {v!r}; expected ISO 8601 UTC like 2026-01-31T12:00:00Z")
        if self.modified < self.created:
            raise fail(f"modified {self.modified} is before created {self.created}")
        for name in ("training_params", "metrics"):
            v = getattr(self, name)
            if not isinstance(v, Mapping):
                raise fail(f"{name} is a {type(v).__name__}; expected a mapping")
            check_json(name, v)
        classes = tuple(self.classes)
        if not classes or [c.id for c in classes] != list(range(len(classes))):
            raise fail(f"class ids {[c.id for c in classes]}; expected 0..n-1 in order")
        if len(classes) > MAX_CLASSES:
            raise fail(f"{len(classes)} classes; at most {MAX_CLASSES} (id 255 marks 'no class')")
        if not isinstance(self.preprocessing, Preprocessing):
            raise fail(f"preprocessing is a {type(self.preprocessing).__name__}; expected Preprocessing")
        if self.output_kind is not None and self.output_kind not in OUTPUT_KINDS:
            raise fail(f"output_kind {self.output_kind!r}; expected one of {sorted(OUTPUT_KINDS)}")
        inputs, outputs = tuple(self.inputs), tuple(self.outputs)
        if not inputs or not outputs:
            raise fail("a card needs at least one input and one output")
        if not isinstance(self.onnx_opset, int) or isinstance(self.onnx_opset, bool) or not 1 <= self.onnx_opset <= 100:
            raise fail(f"onnx_opset {self.onnx_opset!r}; expected an integer 1..100")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "outputs", outputs)

    @property
    def input_size(self) -> Tuple[int, int]:
        """(height, width) of the first input, from its layout."""
        spec = self.inputs[0]
        h, w = spec.dim("H"), spec.dim("W")
        if not isinstance(h, int) or not isinstance(w, int):
            raise fail(f"input {spec.name!r} has symbolic height/width {h!r}x{w!r}")
        return h, w

    @property
    def palette(self) -> Tuple[Tuple[int, int, int], ...]:
        """The display colour (RGB) of each class id, in id order."""
        return tuple(c.color for c in self.classes)

    def drive_spec(self) -> DriveSpec:
        """How the flow drives this model; raises an errors.Undrivable subclass if it cannot.

        Card only (no graph): `model_store.graph.check_graph` checks the card against the
        graph it came with, at pack and at load.
        """
        return drive_spec_of(self)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["classes"] = [{"id": c.id, "name": c.name, "color": list(c.color)} for c in self.classes]
        for key in ("inputs", "outputs"):
            d[key] = [dict(t, shape=list(t["shape"])) for t in d[key]]
        d["training_params"] = json.loads(json.dumps(self.training_params))
        d["metrics"] = json.loads(json.dumps(self.metrics))
        # new fields only when they say something: a card of today's graph keeps its bytes
        if self.preprocessing.is_default:
            del d["preprocessing"]
        else:
            d["preprocessing"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["preprocessing"].items()}
        if self.output_kind is None:
            del d["output_kind"]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "ModelCard":
        """Build and validate a card from parsed JSON; any defect raises BadCard."""
        fields_of(cls, d, "card")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if missing:
            raise fail(f"missing card fields {missing}")
        try:
            kw = dict(d)
            kw["classes"] = tuple(build(ClassInfo, c, "class") for c in as_list(d["classes"], "classes"))
            kw["inputs"] = tuple(build(TensorSpec, t, "input") for t in as_list(d["inputs"], "inputs"))
            kw["outputs"] = tuple(build(TensorSpec, t, "output") for t in as_list(d["outputs"], "outputs"))
            if d.get("body") is not None:
                kw["body"] = build(BodyInfo, d["body"], "body")
            if "preprocessing" in d:
                kw["preprocessing"] = build(Preprocessing, d["preprocessing"], "preprocessing")
            return cls(**kw)
        except TypeError as exc:  # wrong argument types deep in a constructor
            raise fail(str(exc)) from None

    def replace(self, **changes: Any) -> "ModelCard":
        return dataclasses.replace(self, **changes)
