"""What an ONNX graph says about driving it, read from its protobuf bytes (no onnx import).

The edge checks every model it loads with this, and the edge has only onnxruntime, which
would itself act on what is checked here (read external files, look for custom kernels).
So the wire format is walked directly, with memoryviews (no copies of weights):

    ModelProto      graph 7, opset_import 8 (domain 1, version 2), functions 25
    GraphProto      node 1, initializer 5, sparse_initializer 15, input 11, output 12
    NodeProto       input 1, output 2, op_type 4, attribute 5, domain 7
    AttributeProto  t 5, g 6, tensors 10, graphs 11, sparse_tensor 22, sparse_tensors 23
    TensorProto     external_data 13, data_location 14 (1 = EXTERNAL)
    SparseTensor    values 1, indices 2
    FunctionProto   node 7, domain 10, name 1
    ValueInfoProto  name 1, type 2 -> TypeProto tensor_type 1 -> elem_type 1, shape 2
                    -> dim 1 -> dim_value 1 | dim_param 2

Refused, wherever they occur (subgraphs of If/Loop/Scan, functions, node attributes):

- a tensor with external data (`ExternalData`): ONNX Runtime would open the path the
  graph names, relative to wherever it runs, so a blob could make the edge read files;
- a node whose domain is not one ONNX Runtime implements itself (`CustomOps`):
  "" / "ai.onnx" (the ONNX operators), "ai.onnx.ml" (the classical-ML operators, shipped
  in every ORT build) and "com.microsoft" (ORT's contrib operators: its own quantisation
  and graph-optimisation tools emit them, its CPU and CUDA builds carry their kernels).
  Any other domain needs a custom-op library loaded into the process, i.e. native code
  from outside the blob; the flow never loads one. A node that calls a function defined
  in the model itself is allowed, since its body is checked like the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterator, List, Optional, Set, Tuple, Union

from . import errors
from .card import Dim, ModelCard, TensorSpec

__all__ = ["ALLOWED_DOMAINS", "ELEM_TYPES", "ORT_TYPES", "GraphInfo", "GraphTensor", "check_graph", "read_graph"]

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})

# ONNX TensorProto.DataType -> the card's dtype names (others: None, refused where driven)
ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
              10: "float16", 11: "float64", 16: "bfloat16"}
ELEM_NAMES = {8: "string", 9: "bool", 12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128"}
# the card's dtype names as ONNX Runtime spells a tensor's type (NodeArg.type)
ORT_TYPES = {dtype: "tensor(" + {"float32": "float", "float64": "double"}.get(dtype, dtype) + ")"
             for dtype in ELEM_TYPES.values()}
MAX_NESTING = 64  # subgraphs inside subgraphs; a real model nests a few levels


@dataclass(frozen=True)
class GraphTensor:
    """A graph input or output as declared: dims are ints, names, or None (unknown)."""

    name: str
    elem_type: int
    shape: Optional[Tuple[Union[int, str, None], ...]]  # None: no shape declared

    @property
    def dtype(self) -> Optional[str]:
        return ELEM_TYPES.get(self.elem_type)

    @property
    def type_name(self) -> str:
        return ELEM_TYPES.get(self.elem_type) or ELEM_NAMES.get(self.elem_type) or f"type {self.elem_type}"

    def card_shape(self) -> Tuple[Dim, ...]:
        """The shape as a card stores it: a dim without a usable name is named after its axis."""
        return tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d.isidentifier() else f"d{i}")
                     for i, d in enumerate(self.shape or ()))


@dataclass(frozen=True)
class GraphInfo:
    """The parts of a model that say how to drive it."""

    inputs: Tuple[GraphTensor, ...]  # graph inputs that are not initializers: what a caller feeds
    outputs: Tuple[GraphTensor, ...]
    opset: Optional[int]  # the default domain's
    domains: FrozenSet[str]  # every node domain used (after the checks above)
    producers: Dict[str, str]  # output tensor name -> op_type of the node that writes it
    weight_dtypes: FrozenSet[str] = frozenset()  # dtypes of the constant tensors (initializers, Constant values)


def _varint(buf: memoryview, i: int) -> Tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        result |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[Tuple[int, Union[int, memoryview]]]:
    """(field number, value) of one message: ints for varints, memoryviews for the rest."""
    i, end = 0, len(buf)
    while i < end:
        tag, i = _varint(buf, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > end:
                raise ValueError("length past the end of the message")
            value, i = buf[i : i + n], i + n
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        if i > end:
            raise ValueError("field past the end of the message")
        yield field, value


def _text(v: Union[int, memoryview]) -> str:
    if not isinstance(v, memoryview):
        raise ValueError("expected a string field")
    return bytes(v).decode("utf-8")


class _Walker:
    def __init__(self, source: str, name: str) -> None:
        self.source, self.who = source, f"model {name!r}" if name else "the model"
        self.domains: Set[str] = set()
        self.functions: Set[Tuple[str, str]] = set()
        self.producers: Dict[str, str] = {}
        self.weight_types: Set[int] = set()

    def refuse(self, kind: type, what: str) -> errors.BlobError:
        return kind(self.source, f"{self.who}: {what}")

    def tensor(self, buf: memoryview, where: str) -> None:
        name = ""
        for f, v in _fields(buf):
            if f == 8:
                name = _text(v)
            elif f == 2 and isinstance(v, int):
                self.weight_types.add(v)
            elif (f == 14 and v == 1) or f == 13:
                raise self.refuse(errors.ExternalData, f"tensor {name or where!r} keeps its data in an external file; a runtime would read a path the graph names: re-export self-contained (torch.onnx.export(..., external_data=False), or onnx.save(model, path, save_as_external_data=False))")

    def sparse(self, buf: memoryview, where: str) -> None:
        for f, v in _fields(buf):
            if f in (1, 2) and isinstance(v, memoryview):
                self.tensor(v, where)

    def graph(self, buf: memoryview, depth: int, top: bool = False) -> Tuple[List[memoryview], List[memoryview], Set[str]]:
        if depth > MAX_NESTING:
            raise ValueError(f"subgraphs nest deeper than {MAX_NESTING}")
        inputs, outputs, inits = [], [], set()
        for f, v in _fields(buf):
            if not isinstance(v, memoryview):
                continue
            if f == 1:
                self.node(v, depth, top)
            elif f == 5:
                self.tensor(v, "initializer")
                inits.add(_tensor_name(v))
            elif f == 15:
                self.sparse(v, "sparse initializer")
                for g, w in _fields(v):
                    if g == 1 and isinstance(w, memoryview):
                        inits.add(_tensor_name(w))
            elif f == 11:
                inputs.append(v)
            elif f == 12:
                outputs.append(v)
        return inputs, outputs, inits

    def node(self, buf: memoryview, depth: int, top: bool) -> None:
        op, domain, outs, attrs = "", "", [], []
        for f, v in _fields(buf):
            if f == 4:
                op = _text(v)
            elif f == 7:
                domain = _text(v)
            elif f == 2:
                outs.append(_text(v))
            elif f == 5 and isinstance(v, memoryview):
                attrs.append(v)
        self.nodes.append((domain, op))
        if top:
            for o in outs:
                self.producers[o] = op if domain in ("", "ai.onnx") else f"{domain}.{op}"
        for a in attrs:
            for f, v in _fields(a):
                if not isinstance(v, memoryview):
                    continue
                if f in (5, 10):
                    self.tensor(v, f"attribute of a {op} node")
                elif f in (22, 23):
                    self.sparse(v, f"attribute of a {op} node")
                elif f in (6, 11):
                    self.graph(v, depth + 1)

    def function(self, buf: memoryview) -> None:
        name = domain = ""
        nodes = []
        for f, v in _fields(buf):
            if f == 1:
                name = _text(v)
            elif f == 10:
                domain = _text(v)
            elif f == 7 and isinstance(v, memoryview):
                nodes.append(v)
        self.functions.add((domain, name))
        for n in nodes:
            self.node(n, 1, False)

    nodes: List[Tuple[str, str]]


def _tensor_name(buf: memoryview) -> str:
    for f, v in _fields(buf):
        if f == 8:
            return _text(v)
    return ""


def _value_info(buf: memoryview) -> GraphTensor:
    name, elem, shape = "", 0, None
    for f, v in _fields(buf):
        if f == 1:
            name = _text(v)
        elif f == 2 and isinstance(v, memoryview):
            for g, t in _fields(v):
                if g == 1 and isinstance(t, memoryview):  # tensor_type
                    for h, x in _fields(t):
                        if h == 1 and isinstance(x, int):
                            elem = x
                        elif h == 2 and isinstance(x, memoryview):
                            shape = tuple(_dim(d) for k, d in _fields(x) if k == 1 and isinstance(d, memoryview))
                elif g != 6:  # a sequence, map or optional: not a tensor
                    elem = -1
    return GraphTensor(name, elem, shape)


def _dim(buf: memoryview) -> Union[int, str, None]:
    for f, v in _fields(buf):
        if f == 1 and isinstance(v, int):
            return v if v < 1 << 62 else None
        if f == 2:
            return _text(v)
    return None


def read_graph(onnx_bytes: bytes, source: str = "<model>", name: str = "") -> GraphInfo:
    """Inputs, outputs, opset and node domains of a model; refuses what is not self-contained.

    Raises errors.NotOnnx for bytes that are not a ModelProto, errors.ExternalData and
    errors.CustomOps as described above. `name` (the card's) names the model in messages.
    """
    walker = _Walker(source, name)
    walker.nodes = []
    try:
        buf = memoryview(onnx_bytes)
        graph, opset, functions = None, None, []
        for f, v in _fields(buf):
            if f == 7 and isinstance(v, memoryview):
                graph = v
            elif f == 8 and isinstance(v, memoryview):
                entry = dict(_fields(v))
                dom = entry.get(1)
                if dom is None or (isinstance(dom, memoryview) and bytes(dom) in (b"", b"ai.onnx")):
                    opset = entry.get(2) if isinstance(entry.get(2), int) else opset
            elif f == 25 and isinstance(v, memoryview):
                functions.append(v)
        if graph is None:
            raise ValueError("no graph")
        for fn in functions:
            walker.function(fn)
        inputs, outputs, inits = walker.graph(graph, 0, top=True)
        ins = tuple(t for t in map(_value_info, inputs) if t.name not in inits)
        outs = tuple(map(_value_info, outputs))
    except errors.BlobError:
        raise
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise errors.NotOnnx(source, f"{walker.who}: not an ONNX model ({exc}); pass the .onnx file torch.onnx.export wrote") from None
    if not outs:
        raise errors.NotOnnx(source, f"{walker.who}: the graph has no outputs; not a model the flow can run")
    for domain, op in walker.nodes:
        if domain not in ALLOWED_DOMAINS and (domain, op) not in walker.functions:
            raise walker.refuse(errors.CustomOps, f"node {op!r} is in operator domain {domain!r}, which needs a custom-op library (native code from outside the blob); the flow runs only the ONNX and ONNX Runtime domains {sorted(ALLOWED_DOMAINS)}: re-export with standard operators")
    domains = frozenset(d for d, _ in walker.nodes)
    weights = frozenset(ELEM_TYPES[t] for t in walker.weight_types if t in ELEM_TYPES)
    return GraphInfo(ins, outs, opset, domains, walker.producers, weights)


def card_spec(t: GraphTensor, layout: str, color_order: Optional[str]) -> TensorSpec:
    """A card TensorSpec for a graph tensor (its dtype must be one the card knows)."""
    return TensorSpec(t.name, t.dtype or "uint8", t.card_shape(), layout, color_order)


def _same(card: TensorSpec, graph: GraphTensor) -> bool:
    if card.name != graph.name or card.dtype != graph.dtype or graph.shape is None or len(card.shape) != len(graph.shape):
        return False
    # fixed dims must be equal; a dynamic dim must be dynamic on both sides (the names may differ)
    return all((c == g) if isinstance(c, int) else not (isinstance(g, int) and g > 0) for c, g in zip(card.shape, graph.card_shape()))


def _show(t: Union[TensorSpec, GraphTensor]) -> str:
    if isinstance(t, TensorSpec):
        return f"{t.name!r} {t.dtype}[{','.join(map(str, t.shape))}]"
    dims = "?" if t.shape is None else ",".join(map(str, t.card_shape()))
    return f"{t.name!r} {t.type_name}[{dims}]"


def check_graph(card: ModelCard, onnx_bytes: bytes, source: str = "<model>") -> GraphInfo:
    """Refuse a graph the flow cannot drive, or that its card does not describe.

    The card's own checks (`card.drive_spec()`) come first; then the graph must be
    self-contained (see the module docstring), take exactly one input and have the card's
    input and outputs: same names, dtypes, ranks and fixed dims, dynamic where the card is.
    """
    try:
        card.drive_spec()
    except errors.BlobError as exc:
        raise errors.resourced(exc, source) from None
    info = read_graph(onnx_bytes, source, card.name)
    who = f"model {card.name!r}"
    if len(info.inputs) != 1:
        raise errors.TooManyInputs(source, f"{who}: the graph takes {len(info.inputs)} inputs ({', '.join(_show(t) for t in info.inputs)}); the flow feeds exactly one image: export the graph with a single image input")
    fix = "re-pack it with python -m model_store pack (the card is read from the graph)"
    if not _same(card.inputs[0], info.inputs[0]):
        raise errors.CardContradictsGraph(source, f"{who}: the card does not describe its graph: input {_show(card.inputs[0])} in the card, {_show(info.inputs[0])} in the graph; {fix}")
    by_name = {t.name: t for t in info.outputs}
    for spec in card.outputs:
        g = by_name.get(spec.name)
        if g is None or not _same(spec, g):
            found = _show(g) if g is not None else "no such output (outputs: " + ", ".join(_show(t) for t in info.outputs) + ")"
            raise errors.CardContradictsGraph(source, f"{who}: the card does not describe its graph: output {_show(spec)} in the card, {found} in the graph; {fix}")
    return info
