"""CARLA-C: the conditions (deterministic, image-only, label-aware wet road), the benchmark's
figures against an independent computation, its CLI on a tiny model, and the training draw."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.conditions import (CONDITIONS, SEVERITIES, ASPHALT, SIDEWALK, apply_condition, benchmark_seed,
                                training_condition, wet_road)
from trainer.data import synthetic_data, write_folder
from tests.trainer.tiny_models import argmax_onnx


@pytest.fixture(scope="module")
def scene():
    d = synthetic_data(2, 96, 128, seed=3)
    return d.images, d.labels


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_condition_is_deterministic_changes_the_image_and_leaves_the_label(scene, name):
    imgs, labs = scene
    img, lab = imgs[0], labs[0]
    lab_before, img_before = lab.copy(), img.copy()
    for s in SEVERITIES:
        a = apply_condition(name, img, lab, s, benchmark_seed(0, name, s, 0))
        b = apply_condition(name, img, lab, s, benchmark_seed(0, name, s, 0))
        assert a.shape == img.shape and a.dtype == np.uint8
        assert np.array_equal(a, b), f"{name} severity {s} is not deterministic for one seed"
        assert not np.array_equal(a, img), f"{name} severity {s} left the image unchanged"
    assert np.array_equal(lab, lab_before) and np.array_equal(img, img_before), "a condition changed its inputs"


def test_seeds_and_frames_draw_differently(scene):
    imgs, labs = scene
    a = apply_condition("rain", imgs[0], labs[0], 2, benchmark_seed(0, "rain", 2, 0))
    b = apply_condition("rain", imgs[0], labs[0], 2, benchmark_seed(1, "rain", 2, 0))
    c = apply_condition("rain", imgs[0], labs[0], 2, benchmark_seed(0, "rain", 2, 1))
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_severity_grows_the_change(scene):
    imgs, labs = scene
    for name in ("fog", "night", "gaussian_noise", "wet_road", "dusk"):
        d = [np.abs(apply_condition(name, imgs[0], labs[0], s, benchmark_seed(0, name, s, 0)).astype(int)
                    - imgs[0]).mean() for s in SEVERITIES]
        assert d[0] < d[2], f"{name}: severity 3 changes less than severity 1 ({d})"


def test_wet_road_changes_only_wet_pixels_and_mirrors_what_stands_on_the_road():
    h, w = 60, 40
    lab = np.full((h, w), 1, np.uint8)                # building above
    lab[30:] = 7                                      # road below row 30
    lab[30:, :5] = SIDEWALK
    img = np.zeros((h, w, 3), np.uint8)
    img[:30] = (200, 40, 40)                          # a red building
    img[30:] = (90, 90, 90)                           # grey asphalt
    out = wet_road(img, lab, strength=0.9, darkness=0.3, rng=np.random.default_rng(0), blur=0.5, ripple=0)
    dry = ~np.isin(lab, (*ASPHALT, SIDEWALK))
    assert np.array_equal(out[dry], img[dry]), "wet road changed pixels that are not road or sidewalk"
    road = out[31:40, 10:]                            # just below the contact line: the building's reflection
    assert road[..., 0].mean() > road[..., 2].mean() + 20, "no reflection of the red building in the road"


def test_training_draw_is_reproducible_and_not_the_benchmark(scene):
    imgs, labs = scene
    a = training_condition(imgs[1], labs[1], np.random.default_rng(7))
    b = training_condition(imgs[1], labs[1], np.random.default_rng(7))
    assert np.array_equal(a, b)
    bench = [apply_condition(n, imgs[1], labs[1], s, benchmark_seed(0, n, s, 1)) for n in CONDITIONS for s in SEVERITIES]
    draws = [training_condition(imgs[1], labs[1], np.random.default_rng(k)) for k in range(12)]
    assert not any(np.array_equal(d, x) for d in draws for x in bench)


def _tiny_predictor(size):
    """Class = argmax over the RGB channels (0, 1, 2): cheap, and it reacts to conditions."""
    def predict(x):
        return np.asarray(x).argmax(-1).astype(np.uint8)
    return predict


def test_report_equals_an_independent_confusion_matrix(scene):
    import cv2
    from trainer.robustness import run_benchmark
    imgs, labs = scene
    labs = (labs % 3).astype(np.uint8)               # ids 0..2, so the tiny predictor gets some right
    report, tiles = run_benchmark({"tiny": _tiny_predictor(64)}, imgs, labs, ["fog", "wet_road"], (1, 3),
                                  seed=5, size=64, grid_frame=0, log=None)
    for cond, sev in [("clean", 0), ("fog", 1), ("fog", 3), ("wet_road", 1), ("wet_road", 3)]:
        m = np.zeros((13, 13), np.int64)
        for i, (img, lab) in enumerate(zip(imgs, labs)):
            x = img if cond == "clean" else apply_condition(cond, img, lab, sev, benchmark_seed(5, cond, sev, i))
            p = cv2.resize(cv2.resize(x, (64, 64), interpolation=cv2.INTER_AREA).argmax(-1).astype(np.uint8),
                           (lab.shape[1], lab.shape[0]), interpolation=cv2.INTER_NEAREST)
            np.add.at(m, (lab.ravel(), p.ravel()), 1)
        pa = np.trace(m) / m.sum()
        present = (m.sum(0) + m.sum(1)) > 0
        iou = np.diag(m)[present] / (m.sum(0) + m.sum(1) - np.diag(m))[present]
        got = report["tiny"]["clean"] if cond == "clean" else report["tiny"]["conditions"][cond][str(sev)]
        assert got["pixel_accuracy"] == pytest.approx(pa, abs=1e-6)
        assert got["mean_iou"] == pytest.approx(iou.mean(), abs=1e-6)
    flat = [report["tiny"]["conditions"][c][s]["pixel_accuracy"] for c in ("fog", "wet_road") for s in ("1", "3")]
    assert report["tiny"]["mPA-C"] == pytest.approx(np.mean(flat), abs=1e-6)
    assert set(tiles) == {"clean", "fog", "wet_road"}


def test_cli_two_frames_two_conditions_two_models(tmp_path):
    from trainer.__main__ import main
    d = synthetic_data(2, 96, 128, seed=4)
    write_folder(d, tmp_path / "data")
    a = argmax_onnx(tmp_path / "a.onnx", 64)
    b = argmax_onnx(tmp_path / "b.onnx", 64)
    out = tmp_path / "out"
    rc = main(["robustness", "--data", str(tmp_path / "data"), "--split", "all", "--model", str(a), "--model", str(b),
               "--conditions", "rain,night", "--size", "64", "--out", str(out), "--threads", "1"])
    assert rc == 0
    doc = json.loads((out / "robustness.json").read_text())
    assert set(doc["results"]) == {"a", "b"}
    r = doc["results"]["a"]
    assert set(r["conditions"]) == {"rain", "night"} and set(r["conditions"]["rain"]) == {"1", "2", "3"}
    assert r == doc["results"]["b"], "two identical models scored differently: the frames were not the same"
    for k in ("pixel_accuracy", "mean_iou", "road_accuracy", "car_accuracy"):
        assert k in r["clean"]
    assert 0 <= r["mPA-C"] <= 1 and 0 <= r["mIoU-C"] <= 1
    assert (out / "robustness.png").stat().st_size > 1000
    from trainer.robustness import format_summary
    assert format_summary(doc["results"]).count("\n") == 3


def test_cli_refuses_an_unknown_condition(tmp_path):
    from trainer.__main__ import main
    d = synthetic_data(2, 32, 32, seed=4)
    write_folder(d, tmp_path / "data")
    with pytest.raises(SystemExit, match="unknown condition 'snow'"):
        main(["robustness", "--data", str(tmp_path / "data"), "--split", "all", "--model",
              str(argmax_onnx(tmp_path / "a.onnx", 64)), "--conditions", "snow", "--out", str(tmp_path / "o")])


# --- training with conditions -------------------------------------------------------------

def test_condition_batches_change_images_only_and_consistency_carries_the_clean_crops():
    pytest.importorskip("torch")
    from trainer.train import TrainConfig, _AugmentedBatches
    data = synthetic_data(8, 64, 64, seed=1)
    off = _AugmentedBatches(data, TrainConfig(size=48, batch=4), 2)[3]
    on_cfg = TrainConfig(size=48, batch=4, conditions=1.0)
    on, again = _AugmentedBatches(data, on_cfg, 2)[3], _AugmentedBatches(data, on_cfg, 2)[3]
    assert np.array_equal(on[0], again[0]), "condition batches are not a function of (seed, epoch, step)"
    assert np.array_equal(on[1], off[1]), "conditions changed the labels or the crops"
    assert not np.array_equal(on[0], off[0])
    both = _AugmentedBatches(data, TrainConfig(size=48, batch=4, conditions=1.0, consistency=1.0), 2)[3]
    assert both[0].shape[0] == 8 and np.array_equal(both[0][:4], off[0]) and np.array_equal(both[0][4:], on[0])
    assert np.array_equal(both[1], off[1])


def test_js_consistency_is_zero_for_equal_views_and_positive_otherwise():
    torch = pytest.importorskip("torch")
    from trainer.train import js_consistency
    a = torch.randn(2, 13, 8, 8)
    assert js_consistency(a, a).item() == pytest.approx(0, abs=1e-6)
    assert js_consistency(a, torch.randn(2, 13, 8, 8)).item() > 0.01
    assert js_consistency(a, -a).item() <= np.log(2) + 1e-6


def test_fine_tune_with_conditions_and_consistency_starts_from_the_init_weights(tmp_path):
    torch = pytest.importorskip("torch")
    from trainer.train import TrainConfig, load_checkpoint, train
    base = TrainConfig(data="synthetic", synthetic_n=16, out=str(tmp_path / "base"), epochs=1, size=32,
                       load_size=48, eval_size=48, batch=4, gap=1, amp="off", progress=False, threads=1)
    train(base, log=lambda *a: None)
    lines = []
    ft = TrainConfig(data="synthetic", synthetic_n=16, out=str(tmp_path / "ft"), epochs=1, size=32, load_size=48,
                     eval_size=48, batch=4, gap=1, amp="off", progress=False, threads=1, lr=0.0,
                     conditions=1.0, consistency=1.0, init=str(tmp_path / "base" / "last.pt"), warmup_epochs=0)
    train(ft, log=lines.append)
    assert any(l.startswith("init: weights from") for l in lines)
    src, _ = load_checkpoint(tmp_path / "base" / "last.pt")
    got = torch.load(tmp_path / "ft" / "last.pt", weights_only=False)["model"]
    # lr 0: the fine-tune's weights are still the init's (batch-norm statistics aside)
    for k, v in src.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(got[k].float(), v.float()), k


def test_amp_auto_uses_bf16_on_the_cpu_only_with_native_kernels(monkeypatch):
    torch = pytest.importorskip("torch")
    from trainer import train as tr
    monkeypatch.setattr(tr, "cpu_bf16_is_fast", lambda: False)
    ctx, _ = tr._autocast(torch.device("cpu"), "auto")
    assert not ctx._enabled
    monkeypatch.setattr(tr, "cpu_bf16_is_fast", lambda: True)
    ctx, _ = tr._autocast(torch.device("cpu"), "auto")
    assert ctx._enabled and ctx.fast_dtype == torch.bfloat16


# --- the geometry family ------------------------------------------------------------------

def test_geometry_cells_are_scored_against_their_moved_label(scene):
    import cv2
    from trainer.geometry import benchmark_camera
    from trainer.robustness import run_benchmark
    imgs, labs = scene
    labs = (labs % 3).astype(np.uint8)
    report, tiles = run_benchmark({"tiny": _tiny_predictor(64)}, imgs, labs, [], (1, 2, 3), seed=0, size=64,
                                  grid_frame=1, log=None, geometry=(1, 3, 5), stand_ins=("other_camera",))
    r = report["tiny"]
    assert r["conditions"] == {} and r["mPA-C"] is None
    cells = [(1, r["geometry"]["1"]), (5, r["geometry"]["5"]), ("other_camera", r["stand_ins"]["other_camera"])]
    for which, got in cells:
        m = np.zeros((13, 13), np.int64)
        for img, lab in zip(imgs, labs):
            x, truth = benchmark_camera(which, img, lab)
            p = cv2.resize(cv2.resize(x, (64, 64), interpolation=cv2.INTER_AREA).argmax(-1).astype(np.uint8),
                           (truth.shape[1], truth.shape[0]), interpolation=cv2.INTER_NEAREST)
            np.add.at(m, (truth.ravel(), p.ravel()), 1)
        assert got["pixel_accuracy"] == pytest.approx(np.trace(m) / m.sum(), abs=1e-6)
    assert r["mPA-G"] == pytest.approx(np.mean([r["geometry"][s]["pixel_accuracy"] for s in ("1", "3", "5")]), abs=1e-6)
    assert set(tiles) == {"clean", "geometry 3", "other_camera"}
    assert tiles["other_camera"][1].shape != labs[1].shape      # 16:9: the tile is the moved frame
    from trainer.robustness import format_report, format_summary
    assert "| geometry | 5 |" in format_report(report) and "other_camera" in format_summary(report)


def test_cli_geometry_only_and_refuses_an_unknown_stand_in(tmp_path):
    from trainer.__main__ import main
    d = synthetic_data(2, 96, 128, seed=4)
    write_folder(d, tmp_path / "data")
    a = argmax_onnx(tmp_path / "a.onnx", 64)
    out = tmp_path / "out"
    rc = main(["robustness", "--data", str(tmp_path / "data"), "--split", "all", "--model", str(a),
               "--conditions", "none", "--geometry", "2,4", "--size", "64", "--out", str(out), "--threads", "1"])
    assert rc == 0
    doc = json.loads((out / "robustness.json").read_text())
    r = doc["results"]["a"]
    assert set(r["geometry"]) == {"2", "4"} and set(r["stand_ins"]) == {"other_town", "other_camera"}
    assert r["conditions"] == {} and 0 <= r["mPA-G"] <= 1
    assert doc["geometry"]["severities"]["4"]["aspect"] == pytest.approx(16 / 9)
    with pytest.raises(SystemExit, match="unknown stand-in 'mars'"):
        main(["robustness", "--data", str(tmp_path / "data"), "--split", "all", "--model", str(a),
              "--stand-ins", "mars", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="unknown geometry severity 6"):
        main(["robustness", "--data", str(tmp_path / "data"), "--split", "all", "--model", str(a),
              "--geometry", "6", "--out", str(tmp_path / "o")])


def test_lovasz_softmax_is_the_specified_iou_surrogate():
    """Berman et al.'s Lovász-softmax: 0 for a perfect prediction, 1 - IoU for a hard
    prediction (on one class: the Jaccard loss itself), ignored pixels never count, and its
    gradient reaches every class present."""
    import torch

    from model_store.palette import IGNORE_ID
    from trainer.losses import lovasz_softmax
    labels = torch.tensor([[[0, 0, 1, 1], [0, 1, 1, IGNORE_ID]]])
    sure = torch.zeros(1, 2, 2, 4)
    sure[0, 0][labels[0] == 0] = 50.0
    sure[0, 1][labels[0] != 0] = 50.0
    assert lovasz_softmax(sure, labels, IGNORE_ID).item() == pytest.approx(0, abs=1e-6)
    # predict class 1 everywhere: class 0's IoU 0 (loss 1), class 1's IoU 4/7 (loss 3/7)
    wrong = torch.zeros(1, 2, 2, 4)
    wrong[0, 1] = 50.0
    assert lovasz_softmax(wrong, labels, IGNORE_ID).item() == pytest.approx((1 + 3 / 7) / 2, abs=1e-4)
    # the ignored pixel changes nothing, whatever is predicted there
    other = wrong.clone()
    other[0, :, 1, 3] = torch.tensor([50.0, 0.0])
    assert lovasz_softmax(other, labels, IGNORE_ID).item() == pytest.approx((1 + 3 / 7) / 2, abs=1e-4)
    logits = torch.randn(2, 13, 8, 8, requires_grad=True)
    lovasz_softmax(logits, torch.randint(0, 13, (2, 8, 8)), IGNORE_ID, stride=2).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert lovasz_softmax(logits, torch.full((2, 8, 8), IGNORE_ID), IGNORE_ID).item() == 0.0
