"""Exact rewrites of the verified graph before OpenVINO compiles it.

One rewrite, for one measured cost: the per-pixel arg-max over the class channels.

ONNX ``ArgMax(axis=1)`` reaches OpenVINO as ``TopK(k=1, axis=1, sort=value, stable=true)``.
The CPU plugin keeps the class scores in its blocked channel layout and runs that TopK
across the channel blocks, slowly: on the shipped 512² ENet it was 25 % of a frame (16.5 of
66 ms of CPU on one thread, AVX2; ``PERF_COUNT``). :func:`argmax_innermost` moves the
reduced axis last (``Transpose``, the same TopK on axis 3, ``Transpose`` back): 7 + 1 ms,
and a frame's CPU fell 74 → 66 ms (fp32) and 56 → 45 ms (int8), class maps identical
(``python -m bench ov_argmax``; docs/performance.md).

Why it is exact: the TopK node is rebuilt with every attribute it had (mode, sort, index
type, ``stable``); only the axis moves, and the values along it are the same values in the
same order, so with ``stable=true`` (which ONNX ArgMax's first-index rule always gives)
the same index wins, ties included. A TopK without ``stable`` is left alone: its tie order
is unspecified, and moving it changes which tie the kernel returns (measured).
"""
from __future__ import annotations

import numpy as np

__all__ = ["argmax_innermost"]

_TO_LAST = (0, 2, 3, 1)
_FROM_LAST = (0, 3, 1, 2)


def argmax_innermost(model) -> int:
    """Rewrite, in place, every 4-D ``TopK(k=1)`` over axis 1 of an ``openvino.Model`` to
    run over the innermost axis; returns how many were rewritten (0: the model is as read)."""
    import openvino.opset11 as ops
    moved = 0
    for node in model.get_ordered_ops():
        if not _channel_argmax(node):
            continue
        a = node.get_attributes()
        last = ops.transpose(node.input_value(0), ops.constant(np.array(_TO_LAST, dtype=np.int64)))
        top = ops.topk(last, node.input_value(1), 3, a["mode"], a["sort"], a["index_element_type"],
                       True, name=node.get_friendly_name())
        for i in range(2):
            back = ops.transpose(top.output(i), ops.constant(np.array(_FROM_LAST, dtype=np.int64)))
            node.output(i).replace(back.output(0))
        moved += 1
    if moved:
        model.validate_nodes_and_infer_types()
    return moved


def _channel_argmax(node) -> bool:
    if node.get_type_name() != "TopK" or node.get_type_info().version_id != "opset11":
        return False
    a = node.get_attributes()
    rank = node.get_input_partial_shape(0).rank
    if not a.get("stable") or rank.is_dynamic or rank.get_length() != 4 or a["axis"] % 4 != 1:
        return False
    k = node.input_value(1).get_node()
    if k.get_type_name() != "Constant":
        return False
    k = np.asarray(k.get_data())
    return k.size == 1 and int(k.reshape(-1)[0]) == 1
