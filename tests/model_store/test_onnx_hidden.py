"""A model that hides part of itself from the checks: a protobuf field said twice (runtimes
merge the copies), external data or a custom domain deep in subgraphs, functions or Constant
nodes, and sizes past the limits. Each is refused in one line at pack, at verify, at load and
when the flow loads it; a hidden external file never reaches a mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf.internal.encoder import _VarintBytes
from onnx import TensorProto, helper, numpy_helper

from tests import byo_models as bm
import model_store as ms
from tests.flow_fixtures import FakeRegistry, env_for
from model_store import errors, graph
from model_store.cli import main
from operators.config import load_config
from operators.model_reader import ModelRefused
from tests.model_store.test_byo_models import IMAGENET, _card, _refused, pack

SIZE = (8, 8)
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "carla-enet.vsb"
KEY_FILE = "anchorer-key.json"
SECRET = bytes(i % 13 for i in range(64))  # class ids 0..12: a mask would show them as they are


def _entry(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field: what a second copy of a message field looks like."""
    return _VarintBytes(number << 3 | 2) + _VarintBytes(len(payload)) + payload


def _external(name: str, dtype=TensorProto.UINT8, dims=(64,)) -> onnx.TensorProto:
    t = onnx.TensorProto(name=name, data_type=dtype, dims=list(dims), data_location=TensorProto.EXTERNAL)
    entry = t.external_data.add()
    entry.key, entry.value = "location", KEY_FILE
    return t


def _value(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _honest_graph() -> onnx.GraphProto:
    """What a one-copy reader sees: image in, class map out (the output is written by the hidden copy)."""
    return helper.make_graph([helper.make_node("Conv", ["input", "W", "B"], ["l"])], "byo",
                             [_value("input", TensorProto.FLOAT, (1, 3, *SIZE))],
                             [_value("classes", TensorProto.INT64, (1, *SIZE))], bm._conv_head(13))


def _hidden_graph(custom: bool = False) -> onnx.GraphProto:
    """The copy runtimes merge in: the key file's bytes, reshaped into the class map."""
    g = onnx.GraphProto()
    if custom:
        g.node.append(helper.make_node("Leak", ["l"], ["classes"], domain="com.example.ops"))
        return g
    g.initializer.extend([_external("K"), numpy_helper.from_array(np.array([1, *SIZE], np.int64), "S")])
    g.node.extend([helper.make_node("Cast", ["K"], ["k64"], to=TensorProto.INT64),
                   helper.make_node("Reshape", ["k64", "S"], ["classes"])])
    return g


def hidden_twice(custom: bool = False) -> bytes:
    """A ModelProto whose `graph` field appears twice: the hidden copy first, the honest one last."""
    head = helper.make_model(onnx.GraphProto(), opset_imports=[helper.make_opsetid("", 17)]
                             + ([helper.make_opsetid("com.example.ops", 1)] if custom else []))
    head.ir_version = 8
    head.ClearField("graph")
    return head.SerializeToString() + _entry(7, _hidden_graph(custom).SerializeToString()) \
        + _entry(7, _honest_graph().SerializeToString())


def _model(nodes, inits=(), opset=17, outputs=None, functions=()) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "byo", [_value("input", TensorProto.FLOAT, (1, 3, *SIZE))],
                          outputs or [_value("classes", TensorProto.INT64, (1, *SIZE))], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], functions=list(functions))
    m.ir_version = 8
    return m


def _if(then_graph: onnx.GraphProto) -> onnx.ModelProto:
    """An If whose branch is `then_graph`, on a constant condition."""
    other = helper.make_graph([helper.make_node("ArgMax", ["l"], ["o"], axis=1, keepdims=0)], "else", [],
                              [_value("o", TensorProto.INT64, (1, *SIZE))])
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["l"]),
             helper.make_node("If", ["cond"], ["classes"], then_branch=then_graph, else_branch=other)]
    return _model(nodes, bm._conv_head(13) + [numpy_helper.from_array(np.array(True), "cond")])


def external_in_if() -> bytes:
    then = helper.make_graph([helper.make_node("Cast", ["K"], ["k64"], to=TensorProto.INT64),
                              helper.make_node("Reshape", ["k64", "S"], ["o"])], "then", [],
                             [_value("o", TensorProto.INT64, (1, *SIZE))],
                             [_external("K"), numpy_helper.from_array(np.array([1, *SIZE], np.int64), "S")])
    return _if(then).SerializeToString()


