"""What an ONNX graph says about driving it, read with the `onnx` library's own protobuf.

The bytes are parsed as every runtime parses them (`onnx.ModelProto.ParseFromString`: a
field said twice is merged, as ONNX Runtime and OpenVINO merge it), after
`model_store.onnx_wire` has refused bytes that say a singular field twice at all. Then every
part of the parsed model is walked: the graph, the subgraphs of If/Loop/Scan attributes at
any depth, the bodies of `model.functions` and `model.training_info`. Refused, wherever
they occur:

- a tensor with external data (`ExternalData`: `data_location` EXTERNAL or any
  `external_data` entry, on an initializer, a sparse initializer, a Constant node's or any
  other attribute's tensor): ONNX Runtime would open the path the graph names, relative to
  wherever it runs, so a blob could make the edge read files;
- a node whose domain is not one ONNX Runtime implements itself (`CustomOps`):
  "" / "ai.onnx" (the ONNX operators), "ai.onnx.ml" (the classical-ML operators, shipped
  in every ORT build) and "com.microsoft" (ORT's contrib operators: its own quantisation
  and graph-optimisation tools emit them, its CPU and CUDA builds carry their kernels).
  Any other domain needs a custom-op library loaded into the process, i.e. native code
  from outside the blob; the flow never loads one. A node that calls a function defined
  in the model itself is allowed, since its body is checked like the graph;
- a model that names a domain twice in `opset_import`, or defines a function twice
  (`Ambiguous`: which one a runtime takes is its own choice);
- sizes past `model_store.graph_limits` (`OverLimit`): the input a frame becomes, the
  bytes of every stored tensor, any tensor shaped by a constant (ConstantOfShape, Expand,
  Reshape, Tile, Resize, Upsample) and any static shape declared for an output or an
  intermediate value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple, Union

import numpy as np
import onnx
from google.protobuf.message import DecodeError, Message
from onnx import numpy_helper

from . import errors, onnx_wire
from .card import Dim, ModelCard, TensorSpec
from .graph_limits import DEFAULT_LIMITS, GraphLimits

__all__ = ["ALLOWED_DOMAINS", "ELEM_TYPES", "ORT_TYPES", "GraphInfo", "GraphLimits", "GraphTensor", "check_graph",
           "fed_inputs", "read_graph"]

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
_ONNX_DOMAINS = ("", "ai.onnx")

# ONNX TensorProto.DataType -> the card's dtype names (others: None, refused where driven)
ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
              10: "float16", 11: "float64", 16: "bfloat16"}
ELEM_NAMES = {8: "string", 9: "bool", 12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128"}
# the card's dtype names as ONNX Runtime spells a tensor's type (NodeArg.type)
ORT_TYPES = {dtype: "tensor(" + {"float32": "float", "float64": "double"}.get(dtype, dtype) + ")"
             for dtype in ELEM_TYPES.values()}

# op_type -> (input index, what it is, True for float scales) of the inputs that shape an output
_SHAPED_BY = {
    "ConstantOfShape": ((0, "shape", False),),
    "Expand": ((1, "shape", False),),
    "Reshape": ((1, "shape", False),),
    "Tile": ((1, "repeats", False),),
    "Resize": ((2, "scales", True), (3, "sizes", False)),
    "Upsample": ((1, "scales", True),),
}
_RAISE = {
    "max_input_bytes": ("VERISEG_MAX_INPUT_BYTES", "--max-input-bytes"),
    "max_initializer_bytes": ("VERISEG_MAX_INITIALIZER_BYTES", "--max-initializer-bytes"),
    "max_tensor_elements": ("VERISEG_MAX_TENSOR_ELEMENTS", "--max-tensor-elements"),
}
_FIX = "re-export self-contained (torch.onnx.export(..., external_data=False), or onnx.save(model, path, save_as_external_data=False))"


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


class _Refuser:
    """Builds the one-line refusals, naming the source and the model."""

    def __init__(self, source: str, name: str) -> None:
        self.source, self.who = source, f"model {name!r}" if name else "the model"

    def __call__(self, kind: type, what: str) -> errors.BlobError:
        return kind(self.source, f"{self.who}: {what}")

    def over(self, what: str, amount: float, unit: str, limits: GraphLimits, field: str) -> errors.BlobError:
        setting, option = _RAISE[field]
        limit = getattr(limits, field)
        shown = f"{amount:.0f}" if amount < 1e18 else f"{amount:.3g}"
        return self(errors.OverLimit, f"{what}: {shown} {unit}, over the limit of {limit} {unit}; raise it with {setting} in the flow or {option} at pack if the model really needs that")


def _parse(onnx_bytes: bytes, refuse: _Refuser) -> onnx.ModelProto:
    """The model as every runtime reads it, once its bytes are known to say each field once."""
    not_onnx = "pass the .onnx file torch.onnx.export wrote"
    try:
        problem = onnx_wire.ambiguity(onnx_bytes)
    except onnx_wire.WireError as exc:
        raise refuse(errors.NotOnnx, f"not an ONNX model ({exc}); {not_onnx}") from None
    if problem:
        raise refuse(errors.Ambiguous, f"ambiguous: {problem}; readers may see different models in it: re-export it (torch.onnx.export and onnx.save write each field once)")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(onnx_bytes)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise refuse(errors.NotOnnx, f"not an ONNX model ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); {not_onnx}") from None
    if not model.HasField("graph"):
        raise refuse(errors.NotOnnx, f"not an ONNX model (no graph); {not_onnx}")
    return model


def _sweep(model: onnx.ModelProto) -> Tuple[List[onnx.TensorProto], List[onnx.NodeProto], List[onnx.ValueInfoProto]]:
    """Every tensor, node and declared value anywhere in the model, found through the schema
    itself (whatever message holds them: graphs, subgraphs, functions, attributes, training info)."""
    tensors: List[onnx.TensorProto] = []
    nodes: List[onnx.NodeProto] = []
    values: List[onnx.ValueInfoProto] = []
    stack: List[Message] = [model]
    while stack:
        msg = stack.pop()
        kind = msg.DESCRIPTOR
        if kind is _TENSOR:
            tensors.append(msg)  # type: ignore[arg-type]
            continue  # its own fields are data, and external_data entries
        if kind is _NODE:
            nodes.append(msg)  # type: ignore[arg-type]
        elif kind is _VALUE:
            values.append(msg)  # type: ignore[arg-type]
        for fd, value in msg.ListFields():
            if fd.message_type is not None:
                if fd.is_repeated:
                    stack.extend(reversed(value))
                else:
                    stack.append(value)
    return tensors, nodes, values


_TENSOR = onnx.TensorProto.DESCRIPTOR
_NODE = onnx.NodeProto.DESCRIPTOR
_VALUE = onnx.ValueInfoProto.DESCRIPTOR


def _check_declared(values: List[onnx.ValueInfoProto], image_inputs: FrozenSet[str], refuse: _Refuser, limits: GraphLimits) -> None:
    """A static shape declared for any value (an output, an intermediate): a runtime plans
    memory from it at compile time (OpenVINO's CPU plugin does). The image input is bounded
    by `max_input_bytes` instead, at the size the card drives it."""
    for v in values:
        t = _value_info(v)
        if t.shape and v.name not in image_inputs and all(isinstance(d, int) for d in t.shape):
            n = float(np.prod(np.array(t.shape, dtype=np.float64)))
            if n > limits.max_tensor_elements:
                raise refuse.over(f"tensor declared {_show(t)}", n, "elements", limits, "max_tensor_elements")


def _location(t: onnx.TensorProto) -> str:
    for entry in t.external_data:
        if entry.key == "location":
            return f" ({entry.value!r})"
    return ""


def _check_tensors(tensors: List[onnx.TensorProto], refuse: _Refuser, limits: GraphLimits) -> None:
    total = 0
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            raise refuse(errors.ExternalData, f"tensor {t.name or '(unnamed)'!r} keeps its data in an external file{_location(t)}; a runtime would read a path the graph names: {_FIX}")
        total += t.ByteSize()  # its serialized size: the data it stores, never copied out
    if total > limits.max_initializer_bytes:
        raise refuse.over("the tensors stored in the graph (initializers, Constant nodes)", total, "bytes", limits, "max_initializer_bytes")


def _check_domains(model: onnx.ModelProto, nodes: List[onnx.NodeProto], refuse: _Refuser) -> FrozenSet[str]:
    functions = set()
    for f in model.functions:
        if (f.domain, f.name) in functions:
            raise refuse(errors.Ambiguous, f"the model defines function {f.domain}.{f.name} twice; which one runs is the runtime's choice: re-export it")
        functions.add((f.domain, f.name))
    for n in nodes:
        if n.domain not in ALLOWED_DOMAINS and (n.domain, n.op_type) not in functions:
            raise refuse(errors.CustomOps, f"node {n.op_type!r} is in operator domain {n.domain!r}, which needs a custom-op library (native code from outside the blob); the flow runs only the ONNX and ONNX Runtime domains {sorted(ALLOWED_DOMAINS)}: re-export with standard operators")
    return frozenset(n.domain for n in nodes)


def _opset(model: onnx.ModelProto, refuse: _Refuser) -> Optional[int]:
    versions: Dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        if domain in versions:
            raise refuse(errors.Ambiguous, f"ambiguous: opset_import names domain {entry.domain!r} twice (versions {versions[domain]} and {entry.version}); re-export it")
        versions[domain] = entry.version
    return versions.get("")


# --- tensors shaped by constants -----------------------------------------------------------------

Constant = Callable[[], Optional[np.ndarray]]


def _constant_of(node: onnx.NodeProto) -> Constant:
    """A Constant node's value, decoded only when a shape input asks for it."""

    def value() -> Optional[np.ndarray]:
        for a in node.attribute:
            if a.name == "value" and a.HasField("t"):
                return numpy_helper.to_array(a.t)
            if a.name in ("value_ints", "value_floats"):
                return np.array(list(a.ints) if a.name == "value_ints" else list(a.floats))
            if a.name in ("value_int", "value_float"):
                return np.array([a.i if a.name == "value_int" else a.f])
        return None

    return value


def _check_shapes(nodes, initializers, outer: Dict[str, Constant], refuse: _Refuser, limits: GraphLimits) -> None:
    """Refuse a node whose constant shape (or growth) makes a tensor past the element limit;
    subgraphs see their enclosing graphs' constants, and shadow them with their own."""
    consts = dict(outer)
    for t in initializers:
        consts[t.name] = (lambda t=t: numpy_helper.to_array(t))
    for n in nodes:
        if n.op_type == "Constant" and n.domain in _ONNX_DOMAINS and n.output:
            consts[n.output[0]] = _constant_of(n)
    for n in nodes:
        if n.domain in _ONNX_DOMAINS:
            for index, what, scales in _SHAPED_BY.get(n.op_type, ()):
                if index < len(n.input) and n.input[index] in consts:
                    _check_shape(n, what, scales, consts[n.input[index]], refuse, limits)
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                _check_shapes(g.node, g.initializer, consts, refuse, limits)


def _check_shape(node: onnx.NodeProto, what: str, scales: bool, constant: Constant, refuse: _Refuser, limits: GraphLimits) -> None:
    try:
        values = constant()
    except Exception:  # noqa: BLE001 - a constant no runtime could decode either: the runtime refuses it
        return
    if values is None or values.size == 0:
        return
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[v > 0]  # Reshape's 0 and -1 take sizes from the input, which is bounded on its own
    product = float(np.prod(np.ceil(v))) if v.size else 0.0
    if product > limits.max_tensor_elements:
        name = node.name or (node.output[0] if node.output else "")
        grows = "multiplies its input's size by" if scales or node.op_type == "Tile" else "makes a tensor of"
        raise refuse.over(f"{node.op_type} node {name!r} {grows} {what} {values.ravel()[:8].tolist()}", product, "elements", limits, "max_tensor_elements")


# --- inputs and outputs ---------------------------------------------------------------------------


def _value_info(v: onnx.ValueInfoProto) -> GraphTensor:
    kind = v.type.WhichOneof("value")
    if kind is None:
        return GraphTensor(v.name, 0, None)
    if kind != "tensor_type":  # a sequence, map, optional or sparse tensor: not a tensor
        return GraphTensor(v.name, -1, None)
    tt = v.type.tensor_type
    shape = tuple(_dim(d) for d in tt.shape.dim) if tt.HasField("shape") else None
    return GraphTensor(v.name, tt.elem_type, shape)


def _dim(d: onnx.TensorShapeProto.Dimension) -> Union[int, str, None]:
    which = d.WhichOneof("value")
    if which == "dim_value":
        return d.dim_value if 0 <= d.dim_value < 1 << 62 else None
    if which == "dim_param":
        return d.dim_param
    return None


def fed_inputs(graph: onnx.GraphProto) -> List[onnx.ValueInfoProto]:
    """The inputs of ``graph`` a caller feeds: those no initializer, dense or sparse, shadows."""
    inits = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    return [v for v in graph.input if v.name not in inits]


def read_graph(onnx_bytes: bytes, source: str = "<model>", name: str = "", limits: GraphLimits = DEFAULT_LIMITS) -> GraphInfo:
    """Inputs, outputs, opset and node domains of a model; refuses what is not self-contained.

    Raises errors.NotOnnx for bytes that are not a ModelProto, errors.Ambiguous,
    errors.ExternalData, errors.CustomOps and errors.OverLimit as described above. `name`
    (the card's) names the model in messages.
    """
    refuse = _Refuser(source, name)
    model = _parse(onnx_bytes, refuse)
    try:
        tensors, nodes, values = _sweep(model)
        _check_tensors(tensors, refuse, limits)
        _check_declared(values, frozenset(v.name for v in model.graph.input), refuse, limits)
        domains = _check_domains(model, nodes, refuse)
        opset = _opset(model, refuse)
        g = model.graph
        _check_shapes(g.node, g.initializer, {}, refuse, limits)
        for f in model.functions:
            _check_shapes(f.node, (), {}, refuse, limits)
        for info in model.training_info:
            for sub in (info.initialization, info.algorithm):
                _check_shapes(sub.node, sub.initializer, {}, refuse, limits)
        ins = tuple(_value_info(v) for v in fed_inputs(g))
        outs = tuple(_value_info(v) for v in g.output)
        producers = {o: (n.op_type if n.domain in _ONNX_DOMAINS else f"{n.domain}.{n.op_type}") for n in g.node for o in n.output}
    except UnicodeDecodeError as exc:  # a name that is not UTF-8
        raise refuse(errors.NotOnnx, f"not an ONNX model ({exc}); pass the .onnx file torch.onnx.export wrote") from None
    if not outs:
        raise refuse(errors.NotOnnx, "the graph has no outputs; not a model the flow can run")
    weights = frozenset(ELEM_TYPES[t.data_type] for t in tensors if t.data_type in ELEM_TYPES)
    return GraphInfo(ins, outs, opset, domains, producers, weights)


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


def check_graph(card: ModelCard, onnx_bytes: bytes, source: str = "<model>", limits: GraphLimits = DEFAULT_LIMITS) -> GraphInfo:
    """Refuse a graph the flow cannot drive, or that its card does not describe.

    The card's own checks (`card.drive_spec()`) come first; then the graph must be
    self-contained and within `limits` (see the module docstring), take exactly one input
    and have the card's input and outputs: same names, dtypes, ranks and fixed dims, dynamic
    where the card is. The input a frame becomes (batch x size x 3 channels, at the card's
    size; a dynamic size without one is the frame's own, bounded by VERISEG_MAX_PIXELS)
    must be within `limits.max_input_bytes`.
    """
    try:
        spec = card.drive_spec()
    except errors.BlobError as exc:
        raise errors.resourced(exc, source) from None
    info = read_graph(onnx_bytes, source, card.name, limits)
    who = f"model {card.name!r}"
    if len(info.inputs) != 1:
        raise errors.TooManyInputs(source, f"{who}: the graph takes {len(info.inputs)} inputs ({', '.join(_show(t) for t in info.inputs)}); the flow feeds exactly one image: export the graph with a single image input")
    fix = "re-pack it with python -m model_store pack (the card is read from the graph)"
    if not _same(card.inputs[0], info.inputs[0]):
        raise errors.CardContradictsGraph(source, f"{who}: the card does not describe its graph: input {_show(card.inputs[0])} in the card, {_show(info.inputs[0])} in the graph; {fix}")
    by_name = {t.name: t for t in info.outputs}
    for spec_out in card.outputs:
        g = by_name.get(spec_out.name)
        if g is None or not _same(spec_out, g):
            found = _show(g) if g is not None else "no such output (outputs: " + ", ".join(_show(t) for t in info.outputs) + ")"
            raise errors.CardContradictsGraph(source, f"{who}: the card does not describe its graph: output {_show(spec_out)} in the card, {found} in the graph; {fix}")
    if spec.size is not None:
        frame_bytes = (spec.batch or 1) * spec.size[0] * spec.size[1] * 3 * np.dtype(spec.input_dtype).itemsize
        if frame_bytes > limits.max_input_bytes:
            raise _Refuser(source, card.name).over(f"input {_show(info.inputs[0])} (what each frame becomes)", frame_bytes, "bytes", limits, "max_input_bytes")
    return info
