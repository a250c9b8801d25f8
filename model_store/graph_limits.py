"""How large a model may declare itself: the bounds `model_store.graph` checks a graph against.

A brought model could declare an input of 1x40000x40000x3 (4.8 GB a frame) or build a
200000x200000 tensor from a constant shape (40 GB a run); each is refused when packed and
when loaded, naming the model, the tensor and the limit. These are the defaults (the pack
CLI's, and `load`'s); the flow passes its own from `VERISEG_MAX_INPUT_BYTES`,
`VERISEG_MAX_INITIALIZER_BYTES` and `VERISEG_MAX_TENSOR_ELEMENTS`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "GraphLimits", "MAX_INITIALIZER_BYTES", "MAX_INPUT_BYTES", "MAX_TENSOR_ELEMENTS"]

# a float32 1x3x4096x4096 input is 201 MB; the 512x512 uint8 ENet's is 786 KB
MAX_INPUT_BYTES = 256 << 20
# every tensor stored in the graph (initializers, sparse ones, Constant nodes); the body's
# own ceiling is 2 GiB (ONNX's protobuf limit)
MAX_INITIALIZER_BYTES = 1 << 30
# a tensor shaped by a constant (ConstantOfShape, Expand, Reshape, Tile, Resize, Upsample):
# 1 GiB of float32; a 19-class 4K logits map is 158 M elements
MAX_TENSOR_ELEMENTS = 1 << 28


@dataclass(frozen=True)
class GraphLimits:
    """The bounds one check uses; each names the setting and the pack option that raise it."""

    max_input_bytes: int = MAX_INPUT_BYTES
    max_initializer_bytes: int = MAX_INITIALIZER_BYTES
    max_tensor_elements: int = MAX_TENSOR_ELEMENTS


DEFAULT_LIMITS = GraphLimits()