def external_in_constant() -> bytes:
    nodes = [helper.make_node("Constant", [], ["K"], value=_external("v")),
             helper.make_node("Cast", ["K"], ["k64"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["k64", "S"], ["classes"])]
    return _model(nodes, [numpy_helper.from_array(np.array([1, *SIZE], np.int64), "S")]).SerializeToString()


def external_sparse() -> bytes:
    m = onnx.load_from_string(bm.int64_class_map(size=SIZE))
    sp = m.graph.sparse_initializer.add()
    sp.values.CopyFrom(_external("sv", dims=(1,)))
    sp.indices.CopyFrom(numpy_helper.from_array(np.array([0], np.int64), "si"))
    sp.dims.extend([64])
    return m.SerializeToString()


def custom_in_function() -> bytes:
    fn = helper.make_function("local.fns", "Pick", ["x"], ["y"], [helper.make_node("Leak", ["x"], ["y"], domain="com.example.ops")],
                              [helper.make_opsetid("", 17), helper.make_opsetid("com.example.ops", 1)])
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["l"]), helper.make_node("Pick", ["l"], ["classes"], domain="local.fns")]
    return _model(nodes, bm._conv_head(13), functions=[fn]).SerializeToString()


def opset_twice() -> bytes:
    m = onnx.load_from_string(bm.int64_class_map(size=SIZE))
    m.opset_import.add(domain="", version=11)  # a repeated field: parsers keep both entries
    return m.SerializeToString()


def subgraph_field_twice() -> bytes:
    """The If's `then_branch` attribute carries its `g` twice: the hidden copy reads the key file."""
    then_hidden = helper.make_graph([helper.make_node("Cast", ["K"], ["k64"], to=TensorProto.INT64),
                                     helper.make_node("Reshape", ["k64", "S"], ["o"])], "then", [], [],
                                    [_external("K"), numpy_helper.from_array(np.array([1, *SIZE], np.int64), "S")])
    then_honest = helper.make_graph([helper.make_node("ArgMax", ["l"], ["o"], axis=1, keepdims=0)], "then", [],
                                    [_value("o", TensorProto.INT64, (1, *SIZE))])
    m = _if(then_honest)
    node = m.graph.node.pop()  # the If, rebuilt below with the doubled attribute
    then_attr = next(a for a in node.attribute if a.name == "then_branch")
    then_attr.ClearField("g")
    attr = then_attr.SerializeToString() + _entry(6, then_hidden.SerializeToString()) + _entry(6, then_honest.SerializeToString())
    others = [a for a in node.attribute if a.name != "then_branch"]
    node.ClearField("attribute")
    node.attribute.extend(others)
    node_bytes = node.SerializeToString() + _entry(5, attr)
    graph_bytes = m.graph.SerializeToString() + _entry(1, node_bytes)
    m.ClearField("graph")
    return m.SerializeToString() + _entry(7, graph_bytes)


# --- the duplicated graph: pack, verify, load, the flow ----------------------------------------------


def _write_unchecked(path, onnx_bytes: bytes) -> str:
    """A blob written by model_store's writer directly, as a tool that skips pack's checks would."""
    return ms.write(str(path), onnx_bytes, _card(bm.int64_class_map(size=SIZE)))


def test_a_graph_said_twice_is_refused_at_pack_before_any_runtime_sees_it(tmp_path, capsys, monkeypatch):
    (tmp_path / KEY_FILE).write_bytes(SECRET)
    built = []
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: built.append(1))
    status, _, err = pack(tmp_path, hidden_twice(), *IMAGENET, capsys=capsys)
    assert status == 1 and built == []
    _refused(err, tmp_path / "byo.onnx", "ambiguous", "ModelProto.graph appears more than once")
    assert not (tmp_path / "byo.vsb").exists()


