"""Camera geometry: every change moves the image and its label by the same map (a frame whose
colour encodes its label keeps them matched), is deterministic, keeps label ids in the class
set (or IGNORE_ID where there is no source), does what its parameter says (hood, height,
pitch, aspect, shift), the benchmark's changes need no fill, and the training batches and loss
take it."""
from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest

from trainer.geometry import (CARLA_FOV_DEG, GEOMETRY_SEVERITIES, SEVERITY_CHANGES, STAND_INS, CameraChange,
                              apply_camera, benchmark_camera, training_camera)
from model_store.metrics import HOOD_START_FRACTION
from model_store.palette import IGNORE_ID, NUM_CLASSES

#: a distinct colour per class id, far apart, so a pixel's colour names its label
COLOURS = np.array([(17 * i + 20, (97 * i + 40) % 256, (53 * i + 200) % 256) for i in range(NUM_CLASSES)], np.uint8)


def _blocks(h=120, w=160, cell=12, seed=0, hood=True):
    """A label of random-class blocks (and the hood rows Car), the image its colour code."""
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, NUM_CLASSES, (h // cell + 1, w // cell + 1)).astype(np.uint8)
    lab = np.kron(lab, np.ones((cell, cell), np.uint8))[:h, :w]
    if hood:
        lab[int(round(h * HOOD_START_FRACTION)):] = 10
    return COLOURS[lab], np.ascontiguousarray(lab)


def _assert_image_matches_label(img, lab):
    """Wherever the label is uniform over a 3x3 neighbourhood, the pixel has its class colour
    (within 4 grey levels: OpenCV's bilinear weights are fixed-point, 1/32 of a pixel; two
    classes' colours differ by 17 or more, so a pixel a quarter another class's fails)."""
    inner = np.zeros(lab.shape, bool)
    inner[1:-1, 1:-1] = True
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inner &= np.roll(lab, (dy, dx), (0, 1)) == lab
    inner &= lab != IGNORE_ID
    assert inner.sum() > 0.3 * (lab != IGNORE_ID).sum(), "too few uniform pixels to check"
    diff = np.abs(img[inner].astype(int) - COLOURS[lab[inner]].astype(int)).max(1)
    assert (diff <= 4).all(), f"{(diff > 4).sum()} pixels show another class's colour than their label"


CHANGES = {**{f"severity {s}": SEVERITY_CHANGES[s] for s in GEOMETRY_SEVERITIES}, **STAND_INS,
           "wide, unfitted": CameraChange(zoom=0.8, pitch_deg=-5, distortion=0.3),
           "lower, pincushion": CameraChange(height=0.7, distortion=-0.2, shift_x=-0.05),
           "larger hood": CameraChange(hood=2.0, aspect=2.0, crop_y=0.2)}


@pytest.mark.parametrize("name", list(CHANGES))
def test_a_change_moves_image_and_label_together_and_keeps_the_ids(name):
    img, lab = _blocks()
    before = img.copy(), lab.copy()
    a_img, a_lab = apply_camera(img, lab, CHANGES[name])
    b_img, b_lab = apply_camera(img, lab, CHANGES[name])
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab), "not deterministic"
    assert a_img.shape[:2] == a_lab.shape and a_img.dtype == np.uint8 and a_lab.dtype == np.uint8
    assert set(np.unique(a_lab)) <= set(np.unique(lab)) | {IGNORE_ID}, "a label id that was not in the frame"
    assert a_lab.shape != lab.shape or not np.array_equal(a_lab, lab), "the label did not move"
    _assert_image_matches_label(a_img, a_lab)
    assert np.array_equal(before[0], img) and np.array_equal(before[1], lab), "the inputs were changed"


def test_identity_is_exact():
    img, lab = _blocks()
    out, out_lab = apply_camera(img, lab, CameraChange())
    assert np.array_equal(out, img) and np.array_equal(out_lab, lab)


@pytest.mark.parametrize("which", [*GEOMETRY_SEVERITIES, *STAND_INS])
def test_the_benchmark_needs_no_fill_and_is_the_same_twice(which):
    img, lab = _blocks(600, 800, cell=40)
    a, la = benchmark_camera(which, img, lab)
    b, lb = benchmark_camera(which, img, lab)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert (la != IGNORE_ID).all(), "a benchmark frame has pixels without truth"
    # the same change of a frame squashed to 512x512 from its 4:3 camera, as training loads it
    sq, lsq = cv2.resize(img, (512, 512), interpolation=cv2.INTER_NEAREST), \
        cv2.resize(lab, (512, 512), interpolation=cv2.INTER_NEAREST)
    assert (benchmark_camera(which, sq, lsq, native_aspect=4 / 3)[1] != IGNORE_ID).all()


