"""Integer arithmetic on a frame's values: where OpenVINO and ONNX give different numbers.

OpenVINO's CPU plugin does not compute integer arithmetic the way ONNX specifies it. Side by
side with ONNX Runtime on random tensors (OpenVINO 2026.4, 2-core AMD EPYC; the test of this
module runs the same comparison): uint8 and int8 ``Add``, ``Sub`` and ``Mul`` saturate where
ONNX wraps around; int32 and uint32 ``Div``, ``Mod`` and ``BitShift`` go through float and
lose the low bits; int64 arithmetic is done in 32 bits; uint8 ``Div`` by a constant rounds
where ONNX floors; a linear ``Resize`` of uint8 values rounds where ONNX Runtime truncates
(half the values 1 higher). A brought model that computes class ids with integers would score other
masks on OpenVINO than on ONNX Runtime, and an auditor who re-scores a frame on ONNX Runtime
would find masks the registered model does not give.

So OpenVINO refuses such a graph (``auto`` then scores it on ONNX Runtime, and says why).
The rule, on the verified ONNX graph read with the ``onnx`` library:

- A value is *from the frame* when it is computed from a graph input: through any node,
  except ``Shape`` and ``Size``, whose outputs depend only on a tensor's shape. So the shape
  arithmetic that exporters write (``Shape`` -> ``Gather`` -> ``Mul`` -> ``Reshape``) stays
  allowed: it computes small numbers that OpenVINO gets right.
- A graph is refused when one of :data:`ARITHMETIC`, or a ``Resize``/``Upsample`` that
  interpolates (``linear``, ``cubic``), computes an integer tensor from the frame. Comparisons, ``Cast``, ``ArgMax``, ``Gather`` and the quantisation operators move or
  pick values, they do not compute new ones, and are allowed.
- Model-local functions are inlined first; the bodies of ``If``, ``Loop`` and ``Scan`` are
  walked as part of the graph, every value in them counted from the frame once the node
  that holds them reads one.
- Types come from ONNX shape inference; a node whose output type cannot be known is judged
  by its inputs' types, and where none is known, counted as integer (OpenVINO is then not
  used: ONNX Runtime scores it, slower, never differently).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Set

import onnx
import onnx.inliner
from onnx import TensorProto

from model_store.graph import fed_inputs

__all__ = ["ARITHMETIC", "integer_arithmetic_on_frames"]

ARITHMETIC = frozenset({
    "Add", "Sub", "Mul", "Div", "Mod", "Pow", "BitShift", "Neg", "Abs", "Sum", "Mean",
    "CumSum", "MatMul", "Gemm", "Einsum", "ReduceSum", "ReduceProd", "ReduceSumSquare",
    "ReduceMean", "ReduceL1", "ReduceL2",
})
_INTERPOLATES = frozenset({"Resize", "Upsample"})
_SHAPE_ONLY = frozenset({"Shape", "Size"})
_INTEGER = frozenset({TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16,
                      TensorProto.INT32, TensorProto.UINT32, TensorProto.INT64, TensorProto.UINT64})


def integer_arithmetic_on_frames(onnx_bytes: bytes, *, limit: int = 3) -> List[str]:
    """Up to ``limit`` nodes that compute integers from the frame, each as
    ``'Div "name" (uint8)'``; empty when OpenVINO computes the graph as ONNX does. Bytes
    that are not a protobuf raise ``google.protobuf.message.DecodeError``."""
    model = onnx.ModelProto()
    model.ParseFromString(onnx_bytes)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - types stay unknown; the inputs' types still judge
        pass
    g = model.graph
    types: Dict[str, int] = {}
    _collect_types(g, types)
    from_frame = {v.name for v in fed_inputs(g)}
    found: List[str] = []
    _walk(g.node, from_frame, types, found, limit)
    return found


def _collect_types(g: onnx.GraphProto, types: Dict[str, int]) -> None:
    for v in list(g.input) + list(g.value_info) + list(g.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    for s in g.sparse_initializer:
        types[s.values.name] = s.values.data_type
    for node in g.node:
        for sub in _subgraphs(node):
            _collect_types(sub, types)


def _subgraphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _names(g: onnx.GraphProto, side: str) -> Set[str]:
    """Every value name a node of ``g`` or of its subgraphs reads (``side`` "input": outer
    values included) or writes ("output")."""
    names: Set[str] = set()
    for node in g.node:
        names.update(n for n in getattr(node, side) if n)
        for sub in _subgraphs(node):
            names |= _names(sub, side)
    return names


def _walk(nodes, from_frame: Set[str], types: Dict[str, int], found: List[str], limit: int) -> None:
    for node in nodes:
        if len(found) >= limit:
            return
        subs = list(_subgraphs(node))
        reads = {n for n in node.input if n}
        for sub in subs:
            reads |= _names(sub, "input")
        tainted = bool(reads & from_frame)
        if tainted and subs:
            for sub in subs:   # every value of a body that sees the frame is from the frame
                inner = set(from_frame) | {v.name for v in sub.input} | _names(sub, "output")
                _walk(sub.node, inner, types, found, limit)
        if _computes(node) and tainted:
            elem = _elem_type(node, types)
            if elem is None or elem in _INTEGER:   # a type nobody can know may be an integer
                found.append(f'{node.op_type} "{node.name or node.output[0]}" '
                             f"({TensorProto.DataType.Name(elem).lower() if elem else 'type unknown'})")
        if tainted and node.op_type not in _SHAPE_ONLY:
            from_frame.update(n for n in node.output if n)


def _computes(node: onnx.NodeProto) -> bool:
    """Whether ``node`` computes new values (not only moves or picks them)."""
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type in _INTERPOLATES:   # nearest picks a value; linear and cubic compute one
        mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "nearest")
        return mode != "nearest"
    return node.op_type in ARITHMETIC


def _elem_type(node: onnx.NodeProto, types: Dict[str, int]) -> Optional[int]:
    known = types.get(node.output[0]) if node.output else None
    if known:
        return known
    return next((types[n] for n in node.input if n in types), None)
