"""Bring your own model (flow side): every shape docs/models.md lists, packed with the
documented options, is scored by the segment flow on every frame with the class maps the
reference pre/postprocessing (model_store.drive) gives in ONNX Runtime directly; evaluate counts
it against labels at their own size; a model the flow cannot drive is refused at start with one
line and exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from bytewax.testing import run_main

from tests import byo_models as bm
import model_store as ms
from tests.flow_fixtures import FakeRegistry, env_for, read_jsonl
from model_store.drive import picture_size
from operators.config import load_config
from operators.model_reader import ModelRefused
from tests.model_store.test_byo_models import IMAGENET, pack

REPO = Path(__file__).resolve().parents[2]
N_FRAMES = 4
FRAME = (120, 160)   # (h, w): another size and aspect than every model input


def _frames_dir(root: Path) -> tuple[Path, list]:
    """A folder of lossless PNG frames, so the reference sees the bytes the flow decodes."""
    root.mkdir(parents=True, exist_ok=True)
    frames = bm.frames(N_FRAMES, size=FRAME)
    for i, f in enumerate(frames):
        cv2.imwrite(str(root / f"{i:04d}.png"), f)
    return root, frames


def _classes_file(tmp_path: Path) -> str:
    p = tmp_path / "cityscapes.json"
    p.write_text(json.dumps(bm.cityscapes_json()))
    return str(p)


# (id, ONNX bytes factory, pack options factory(tmp_path)) — the shapes of docs/models.md
SHAPES = [
    ("lraspp-float-nchw-logits", lambda: bm.export_torch("lraspp_mobilenetv3"), lambda t: IMAGENET),
    ("nhwc-bgr-softmax", bm.nhwc_softmax, lambda t: ["--input-scale", "1/255", "--colour", "BGR"]),
    ("dynamic-size-resized", bm.dynamic_size, lambda t: [*IMAGENET, "--size", "48", "64"]),
    ("dynamic-size-native", bm.dynamic_size, lambda t: IMAGENET),
    ("letterbox", bm.dynamic_size, lambda t: [*IMAGENET, "--size", "64", "64", "--resize", "letterbox"]),
    ("int64-class-map", bm.int64_class_map, lambda t: IMAGENET),
    ("fp16-in-and-out", bm.fp16, lambda t: ["--input-scale", "1/255"]),
    ("cityscapes-19-classes", lambda: bm.dynamic_size(classes=19),
     lambda t: [*IMAGENET, "--size", "64", "96", "--classes", _classes_file(t)]),
]


def _reference(blob: Path, key: str, frame: np.ndarray, size) -> np.ndarray:
    """The class map the card promises for one frame at ``size`` (h, w), run directly in ORT."""
    card, onnx_bytes = ms.load(blob, key)
    spec = card.drive_spec()
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    y = sess.run([spec.output_name], {spec.input_name: ms.preprocess(frame, spec)})[0]
    return ms.postprocess(y, spec, size)[0]


def _packed(tmp_path, make, options, capsys):
    status, key, err = pack(tmp_path, make(), *options(tmp_path), capsys=capsys)
    assert status == 0, err
    blob = tmp_path / "byo.vsb"
    reg = FakeRegistry()
    reg.register(key, "byo", blob.as_uri())
    return reg, blob, key


@pytest.mark.parametrize("mask_size", ["model", "frame"])
@pytest.mark.parametrize("shape,make,options", SHAPES, ids=[s[0] for s in SHAPES])
def test_each_shape_is_scored_on_every_frame_as_its_card_says(shape, make, options, mask_size, tmp_path, capsys):
    reg, blob, key = _packed(tmp_path, make, options, capsys)
    folder, frames = _frames_dir(tmp_path / "frames")
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=2,
                              VERISEG_MASK_SIZE=mask_size))
    run_main(__import__("dataflows.segment", fromlist=["build_flow"]).build_flow(cfg, registry=reg))
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert (summary["scored"], summary["dropped"], summary["bad"]) == (N_FRAMES, 0, 0), summary
    rows = read_jsonl(cfg.out / "frames" / "results.jsonl")
    assert [r["seq"] for r in rows] == list(range(N_FRAMES)) and {r["model_key"] for r in rows} == {key}
    spec = ms.read_header(blob).drive_spec()
    names = {c.name for c in ms.read_header(blob).classes} | {"255"}
    for r, frame in zip(rows, frames):
        size = FRAME if mask_size == "frame" else picture_size(FRAME, spec)
        mask = cv2.imread(str(cfg.out / "frames" / r["mask"]), cv2.IMREAD_UNCHANGED)
        assert mask.shape == tuple(size)
        np.testing.assert_array_equal(mask, _reference(blob, key, frame, size))
        assert set(r["shares"]) <= names and abs(sum(r["shares"].values()) - 1) < 1e-3
    # the overlay is written in the model's picture, and the anchors verify
    cap = cv2.VideoCapture(str(cfg.out / "frames" / "overlay.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == N_FRAMES
    # the written mask is the one its leaf and proof name (the chain's part is FakeRegistry's)
    from chain.anchoring import read_mask, verify_frame
    from chain.errors import AnchorVerificationFailed
    batch = sorted((cfg.out / "anchors" / "frames").glob("*.json"))[0]
    with pytest.raises(AnchorVerificationFailed) as ei:
        verify_frame(batch, "frames", 1, read_mask(cfg.out / "frames" / rows[1]["mask"]), registry=None)
    assert ei.value.check == "root_not_anchored"


def test_letterbox_masks_hold_the_picture_not_the_border(tmp_path, capsys):
    """A letterboxed 120x160 frame fills 48 of 64 rows: its mask is the 48x64 picture (the
    border cropped off), so it lines up with the frame and the labels."""
    reg, blob, key = _packed(tmp_path, bm.dynamic_size, lambda t: [*IMAGENET, "--size", "64", "64",
                                                                   "--resize", "letterbox"], capsys)
    folder, _ = _frames_dir(tmp_path / "frames")
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=0))
    run_main(__import__("dataflows.segment", fromlist=["build_flow"]).build_flow(cfg, registry=reg))
    masks = sorted((cfg.out / "frames" / "masks").glob("*.png"))
    assert len(masks) == N_FRAMES
    assert {cv2.imread(str(m), cv2.IMREAD_UNCHANGED).shape for m in masks} == {(48, 64)}


def _labelled(root: Path, classes: int) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(3)
    for i, f in enumerate(bm.frames(N_FRAMES, size=FRAME)):
        cv2.imwrite(str(root / "images" / f"{i:04d}.png"), f)
        cv2.imwrite(str(root / "labels" / f"{i:04d}.png"), rng.integers(0, classes, FRAME, dtype=np.uint8))
    return root


@pytest.mark.parametrize("shape,make,options", [SHAPES[0], SHAPES[4], SHAPES[7]],
                         ids=[SHAPES[0][0], SHAPES[4][0], SHAPES[7][0]])
def test_evaluate_counts_each_shape_at_the_labels_size(shape, make, options, tmp_path, capsys):
    from dataflows.evaluate import build_flow
    reg, blob, key = _packed(tmp_path, make, options, capsys)
    n_classes = len(ms.read_header(blob).classes)
    data = _labelled(tmp_path / "data", n_classes)
    cfg = load_config(env_for(tmp_path, f"dir:{data}", blob, VERISEG_ANCHOR_EVERY=0))
    run_main(build_flow(cfg, registry=reg))
    rep = json.loads((cfg.out / "eval" / "report.json").read_text())
    assert rep["frames"] == N_FRAMES and rep["bad_frames"] == 0 and rep["frames_by_model_key"] == {key: N_FRAMES}
    assert rep["metrics"]["pixels"] == N_FRAMES * FRAME[0] * FRAME[1]
    # the model's predictions, counted at the labels' 120x160 against the reference
    want = 0
    for i, f in enumerate(bm.frames(N_FRAMES, size=FRAME)):
        truth = cv2.imread(str(data / "labels" / f"{i:04d}.png"), cv2.IMREAD_UNCHANGED)
        want += int((_reference(blob, key, f, FRAME) == truth).sum())
    assert rep["metrics"]["pixel_accuracy"] == pytest.approx(want / rep["metrics"]["pixels"], abs=1e-4)
    conf = json.loads((cfg.out / "eval" / "confusion.json").read_text())
    assert len(conf["classes"]) == n_classes
    assert cv2.imread(str(cfg.out / "eval" / "grid.png")) is not None


def test_a_model_the_runtime_cannot_load_is_refused_at_start(tmp_path, capsys, monkeypatch):
    """Refused once, before any frame, not as a bad frame on every frame."""
    from dataflows.segment import build_flow
    from operators import sessions
    reg, blob, key = _packed(tmp_path, bm.nhwc_softmax, lambda t: ["--input-scale", "1/255"], capsys)
    folder, _ = _frames_dir(tmp_path / "frames")

    def refuse(*a, **kw):
        raise sessions.ScoreError(f"model {key[:12]}: ONNX Runtime cannot build a session: NOT_IMPLEMENTED")
    monkeypatch.setattr(sessions, "build_session", refuse)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_BATCH=1))
    with pytest.raises(ModelRefused) as ei:
        build_flow(cfg, registry=reg)
    assert len(str(ei.value).splitlines()) == 1 and "cannot build a session" in str(ei.value)


@pytest.mark.parametrize("graph", ["classifier", "card_lies"])
def test_an_undrivable_only_model_ends_the_job_with_one_line_and_status_2(graph, tmp_path):
    """Packed some other way (model_store.write skips pack's checks) and registered: the main
    job refuses it at load, with one line, exit status 2 and no traceback."""
    if graph == "classifier":
        onnx_bytes = bm.classifier()
        card = ms.ModelCard(name="clf", description="a classifier", algorithm="unspecified",
                            created="2026-11-30T12:00:00Z", modified="2026-11-30T12:00:00Z",
                            training_params={}, classes=ms.CARLA_CLASSES, scoring_function="argmax",
                            inputs=(ms.TensorSpec("input", "float32", (1, 3, 32, 32), "NCHW", "RGB"),),
                            outputs=(ms.TensorSpec("logits", "float32", (1, 1000), "NC", None),),
                            metrics={}, onnx_opset=17)
    else:   # a card that lies: a float NCHW logits graph under an ENet uint8 class-map card
        onnx_bytes = bm.export_torch("unet")
        card = ms.ModelCard(name="liar", description="ENet", algorithm="ENet",
                            created="2026-11-30T12:00:00Z", modified="2026-11-30T12:00:00Z",
                            training_params={}, classes=ms.CARLA_CLASSES,
                            scoring_function="uint8 NHWC RGB image -> per-pixel argmax",
                            inputs=(ms.TensorSpec("input", "uint8", (1, 64, 96, 3), "NHWC", "RGB"),),
                            outputs=(ms.TensorSpec("logits", "uint8", (1, 64, 96, 1), "NHWC", None),),
                            metrics={}, onnx_opset=17)
    blob = tmp_path / "m.vsb"
    try:
        ms.write(str(blob), onnx_bytes, card)
    except ms.errors.BlobError:
        pytest.skip("model_store.write refuses this card itself")
    home = tmp_path / "home"
    import chain   # registered by its key (model_store.verify itself refuses such a card)
    chain.connect(chain="embedded", home=home).register(blob.read_bytes()[-32:].hex(), "m", blob.as_uri())
    folder, _ = _frames_dir(tmp_path / "frames")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERISEG_")}
    env.update(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_CHAIN="embedded"))
    env.pop("VERISEG_PROVIDERS", None)
    p = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.segment"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in p.stderr and len([ln for ln in lines if "error" in ln]) == 1, p.stderr
    assert "not a per-pixel map" in p.stderr or "does not describe its graph" in p.stderr, p.stderr
    assert not (tmp_path / "out" / "frames" / "results.jsonl").exists()


def test_a_hot_swap_to_a_model_with_other_classes_names_its_frames_by_its_own_card(tmp_path, capsys):
    """A 13-class model replaced by a 19-class one: each scored frame carries its model's
    classes, so its shares, overlay colours and the verifier's names agree with that card."""
    from operators.context import FlowContext
    from operators.frames import Frame, ModelLoaded, ScoredFrame
    from operators.score import ScoreLogic
    from operators.sessions import SessionCache
    events = []
    for i, (make, opts) in enumerate([(bm.dynamic_size, [*IMAGENET, "--size", "64", "96"]),
                                      (lambda: bm.dynamic_size(classes=19),
                                       [*IMAGENET, "--size", "64", "96", "--classes", _classes_file(tmp_path)])]):
        status, key, err = pack(tmp_path, make(), *opts, name=f"m{i}", capsys=capsys)
        assert status == 0, err
        card, onnx_bytes = ms.load(tmp_path / f"m{i}.vsb", key)
        events.append(ModelLoaded(key, i + 1, name=f"m{i}", card=card, onnx=onnx_bytes))
    logic = ScoreLogic(FlowContext(sessions=SessionCache(providers="cpu", threads=1)), "cam")
    frames = [Frame("cam", i, 0.0, f"#{i}", f) for i, f in enumerate(bm.frames(2, size=FRAME))]
    out, _ = logic.on_batch([("cam", events[0]), ("cam", frames[0]), ("cam", events[1]), ("cam", frames[1])])
    out += logic.on_eof()[0]     # the second run may still be in flight when on_batch returns
    out = [r for r in out if isinstance(r, ScoredFrame)]
    assert [len(r.classes) for r in out] == [13, 19]
    assert out[0].classes[0][0] == ms.CARLA_CLASSES[0].name and out[1].classes[18] == ("bicycle", (119, 11, 32))
