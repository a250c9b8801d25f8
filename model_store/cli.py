"""`python -m model_store`: pack, inspect, verify, unpack, keygen.

Every refusal is one line on stderr and exit status 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional, Sequence, Tuple

from . import errors
from .blob import load, verify_card, write
from .blob_key import BlobKey
from .card import ModelCard, Preprocessing, TensorSpec, utc_now
from .classes import CARLA_CLASSES, classes_from_json
from .drive_spec import CLASS_MAP_DTYPES, INPUT_DTYPES
from .graph import GraphInfo, check_graph, read_graph
from .graph_limits import DEFAULT_LIMITS, GraphLimits
from .secrets import generate_secret, read_secret
from .display import printable
from .util import one_line


class CliError(Exception):
    """A refusal worth one line, raised by the commands below."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # `inspect | head`: the reader left; nothing went wrong here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (errors.BlobError, CliError, ValueError, OSError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model_store", description="Keyed model blobs (.vsb): pack, inspect, verify, unpack.")
    sub = p.add_subparsers(dest="command", required=True)

    pk = sub.add_parser("pack", help="pack an ONNX model and its card into a blob")
    pk.add_argument("model", help="the ONNX model file")
    pk.add_argument("--name", required=True)
    pk.add_argument("--description", required=True)
    pk.add_argument("--algorithm", default="unspecified", help="the architecture, e.g. DeepLabV3 (default: unspecified)")
    pk.add_argument("--params", help="JSON file of training parameters")
    pk.add_argument("--metrics", help="JSON file of metrics")
    pk.add_argument("--classes", help='JSON list of {"name": ..., "colour": [r, g, b]} in id order, 1..255; default: the 13 CARLA classes')
    pk.add_argument("--card", help="JSON file of card fields that override everything derived (checked against the graph)")
    pk.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="float inputs: subtract per channel after --input-scale")
    pk.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="float inputs: then divide per channel")
    pk.add_argument("--input-scale", type=_number, metavar="S", help="float inputs: multiply the 0..255 pixels by S first (1/255 or 1); required for float inputs")
    pk.add_argument("--colour", "--color-order", dest="colour", default="RGB", choices=["RGB", "BGR"], help="channel order the model was trained on (default RGB)")
    pk.add_argument("--resize", default="stretch", choices=["stretch", "letterbox"], help="stretch to the input size (default) or keep the aspect and pad")
    pk.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize target for a dynamic-size input (default: the frame's size)")
    pk.add_argument("--input-layout", choices=["NCHW", "NHWC"], help="only when the graph is ambiguous (default: the axis of size 3)")
    pk.add_argument("--output-layout", choices=["NHW", "NCHW", "NHWC"], help="only when the graph is ambiguous (default: the axis of the class count)")
    pk.add_argument("--output-kind", choices=["class_map", "logits", "probabilities"], help="default: from the graph (integer: class_map; Softmax last: probabilities; else logits)")
    pk.add_argument("--opset", type=int, help="ONNX opset (default: read from the model)")
    pk.add_argument("--created", help="ISO 8601 UTC creation time (default: now); fix it for reproducible blobs")
    pk.add_argument("--encrypt-key", help="secret file: encrypt the body for devices that hold it")
    pk.add_argument("--level", type=int, default=3, help="zstd level (default 3; 19 is barely smaller on fp32 weights)")
    pk.add_argument("-o", "--output", required=True)
    _limit_options(pk)
    pk.set_defaults(run=_pack)

    ins = sub.add_parser("inspect", help="print a blob's card and key (never decompresses)")
    ins.add_argument("blob")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(run=_inspect)

    ver = sub.add_parser("verify", help="check a blob's structure, key and graph; print the key")
    ver.add_argument("blob")
    ver.add_argument("--key", help="the expected key (e.g. from the chain)")
    ver.add_argument("--decrypt-key", help="secret file: also check the graph of an encrypted body")
    _limit_options(ver)
    ver.set_defaults(run=_verify)

    up = sub.add_parser("unpack", help="verify against a key, then write the ONNX model")
    up.add_argument("blob")
    up.add_argument("--key", required=True, help="the expected key")
    up.add_argument("--decrypt-key", help="secret file for an encrypted body")
    up.add_argument("-o", "--output", required=True)
    _limit_options(up)
    up.set_defaults(run=_unpack)

    kg = sub.add_parser("keygen", help="write a new random body-encryption secret (hex)")
    kg.add_argument("-o", "--output", required=True)
    kg.set_defaults(run=_keygen)
    return p


def _limit_options(p: argparse.ArgumentParser) -> None:
    """The graph's size limits (model_store.graph_limits); the flow's are VERISEG_MAX_*."""
    p.add_argument("--max-input-bytes", type=int, default=DEFAULT_LIMITS.max_input_bytes, metavar="N",
                   help=f"largest input a frame becomes, bytes (default {DEFAULT_LIMITS.max_input_bytes})")
    p.add_argument("--max-initializer-bytes", type=int, default=DEFAULT_LIMITS.max_initializer_bytes, metavar="N",
                   help=f"largest total of the tensors stored in the graph, bytes (default {DEFAULT_LIMITS.max_initializer_bytes})")
    p.add_argument("--max-tensor-elements", type=int, default=DEFAULT_LIMITS.max_tensor_elements, metavar="N",
                   help=f"largest tensor a constant shape may make, elements (default {DEFAULT_LIMITS.max_tensor_elements})")


def _limits(args: argparse.Namespace) -> GraphLimits:
    return GraphLimits(args.max_input_bytes, args.max_initializer_bytes, args.max_tensor_elements)


def _pack(args: argparse.Namespace) -> int:
    with open(args.model, "rb") as f:
        onnx_bytes = f.read()
    # the graph is read (and refused if not self-contained) before onnxruntime sees it
    info = read_graph(onnx_bytes, args.model, args.name, _limits(args))
    classes = classes_from_json(_json_file(args.classes, None), args.classes) if args.classes else CARLA_CLASSES
    inputs, outputs, kind = _describe(info, args, len(classes))
    created = args.created or utc_now()
    opset = args.opset or info.opset   # read_graph found the default domain's opset_import
    if not opset:
        raise CliError("could not read the model's ONNX opset; pass --opset")
    derived = ModelCard(
        name=args.name,
        description=args.description,
        algorithm=args.algorithm,
        created=created,
        modified=created,
        training_params=_json_file(args.params, {}),
        classes=classes,
        scoring_function="(set below)",
        inputs=inputs,
        outputs=outputs,
        metrics=_json_file(args.metrics, {}),
        onnx_opset=opset,
        preprocessing=Preprocessing(scale=args.input_scale if args.input_scale is not None else 1.0,
                                    mean=args.mean, std=args.std, resize=args.resize,
                                    size=tuple(args.size) if args.size else None),
        output_kind=kind,
    ).to_dict()
    overrides = _json_file(args.card, {})
    card = ModelCard.from_dict({**derived, **overrides})
    if "scoring_function" not in overrides:
        # what the flow will do, from the card itself: never a default that could be untrue
        card = card.replace(scoring_function=_drive(card, args.model).describe())
    check_graph(card, onnx_bytes, args.model, _limits(args))  # a hand-edited --card must still describe the graph
    _ort_loads(onnx_bytes, args.model)
    secret = read_secret(args.encrypt_key) if args.encrypt_key else None
    key = write(args.output, onnx_bytes, card, encrypt_key=secret, level=args.level)
    size = os.path.getsize(args.output)
    print(printable(f"packed {args.model} ({len(onnx_bytes)} bytes) -> {args.output} ({size} bytes)"))
    print(printable(f"scoring: {card.scoring_function}"))
    print(key)
    return 0


def _drive(card: ModelCard, source: str):
    try:
        return card.drive_spec()
    except errors.BlobError as exc:
        raise errors.resourced(exc, source) from None


def _ort_loads(onnx_bytes: bytes, source: str) -> None:
    """The graph must build in onnxruntime here, not first on a device."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the user needs the refusal, not ORT's notes
    try:
        ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types for every parse failure
        raise CliError(f"{source}: not a loadable ONNX model ({one_line(exc)})") from None


def _describe(info: GraphInfo, args: argparse.Namespace, n_classes: int) -> Tuple[Tuple[TensorSpec, ...], Tuple[TensorSpec, ...], Optional[str]]:
    """Card inputs, outputs and output kind, from the graph where it says them, else the options."""
    who = f"{args.model}"
    name = f"model {args.name!r}"
    if len(info.inputs) != 1:
        shown = ", ".join(f"{t.name!r}" for t in info.inputs) or "none"
        raise errors.TooManyInputs(who, f"{name}: the graph takes {len(info.inputs)} inputs ({shown}); the flow feeds exactly one image: export the graph with a single image input")
    inp = info.inputs[0]
    if inp.dtype not in INPUT_DTYPES:
        raise errors.UnsupportedDtype(who, f"{name}: input {inp.name!r} is {inp.type_name}; the flow feeds uint8, float32 or float16: re-export with one of those")
    shape = inp.card_shape()
    if inp.shape is None or len(shape) != 4:
        raise errors.UnsupportedInput(who, f"{name}: input {inp.name!r} has shape [{','.join(map(str, shape)) if inp.shape else '?'}]; expected a 4-D image [N,3,H,W] or [N,H,W,3]")
    layout = args.input_layout or _input_layout(shape)
    if layout is None:
        raise errors.UnsupportedInput(who, f"{name}: cannot tell the channel axis of input {inp.name!r} [{','.join(map(str, shape))}]: pass --input-layout NCHW or NHWC")
    if inp.dtype != "uint8" and args.input_scale is None:
        raise CliError(f"{who}: input {inp.name!r} is {inp.dtype}: say what values it expects: --input-scale 1/255 (0..1) or --input-scale 1 (0..255), with --mean R G B --std R G B if it was trained normalised")
    specs_in = (TensorSpec(inp.name, inp.dtype, shape, layout, args.colour),)
    out = info.outputs[0]
    if out.dtype is None:
        raise errors.UnsupportedDtype(who, f"{name}: output {out.name!r} is {out.type_name}; expected an integer class map or float scores")
    oshape = out.card_shape()
    integer = out.dtype in CLASS_MAP_DTYPES
    out_layout = args.output_layout or _output_layout(oshape, integer, n_classes, layout)
    specs_out = [TensorSpec(out.name, out.dtype, oshape, out_layout, None)]
    for extra in info.outputs[1:]:  # described too, never driven: the flow reads the first output
        if extra.dtype is not None and extra.shape is not None:
            s = extra.card_shape()
            specs_out.append(TensorSpec(extra.name, extra.dtype, s, _output_layout(s, extra.dtype in CLASS_MAP_DTYPES, n_classes, layout), None))
    if args.output_kind:
        kind = args.output_kind
    elif integer:
        kind = "class_map"
    else:  # a Softmax writing the output itself means probabilities; argmax is the same either way
        kind = "probabilities" if info.producers.get(out.name) == "Softmax" else "logits"
    return specs_in, tuple(specs_out), kind


def _input_layout(shape: Tuple[Any, ...]) -> Optional[str]:
    first, last = shape[1] == 3, shape[3] == 3
    if first != last:
        return "NCHW" if first else "NHWC"
    if not first and isinstance(shape[1], int) != isinstance(shape[3], int):
        # one channel count fixed (not 3), the other dynamic: the fixed one is the channel axis
        return "NCHW" if isinstance(shape[1], int) else "NHWC"
    return None


def _output_layout(shape: Tuple[Any, ...], integer: bool, n_classes: int, input_layout: str) -> str:
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        return {0: "", 1: "N", 2: "NC"}.get(len(shape), "X" * len(shape))
    want = 1 if integer else n_classes
    first, last = shape[1] == want, shape[3] == want
    if first != last:
        return "NCHW" if first else "NHWC"
    if not first and isinstance(shape[1], int) != isinstance(shape[3], int):
        return "NCHW" if isinstance(shape[1], int) else "NHWC"
    return input_layout  # ambiguous: the input's convention (drive_spec names a wrong count)


def _number(text: str) -> float:
    """A float, or a fraction like 1/255."""
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 1/255 or 0.00392)") from None


def _json_file(path: Optional[str], default: Any) -> Any:
    if not path:
        return default
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise CliError(f"{path}: not valid JSON ({exc})") from None


def _inspect(args: argparse.Namespace) -> int:
    key, card = verify_card(args.blob)
    size = os.path.getsize(args.blob)
    if args.json:
        print(json.dumps({"key": key, "file_size": size, "card": card.to_dict()}, indent=2, sort_keys=True))
        return 0
    body = card.body
    assert body is not None
    lines = [
        f"key          {key}",
        f"name         {card.name}",
        f"description  {card.description}",
        f"algorithm    {card.algorithm}   (ONNX opset {card.onnx_opset})",
        f"created      {card.created}   modified {card.modified}",
        f"size         {size} bytes; body {body.stored_size} stored, {body.raw_size} raw ({body.compression} level {body.compression_level})",
        f"encryption   {body.encryption}" + (f" (key id {body.key_id})" if body.key_id else ""),
        f"scoring      {card.scoring_function}",
    ]
    for kind, specs in (("input", card.inputs), ("output", card.outputs)):
        for t in specs:
            color = f" {t.color_order}" if t.color_order else ""
            lines.append(f"{kind:<12} {t.name} {t.dtype}[{','.join(map(str, t.shape))}] {t.layout}{color}")
    if card.preprocessing != Preprocessing():
        lines.append(f"preprocess   {json.dumps(card.to_dict()['preprocessing'], sort_keys=True)}")
    if card.output_kind:
        lines.append(f"output kind  {card.output_kind}")
    lines.append(f"classes      {', '.join(f'{c.id}:{c.name}' for c in card.classes)}")
    if card.training_params:
        lines.append(f"training     {json.dumps(card.training_params, sort_keys=True)}")
    if card.metrics:
        lines.append(f"metrics      {json.dumps(card.metrics, sort_keys=True)}")
    print("\n".join(printable(x) for x in lines))   # a card's text is anyone's: no raw ESC
    return 0


def _verify(args: argparse.Namespace) -> int:
    key, card = verify_card(args.blob, expected_key=args.key)
    assert card.body is not None  # verify_card guarantees it
    if card.body.encrypted and not args.decrypt_key:
        print(f"note: {args.blob}: the body is encrypted, so its graph was not checked; pass --decrypt-key to check it", file=sys.stderr)
    else:  # the graph too: what load refuses, verify refuses
        secret = read_secret(args.decrypt_key) if args.decrypt_key else None
        load(args.blob, key, decrypt_key=secret, limits=_limits(args))
    print(key)
    return 0


def _unpack(args: argparse.Namespace) -> int:
    secret = read_secret(args.decrypt_key) if args.decrypt_key else None
    _, onnx_bytes = load(args.blob, BlobKey(args.key), decrypt_key=secret, limits=_limits(args))
    with open(args.output, "wb") as f:
        f.write(onnx_bytes)
    print(f"wrote {args.output} ({len(onnx_bytes)} bytes)")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(generate_secret().hex() + "\n")
    print(f"wrote a new secret to {args.output} (mode 600); keep it off the model server")
    return 0

