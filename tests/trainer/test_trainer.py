"""trainer: architecture shapes, datasets/label formats, metrics, a tiny training run,
ONNX export equivalence.  Runs in well under a minute on 2 CPU cores."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer.data import (DataError, RareClassSampler, augment, class_mix, find_pairs, load_folder,
                          read_label, synthetic_data, time_split, write_folder)
from model_store.metrics import ConfusionMatrix, confusion_image, grid_image, hood_mask
from model_store.palette import CLASS_COLORS, NUM_CLASSES, colorize, rgb_palette_to_ids

torch = pytest.importorskip("torch")


# --- architecture -------------------------------------------------------------------------

def test_stage_shapes_match_appendix_at_512():
    from trainer.enet import ENet, STAGE_SHAPES
    net = ENet().eval()
    with torch.no_grad():
        shapes = {name: tuple(x.shape) for name, x in net.stages(torch.zeros(1, 3, 512, 512))}
    expect = {"initial": (1, 16, 256, 256), "stage1": (1, 64, 128, 128), "stage2": (1, 128, 64, 64),
              "stage3": (1, 128, 64, 64), "stage4": (1, 64, 128, 128), "stage5": (1, 16, 256, 256),
              "stage6": (1, 16, 512, 512), "classifier": (1, 13, 512, 512)}
    assert shapes == expect
    for name, (c, f) in STAGE_SHAPES.items():
        assert shapes[name] == (1, c, 512 // f, 512 // f)


@pytest.mark.parametrize("variant", ["prelu", "relu"])
def test_params_and_every_conv_has_batchnorm(variant):
    from trainer.enet import ENet, count_params
    net = ENet(variant=variant)
    n = count_params(net)
    assert 150_000 < n < 260_000, n          # the paper: 0.2M
    mods = list(net.modules())
    convs = [m for m in mods if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    bns = [m for m in mods if isinstance(m, torch.nn.BatchNorm2d)]
    # every conv but the classifier feeds a BN (the initial block's conv shares one BN with the pool)
    assert len(bns) == len(convs) - 1
    assert all(c.bias is None for c in convs if c is not net.classifier)
    acts = {type(m).__name__ for m in mods} & {"PReLU", "ReLU"}
    assert acts == {"PReLU" if variant == "prelu" else "ReLU"}


def test_unknown_variant():
    from trainer.enet import ENet
    with pytest.raises(ValueError, match="variant"):
        ENet(variant="gelu")


# --- data ---------------------------------------------------------------------------------

def _scene(seed=0, h=48, w=64):
    d = synthetic_data(1, h, w, seed)
    return d.images[0], d.labels[0]


def _write_pair(root: Path, stem: str, img, label_bgr_or_gray):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "images" / f"{stem}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "labels" / f"{stem}.png"), label_bgr_or_gray)


def test_label_formats_single_channel_lyft_red_and_palette(tmp_path):
    img, lab = _scene()
    _write_pair(tmp_path, "a_ids", img, lab)
    lyft = np.zeros(lab.shape + (3,), np.uint8)                  # RGB, id in red, noise in G/B
    lyft[..., 0] = lab
    lyft[..., 1] = (lab * 7) % 200
    lyft[..., 2] = 5
    _write_pair(tmp_path, "b_lyft", img, cv2.cvtColor(lyft, cv2.COLOR_RGB2BGR))
    pal = colorize(lab)
    _write_pair(tmp_path, "c_palette", img, cv2.cvtColor(pal, cv2.COLOR_RGB2BGR))
    d = load_folder(tmp_path, None)
    assert d.names == ["a_ids", "b_lyft", "c_palette"]
    for i in range(3):
        np.testing.assert_array_equal(d.labels[i], lab)
    np.testing.assert_array_equal(d.images[0], img)
    assert rgb_palette_to_ids(np.array([[CLASS_COLORS[7], (1, 2, 3)]], np.uint8)) is None


def test_resize_on_load_and_split(tmp_path):
    data = synthetic_data(5, 40, 56, seed=1)
    write_folder(data, tmp_path)
    d = load_folder(tmp_path, 32)
    assert d.images.shape == (5, 32, 32, 3) and d.labels.shape == (5, 32, 32)
    assert d.labels.max() < NUM_CLASSES
    tr, va = time_split(479, 0.2, 10)
    assert (tr[0], tr[-1], va[0], va[-1]) == (0, 372, 383, 478)
    assert va[0] - tr[-1] == 11
    tr, va = time_split(479, 0.2, 10, val_at="start")          # the second fold: the drive's start
    assert (va[0], va[-1], tr[0], tr[-1]) == (0, 95, 106, 478)
    assert tr[0] - va[-1] == 11
    with pytest.raises(ValueError, match="val_at"):
        time_split(479, 0.2, 10, val_at="middle")


def test_bad_files_name_the_file(tmp_path):
    img, lab = _scene()
    _write_pair(tmp_path, "0001", img, lab)
    (tmp_path / "images" / "0002.png").write_bytes(b"not a png")
    cv2.imwrite(str(tmp_path / "labels" / "0002.png"), lab)
    with pytest.raises(DataError, match=r"0002\.png.*cannot read image"):
        load_folder(tmp_path, None)
    # size mismatch
    _write_pair(tmp_path, "0002", img, cv2.resize(lab, (10, 10), interpolation=cv2.INTER_NEAREST))
    with pytest.raises(DataError, match=r"labels.0002\.png.*does not match"):
        load_folder(tmp_path, None)
    # class id > 12
    bad = lab.copy()
    bad[3, 4] = 200
    _write_pair(tmp_path, "0002", img, bad)
    with pytest.raises(DataError, match=r"0002\.png: class id 200 > 12"):
        load_folder(tmp_path, None)
    with pytest.raises(DataError, match="class id"):
        read_label(tmp_path / "labels" / "0002.png")
    # missing label
    cv2.imwrite(str(tmp_path / "images" / "0003.png"), img)
    with pytest.raises(DataError, match="no label"):
        find_pairs(tmp_path)
    with pytest.raises(DataError, match="folder not found"):
        find_pairs(tmp_path / "nope")


def test_augment_shapes_and_label_values():
    img, lab = _scene(2, 128, 128)
    rng = np.random.default_rng(0)
    for _ in range(10):
        a, b = augment(img, lab, rng, 64)
        assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and b.shape == (64, 64)
        assert set(np.unique(b)) <= set(np.unique(lab))


def _speck_frames(n=6, size=128):
    """Road everywhere, one 3x3 speck of TrafficSign (12) in frame 4 only, near a corner."""
    labs = np.full((n, size, size), 7, np.uint8)
    labs[:, :size // 2] = 1                           # half building, so the common classes vary
    labs[4, 5:8, size - 8:size - 5] = 12
    imgs = np.zeros((n, size, size, 3), np.uint8)
    return imgs, labs


def test_augment_focus_keeps_the_pixel_in_the_crop():
    imgs, labs = _speck_frames()
    rng = np.random.default_rng(0)
    seen = [12 in augment(imgs[4], labs[4], rng, 32, (1.0, 1.0), focus=(6, 121))[1] for _ in range(50)]
    assert all(seen)
    # without a focus a 32-pixel crop of a 128-pixel frame mostly misses the speck
    seen = [12 in augment(imgs[4], labs[4], rng, 32, (1.0, 1.0))[1] for _ in range(50)]
    assert sum(seen) < 25


def test_rare_class_sampler_favours_the_rare_class_and_finds_its_pixels():
    imgs, labs = _speck_frames()
    s = RareClassSampler(labs, temperature=0.1)
    assert s.class_p[12] > 0.9 and s.class_p[0] == 0        # absent classes are never drawn
    rng = np.random.default_rng(1)
    draws = [s.draw(rng) for _ in range(200)]
    for j, (y, x) in draws:
        assert labs[j][y, x] in (1, 7, 12)
    specks = [(j, yx) for j, yx in draws if labs[j][yx] == 12]
    assert len(specks) > 150 and all(j == 4 for j, _ in specks)


def test_class_mix_pastes_whole_classes_of_the_source():
    img, lab = np.zeros((32, 32, 3), np.uint8), np.full((32, 32), 7, np.uint8)
    src_img = np.full((32, 32, 3), 200, np.uint8)
    src_lab = np.repeat(np.array([1, 2, 3, 4], np.uint8), 8)[None].repeat(32, 0)
    out_img, out_lab = class_mix(img, lab, src_img, src_lab, np.random.default_rng(0))
    pasted = set(np.unique(out_lab)) - {7}
    assert len(pasted) == 2 and pasted <= {1, 2, 3, 4}
    m = np.isin(src_lab, list(pasted))
    assert (out_img[m] == 200).all() and (out_img[~m] == 0).all() and (out_lab[~m] == 7).all()
    assert (lab == 7).all() and (img == 0).all()              # inputs untouched


def test_rare_crops_and_class_mix_batches_are_reproducible_and_default_unchanged():
    from trainer.train import TrainConfig, _AugmentedBatches
    imgs, labs = _speck_frames(16, 64)
    imgs = np.random.default_rng(0).integers(0, 255, imgs.shape, dtype=np.uint8)
    data = synthetic_data(1)
    data.images, data.labels, data.names = imgs, labs, [f"{i:04d}" for i in range(16)]
    on = TrainConfig(size=32, batch=4, rare_crops=0.5, class_mix=0.5)
    a, b = _AugmentedBatches(data, on, 4)[5], _AugmentedBatches(data, on, 4)[5]
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    off = TrainConfig(size=32, batch=4)
    base = _AugmentedBatches(data, off, 4)[5]
    # off, the batch is drawn exactly as before the options existed
    rng = np.random.default_rng([off.seed, 1, 1])
    perm = np.random.default_rng([off.seed, 1]).permutation(16)
    ref = [augment(imgs[j], labs[j], rng, 32, (off.scale_min, off.scale_max)) for j in perm[4:8]]
    assert (base[0] == np.stack([r[0] for r in ref])).all()
    assert not (a[0] == base[0]).all()


# --- metrics ------------------------------------------------------------------------------

def test_confusion_matrix_figures():
    t = np.array([[0, 0, 1, 1], [2, 2, 2, 2]], np.uint8)
    p = np.array([[0, 1, 1, 1], [2, 2, 0, 2]], np.uint8)
    cm = ConfusionMatrix()
    cm.update(p, t)
    assert cm.pixel_accuracy() == pytest.approx(6 / 8)
    acc, iou = cm.class_accuracy(), cm.iou()
    assert acc[0] == pytest.approx(0.5) and acc[1] == 1.0 and acc[2] == pytest.approx(0.75)
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(2 / 3) and iou[2] == pytest.approx(0.75)
    assert np.isnan(iou[5])
    assert cm.mean_iou() == pytest.approx(np.mean([1 / 3, 2 / 3, 0.75]))
    s = cm.summary()
    assert s["per_class"]["Building"]["accuracy"] == 1.0 and s["per_class"]["Pole"]["iou"] is None
    json.dumps(s)
    cm2 = ConfusionMatrix()
    cm2.update(p, t, mask=np.array([[1, 1, 1, 1], [0, 0, 0, 0]], bool))
    assert cm2.total == 4
    assert hood_mask(600, 800)[495:].all() and not hood_mask(600, 800)[:495].any()
    assert confusion_image(cm).ndim == 3
    assert grid_image([np.zeros((2, 4, 3), np.uint8)], [t], [p], tile_width=8).shape[1] == 12


def test_metrics_module_imports_without_torch():
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None\n"
            "import model_store.metrics, model_store.palette, trainer.data\n"
            "print(model_store.metrics.ConfusionMatrix().n)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "13"


# --- training -----------------------------------------------------------------------------

def test_tiny_training_run_lowers_loss(tmp_path):
    from trainer.train import TrainConfig, train
    cfg = TrainConfig(data="synthetic", synthetic_n=40, out=str(tmp_path / "run"), epochs=5, size=64,
                      load_size=64, eval_size=64, batch=4, lr=1e-2, gap=2, val_fraction=0.2, ema=0,
                      amp="off", progress=False, seed=0, threads=1)
    lines = []
    summary = train(cfg, log=lines.append)
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 5 and summary["epochs"] == 5
    epoch_lines = [l for l in lines if l.startswith("epoch ")]
    assert len(epoch_lines) == 5 and "ETA" in epoch_lines[0] and "ETA" not in epoch_lines[-1], epoch_lines
    assert recs[-1]["loss"] < 0.8 * recs[0]["loss"], [r["loss"] for r in recs]
    assert (tmp_path / "run" / "last.pt").exists() and (tmp_path / "run" / "best.pt").exists()
    # resume: two more epochs continue from the checkpoint
    cfg.epochs = 6
    train(cfg, resume=True, log=lambda *a: None)
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == list(range(1, 7))


def test_batches_do_not_depend_on_the_worker_count(tmp_path):
    """--workers N augments in N processes: each batch's generator is seeded by (seed, epoch,
    step), so the loss curve is the same for 0 and 2 workers, and a resumed run goes on exactly.
    On the CPU: two identical runs on a GPU (an H200) already differ in the last digits, since
    some CUDA kernels are not deterministic."""
    from trainer.train import TrainConfig, train
    class Stop(Exception):
        pass

    def stop_after_epoch_2(line):
        if line.startswith("epoch 2/"):
            raise Stop     # as if killed right after epoch 2's checkpoint

    # a folder, not data="synthetic": loading it runs OpenCV's thread pool in the parent
    # before the workers fork (the case that once hung them)
    from trainer.data import synthetic_data
    frames = synthetic_data(24, 512, 512, seed=3)
    for d in ("images", "labels"):
        (tmp_path / "data" / d).mkdir(parents=True)
    for img, lab, name in zip(frames.images, frames.labels, frames.names):
        cv2.imwrite(str(tmp_path / "data" / "images" / f"{name}.png"), img[..., ::-1])
        cv2.imwrite(str(tmp_path / "data" / "labels" / f"{name}.png"), lab)

    def run(name, workers, resume=False, log=lambda *a: None):
        cfg = TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / name), epochs=3, size=48,
                          load_size=64, eval_size=64, batch=4, gap=2, ema=0.9, amp="off", progress=False,
                          seed=3, threads=1, workers=workers, device="cpu")
        train(cfg, resume=resume, log=log)
        return [json.loads(l)["loss"] for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    serial = run("serial", 0)
    assert run("workers", 2) == serial
    with pytest.raises(Stop):
        run("resumed", 0, log=stop_after_epoch_2)
    assert run("resumed", 0, resume=True) == serial


def test_workers_default_by_device():
    from trainer.train import default_workers
    assert default_workers(torch.device("cpu")) == 0          # beside the loop it only takes cores
    assert 1 <= default_workers(torch.device("cuda")) <= 8    # the loop alone starves a GPU


def test_enet_class_weights():
    from trainer.train import enet_class_weights
    lab = np.zeros((10, 10), np.uint8)
    lab[:, :1] = 3
    w = enet_class_weights(lab)
    assert w[0] == pytest.approx(1 / np.log(1.02 + 0.9), rel=1e-5)
    assert w[3] == pytest.approx(1 / np.log(1.02 + 0.1), rel=1e-5)
    assert w[5] == pytest.approx(1 / np.log(1.02), rel=1e-5)


# --- export -------------------------------------------------------------------------------

def test_export_equivalence_small_input():
    pytest.importorskip("onnxruntime")
    from trainer.enet import ENet
    from trainer.export import Deployable, check_equivalence, export_onnx
    from trainer.ort_session import ort_session
    torch.manual_seed(0)
    net = ENet(variant="prelu").eval()
    for m in net.modules():   # non-trivial BN statistics so folding is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    onnx_bytes = export_onnx(net, size=64)
    imgs = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert check_equivalence(net, onnx_bytes, imgs) >= 0.999
    sess = ort_session(onnx_bytes)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("image", "tensor(uint8)", [64, 64, 3])
    assert (out.name, out.type, out.shape) == ("classes", "tensor(uint8)", ["N", 64, 64])
    assert inp.shape[0] == "N"
    got = sess.run(["classes"], {"image": imgs})[0]          # dynamic batch
    assert got.shape == (2, 64, 64)
    with torch.no_grad():
        ref = Deployable(net)(torch.from_numpy(imgs)).numpy()
    assert (got == ref).mean() >= 0.999


def test_export_command_packs_a_rewritten_graph_that_matches_pytorch(tmp_path):
    """`trainer export` rewrites the channel Pads as identity convs (ORT speed) and the
    packed blob still gives PyTorch's class maps; --plain-graph keeps the exporter's graph."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    import model_store
    from trainer.__main__ import main as trainer_main
    from trainer.export import Deployable
    from trainer.ort_session import ort_session
    from trainer.train import TrainConfig, load_checkpoint, train
    cfg = TrainConfig(data="synthetic", synthetic_n=8, out=str(tmp_path / "run"), epochs=1, size=64,
                      load_size=64, eval_size=64, batch=4, val_fraction=0, ema=0, amp="off",
                      progress=False, seed=0, threads=1)
    train(cfg, log=lambda *a: None)
    ck = str(tmp_path / "run" / "last.pt")
    ops = {}
    for name, extra in (("rewritten", []), ("plain", ["--plain-graph"])):
        out = tmp_path / f"{name}.vsb"
        assert trainer_main(["export", "--checkpoint", ck, "-o", str(out), "--size", "64"] + extra) == 0
        card, onnx_bytes = model_store.load(out, model_store.verify(out))
        ops[name] = [n.op_type for n in onnx.load_from_string(onnx_bytes).graph.node]
        net, _ = load_checkpoint(ck, use_ema=False)
        imgs = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
        got = ort_session(onnx_bytes, threads=1).run(["classes"], {"image": imgs})[0]
        with torch.no_grad():
            ref = Deployable(net.float().eval())(torch.from_numpy(imgs)).numpy()
        assert (got == ref).mean() >= 0.999, name
    assert "Pad" in ops["plain"] and "Pad" not in ops["rewritten"]
    assert ops["rewritten"].count("Conv") == ops["plain"].count("Conv") + ops["plain"].count("Pad")