def test_a_graph_said_twice_is_refused_at_verify_and_at_load(tmp_path, capsys):
    blob = tmp_path / "hidden.vsb"
    key = _write_unchecked(blob, hidden_twice())
    assert main(["verify", str(blob)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "ambiguous" in err and str(blob) in err, err
    with pytest.raises(errors.Ambiguous, match=r"hidden\.vsb: model 'byo': ambiguous: ModelProto\.graph"):
        ms.load(blob, key)


def test_the_merged_graph_is_what_is_checked(monkeypatch):
    """Without the wire scan the walker still sees both copies, as a runtime does."""
    monkeypatch.setattr(graph.onnx_wire, "ambiguity", lambda b: None)
    with pytest.raises(errors.ExternalData, match=f"tensor 'K' keeps its data in an external file \\('{KEY_FILE}'\\)"):
        ms.read_graph(hidden_twice())
    with pytest.raises(errors.CustomOps, match="com.example.ops"):
        ms.read_graph(hidden_twice(custom=True))


def test_the_flow_refuses_it_and_no_mask_holds_the_key_file(tmp_path, monkeypatch):
    """The runtime would read the key file from its working folder and score it as every mask."""
    from dataflows.segment import build_flow
    monkeypatch.chdir(tmp_path)
    (tmp_path / KEY_FILE).write_bytes(SECRET)
    blob = tmp_path / "hidden.vsb"
    key = _write_unchecked(blob, hidden_twice())
    reg = FakeRegistry()
    reg.register(key, "byo", blob.as_uri())
    frames = tmp_path / "frames"
    frames.mkdir()
    import cv2
    for i, f in enumerate(bm.frames(2, size=(16, 16))):
        cv2.imwrite(str(frames / f"{i}.png"), f)
    cfg = load_config(env_for(tmp_path, f"dir:{frames}", blob, VERISEG_BATCH=1, VERISEG_BACKEND="onnxruntime"))
    with pytest.raises(ModelRefused) as refused:
        build_flow(cfg, registry=reg)
    assert len(str(refused.value).splitlines()) == 1 and "ambiguous" in str(refused.value)
    masks = [p for p in (tmp_path / "out").rglob("*.png")] if (tmp_path / "out").exists() else []
    assert all(SECRET not in cv2.imread(str(p), cv2.IMREAD_UNCHANGED).tobytes() for p in masks)


# --- the same hidden in other places -------------------------------------------------------------------

HIDDEN = [
    ("custom domain in the hidden copy", lambda: hidden_twice(custom=True), errors.Ambiguous, "ModelProto.graph appears more than once"),
    ("external data in an If branch", external_in_if, errors.ExternalData, "tensor 'K'"),
    ("external data in a Constant node", external_in_constant, errors.ExternalData, "tensor 'v'"),
    ("external data in a sparse initializer", external_sparse, errors.ExternalData, "tensor 'sv'"),
    ("custom domain in a function body", custom_in_function, errors.CustomOps, "com.example.ops"),
    ("opset_import names a domain twice", opset_twice, errors.Ambiguous, "opset_import names domain '' twice"),
    ("a subgraph's field said twice", subgraph_field_twice, errors.Ambiguous, "then_branch|attribute\\[\\]\\.g appears more than once"),
]


@pytest.mark.parametrize("make,kind,says", [h[1:] for h in HIDDEN], ids=[h[0] for h in HIDDEN])
def test_hidden_anywhere_is_refused_at_pack_verify_and_load(make, kind, says, tmp_path, capsys):
    onnx_bytes = make()
    with pytest.raises(kind, match=says):
        ms.read_graph(onnx_bytes)
    status, _, err = pack(tmp_path, onnx_bytes, *IMAGENET, capsys=capsys)
    assert status == 1
    _refused(err, tmp_path / "byo.onnx")
    blob = tmp_path / "b.vsb"
    key = _write_unchecked(blob, onnx_bytes)
    assert main(["verify", str(blob)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(kind):
        ms.load(blob, key)


def test_a_subgraph_said_twice_is_merged_as_a_runtime_merges_it(monkeypatch):
    monkeypatch.setattr(graph.onnx_wire, "ambiguity", lambda b: None)
    with pytest.raises(errors.ExternalData, match="tensor 'K'"):
        ms.read_graph(subgraph_field_twice())


def test_a_field_the_schema_does_not_have_is_refused():
    extra = bm.int64_class_map(size=SIZE) + _entry(999, b"later")
    with pytest.raises(errors.NotOnnx, match="ModelProto has field 999, which the ONNX schema"):
        ms.read_graph(extra)


def test_models_saying_each_thing_once_still_pass():
    assert graph.onnx_wire.ambiguity(bm.int64_class_map()) is None
    assert graph.onnx_wire.ambiguity(bm.dynamic_size()) is None
    m = _if(helper.make_graph([helper.make_node("ArgMax", ["l"], ["o"], axis=1, keepdims=0)], "then", [],
                              [_value("o", TensorProto.INT64, (1, *SIZE))]))
    assert ms.read_graph(m.SerializeToString()).inputs[0].name == "input"


# --- size limits ---------------------------------------------------------------------------------------


def _shaped(op: str, inputs, value, dtype=np.int64) -> bytes:
    """`op` fed a constant (its shape, repeats, sizes or scales), then reduced to a class map."""
    const = numpy_helper.from_array(np.array(value, dtype), "c")
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["l"]), helper.make_node(op, inputs, ["big"]),
             helper.make_node("ArgMax", ["l"], ["classes"], axis=1, keepdims=0)]
    return _model(nodes, bm._conv_head(13) + [const], outputs=[_value("classes", TensorProto.INT64, (1, *SIZE)),
                                                                _value("big", TensorProto.FLOAT, ())]).SerializeToString()


BIG = [
    ("ConstantOfShape", lambda: _shaped("ConstantOfShape", ["c"], [200000, 200000])),
    ("Expand", lambda: _shaped("Expand", ["l", "c"], [1, 13, 200000, 200000])),
    ("Reshape", lambda: _shaped("Reshape", ["l", "c"], [-1, 200000, 200000])),
    ("Tile", lambda: _shaped("Tile", ["l", "c"], [1, 1, 100000, 100000])),
    ("Resize sizes", lambda: _shaped("Resize", ["l", "", "", "c"], [1, 13, 100000, 100000])),
    ("Resize scales", lambda: _shaped("Resize", ["l", "", "c"], [1, 1, 1e5, 1e5], np.float32)),
]


@pytest.mark.parametrize("make", [b[1] for b in BIG], ids=[b[0] for b in BIG])
def test_a_tensor_shaped_past_the_limit_is_refused_naming_node_and_limit(make, tmp_path, capsys):
    with pytest.raises(errors.OverLimit, match=r"node 'big'.*over the limit of 268435456 elements; raise it with VERISEG_MAX_TENSOR_ELEMENTS"):
        ms.read_graph(make())
    status, _, err = pack(tmp_path, make(), *IMAGENET, capsys=capsys)
    assert status == 1
    _refused(err, tmp_path / "byo.onnx", "VERISEG_MAX_TENSOR_ELEMENTS", "--max-tensor-elements")


def test_within_the_tensor_limit_passes_and_the_limit_is_adjustable():
    small = _shaped("ConstantOfShape", ["c"], [64, 64])
    ms.read_graph(small)
    with pytest.raises(errors.OverLimit):
        ms.read_graph(small, limits=ms.GraphLimits(max_tensor_elements=1000))


def test_a_huge_declared_output_or_intermediate_is_refused():
    m = onnx.load_from_string(bm.int64_class_map(size=SIZE))
    m.graph.value_info.append(_value("l", TensorProto.FLOAT, (1, 500000000)))
    with pytest.raises(errors.OverLimit, match=r"tensor declared 'l' float32\[1,500000000\].*VERISEG_MAX_TENSOR_ELEMENTS"):
        ms.read_graph(m.SerializeToString())


def test_a_shape_from_an_outer_constant_inside_an_if_is_bounded():
    then = helper.make_graph([helper.make_node("ConstantOfShape", ["c"], ["o"])], "then", [], [_value("o", TensorProto.FLOAT, ())])
    m = _if(then)
    m.graph.initializer.append(numpy_helper.from_array(np.array([200000, 200000], np.int64), "c"))
    with pytest.raises(errors.OverLimit, match="ConstantOfShape"):
        ms.read_graph(m.SerializeToString())


def test_a_huge_declared_input_is_refused_at_pack_and_at_load(tmp_path, capsys):
    nodes = [helper.make_node("ReduceMax", ["input"], ["classes"], axes=[3], keepdims=0)]
    g = helper.make_graph(nodes, "byo", [_value("input", TensorProto.UINT8, (1, 40000, 40000, 3))],
                          [_value("classes", TensorProto.UINT8, (1, 40000, 40000))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    # its output is past the tensor limit too: raised here, so the input's own limit shows
    wide = ms.GraphLimits(max_tensor_elements=10**10)
    status, _, err = pack(tmp_path, m.SerializeToString(), "--max-tensor-elements", str(wide.max_tensor_elements), capsys=capsys)
    assert status == 1
    _refused(err, tmp_path / "byo.onnx", "4800000000 bytes", "VERISEG_MAX_INPUT_BYTES", "--max-input-bytes")
    card = _card(bm.int64_class_map(size=SIZE), inputs=(ms.TensorSpec("input", "uint8", (1, 40000, 40000, 3), "NHWC", "RGB"),),
                 outputs=(ms.TensorSpec("classes", "uint8", (1, 40000, 40000), "NHW"),), preprocessing=ms.Preprocessing())
    blob = tmp_path / "wide.vsb"
    key = ms.write(str(blob), m.SerializeToString(), card)
    with pytest.raises(errors.OverLimit, match="what each frame becomes"):
        ms.load(blob, key, limits=wide)
    with pytest.raises(errors.OverLimit, match="tensor declared 'classes' uint8\\[1,40000,40000\\]"):
        ms.load(blob, key)


def test_stored_tensors_past_the_limit_are_refused():
    onnx_bytes = bm.int64_class_map()
    ms.read_graph(onnx_bytes)
    with pytest.raises(errors.OverLimit, match="tensors stored in the graph.*VERISEG_MAX_INITIALIZER_BYTES"):
        ms.read_graph(onnx_bytes, limits=ms.GraphLimits(max_initializer_bytes=100))


def test_the_flow_passes_its_configured_limits_to_load(tmp_path):
    from dataflows.segment import build_flow
    from tests.flow_fixtures import make_blob
    blob = tmp_path / "tiny.vsb"
    key = make_blob(blob)
    reg = FakeRegistry()
    reg.register(key, "tiny", blob.as_uri())
    frames = tmp_path / "frames"
    frames.mkdir()
    cfg = load_config(env_for(tmp_path, f"dir:{frames}", blob, VERISEG_MAX_INPUT_BYTES="1000"))
    assert cfg.graph_limits == ms.GraphLimits(1000, ms.DEFAULT_LIMITS.max_initializer_bytes, ms.DEFAULT_LIMITS.max_tensor_elements)
    with pytest.raises(ModelRefused) as refused:
        build_flow(cfg, registry=reg)
    assert "VERISEG_MAX_INPUT_BYTES" in str(refused.value) and len(str(refused.value).splitlines()) == 1


# --- the runtimes: a graph with no input left is one line, not an IndexError ----------------------------


@pytest.mark.parametrize("backend", ["ort", "ov"])
def test_a_graph_whose_input_is_shadowed_is_a_score_error_on_every_backend(backend):
    from operators.backends import ort as ort_backend, ov as ov_backend
    from operators.sessions import ScoreError
    mod = {"ort": ort_backend, "ov": ov_backend}[backend]
    if backend == "ov" and not mod.available():
        pytest.skip("OpenVINO is not installed")
    m = onnx.load_from_string(bm.int64_class_map(size=SIZE))
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 3, *SIZE), np.float32), "input"))
    with pytest.raises(ScoreError, match="0 inputs"):
        mod.build(m.SerializeToString(), key="c" * 64)
    assert ms.read_graph(m.SerializeToString()).inputs == ()  # and so refused at pack and load
    with pytest.raises(errors.TooManyInputs, match="0 inputs"):
        ms.check_graph(_card(bm.int64_class_map(size=SIZE)), m.SerializeToString())


