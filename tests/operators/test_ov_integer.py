"""operators.backends.ov_integer: a graph that computes integers from the frame is never
scored on OpenVINO, whose integer arithmetic is not ONNX's; shape arithmetic, float
arithmetic and the shipped blobs are left alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from operators.backends.ov_integer import integer_arithmetic_on_frames
from tests.conftest import need
from tests.flow_fixtures import tiny_onnx

REPO = Path(__file__).resolve().parents[2]
KEY = "d" * 64
U8, I64, F32 = 2, 7, 1   # TensorProto element types


def _graph(nodes, inits=(), out_type=U8, out_shape=(1, 8, 8, 3), functions=()) -> bytes:
    import onnx
    from onnx import helper
    g = helper.make_graph(list(nodes), "g", [helper.make_tensor_value_info("image", U8, [1, 8, 8, 3])],
                          [helper.make_tensor_value_info("y", out_type, list(out_shape))], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                          functions=list(functions))
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


def _wrapping_add() -> bytes:
    """image + 200 in uint8: ONNX wraps around (100 + 200 = 44), OpenVINO's CPU saturates (255)."""
    from onnx import helper
    return _graph([helper.make_node("Add", ["image", "c"], ["y"], name="plus200")],
                  [helper.make_tensor("c", U8, [], [200])])


def test_integer_arithmetic_on_the_frame_is_found_with_its_node_and_type():
    from onnx import helper
    assert integer_arithmetic_on_frames(_wrapping_add()) == ['Add "plus200" (uint8)']
    # through a Cast and another op: still the frame's values, now int64
    div = _graph([helper.make_node("Cast", ["image"], ["i"], to=I64),
                  helper.make_node("Div", ["i", "d"], ["q"], name="by20"),
                  helper.make_node("Cast", ["q"], ["y"], to=U8)],
                 [helper.make_tensor("d", I64, [], [20])])
    assert integer_arithmetic_on_frames(div) == ['Div "by20" (int64)']


def test_an_interpolating_resize_of_the_frames_integers_is_found_and_a_nearest_one_is_not():
    """A linear Resize of uint8 values: OpenVINO rounds where ONNX Runtime truncates."""
    from onnx import helper
    for mode, found in (("linear", ['Resize "resize" (uint8)']), ("nearest", [])):
        g = _graph([helper.make_node("Resize", ["image", "", "sc"], ["y"], name="resize", mode=mode)],
                   [helper.make_tensor("sc", F32, [4], [1, 2, 2, 1])], out_shape=(1, 16, 16, 3))
        assert integer_arithmetic_on_frames(g) == found, mode


def test_shape_arithmetic_and_float_arithmetic_are_not_refused():
    """Exporters compute shapes with integers (Shape -> Gather -> Mul -> Reshape): small
    numbers that depend on no pixel. The float per-pixel function of the flow's tests and
    integer arithmetic on constants alone are not the frame's either."""
    from onnx import helper
    shape = _graph([helper.make_node("Shape", ["image"], ["s"]),
                    helper.make_node("Gather", ["s", "i1"], ["h"]),
                    helper.make_node("Mul", ["h", "two"], ["h2"], name="shape_mul"),
                    helper.make_node("Add", ["two", "two"], ["four"], name="const_add"),
                    helper.make_node("Div", ["h2", "four"], ["h2d"]),
                    helper.make_node("Concat", ["one", "h2d", "m1"], ["ns"], axis=0),
                    helper.make_node("Reshape", ["image", "ns"], ["y"])],
                   [helper.make_tensor("i1", I64, [1], [1]), helper.make_tensor("two", I64, [1], [2]),
                    helper.make_tensor("one", I64, [1], [1]), helper.make_tensor("m1", I64, [1], [-1])],
                   out_shape=(1, 4, 48))
    assert integer_arithmetic_on_frames(shape) == []
    assert integer_arithmetic_on_frames(tiny_onnx(shift=3)) == []


