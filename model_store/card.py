"""The model card: what a blob says about the model inside it.

The card is the blob's header. It is validated on construction and on load, so a
card that exists is a card the edge can act on (input size, colour order, classes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

from .errors import BadCard

__all__ = [
    "BodyInfo",
    "CARLA_CLASSES",
    "ClassInfo",
    "ModelCard",
    "TensorSpec",
    "utc_now",
]

DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64"})
COLOR_ORDERS = frozenset({"RGB", "BGR", "GRAY"})
COMPRESSIONS = frozenset({"zstd"})
ENCRYPTIONS = frozenset({"none", "chacha20-poly1305"})
_ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")  # fullmatch: no trailing newline
_HEX = re.compile(r"[0-9a-f]+")
_CARD = "<card>"

Dim = Union[int, str]


def utc_now() -> str:
    """The current time as the card stores it: ISO 8601, UTC, whole seconds."""
    return datetime.now(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fail(what: str) -> BadCard:
    return BadCard(_CARD, what)


def _check_json(name: str, value: Any) -> None:
    """Refuse values canonical JSON cannot carry exactly (NaN, inf, non-string keys)."""

    def walk(v: Any, where: str) -> None:
        if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
            return
        if isinstance(v, float):
            if not math.isfinite(v):
                raise _fail(f"{where} is {v!r}; expected a finite number")
            return
        if isinstance(v, (list, tuple)):
            for i, item in enumerate(v):
                walk(item, f"{where}[{i}]")
            return
        if isinstance(v, Mapping):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise _fail(f"{where} has key {k!r}; expected string keys")
                walk(item, f"{where}.{k}")
            return
        raise _fail(f"{where} is a {type(v).__name__}; expected JSON data")

    walk(value, name)


@dataclass(frozen=True)
class ClassInfo:
    """One output class: its id in the class map, its name and its display colour (RGB)."""

    id: int
    name: str
    color: Tuple[int, int, int]

    def __post_init__(self) -> None:
        if not isinstance(self.id, int) or isinstance(self.id, bool) or not 0 <= self.id <= 255:
            raise _fail(f"class id {self.id!r}; expected an integer 0..255")
        if not isinstance(self.name, str) or not self.name:
            raise _fail(f"class {self.id} name {self.name!r}; expected a non-empty string")
        color = tuple(self.color)
        if len(color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in color):
            raise _fail(f"class {self.name!r} colour {self.color!r}; expected three integers 0..255")
        object.__setattr__(self, "color", color)


# The paper's 13 CARLA categories, in its order, with CARLA's palette (ids as in the labels).
CARLA_CLASSES: Tuple[ClassInfo, ...] = tuple(
    ClassInfo(i, n, c)
    for i, (n, c) in enumerate(
        [
            ("Unlabeled", (0, 0, 0)),
            ("Building", (70, 70, 70)),
            ("Fence", (190, 153, 153)),
            ("Other", (250, 170, 160)),
            ("Pedestrian", (220, 20, 60)),
            ("Pole", (153, 153, 153)),
            ("RoadLine", (157, 234, 50)),
            ("Road", (128, 64, 128)),
            ("Sidewalk", (244, 35, 232)),
            ("Vegetation", (107, 142, 35)),
            ("Car", (0, 0, 142)),
            ("Wall", (102, 102, 156)),
            ("TrafficSign", (220, 220, 0)),
        ]
    )
)


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
            raise _fail(f"tensor name {self.name!r}; expected a non-empty string")
        if self.dtype not in DTYPES:
            raise _fail(f"tensor {self.name!r} dtype {self.dtype!r}; expected one of {sorted(DTYPES)}")
        shape = tuple(self.shape)
        for d in shape:
            ok_int = isinstance(d, int) and not isinstance(d, bool) and d > 0
            ok_sym = isinstance(d, str) and d.isidentifier()
            if not (ok_int or ok_sym):
                raise _fail(f"tensor {self.name!r} dim {d!r}; expected a positive integer or a name")
        if not isinstance(self.layout, str) or len(self.layout) != len(shape):
            raise _fail(f"tensor {self.name!r} layout {self.layout!r} does not match shape {list(shape)}")
        if self.color_order is not None and self.color_order not in COLOR_ORDERS:
            raise _fail(f"tensor {self.name!r} colour order {self.color_order!r}; expected one of {sorted(COLOR_ORDERS)}")
        object.__setattr__(self, "shape", shape)

    def dim(self, axis: str) -> Dim:
        """The size of the axis named by its layout letter, e.g. spec.dim("H")."""
        return self.shape[self.layout.index(axis)]


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
                raise _fail(f"body {name} {v!r}; expected a non-negative integer")
        if self.compression not in COMPRESSIONS:
            raise _fail(f"body compression {self.compression!r}; expected one of {sorted(COMPRESSIONS)}")
        if self.encryption not in ENCRYPTIONS:
            raise _fail(f"body encryption {self.encryption!r}; expected one of {sorted(ENCRYPTIONS)}")
        encrypted = self.encryption != "none"
        if encrypted != (self.key_id is not None) or encrypted != (self.nonce is not None):
            raise _fail("body key_id and nonce must be set exactly when the body is encrypted")
        # decryption reads both; a wrong type here must be a refusal, not a crash there
        for name, length in (("key_id", 16), ("nonce", 24)):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, str) and len(v) == length and _HEX.fullmatch(v)):
                raise _fail(f"body {name} {v!r}; expected {length} lower-case hex characters")

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

    def __post_init__(self) -> None:
        for name in ("name", "algorithm", "scoring_function"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise _fail(f"{name} {v!r}; expected a non-empty string")
        if not isinstance(self.description, str):
            raise _fail(f"description {self.description!r}; expected a string")
        for name in ("created", "modified"):
            v = getattr(self, name)
            if not isinstance(v, str) or not _ISO_UTC.fullmatch(v):
                raise _fail(f"{name} {v!r}; expected ISO 8601 UTC like 2026-01-31T12:00:00Z")
        if self.modified < self.created:
            raise _fail(f"modified {self.modified} is before created {self.created}")
        for name in ("training_params", "metrics"):
            v = getattr(self, name)
            if not isinstance(v, Mapping):
                raise _fail(f"{name} is a {type(v).__name__}; expected a mapping")
            _check_json(name, v)
        classes = tuple(self.classes)
        if not classes or [c.id for c in classes] != list(range(len(classes))):
            raise _fail(f"class ids {[c.id for c in classes]}; expected 0..n-1 in order")
        inputs, outputs = tuple(self.inputs), tuple(self.outputs)
        if not inputs or not outputs:
            raise _fail("a card needs at least one input and one output")
        if not isinstance(self.onnx_opset, int) or isinstance(self.onnx_opset, bool) or not 1 <= self.onnx_opset <= 100:
            raise _fail(f"onnx_opset {self.onnx_opset!r}; expected an integer 1..100")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "outputs", outputs)

    @property
    def input_size(self) -> Tuple[int, int]:
        """(height, width) of the first input, from its layout."""
        spec = self.inputs[0]
        h, w = spec.dim("H"), spec.dim("W")
        if not isinstance(h, int) or not isinstance(w, int):
            raise _fail(f"input {spec.name!r} has symbolic height/width {h!r}x{w!r}")
        return h, w

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["classes"] = [{"id": c.id, "name": c.name, "color": list(c.color)} for c in self.classes]
        for key in ("inputs", "outputs"):
            d[key] = [dict(t, shape=list(t["shape"])) for t in d[key]]
        d["training_params"] = json.loads(json.dumps(self.training_params))
        d["metrics"] = json.loads(json.dumps(self.metrics))
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "ModelCard":
        """Build and validate a card from parsed JSON; any defect raises BadCard."""
        if not isinstance(d, Mapping):
            raise _fail(f"card is a {type(d).__name__}; expected an object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise _fail(f"unknown card fields {unknown}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if missing:
            raise _fail(f"missing card fields {missing}")
        try:
            kw = dict(d)
            kw["classes"] = tuple(_build(ClassInfo, c, "class") for c in _seq(d["classes"], "classes"))
            kw["inputs"] = tuple(_build(TensorSpec, t, "input") for t in _seq(d["inputs"], "inputs"))
            kw["outputs"] = tuple(_build(TensorSpec, t, "output") for t in _seq(d["outputs"], "outputs"))
            if d.get("body") is not None:
                kw["body"] = _build(BodyInfo, d["body"], "body")
            return cls(**kw)
        except TypeError as exc:  # wrong argument types deep in a constructor
            raise _fail(str(exc)) from None

    def replace(self, **changes: Any) -> "ModelCard":
        return dataclasses.replace(self, **changes)


def _seq(v: Any, what: str) -> Sequence:
    if not isinstance(v, (list, tuple)):
        raise _fail(f"{what} is a {type(v).__name__}; expected a list")
    return v


def _build(kind: type, v: Any, what: str) -> Any:
    if not isinstance(v, Mapping):
        raise _fail(f"{what} entry is a {type(v).__name__}; expected an object")
    names = {f.name for f in dataclasses.fields(kind)}
    extra = sorted(set(v) - names)
    if extra:
        raise _fail(f"{what} has unknown fields {extra}")
    kw = dict(v)
    for key in ("color", "shape"):
        if key in kw:
            kw[key] = tuple(_seq(kw[key], f"{what} {key}"))
    return kind(**kw)