# --- the runtime's own memory: ONNX Runtime's CPU arena ---------------------------------------------


def test_the_ort_cpu_arena_cap_fails_a_run_that_needs_more_instead_of_allocating_it():
    """A size computed at run time (here from the input) is past every static limit; the arena
    cap (VERISEG_MAX_ARENA_BYTES) is what stops it."""
    from operators.backends import ort as ort_backend
    from operators.context import FlowContext
    nodes = [helper.make_node("ConstantOfShape", ["n"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0)]
    g = helper.make_graph(nodes, "g", [_value("n", TensorProto.INT64, (3,))], [_value("y", TensorProto.FLOAT, ())])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    capped = ort_backend.build(m.SerializeToString(), key="c" * 64, providers="cpu", arena_bytes=64 << 20)
    assert capped.run(np.array([4, 1024, 1024], np.int64)) == 4 << 20  # 16 MiB fits
    with pytest.raises(Exception, match="Available memory of"):
        capped.run(np.array([64, 1024, 1024], np.int64))  # 256 MiB does not
    env = {"VERISEG_SOURCE": f"dir:{Path(__file__).parent}", "VERISEG_MODEL": str(SHIPPED)}
    assert FlowContext(config=load_config({**env, "VERISEG_MAX_ARENA_BYTES": str(64 << 20)})).sessions.options["arena_bytes"] == 64 << 20
    ort_backend._cpu_arena(load_config(env).max_arena_bytes)  # the default cap again, for the tests after this one
