"""operators.backends.ov_graph: the class arg-max moved to the innermost axis is exact (ties
included, against ONNX's first-index rule), fires only where it is exact, and is never the
reason a model is refused."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")

KEY = "c" * 64


def _argmax_onnx(classes=13, size=(24, 40)) -> bytes:
    """float scores [1, C, H, W] -> ArgMax over C -> uint8, the shape of a segmentation head."""
    import onnx
    from onnx import TensorProto, helper
    h, w = size
    nodes = [helper.make_node("ArgMax", ["scores"], ["i"], axis=1, keepdims=0),
             helper.make_node("Cast", ["i"], ["classes"], to=TensorProto.UINT8)]
    g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, classes, h, w])],
                          [helper.make_tensor_value_info("classes", TensorProto.UINT8, [1, h, w])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


def _ov_run(onnx: bytes, x: np.ndarray, rewrite: bool):
    import openvino as ov
    from operators.backends.ov_graph import argmax_innermost
    core = ov.Core()
    model = core.read_model(onnx)
    moved = argmax_innermost(model) if rewrite else 0
    req = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1}).create_infer_request()
    req.infer({0: x})
    return np.array(req.get_output_tensor(0).data, copy=True), moved


def test_the_moved_argmax_picks_the_first_maximum_like_onnx_ties_included():
    import onnxruntime as ort
    onnx = _argmax_onnx()
    # scores drawn from {0, 1, 2}: a quarter of the pixels have a tie for the maximum
    x = np.random.default_rng(0).integers(0, 3, (1, 13, 24, 40)).astype(np.float32)
    first = x.argmax(axis=1).astype(np.uint8)                 # numpy's and ONNX's rule
    assert (np.sort(x, axis=1)[:, -1] == np.sort(x, axis=1)[:, -2]).mean() > 0.5
    got, moved = _ov_run(onnx, x, rewrite=True)
    assert moved == 1
    assert np.array_equal(got, first)
    assert np.array_equal(got, _ov_run(onnx, x, rewrite=False)[0])
    s = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    assert np.array_equal(got, s.run(None, {"scores": x})[0])


def _topk_model(shape=(1, 13, 8, 8), k=1, axis=1, stable=True):
    import openvino as ov
    import openvino.opset11 as ops
    p = ops.parameter(list(shape), np.float32)
    t = ops.topk(p, ops.constant(np.array(k, dtype=np.int64)), axis, "max", "value", "i64", stable)
    return ov.Model([t.output(1)], [p])


@pytest.mark.parametrize("why, kw", [
    ("tie order unspecified", dict(stable=False)),
    ("more than the arg-max", dict(k=2)),
    ("not the channel axis", dict(axis=2)),
    ("not an image", dict(shape=(13, 8, 8), axis=0)),
])
def test_a_topk_the_rewrite_cannot_keep_exact_is_left_as_read(why, kw):
    from operators.backends.ov_graph import argmax_innermost
    model = _topk_model(**kw)
    before = [n.get_type_name() for n in model.get_ordered_ops()]
    assert argmax_innermost(model) == 0, why
    assert [n.get_type_name() for n in model.get_ordered_ops()] == before


def test_the_flows_openvino_build_applies_it_and_says_so():
    from operators.backends import ov
    from tests.flow_fixtures import tiny_onnx
    r = ov.build(_argmax_onnx(), key=KEY, threads=1)
    assert "arg-max on the innermost axis" in r.how
    assert "arg-max" not in ov.build(_argmax_onnx(), key=KEY, threads=1, rewrite=False).how
    assert "arg-max" not in ov.build(tiny_onnx(), key=KEY, threads=1).how     # nothing to move


def test_a_rewrite_that_fails_compiles_the_model_as_read(monkeypatch):
    from operators.backends import ov

    def broken(model):
        for node in model.get_ordered_ops():       # half done, then an error: the model is dirty
            if node.get_type_name() == "TopK":
                import openvino.opset11 as ops
                node.output(1).replace(ops.convert(ops.constant(np.zeros((1, 1, 24, 40), np.int64)), "i64").output(0))
        raise RuntimeError("an OpenVINO release that renamed something")
    monkeypatch.setattr(ov, "argmax_innermost", broken)
    r = ov.build(_argmax_onnx(), key=KEY, threads=1)
    assert "arg-max" not in r.how
    x = np.random.default_rng(1).random((1, 13, 24, 40), dtype=np.float32)
    assert np.array_equal(r.run(x), x.argmax(axis=1).astype(np.uint8))
