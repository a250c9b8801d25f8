"""Whether an ONNX model's bytes say anything twice: a tag scan of the protobuf wire format.

Protobuf lets a singular field appear more than once: a scalar's last value wins and a
message's copies are merged (their repeated fields concatenated). Every parser does this,
so a model that carries its `graph` twice runs as the merge of both copies, while a tool
that keeps one copy sees only part of what runs. `model_store.graph` checks the model as
the `onnx` library parses it (the merge every runtime makes); this scan refuses the
ambiguity itself, so no reader's choice matters:

- a singular field (not `repeated`) present twice in one message, at any depth;
- two members of one `oneof` both present (e.g. a dimension with a value and a name);
- and, as not ONNX at all (`WireError`): a field number the `onnx` schema does not have, or
  a known field with the wrong wire type (parsers keep both as unknown fields, which a newer
  runtime may read differently).

Field types come from the `onnx` package's own descriptors; bytes fields (weights) are
skipped over, never copied.
"""

from __future__ import annotations

from typing import Dict, Optional, Set, Tuple

import onnx
from google.protobuf.descriptor import Descriptor, FieldDescriptor

__all__ = ["MAX_DEPTH", "WireError", "ambiguity"]

MAX_DEPTH = 100  # protobuf's own default recursion limit

# the wire type each declared field type is written with (repeated scalars may also be packed: 2)
_VARINT = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
           FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
           FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_ENUM}
_FIXED64 = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_FIXED32 = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32}


class WireError(ValueError):
    """The bytes are not an ONNX protobuf message (a length past the end, a bad varint, a
    field the schema does not have)."""


def _wire_type(fd: FieldDescriptor) -> int:
    if fd.type in _VARINT:
        return 0
    if fd.type in _FIXED64:
        return 1
    if fd.type in _FIXED32:
        return 5
    return 2  # strings, bytes, messages


def _varint(buf: memoryview, i: int, end: int) -> Tuple[int, int]:
    shift = result = 0
    while True:
        if i >= end:
            raise WireError("a varint runs past the end of its message")
        b = buf[i]
        result |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise WireError("a varint is longer than 10 bytes")


def _scan(buf: memoryview, start: int, end: int, desc: Descriptor, where: str, depth: int) -> Optional[str]:
    if depth > MAX_DEPTH:
        raise WireError(f"messages nest deeper than {MAX_DEPTH}")
    seen: Set[int] = set()
    oneofs: Dict[str, str] = {}
    i = start
    while i < end:
        tag, i = _varint(buf, i, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _, i = _varint(buf, i, end)
            body = None
        elif wire == 1:
            i += 8
            body = None
        elif wire == 5:
            i += 4
            body = None
        elif wire == 2:
            n, i = _varint(buf, i, end)
            body, i = (i, i + n), i + n
        else:
            raise WireError(f"wire type {wire} in {where}")
        if i > end:
            raise WireError(f"a field of {where} runs past the end of its message")
        fd = desc.fields_by_number.get(number)
        if fd is None:
            raise WireError(f"{where} has field {number}, which the ONNX schema of onnx {onnx.__version__} does not define")
        packed = wire == 2 and fd.is_repeated and fd.type not in (fd.TYPE_STRING, fd.TYPE_BYTES, fd.TYPE_MESSAGE)
        if wire != _wire_type(fd) and not packed:
            raise WireError(f"{where}.{fd.name} has wire type {wire}, not its declared type's")
        if not fd.is_repeated:
            if number in seen:
                return f"{where}.{fd.name} appears more than once (a parser merges the copies)"
            seen.add(number)
            group = fd.containing_oneof
            if group is not None:
                other = oneofs.setdefault(group.name, fd.name)
                if other != fd.name:
                    return f"{where} sets both {other} and {fd.name} of oneof {group.name}"
        if fd.type == fd.TYPE_MESSAGE and body is not None:
            inner = f"{where}.{fd.name}" if not fd.is_repeated else f"{where}.{fd.name}[]"
            found = _scan(buf, body[0], body[1], fd.message_type, inner, depth + 1)
            if found:
                return found
    return None


def ambiguity(onnx_bytes: bytes) -> Optional[str]:
    """What the first field said twice is, in words; None for a model that says each thing
    once. Raises WireError for bytes that are no ONNX protobuf message."""
    buf = memoryview(onnx_bytes)
    return _scan(buf, 0, len(buf), onnx.ModelProto.DESCRIPTOR, "ModelProto", 0)
