"""The model card: what a blob says about the model inside it.

The card is the blob's header. It is validated on construction and on load, so a
card that exists is a card the edge can act on (input size, colour order, classes).

What the flow does with a frame is `ModelCard.drive_spec()`, one `DriveSpec`:

    frame (BGR uint8, any size)
      -> resize to spec.size (stretch, or letterbox: aspect kept, zero-padded, centred)
      -> colour order spec.colour
      -> uint8 input: as is | float input: x * scale, then (x - mean) / std, in float32
      -> layout spec.layout with a batch axis, cast to spec.input_dtype
      -> the graph
      -> class map output: ids as they are | logits/probabilities: argmax over spec.class_axis
      -> uint8 class map (ids outside 0..num_classes-1 become 255)

The reference implementation is model_store.drive (numpy). Cards written before the
`preprocessing` and `output_kind` fields describe a uint8 NHWC RGB -> uint8 class-map
graph; the defaults of the new fields say exactly that, and a card whose new fields are
the defaults serialises to the same bytes it always did (same blob, same key).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

from . import errors
from .errors import BadCard

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
_CARD = "<card>"
MAX_CLASSES = 255  # ids 0..254: 255 stays free to mark "no class" in a uint8 class map
INPUT_DTYPES = frozenset({"uint8", "float32", "float16"})  # what preprocessing can produce
CLASS_MAP_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "int32", "int64"})
SCORE_DTYPES = frozenset({"float16", "float32", "float64"})  # numpy can argmax these
OUTPUT_KINDS = frozenset({"class_map", "logits", "probabilities"})
RESIZE_MODES = frozenset({"stretch", "letterbox"})

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
            raise _fail(f"preprocessing scale {self.scale!r}; expected a positive number")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is None:
                continue
            v = tuple(v)
            if len(v) != 3 or not all(_finite(x) for x in v):
                raise _fail(f"preprocessing {name} {getattr(self, name)!r}; expected three numbers (one per channel)")
            if name == "std" and not all(x > 0 for x in v):
                raise _fail(f"preprocessing std {v!r}; expected three positive numbers")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if (self.mean is None) != (self.std is None):
            raise _fail("preprocessing mean and std go together; give both (std 1 1 1 for a mean alone)")
        if self.resize not in RESIZE_MODES:
            raise _fail(f"preprocessing resize {self.resize!r}; expected one of {sorted(RESIZE_MODES)}")
        if self.size is not None:
            size = tuple(self.size)
            if len(size) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size):
                raise _fail(f"preprocessing size {self.size!r}; expected two positive integers (height, width)")
            object.__setattr__(self, "size", size)
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def is_default(self) -> bool:
        return self == Preprocessing()


@dataclass(frozen=True)
class DriveSpec:
    """Everything the flow needs to drive one model, read from its card (`card.drive_spec()`).

    Input side, in the order the flow applies it to a BGR uint8 frame:
      size          (height, width) the frame is resized to; None: the frame's own size
                    (a dynamic-size graph packed without --size)
      resize        "stretch" (to size, aspect ignored) or "letterbox" (aspect kept,
                    centred, the rest zero pixels)
      colour        "RGB" or "BGR": the channel order the graph wants
      scale, mean, std   float inputs only: x * scale, then (x - mean) / std, float32
      layout        "NCHW" or "NHWC" (with the batch axis first)
      input_dtype   "uint8", "float32" or "float16"
    Output side:
      output_kind   "class_map" (integer ids, as they are) or "logits" / "probabilities"
                    (float scores: argmax over class_axis)
      class_axis    the axis of the output tensor that holds the classes; None for a
                    class map without one ([N, H, W])
      num_classes   len(card.classes); class ids outside 0..num_classes-1 become 255
    """

    input_name: str
    input_dtype: str
    layout: str
    size: Optional[Tuple[int, int]]
    dynamic_size: bool
    batch: Optional[int]
    colour: str
    scale: float
    mean: Optional[Tuple[float, float, float]]
    std: Optional[Tuple[float, float, float]]
    resize: str
    output_name: str
    output_dtype: str
    output_kind: str
    class_axis: Optional[int]
    num_classes: int

    @property
    def is_identity_input(self) -> bool:
        """True for today's fast path: the frame's bytes go in as they are (uint8 NHWC)."""
        return self.input_dtype == "uint8" and self.layout == "NHWC"

    def describe(self) -> str:
        """One line saying what the flow does, e.g. for the card's scoring_function:

        "float32 NCHW RGB, x/255 then (x - [0.485 0.456 0.406])/[0.229 0.224 0.225],
        stretch-resize to 512x512 -> logits float32 [N,19,H,W] -> argmax over axis 1"
        """
        head = f"{self.input_dtype} {self.layout} {self.colour}"
        if self.input_dtype == "uint8":
            head += " (frame bytes as they are)"
        else:
            head += ", x/255" if abs(self.scale - 1 / 255) < 1e-12 else (f", x*{self.scale:.6g}" if self.scale != 1 else ", x (0..255)")
            if self.mean is not None:
                head += f" then (x - [{' '.join(f'{v:.6g}' for v in self.mean)}])/[{' '.join(f'{v:.6g}' for v in self.std or ())}]"
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "the frame's own size (dynamic-size graph)"
        if self.output_kind == "class_map":
            out = f"class map {self.output_dtype} [N,H,W] -> ids 0..{self.num_classes - 1} as they are"
        else:
            axes = "[N,C,H,W]" if self.class_axis == 1 else "[N,H,W,C]"
            out = f"{self.output_kind} {self.output_dtype} {axes.replace('C', str(self.num_classes))} -> argmax over axis {self.class_axis}"
        return f"{head}, {self.resize}-resize to {size} -> {out}"


def classes_from_json(entries: Any, where: str = "classes") -> Tuple["ClassInfo", ...]:
    """Classes from a CLASSES.json list: [{"name": ..., "colour": [r, g, b]}, ...] in id order.

    "color" is accepted for "colour", and an "id" must then equal the entry's position.
    """
    if not isinstance(entries, (list, tuple)) or not 1 <= len(entries) <= MAX_CLASSES:
        raise _fail(f"{where}: expected a list of 1..{MAX_CLASSES} {{\"name\", \"colour\"}} objects")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, Mapping) or "name" not in e or not ({"colour", "color"} & set(e)):
            raise _fail(f"{where}[{i}]: expected {{\"name\": ..., \"colour\": [r, g, b]}}")
        extra = sorted(set(e) - {"id", "name", "colour", "color"})
        if extra:
            raise _fail(f"{where}[{i}] has unknown fields {extra}")
        if e.get("id", i) != i:
            raise _fail(f"{where}[{i}] has id {e['id']!r}; ids are positions 0..n-1")
        colour = e["colour"] if "colour" in e else e["color"]
        out.append(ClassInfo(i, e["name"], tuple(_seq(colour, f"{where}[{i}] colour"))))
    return tuple(out)


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
    # added 2026-11 (issue 22); left out of the JSON when default, so older cards keep their bytes
    preprocessing: Preprocessing = Preprocessing()
    output_kind: Optional[str] = None  # None: class_map for an integer output, logits for a float one

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
        if len(classes) > MAX_CLASSES:
            raise _fail(f"{len(classes)} classes; at most {MAX_CLASSES} (id 255 marks 'no class')")
        if not isinstance(self.preprocessing, Preprocessing):
            raise _fail(f"preprocessing is a {type(self.preprocessing).__name__}; expected Preprocessing")
        if self.output_kind is not None and self.output_kind not in OUTPUT_KINDS:
            raise _fail(f"output_kind {self.output_kind!r}; expected one of {sorted(OUTPUT_KINDS)}")
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

    @property
    def palette(self) -> Tuple[Tuple[int, int, int], ...]:
        """The display colour (RGB) of each class id, in id order."""
        return tuple(c.color for c in self.classes)

    def drive_spec(self) -> DriveSpec:
        """How the flow drives this model; raises an errors.Undrivable subclass if it cannot.

        Card only (no graph): `model_store.graph.check_graph` checks the card against the
        graph it came with, at pack and at load.
        """
        who = f"model {self.name!r}"

        def refuse(kind: type, what: str) -> errors.BlobError:
            return kind(_CARD, f"{who}: {what}")

        if len(self.inputs) != 1:
            raise refuse(errors.TooManyInputs, f"takes {len(self.inputs)} inputs ({', '.join(t.name for t in self.inputs)}); the flow feeds exactly one image: export the graph with a single image input")
        inp, out = self.inputs[0], self.outputs[0]
        if inp.dtype not in INPUT_DTYPES:
            raise refuse(errors.UnsupportedDtype, f"input {inp.name!r} is {inp.dtype}; the flow feeds {'/'.join(sorted(INPUT_DTYPES))}: re-export with one of those")
        if len(inp.shape) != 4 or inp.layout not in ("NCHW", "NHWC"):
            raise refuse(errors.UnsupportedInput, f"input {inp.name!r} is [{_dims(inp.shape)}] {inp.layout}; expected a 4-D image, NCHW or NHWC (pass --input-layout if the graph is ambiguous)")
        channels = inp.dim("C")
        colour = inp.color_order or "RGB"  # cards before issue 22 always said RGB
        if (isinstance(channels, int) and channels != 3) or colour not in ("RGB", "BGR"):
            raise refuse(errors.UnsupportedInput, f"input {inp.name!r} has {channels} channels ({colour}); the flow feeds 3-channel RGB or BGR frames")
        h, w = inp.dim("H"), inp.dim("W")
        dynamic = not (isinstance(h, int) and isinstance(w, int))
        pre = self.preprocessing
        if not dynamic and pre.size is not None and pre.size != (h, w):
            raise _fail(f"{who}: preprocessing size {pre.size[0]}x{pre.size[1]} but the input is fixed at {h}x{w}; drop --size")
        if inp.dtype == "uint8" and (pre.scale != 1 or pre.mean is not None):
            raise _fail(f"{who}: input {inp.name!r} is uint8, fed the frame's bytes as they are; --input-scale/--mean/--std apply to float inputs only (normalise inside the graph)")
        size = (h, w) if not dynamic else pre.size
        batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

        kind = self.output_kind
        integer = out.dtype in CLASS_MAP_DTYPES
        if out.dtype not in CLASS_MAP_DTYPES | SCORE_DTYPES:
            raise refuse(errors.UnsupportedDtype, f"output {out.name!r} is {out.dtype}; expected an integer class map or float16/32/64 scores")
        if kind is not None and (kind == "class_map") != integer:
            raise _fail(f"{who}: output_kind {kind} but output {out.name!r} is {out.dtype}; class maps are integers, logits/probabilities floats")
        kind = kind or ("class_map" if integer else "logits")
        per_pixel_hint = "a per-pixel map [N,H,W] (class ids) or [N,C,H,W] / [N,H,W,C] (scores) is needed"
        if len(out.shape) not in (3, 4) or (len(out.shape) == 3 and not integer):
            raise refuse(errors.NotPerPixel, f"output {out.name!r} is {out.dtype}[{_dims(out.shape)}], not a per-pixel map; {per_pixel_hint}")
        if len(out.shape) == 3:
            out_layout, class_axis = "NHW", None
        elif out.layout in ("NCHW", "NHWC"):
            out_layout, class_axis = out.layout, out.layout.index("C")
        else:
            raise refuse(errors.NotPerPixel, f"output {out.name!r} has layout {out.layout}; {per_pixel_hint}")
        oh, ow = out.shape[out_layout.index("H")], out.shape[out_layout.index("W")]
        if oh == 1 and ow == 1:
            raise refuse(errors.NotPerPixel, f"output {out.name!r} is {out.dtype}[{_dims(out.shape)}]: one value per image, not per pixel (a classifier?); {per_pixel_hint}")
        n = len(self.classes)
        if class_axis is not None:
            c = out.shape[class_axis]
            if integer and c != 1:
                raise refuse(errors.NotPerPixel, f"output {out.name!r} is an integer {out.dtype}[{_dims(out.shape)}] with {c} channels; a class map has one id per pixel")
            if not integer and isinstance(c, int) and c != n:
                raise refuse(errors.ClassCountMismatch, f"output {out.name!r} scores {c} classes on axis {class_axis} but the card lists {n}; pass --classes CLASSES.json with {c} entries")
        return DriveSpec(
            input_name=inp.name, input_dtype=inp.dtype, layout=inp.layout, size=size, dynamic_size=dynamic,
            batch=batch, colour=colour, scale=pre.scale, mean=pre.mean, std=pre.std, resize=pre.resize,
            output_name=out.name, output_dtype=out.dtype, output_kind=kind, class_axis=class_axis, num_classes=n,
        )

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
            if "preprocessing" in d:
                kw["preprocessing"] = _build(Preprocessing, d["preprocessing"], "preprocessing")
            return cls(**kw)
        except TypeError as exc:  # wrong argument types deep in a constructor
            raise _fail(str(exc)) from None

    def replace(self, **changes: Any) -> "ModelCard":
        return dataclasses.replace(self, **changes)


def _dims(shape: Sequence[Dim]) -> str:
    return ",".join(map(str, shape))


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
    for key in ("color", "shape", "mean", "std", "size"):
        if kw.get(key) is not None:
            kw[key] = tuple(_seq(kw[key], f"{what} {key}"))
    return kind(**kw)
