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
from .blob import load, normalize_key, verify, verify_card, write
from .card import CARLA_CLASSES, ModelCard, TensorSpec, utc_now
from .secrets import generate_secret, read_secret

_DTYPES = {"tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(float)": "float32", "tensor(float16)": "float16",
           "tensor(double)": "float64", "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bfloat16)": "bfloat16"}


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
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model_store", description="Keyed model blobs (.vsb): pack, inspect, verify, unpack.")
    sub = p.add_subparsers(dest="command", required=True)

    pk = sub.add_parser("pack", help="pack an ONNX model and its card into a blob")
    pk.add_argument("model", help="the ONNX model file")
    pk.add_argument("--name", required=True)
    pk.add_argument("--description", required=True)
    pk.add_argument("--algorithm", default="ENet")
    pk.add_argument("--scoring-function", default="uint8 NHWC RGB image -> per-pixel argmax class id (uint8 NHW)")
    pk.add_argument("--params", help="JSON file of training parameters")
    pk.add_argument("--metrics", help="JSON file of metrics")
    pk.add_argument("--classes", help="JSON list of {id, name, color}; default: the 13 CARLA classes")
    pk.add_argument("--card", help="JSON file of card fields that override everything derived")
    pk.add_argument("--input-layout", help="e.g. NHWC (default: guessed from the shape)")
    pk.add_argument("--color-order", default="RGB", choices=["RGB", "BGR", "GRAY"])
    pk.add_argument("--opset", type=int, help="ONNX opset (default: read from the model)")
    pk.add_argument("--created", help="ISO 8601 UTC creation time (default: now); fix it for reproducible blobs")
    pk.add_argument("--encrypt-key", help="secret file: encrypt the body for devices that hold it")
    pk.add_argument("--level", type=int, default=3, help="zstd level (default 3; 19 is barely smaller on fp32 weights)")
    pk.add_argument("-o", "--output", required=True)
    pk.set_defaults(run=_pack)

    ins = sub.add_parser("inspect", help="print a blob's card and key (never decompresses)")
    ins.add_argument("blob")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(run=_inspect)

    ver = sub.add_parser("verify", help="check a blob's structure and key; print the key")
    ver.add_argument("blob")
    ver.add_argument("--key", help="the expected key (e.g. from the chain)")
    ver.set_defaults(run=_verify)

    up = sub.add_parser("unpack", help="verify against a key, then write the ONNX model")
    up.add_argument("blob")
    up.add_argument("--key", required=True, help="the expected key")
    up.add_argument("--decrypt-key", help="secret file for an encrypted body")
    up.add_argument("-o", "--output", required=True)
    up.set_defaults(run=_unpack)

    kg = sub.add_parser("keygen", help="write a new random body-encryption secret (hex)")
    kg.add_argument("-o", "--output", required=True)
    kg.set_defaults(run=_keygen)
    return p


def _pack(args: argparse.Namespace) -> int:
    with open(args.model, "rb") as f:
        onnx_bytes = f.read()
    inputs, outputs, opset = _describe_onnx(onnx_bytes, args)
    created = args.created or utc_now()
    derived = ModelCard(
        name=args.name,
        description=args.description,
        algorithm=args.algorithm,
        created=created,
        modified=created,
        training_params=_json_file(args.params, {}),
        classes=CARLA_CLASSES,
        scoring_function=args.scoring_function,
        inputs=inputs,
        outputs=outputs,
        metrics=_json_file(args.metrics, {}),
        onnx_opset=args.opset or opset,
    ).to_dict()
    if args.classes:
        derived["classes"] = _json_file(args.classes, [])
    card = ModelCard.from_dict({**derived, **_json_file(args.card, {})})
    secret = read_secret(args.encrypt_key) if args.encrypt_key else None
    key = write(args.output, onnx_bytes, card, encrypt_key=secret, level=args.level)
    size = os.path.getsize(args.output)
    print(f"packed {args.model} ({len(onnx_bytes)} bytes) -> {args.output} ({size} bytes)")
    print(key)
    return 0


def _describe_onnx(onnx_bytes: bytes, args: argparse.Namespace) -> Tuple[Tuple[TensorSpec, ...], Tuple[TensorSpec, ...], int]:
    """Typed inputs/outputs and opset, read from the model itself."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types for every parse failure
        raise CliError(f"{args.model}: not a loadable ONNX model ({_one_line(exc)})") from None

    def spec(arg: Any, is_input: bool) -> TensorSpec:
        dtype = _DTYPES.get(arg.type)
        if dtype is None:
            raise CliError(f"{args.model}: tensor {arg.name!r} has type {arg.type}; pass --card with its spec")
        shape = tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d.isidentifier() else "N") for d in arg.shape)
        layout = _guess_layout(shape, is_input, args.input_layout)
        color = args.color_order if is_input and "C" in layout else None
        return TensorSpec(arg.name, dtype, shape, layout, color)

    inputs = tuple(spec(a, True) for a in session.get_inputs())
    outputs = tuple(spec(a, False) for a in session.get_outputs())
    return inputs, outputs, _opset(onnx_bytes)


def _guess_layout(shape: Tuple[Any, ...], is_input: bool, given: Optional[str]) -> str:
    if given and is_input:
        return given
    if len(shape) == 4:
        return "NCHW" if shape[1] in (1, 3) and shape[3] not in (1, 3) else "NHWC"
    return {1: "N", 2: "NC", 3: "NHW"}.get(len(shape), "X" * len(shape))


def _opset(onnx_bytes: bytes) -> int:
    """The default-domain opset, from ModelProto field 8 (opset_import), without the onnx package."""
    try:
        for field, value in _proto_fields(onnx_bytes):
            if field == 8 and isinstance(value, bytes):
                entry = dict(_proto_fields(value))
                if not entry.get(1):  # default domain "" (absent or empty)
                    return int(entry.get(2, 0))
    except (IndexError, ValueError):
        pass
    raise CliError("could not read the model's ONNX opset; pass --opset")


def _proto_fields(buf: bytes):
    i = 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield field, value


def _varint(buf: bytes, i: int) -> Tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        result |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return result, i
        shift += 7


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
    lines.append(f"classes      {', '.join(f'{c.id}:{c.name}' for c in card.classes)}")
    if card.training_params:
        lines.append(f"training     {json.dumps(card.training_params, sort_keys=True)}")
    if card.metrics:
        lines.append(f"metrics      {json.dumps(card.metrics, sort_keys=True)}")
    print("\n".join(lines))
    return 0


def _verify(args: argparse.Namespace) -> int:
    print(verify(args.blob, expected_key=args.key))
    return 0


def _unpack(args: argparse.Namespace) -> int:
    secret = read_secret(args.decrypt_key) if args.decrypt_key else None
    _, onnx_bytes = load(args.blob, normalize_key(args.key), decrypt_key=secret)
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