def test_unknown_geometry_is_refused():
    img, lab = _blocks()
    with pytest.raises(ValueError, match="unknown geometry 'fisheye'"):
        benchmark_camera("fisheye", img, lab)
    with pytest.raises(ValueError, match="out of range"):
        CameraChange(height=0)


def test_a_wider_view_fills_its_border_with_the_mirrored_frame_and_ignores_its_label():
    img, lab = _blocks(hood=False)
    out, out_lab = apply_camera(img, lab, CameraChange(zoom=0.8))
    assert (out_lab[0] == IGNORE_ID).all() and (out_lab[:, 0] == IGNORE_ID).all()
    assert (out_lab[60, 80] != IGNORE_ID)
    assert out[0].mean() > 10, "the border is black, not the mirrored frame"
    fitted = apply_camera(img, lab, CameraChange(zoom=0.8, fit=True))[1]
    assert (fitted != IGNORE_ID).all()


def _where_row_went(change, row, h=600, w=800, native_aspect=None):
    """The output rows whose source is ``row`` (a third image channel carries the row index)."""
    rows = np.repeat(np.arange(h, dtype=np.uint16)[:, None], w, 1)
    lo = (rows & 255).astype(np.uint8)
    hi = (rows >> 8).astype(np.uint8)
    code = np.stack([lo, hi, np.zeros_like(lo)], -1)
    out, _ = apply_camera(code, np.zeros((h, w), np.uint8), change, native_aspect)
    src = out[..., 0].astype(int) + 256 * out[..., 1].astype(int)
    return src[:, w // 2]


def test_hood_cut_and_stretched():
    img, lab = _blocks(600, 800, cell=40)
    top = int(round(600 * HOOD_START_FRACTION))
    out, out_lab = apply_camera(img, lab, CameraChange(hood=0.0))
    assert out_lab.shape == (top, 800) and np.array_equal(out_lab, lab[:top]) and np.array_equal(out, img[:top])
    _, big = apply_camera(img, lab, CameraChange(hood=1.5))
    car_rows = (big == 10).all(1)
    assert car_rows[-int(1.5 * (600 - top)) + 1:].all(), "the hood band is not 1.5x taller"
    assert np.array_equal(big[:600 - int(1.5 * (600 - top)) - 1], lab[:600 - int(1.5 * (600 - top)) - 1])


def test_height_scales_the_road_rows_about_the_horizon_and_keeps_the_sky():
    src = _where_row_went(CameraChange(height=1.5), 0)
    cy = 299.5
    for out_row in (400, 450, 560):
        assert src[out_row] == pytest.approx(cy + (out_row - cy) / 1.5, abs=1)
    assert (src[:299] == np.arange(299)).all(), "rows above the horizon moved"


def test_pitch_moves_the_horizon_by_f_tan_theta_and_respects_the_native_aspect():
    f = 400 / math.tan(math.radians(CARLA_FOV_DEG) / 2)
    src = _where_row_went(CameraChange(pitch_deg=5.0), 0)
    horizon_out = np.argmin(np.abs(src - 299.5))
    assert horizon_out == pytest.approx(299.5 - f * math.tan(math.radians(5)), abs=1.5)
    # a 4:3 frame squashed to 512x512: the same change, resized, is the same frame
    img, lab = _blocks(600, 800, cell=40, hood=False)
    native = cv2.resize(apply_camera(img, lab, CameraChange(pitch_deg=5.0, height=1.3))[1], (512, 512),
                        interpolation=cv2.INTER_NEAREST)
    sq = apply_camera(cv2.resize(img, (512, 512), interpolation=cv2.INTER_NEAREST),
                      cv2.resize(lab, (512, 512), interpolation=cv2.INTER_NEAREST),
                      CameraChange(pitch_deg=5.0, height=1.3), native_aspect=4 / 3)[1]
    assert (native == sq).mean() > 0.97


def test_aspect_crops_rows_where_asked_and_shift_slides_the_columns():
    img, lab = _blocks(600, 800, cell=40)
    out, out_lab = apply_camera(img, lab, CameraChange(aspect=16 / 9, crop_y=1.0))
    assert out_lab.shape == (450, 800) and np.array_equal(out_lab, lab[150:])
    _, top = apply_camera(img, lab, CameraChange(aspect=16 / 9, crop_y=0.0))
    assert np.array_equal(top, lab[:450])
    _, narrow = apply_camera(img, lab, CameraChange(aspect=1.0))
    assert np.array_equal(narrow, lab[:, 100:700])
    _, shifted = apply_camera(img, lab, CameraChange(shift_x=0.05))
    assert np.array_equal(shifted[:, :760], lab[:, 40:]) and (shifted[:, 760:] == IGNORE_ID).all()


def test_training_draw_is_seeded_keeps_the_size_and_the_label_matched():
    img, lab = _blocks(128, 128, cell=16)
    outs = []
    for k in range(12):
        a = training_camera(img, lab, np.random.default_rng(k), native_aspect=4 / 3)
        b = training_camera(img, lab, np.random.default_rng(k), native_aspect=4 / 3)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert a[0].shape == img.shape and a[1].shape == lab.shape
        assert set(np.unique(a[1])) <= set(np.unique(lab)) | {IGNORE_ID}
        outs.append(a[1])
    assert len({o.tobytes() for o in outs}) == 12, "draws repeat"


def test_a_training_draw_no_zoom_can_fit_keeps_its_border_instead_of_failing(monkeypatch):
    """A wide, tall camera shifted sideways: no zoom keeps the fitted frame inside the drive's,
    so the draw keeps its border (IGNORE_ID) rather than stop the training."""
    import trainer.geometry as geometry
    img, lab = _blocks(128, 128, cell=16)
    unfittable = CameraChange(hood=1.0, height=0.694, pitch_deg=0.0, shift_x=-0.0346, aspect=2.191,
                              crop_y=0.0111, fit=True)
    with pytest.raises(geometry.NoFit):
        apply_camera(img, lab, unfittable, 4 / 3, out_size=(128, 128))
    monkeypatch.setattr(geometry, "_draw", lambda rng: unfittable)
    out_img, out_lab = training_camera(img, lab, np.random.default_rng(0), native_aspect=4 / 3)
    expected = apply_camera(img, lab, replace(unfittable, fit=False), 4 / 3, out_size=(128, 128))
    assert np.array_equal(out_img, expected[0]) and np.array_equal(out_lab, expected[1])
    assert (out_lab == IGNORE_ID).any()


# --- training with geometry ---------------------------------------------------------------

def test_geometry_batches_are_reproducible_and_the_default_stream_is_unchanged():
    pytest.importorskip("torch")
    from trainer.data import synthetic_data
    from trainer.train import TrainConfig, _AugmentedBatches
    data = synthetic_data(8, 64, 64, seed=1)
    off = _AugmentedBatches(data, TrainConfig(size=48, batch=4), 2)[3]
    on_cfg = TrainConfig(size=48, batch=4, geometry=1.0)
    on, again = _AugmentedBatches(data, on_cfg, 2)[3], _AugmentedBatches(data, on_cfg, 2)[3]
    assert np.array_equal(on[0], again[0]) and np.array_equal(on[1], again[1])
    assert not np.array_equal(on[1], off[1]), "geometry did not move the labels"
    assert set(np.unique(on[1])) <= set(range(NUM_CLASSES)) | {IGNORE_ID}
    zero = _AugmentedBatches(data, TrainConfig(size=48, batch=4, geometry=0.0), 2)[3]
    assert np.array_equal(zero[0], off[0]) and np.array_equal(zero[1], off[1])


def test_the_loss_skips_ignored_pixels(tmp_path):
    pytest.importorskip("torch")
    from trainer.train import TrainConfig, train
    cfg = TrainConfig(data="synthetic", synthetic_n=16, out=str(tmp_path / "g"), epochs=1, size=32, load_size=48,
                      eval_size=48, batch=4, gap=1, amp="off", progress=False, threads=1, geometry=1.0, seed=3)
    summary = train(cfg, log=lambda *a: None)
    assert summary["steps"] > 0
    import json
    loss = json.loads((tmp_path / "g" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert math.isfinite(loss)