def test_a_subgraph_or_a_local_function_that_computes_integers_from_the_frame_is_found():
    from onnx import helper
    # an If whose branch adds to the outer image (an implicit input of the body)
    then = helper.make_graph([helper.make_node("Add", ["image", "c"], ["t"], name="in_branch")], "then", [],
                             [helper.make_tensor_value_info("t", U8, [1, 8, 8, 3])])
    other = helper.make_graph([helper.make_node("Identity", ["image"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", U8, [1, 8, 8, 3])])
    branchy = _graph([helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
                     [helper.make_tensor("c", U8, [], [200]), helper.make_tensor("cond", 9, [], [True])])
    assert integer_arithmetic_on_frames(branchy) == ['Add "in_branch" (uint8)']
    # a model-local function: inlined before it is judged
    fn = helper.make_function("local", "Plus", ["a", "b"], ["o"],
                              [helper.make_node("Add", ["a", "b"], ["o"], name="in_function")],
                              opset_imports=[helper.make_opsetid("", 17)])
    called = _graph([helper.make_node("Plus", ["image", "c"], ["y"], domain="local")],
                    [helper.make_tensor("c", U8, [], [200])], functions=[fn])
    found = integer_arithmetic_on_frames(called)
    assert len(found) == 1 and found[0].startswith("Add ") and found[0].endswith("(uint8)")


def test_a_sparse_initializer_neither_hides_the_frame_nor_stops_the_check():
    """A sparse initializer (a constant stored as indices and values) beside the graph: the
    frame is still the one input fed, and its integer Add is still found."""
    import onnx
    from onnx import helper
    sparse = helper.make_sparse_tensor(helper.make_tensor("c", U8, [1], [200]),
                                       helper.make_tensor("c_indices", I64, [1], [0]), [1])
    g = helper.make_graph([helper.make_node("Add", ["image", "c"], ["y"], name="plus_sparse")], "g",
                          [helper.make_tensor_value_info("image", U8, [1, 8, 8, 3])],
                          [helper.make_tensor_value_info("y", U8, [1, 8, 8, 3])], sparse_initializer=[sparse])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    assert integer_arithmetic_on_frames(m.SerializeToString()) == ['Add "plus_sparse" (uint8)']


def test_a_graph_the_check_cannot_judge_is_not_compiled_on_openvino(monkeypatch):
    """Fail closed: an error inside the check refuses OpenVINO (auto then takes ONNX Runtime);
    only bytes that are no protobuf are left to OpenVINO's own refusal."""
    pytest.importorskip("openvino")
    from operators.backends import ScoreError, ov

    def broken(onnx, **kw):
        raise RuntimeError("a graph the walk did not foresee")
    monkeypatch.setattr(ov, "integer_arithmetic_on_frames", broken)
    with pytest.raises(ScoreError, match="cannot tell whether OpenVINO computes this graph") as ei:
        ov.build(tiny_onnx(), key=KEY, threads=1)
    assert "VERISEG_BACKEND=onnxruntime" in str(ei.value) and "\n" not in str(ei.value)


def test_arithmetic_of_a_type_nobody_can_infer_counts_as_integer():
    """ONNX Runtime's contrib operators are allowed in a blob, and ONNX's shape inference
    does not know their output types: arithmetic on such values from the frame could be
    integer arithmetic, so it is not left to OpenVINO."""
    import onnx
    from onnx import helper
    g = helper.make_graph([helper.make_node("Gelu", ["image"], ["u"], domain="com.microsoft"),
                           helper.make_node("Add", ["u", "u"], ["y"], name="of_unknown")], "g",
                          [helper.make_tensor_value_info("image", U8, [1, 8, 8, 3])],
                          [helper.make_tensor_value_info("y", 0, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    assert integer_arithmetic_on_frames(m.SerializeToString()) == ['Add "of_unknown" (type unknown)']


def test_the_shipped_blobs_compute_in_float_and_stay_on_openvino():
    import model_store
    for name in ("carla-enet.vsb", "carla-enet-int8.vsb"):
        blob = REPO / "models" / name
        need(blob.exists(), f"models/{name}")
        _, onnx = model_store.load(str(blob), expected_key=model_store.verify(str(blob)))
        assert integer_arithmetic_on_frames(onnx) == [], name


def test_such_a_model_is_scored_as_onnx_specifies_whichever_backend_auto_takes(monkeypatch):
    """The mutation this guards: without the refusal, auto compiles it on OpenVINO and the
    CPU plugin's saturating uint8 Add gives 255 where ONNX gives (x + 200) mod 256."""
    pytest.importorskip("openvino")
    from operators.backends import ScoreError, compile_verified, ort
    monkeypatch.setattr(ort, "gpu_provider_available", lambda providers: False)
    onnx = _wrapping_add()
    x = np.arange(192, dtype=np.uint8).reshape(1, 8, 8, 3)
    r, why = compile_verified(onnx, key=KEY, backend="auto", threads=1)
    assert r.backend == "onnxruntime"
    assert "OpenVINO refused this model" in why and 'Add "plus200" (uint8)' in why and "\n" not in why
    assert (r.run(x) == (x.astype(np.int64) + 200) % 256).all()
    r.close()
    with pytest.raises(ScoreError) as ei:
        compile_verified(onnx, key=KEY, backend="openvino", threads=1)
    said = str(ei.value)
    assert KEY[:12] in said and "VERISEG_BACKEND=onnxruntime" in said and "\n" not in said