@pytest.mark.parametrize("name,value", [("VERISEG_CHAIN_ID", "abc"), ("VERISEG_CHAIN", "ftp://node")])
def test_export_register_with_a_bad_chain_variable_is_one_line_before_any_work(tmp_path, monkeypatch, capsys,
                                                                              name, value):
    from trainer.__main__ import main as trainer_main
    monkeypatch.setenv(name, value)
    rc = trainer_main(["export", "--checkpoint", str(tmp_path / "none.pt"), "-o", str(tmp_path / "m.vsb"),
                       "--register"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and name in err, err
    assert not (tmp_path / "m.vsb").exists()


@pytest.mark.carla
def test_carla_folder_loads():
    root = os.environ.get("VERISEG_CARLA_DIR")
    if not root:
        pytest.skip("VERISEG_CARLA_DIR is not set")
    d = load_folder(root, 128, limit=5)
    assert d.images.shape == (5, 128, 128, 3) and d.labels.max() <= 12


def test_committed_blob_and_sample_clip():
    """models/carla-enet.vsb verifies, its card matches the graph, and it segments a clip frame."""
    pytest.importorskip("onnxruntime")
    model_store = pytest.importorskip("model_store")
    from trainer.ort_session import ort_session
    root = Path(__file__).resolve().parents[2] / "models"
    blob = root / "carla-enet.vsb"
    if not blob.exists():
        pytest.skip("no committed blob")
    key = model_store.verify(blob)
    card, onnx_bytes = model_store.load(blob, key)
    assert card.inputs[0].name == "image" and card.inputs[0].dtype == "uint8"
    assert tuple(card.inputs[0].shape[1:]) == (512, 512, 3)
    assert card.outputs[0].name == "classes" and len(card.classes) == NUM_CLASSES
    assert card.metrics["pixel_accuracy"] > 0.85
    cap = cv2.VideoCapture(str(root / "sample.avi"))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (600, 800, 3)
    x = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), (512, 512), interpolation=cv2.INTER_AREA)[None]
    out = ort_session(onnx_bytes, threads=1).run(["classes"], {"image": x})[0]
    assert out.shape == (1, 512, 512) and out.dtype == np.uint8 and out.max() < NUM_CLASSES
    # a road scene: road in the lower middle, the ego hood (car) at the bottom
    assert (out[0, 400:420, 200:312] == 7).mean() > 0.5
    assert (out[0, 500:, 150:350] == 10).mean() > 0.5


