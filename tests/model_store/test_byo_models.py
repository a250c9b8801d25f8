"""Bring your own model (model_store side): foreign graphs packed with the documented
options, their cards asserted, the reference pre/postprocessing checked against the same model
run directly in ONNX Runtime, and what cannot be driven refused at pack and at verify/load."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from tests import byo_models as bm
import model_store as ms
from model_store import errors
from model_store.cli import main

CREATED = "2026-11-30T12:00:00Z"
IMAGENET = ["--input-scale", "1/255", "--mean", *map(str, bm.IMAGENET_MEAN), "--std", *map(str, bm.IMAGENET_STD)]
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "carla-enet.vsb"
SHIPPED_KEY = json.loads((SHIPPED.parent / "carla-enet.json").read_text())["blob"]["key"]


def pack(tmp_path, onnx_bytes: bytes, *options: str, name: str = "byo", capsys=None):
    """`python -m model_store pack` in-process; returns (exit status, key or None, stderr)."""
    model = tmp_path / f"{name}.onnx"
    if not model.exists():
        model.write_bytes(onnx_bytes)
    out = tmp_path / f"{name}.vsb"
    status = main(["pack", str(model), "--name", name, "--description", "test", "--created", CREATED, *options, "-o", str(out)])
    captured = capsys.readouterr() if capsys else None
    key = captured.out.strip().splitlines()[-1] if captured and status == 0 else None
    return status, key, (captured.err if captured else "")


def session(onnx_bytes: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


def documented_input(frame_bgr, size, *, layout="NCHW", dtype=np.float32, scale=1 / 255, mean=bm.IMAGENET_MEAN,
                     std=bm.IMAGENET_STD, colour="RGB"):
    """The preprocessing docs/models.md documents, written out independently of model_store.drive."""
    h, w = size
    h0, w0 = frame_bgr.shape[:2]
    area = h0 > h and w0 > w and h0 >= 2 * h  # shrinking at least 2x: area averaging, else bilinear
    img = cv2.resize(frame_bgr, (w, h), interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)
    if colour == "RGB":
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    x = img.astype(np.float32) * np.float32(scale)
    if mean is not None:
        x = (x - np.float32(mean)) / np.float32(std)
    if layout == "NCHW":
        x = np.transpose(x, (2, 0, 1))
    return x[None].astype(dtype)


def check_against_ort(blob: Path, key: str, expected_input, class_axis=1):
    """Reference pre/postprocessing from the loaded blob == the model run directly in ORT."""
    card, onnx_bytes = ms.load(blob, key)
    spec = card.drive_spec()
    sess = session(onnx_bytes)
    for frame in bm.frames():
        x = ms.preprocess(frame, spec)
        direct = expected_input(frame)
        assert x.dtype == direct.dtype and x.shape == direct.shape
        np.testing.assert_allclose(x.astype(np.float32), direct.astype(np.float32), rtol=1e-5, atol=1e-5)
        ours = ms.postprocess(sess.run([spec.output_name], {spec.input_name: x})[0], spec)
        y = sess.run(None, {sess.get_inputs()[0].name: direct})[0]
        theirs = y if y.dtype.kind in "iu" else y.argmax(axis=class_axis)
        assert ours.dtype == np.uint8 and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs.astype(np.uint8))
        # the input tensors are compared above, so the maps being equal is not luck of a constant map
    return card, spec


# --- real architectures, exported from torch ------------------------------------------------------


@pytest.fixture(scope="module")
def torch_models():
    pytest.importorskip("torch")
    return {arch: bm.export_torch(arch) for arch in ("lraspp_mobilenetv3", "deeplabv3", "unet")}


@pytest.mark.parametrize("arch,algorithm", [("lraspp_mobilenetv3", "LRASPP-MobileNetV3"), ("deeplabv3", "DeepLabV3"), ("unet", "U-Net")])
def test_torch_architecture_packs_with_a_true_card_and_scores_as_ort(arch, algorithm, torch_models, tmp_path, capsys):
    status, key, err = pack(tmp_path, torch_models[arch], "--algorithm", algorithm, *IMAGENET, capsys=capsys)
    assert status == 0, err
    card = ms.read_header(tmp_path / "byo.vsb")
    assert card.algorithm == algorithm
    assert card.inputs[0] == ms.TensorSpec("input", "float32", (1, 3, 64, 96), "NCHW", "RGB")
    assert card.outputs[0] == ms.TensorSpec("logits", "float32", (1, 13, 64, 96), "NCHW", None)
    assert card.output_kind == "logits" and card.classes == ms.CARLA_CLASSES
    assert card.preprocessing == ms.Preprocessing(scale=1 / 255, mean=bm.IMAGENET_MEAN, std=bm.IMAGENET_STD)
    assert card.scoring_function == ("float32 NCHW RGB, x/255 then (x - [0.485 0.456 0.406])/[0.229 0.224 0.225], "
                                     "stretch-resize to 64x96 -> logits float32 [N,13,H,W] -> argmax over axis 1")
    _, spec = check_against_ort(tmp_path / "byo.vsb", key, lambda f: documented_input(f, (64, 96)))
    assert (spec.layout, spec.input_dtype, spec.size, spec.class_axis, spec.num_classes) == ("NCHW", "float32", (64, 96), 1, 13)


def test_a_foreign_graph_is_never_called_enet(torch_models, tmp_path, capsys):
    status, _, err = pack(tmp_path, torch_models["unet"], *IMAGENET, capsys=capsys)
    assert status == 0, err
    assert ms.read_header(tmp_path / "byo.vsb").algorithm == "unspecified"


def test_float_input_without_its_value_range_is_refused(torch_models, tmp_path, capsys):
    status, _, err = pack(tmp_path, torch_models["unet"], capsys=capsys)
    assert status == 1 and len(err.strip().splitlines()) == 1 and "--input-scale" in err


# --- hand-built graphs ----------------------------------------------------------------------------


def test_nhwc_float_with_softmax(tmp_path, capsys):
    status, key, err = pack(tmp_path, bm.nhwc_softmax(), "--input-scale", "1/255", "--colour", "BGR", capsys=capsys)
    assert status == 0, err
    card = ms.read_header(tmp_path / "byo.vsb")
    assert card.inputs[0].layout == "NHWC" and card.inputs[0].color_order == "BGR"
    assert card.outputs[0].layout == "NHWC" and card.output_kind == "probabilities"
    assert card.scoring_function.endswith("probabilities float32 [N,H,W,13] -> argmax over axis 3")
    _, spec = check_against_ort(tmp_path / "byo.vsb", key, lambda f: documented_input(
        f, (64, 96), layout="NHWC", mean=None, colour="BGR"), class_axis=3)
    assert spec.class_axis == 3 and spec.colour == "BGR"


def test_dynamic_size_input_resized_to_size_or_kept(tmp_path, capsys):
    status, key, err = pack(tmp_path, bm.dynamic_size(), *IMAGENET, "--size", "48", "64", capsys=capsys)
    assert status == 0, err
    card = ms.read_header(tmp_path / "byo.vsb")
    assert card.inputs[0].shape == ("batch", 3, "height", "width") and card.preprocessing.size == (48, 64)
    _, spec = check_against_ort(tmp_path / "byo.vsb", key, lambda f: documented_input(f, (48, 64)))
    assert spec.dynamic_size and spec.size == (48, 64) and spec.batch is None
    # without --size the frame keeps its own size
    status, key, err = pack(tmp_path, bm.dynamic_size(), *IMAGENET, name="native", capsys=capsys)
    assert status == 0, err
    spec = ms.read_header(tmp_path / "native.vsb").drive_spec()
    assert spec.size is None and "the frame's own size" in ms.read_header(tmp_path / "native.vsb").scoring_function
    frame = bm.frames(1)[0]
    assert ms.preprocess(frame, spec).shape == (1, 3) + frame.shape[:2]


def test_letterbox_keeps_aspect_and_postprocess_undoes_it(tmp_path, capsys):
    status, key, err = pack(tmp_path, bm.dynamic_size(), *IMAGENET, "--size", "64", "64", "--resize", "letterbox", capsys=capsys)
    assert status == 0, err
    card, onnx_bytes = ms.load(tmp_path / "byo.vsb", key)
    spec = card.drive_spec()
    frame = bm.frames(1, size=(120, 160))[0]
    x = ms.preprocess(frame, spec)
    assert x.shape == (1, 3, 64, 64)
    top, left, nh, nw = ms.drive.letterbox_box((120, 160), (64, 64))
    assert (top, left, nh, nw) == (8, 0, 48, 64)
    zero = (np.zeros(3, np.float32) * np.float32(1 / 255) - np.float32(bm.IMAGENET_MEAN)) / np.float32(bm.IMAGENET_STD)
    np.testing.assert_allclose(x[0, :, :top, :], np.broadcast_to(zero[:, None, None], (3, top, 64)), rtol=1e-6)
    y = session(onnx_bytes).run(None, {"input": x})[0]
    ids = ms.postprocess(y, spec, frame_size=(120, 160))
    assert ids.shape == (1, 120, 160)
    inner = y.argmax(1)[:, top : top + nh, left : left + nw].astype(np.uint8)
    np.testing.assert_array_equal(ids[0], cv2.resize(inner[0], (160, 120), interpolation=cv2.INTER_NEAREST))


def test_int64_class_map(tmp_path, capsys):
    status, key, err = pack(tmp_path, bm.int64_class_map(), *IMAGENET, capsys=capsys)
    assert status == 0, err
    card = ms.read_header(tmp_path / "byo.vsb")
    assert card.outputs[0] == ms.TensorSpec("classes", "int64", (1, 64, 96), "NHW", None) and card.output_kind == "class_map"
    _, spec = check_against_ort(tmp_path / "byo.vsb", key, lambda f: documented_input(f, (64, 96)))
    assert spec.class_axis is None
    # ids outside the class list become 255 ("no class"), never wrap around
    out = np.array([[[0, 12, 13, -1, 300]]], np.int64)
    np.testing.assert_array_equal(ms.postprocess(out, spec), [[[0, 12, 255, 255, 255]]])


def test_fp16_in_and_out(tmp_path, capsys):
    status, key, err = pack(tmp_path, bm.fp16(), "--input-scale", "1/255", capsys=capsys)
    assert status == 0, err
    card = ms.read_header(tmp_path / "byo.vsb")
    assert card.inputs[0].dtype == "float16" and card.outputs[0].dtype == "float16"
    _, spec = check_against_ort(tmp_path / "byo.vsb", key, lambda f: documented_input(f, (64, 96), dtype=np.float16, mean=None))
    assert spec.input_dtype == "float16"


def test_cityscapes_19_classes(tmp_path, capsys):
    classes = tmp_path / "cityscapes.json"
    classes.write_text(json.dumps(bm.cityscapes_json()))
    onnx_bytes = bm.dynamic_size(classes=19)
    status, key, err = pack(tmp_path, onnx_bytes, *IMAGENET, "--size", "64", "96", "--classes", str(classes),
                            "--algorithm", "per-pixel linear", capsys=capsys)
    assert status == 0, err
    card, spec = check_against_ort(tmp_path / "byo.vsb", key, lambda f: documented_input(f, (64, 96)))
    assert len(card.classes) == 19 == spec.num_classes and card.classes[18] == ms.ClassInfo(18, "bicycle", (119, 11, 32))
    rgb, bgr = (ms.palette_lut((c.color for c in card.classes), order) for order in ("RGB", "BGR"))
    assert rgb[13].tolist() == [0, 0, 142] and rgb[19].tolist() == [255] * 3 and bgr[13].tolist() == [142, 0, 0]
    # the same graph with the default 13 CARLA classes: the count is refused, naming both
    status, _, err = pack(tmp_path, onnx_bytes, *IMAGENET, name="wrong", capsys=capsys)
    assert status == 1 and "19 classes" in err and "lists 13" in err


def test_classes_json_is_validated(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    for entries in ([], [{"name": "x"}], [{"name": "x", "colour": [1, 2]}], [{"name": f"c{i}", "colour": [0, 0, 0]} for i in range(256)]):
        bad.write_text(json.dumps(entries))
        status, _, err = pack(tmp_path, bm.int64_class_map(), *IMAGENET, "--classes", str(bad), capsys=capsys)
        assert status == 1 and len(err.strip().splitlines()) == 1, err


# --- refusals: at pack, and at verify/load for a blob packed some other way -------------------------


def _refused(err: str, path: Path, *words: str) -> None:
    line = err.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, err
    assert str(path) in line and "'byo'" in line, line
    for w in words:
        assert w in line, line


def _card(onnx_bytes: bytes, **changes) -> ms.ModelCard:
    """A card for a foreign graph built by hand, as a tool other than the CLI might."""
    info = ms.read_graph(onnx_bytes)
    t = info.inputs[0]
    o = info.outputs[0]
    card = ms.ModelCard(name="byo", description="hand-made", algorithm="unspecified", created=CREATED, modified=CREATED,
                        training_params={}, classes=ms.CARLA_CLASSES, scoring_function="hand-made",
                        inputs=(ms.TensorSpec(t.name, t.dtype, t.card_shape(), "NCHW", "RGB"),),
                        outputs=(ms.TensorSpec(o.name, o.dtype, o.card_shape(), "NCHW"[: len(o.card_shape())] if len(o.card_shape()) != 2 else "NC"),),
                        preprocessing=ms.Preprocessing(scale=1 / 255))
    return card.replace(**changes)


def test_classifier_is_refused_at_pack_and_at_verify(tmp_path, capsys):
    status, _, err = pack(tmp_path, bm.classifier(), "--input-scale", "1/255", capsys=capsys)
    assert status == 1
    _refused(err, tmp_path / "byo.onnx", "not a per-pixel map", "[1,1000]")
    assert not (tmp_path / "byo.vsb").exists()
    blob = tmp_path / "c.vsb"
    key = ms.write(blob, bm.classifier(), _card(bm.classifier()))  # pack() is byte-level: any tool can write one
    for call in (lambda: ms.verify(blob), lambda: ms.verify_card(blob), lambda: ms.load(blob, key)):
        with pytest.raises(errors.NotPerPixel, match=r"c\.vsb: model 'byo': output 'logits'"):
            call()


def test_external_data_is_refused_before_onnxruntime_reads_it(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "ext"
    onnx_bytes = bm.external_data(folder)
    built = []
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: built.append(1))
    status = main(["pack", str(folder / "model.onnx"), "--name", "byo", "--description", "d", *IMAGENET, "-o", str(tmp_path / "x.vsb")])
    err = capsys.readouterr().err
    assert status == 1 and built == []  # refused before any runtime was given the graph
    _refused(err, folder / "model.onnx", "external file", "weights.bin" if "weights.bin" in err else "external")
    with pytest.raises(errors.ExternalData):
        ms.read_graph(onnx_bytes)
    blob = tmp_path / "e.vsb"
    key = ms.write(blob, onnx_bytes, _card(bm.int64_class_map()))
    with pytest.raises(errors.ExternalData, match="model 'byo'"):
        ms.load(blob, key)


def test_custom_domain_is_refused(tmp_path, capsys):
    status, _, err = pack(tmp_path, bm.custom_domain(), *IMAGENET, capsys=capsys)
    assert status == 1
    _refused(err, tmp_path / "byo.onnx", "com.example.ops", "custom-op library")
    blob = tmp_path / "d.vsb"
    key = ms.write(blob, bm.custom_domain(), _card(bm.int64_class_map()))
    with pytest.raises(errors.CustomOps):
        ms.load(blob, key)


def test_ort_contrib_and_ml_domains_are_allowed():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["l"]),
             helper.make_node("Gelu", ["l"], ["g"], domain="com.microsoft"),
             helper.make_node("ArgMax", ["g"], ["classes"], axis=1, keepdims=0)]
    m = bm._model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("classes", TensorProto.INT64, [1, 8, 8])], bm._conv_head(13), domains=["com.microsoft"])
    info = ms.read_graph(m.SerializeToString())
    assert info.domains == {"", "com.microsoft"}
    session(m.SerializeToString())  # and ORT runs it


def test_two_inputs_are_refused(tmp_path, capsys):
    status, _, err = pack(tmp_path, bm.two_inputs(), *IMAGENET, capsys=capsys)
    assert status == 1
    _refused(err, tmp_path / "byo.onnx", "2 inputs", "exactly one image")


def test_unknown_dtype_is_refused(tmp_path, capsys):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT), helper.make_node("Conv", ["f", "W", "B"], ["l"]),
             helper.make_node("ArgMax", ["l"], ["classes"], axis=1, keepdims=0)]
    m = bm._model(nodes, [helper.make_tensor_value_info("input", TensorProto.DOUBLE, [1, 3, 8, 8])],
                  [helper.make_tensor_value_info("classes", TensorProto.INT64, [1, 8, 8])], bm._conv_head(13))
    status, _, err = pack(tmp_path, m.SerializeToString(), *IMAGENET, capsys=capsys)
    assert status == 1
    _refused(err, tmp_path / "byo.onnx", "float64", "uint8, float32 or float16")


def test_a_hand_edited_card_that_contradicts_its_graph_is_refused(tmp_path, capsys):
    onnx_bytes = bm.int64_class_map()
    override = tmp_path / "card.json"
    override.write_text(json.dumps({"inputs": [{"name": "input", "dtype": "float32", "shape": [1, 3, 128, 128],
                                                "layout": "NCHW", "color_order": "RGB"}]}))
    status, _, err = pack(tmp_path, onnx_bytes, *IMAGENET, "--card", str(override), capsys=capsys)
    assert status == 1
    _refused(err, tmp_path / "byo.onnx", "does not describe its graph", "128")
    # the same lie written by hand into a blob: verify cannot see it (no body read), load does
    blob = tmp_path / "liar.vsb"
    card = _card(onnx_bytes, inputs=(ms.TensorSpec("input", "float32", (1, 3, 128, 128), "NCHW", "RGB"),))
    key = ms.write(blob, onnx_bytes, card)
    assert ms.verify(blob) == key
    with pytest.raises(errors.CardContradictsGraph, match="does not describe its graph"):
        ms.load(blob, key)
    for lie in (dict(outputs=(ms.TensorSpec("classes", "int32", (1, 64, 96), "NHW"),)),
                dict(inputs=(ms.TensorSpec("input", "float32", (1, 3, "h", 96), "NCHW", "RGB"),))):
        key = ms.write(blob, onnx_bytes, _card(onnx_bytes, **lie))
        with pytest.raises(errors.CardContradictsGraph):
            ms.load(blob, key)


def test_undrivable_cards_each_have_their_class():
    base = _card(bm.int64_class_map())
    cases = [
        (errors.TooManyInputs, dict(inputs=base.inputs * 2)),
        (errors.UnsupportedDtype, dict(inputs=(ms.TensorSpec("input", "int32", (1, 3, 8, 8), "NCHW", "RGB"),))),
        (errors.UnsupportedInput, dict(inputs=(ms.TensorSpec("input", "float32", (1, 1, 8, 8), "NCHW", "RGB"),))),
        (errors.NotPerPixel, dict(outputs=(ms.TensorSpec("l", "float32", (1, 13, 1, 1), "NCHW"),))),
        (errors.NotPerPixel, dict(outputs=(ms.TensorSpec("l", "float32", (1, 13, 8), "NCH"),))),
        (errors.ClassCountMismatch, dict(outputs=(ms.TensorSpec("l", "float32", (1, 19, 8, 8), "NCHW"),))),
        (errors.BadCard, dict(inputs=(ms.TensorSpec("input", "uint8", (1, 8, 8, 3), "NHWC", "RGB"),))),  # uint8 with x/255
    ]
    for kind, changes in cases:
        with pytest.raises(kind, match="model 'byo'") as info:
            base.replace(**changes).drive_spec()
        assert "\n" not in str(info.value)
        assert isinstance(info.value, errors.BlobError)


# --- today's model is unchanged -------------------------------------------------------------------


def test_shipped_blob_still_verifies_loads_and_keeps_its_bytes():
    assert ms.verify(SHIPPED, SHIPPED_KEY) == SHIPPED_KEY
    card, onnx_bytes = ms.load(SHIPPED, SHIPPED_KEY)
    spec = card.drive_spec()
    assert (spec.input_dtype, spec.layout, spec.colour, spec.size, spec.output_kind, spec.num_classes) == \
        ("uint8", "NHWC", "RGB", (512, 512), "class_map", 13)
    assert spec.is_identity_input and card.preprocessing == ms.Preprocessing() and card.output_kind is None
    # the new fields are left out at their defaults: repacking the card gives the shipped bytes
    assert ms.pack(onnx_bytes, card.replace(body=None), level=card.body.compression_level) == SHIPPED.read_bytes()
    # the reference on today's contract: resize + BGR->RGB, bytes as they are
    frame = bm.frames(1, size=(600, 800))[0]
    x = ms.preprocess(frame, spec)
    assert x.dtype == np.uint8 and x.shape == (1, 512, 512, 3)
    np.testing.assert_array_equal(x[0], cv2.cvtColor(cv2.resize(frame, (512, 512), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB))
    ids = ms.postprocess(session(onnx_bytes).run(None, {"image": x})[0], spec)
    assert ids.shape == (1, 512, 512) and ids.max() < 13
