"""How the flow drives a model, read from its card: one ``DriveSpec``.

    frame (BGR uint8, any size)
      -> resize to spec.size (stretch, or letterbox: aspect kept, zero-padded, centred)
      -> colour order spec.colour
      -> uint8 input: as is | float input: x * scale, then (x - mean) / std, in float32
      -> layout spec.layout with a batch axis, cast to spec.input_dtype
      -> the graph
      -> class map output: ids as they are | logits/probabilities: argmax over spec.class_axis
      -> uint8 class map (ids outside 0..num_classes-1 become 255)

The reference implementation is model_store.drive (numpy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

from . import errors
from .card_fields import CARD, fail

if TYPE_CHECKING:
    from .card import Dim, ModelCard

INPUT_DTYPES = frozenset({"uint8", "float32", "float16"})  # what preprocessing can produce
CLASS_MAP_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "int32", "int64"})
SCORE_DTYPES = frozenset({"float16", "float32", "float64"})  # numpy can argmax these
OUTPUT_KINDS = frozenset({"class_map", "logits", "probabilities"})


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


def drive_spec_of(card: "ModelCard") -> DriveSpec:
    """The DriveSpec of ``card`` (``ModelCard.drive_spec``), or an errors.Undrivable subclass."""
    who = f"model {card.name!r}"

    def refuse(kind: type, what: str) -> errors.BlobError:
        return kind(CARD, f"{who}: {what}")

    if len(card.inputs) != 1:
        raise refuse(errors.TooManyInputs, f"takes {len(card.inputs)} inputs ({', '.join(t.name for t in card.inputs)}); the flow feeds exactly one image: export the graph with a single image input")
    inp, out = card.inputs[0], card.outputs[0]
    if inp.dtype not in INPUT_DTYPES:
        raise refuse(errors.UnsupportedDtype, f"input {inp.name!r} is {inp.dtype}; the flow feeds {'/'.join(sorted(INPUT_DTYPES))}: re-export with one of those")
    if len(inp.shape) != 4 or inp.layout not in ("NCHW", "NHWC"):
        raise refuse(errors.UnsupportedInput, f"input {inp.name!r} is [{_dims(inp.shape)}] {inp.layout}; expected a 4-D image, NCHW or NHWC (pass --input-layout if the graph is ambiguous)")
    channels = inp.dim("C")
    colour = inp.color_order or "RGB"  # a card that states no colour order means RGB
    if (isinstance(channels, int) and channels != 3) or colour not in ("RGB", "BGR"):
        raise refuse(errors.UnsupportedInput, f"input {inp.name!r} has {channels} channels ({colour}); the flow feeds 3-channel RGB or BGR frames")
    h, w = inp.dim("H"), inp.dim("W")
    dynamic = not (isinstance(h, int) and isinstance(w, int))
    pre = card.preprocessing
    if not dynamic and pre.size is not None and pre.size != (h, w):
        raise fail(f"{who}: preprocessing size {pre.size[0]}x{pre.size[1]} but the input is fixed at {h}x{w}; drop --size")
    if inp.dtype == "uint8" and (pre.scale != 1 or pre.mean is not None):
        raise fail(f"{who}: input {inp.name!r} is uint8, fed the frame's bytes as they are; --input-scale/--mean/--std apply to float inputs only (normalise inside the graph)")
    size = (h, w) if not dynamic else pre.size
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    kind = card.output_kind
    integer = out.dtype in CLASS_MAP_DTYPES
    if out.dtype not in CLASS_MAP_DTYPES | SCORE_DTYPES:
        raise refuse(errors.UnsupportedDtype, f"output {out.name!r} is {out.dtype}; expected an integer class map or float16/32/64 scores")
    if kind is not None and (kind == "class_map") != integer:
        raise fail(f"{who}: output_kind {kind} but output {out.name!r} is {out.dtype}; class maps are integers, logits/probabilities floats")
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
    n = len(card.classes)
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


def _dims(shape: Sequence[Dim]) -> str:
    return ",".join(map(str, shape))