def test_the_record_names_every_training_option_the_run_turned_on():
    from trainer.export import ANTI_OVERFITTING, _against_overfitting
    assert _against_overfitting({}) == ANTI_OVERFITTING
    turned_on = _against_overfitting({"rare_crops": 0.5, "class_mix": 0.5, "conditions": 0.6, "geometry": 0.5,
                                      "consistency": 2.0, "lovasz": 0.5, "init": "base.pt"})
    extra = turned_on[len(ANTI_OVERFITTING):]
    for words in ("rare-class crops: 50%", "ClassMix: 50%", "conditions: 60%", "camera geometry: 50%",
                  "consistency (weight 2.0)", "Lovász-softmax loss (weight 0.5)", "fine-tuned from base.pt"):
        assert sum(words in line for line in extra) == 1, words


def test_the_card_names_the_recipe_options_the_run_turned_on():
    """A blob read on its own says how it was trained: the options that were on, the name
    (not the local path) of the weights it was tuned from; options left off are left out."""
    from trainer.export import RECIPE_OPTIONS, build_card
    from trainer.train import TrainConfig
    cfg = dict(vars(TrainConfig(data="synthetic", out="run")), rare_crops=0.5, class_mix=0.5, conditions=0.6,
               geometry=0.5, consistency=0.0, lovasz=0.0, init="/home/someone/runs/base.ckpt.pt")
    card = build_card({"config": cfg, "meta": {}, "state": {}}, 64, 17, {})
    tp = card.training_params
    assert {k: tp.get(k) for k in RECIPE_OPTIONS} == {"rare_crops": 0.5, "class_mix": 0.5, "conditions": 0.6,
                                                      "geometry": 0.5, "consistency": None, "lovasz": None}
    assert tp["init"] == "base.ckpt.pt"
    plain = build_card({"config": dict(cfg, rare_crops=0, class_mix=0, conditions=0, geometry=0, init=None),
                        "meta": {}, "state": {}}, 64, 17, {}).training_params
    assert not set(plain) & {*RECIPE_OPTIONS, "init"}
