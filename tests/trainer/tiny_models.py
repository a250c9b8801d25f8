"""A tiny model the trainer's command-line tests evaluate: no torch, no training."""
from __future__ import annotations

from pathlib import Path

import pytest


def argmax_onnx(path: Path, size: int) -> Path:
    """An ONNX file at ``path``: uint8 image [N, size, size, 3] -> uint8 classes [N, size,
    size], the argmax over the colour channels."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    g = helper.make_graph(
        [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("ArgMax", ["f"], ["a"], axis=3, keepdims=0),
         helper.make_node("Cast", ["a"], ["classes"], to=TensorProto.UINT8)],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])],
        [helper.make_tensor_value_info("classes", TensorProto.UINT8, ["N", size, size])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path.write_bytes(m.SerializeToString())
    return path
