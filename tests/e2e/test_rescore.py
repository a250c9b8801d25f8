"""Re-execution end to end: a flow run keeps its decoded frames and anchors v3 leaves on the
embedded chain; ``python -m chain anchor-verify --rescore`` re-runs the registered model on
each kept frame. A device that anchors, consistently and with its own keys, a mask the
model did not produce passes every other check and is caught here.

The flow scores a 10-image folder whose image 4 is corrupt, anchoring every 4 results:
batches 0..3, 5..8 and 9..9, every frame kept.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import pytest
from bytewax.testing import run_main

import chain
import model_store
from chain import anchoring
from chain.cli import main as chain_main
from chain.frame_digest import frame_digest
from chain.results import frame_record
from chain.retained_frame import encode_frame, read_frame, write_frame
from dataflows.segment import build_flow
from tests.flow_fixtures import (ANCHORED_BATCHES, ANCHORED_SCORED, anchored_folder_run, env_for,
                                 expected_classes, make_blob, make_folder, read_jsonl, register_embedded)
from operators.anchor_seal import load_secret, write_sealed
from operators.config import load_config

SID = "frames"
SCORED, BATCHES = ANCHORED_SCORED, ANCHORED_BATCHES


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    base = tmp_path_factory.mktemp("kept")
    cfg, key = anchored_folder_run(base, SID, frames=10, every=4, bad=4, VERISEG_KEEP_FRAMES="all")
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["anchors_sent"] == 3 and summary["frames_kept"] == {SID: 9}, summary
    return base, key


class Run:
    def __init__(self, root: Path, key: str, capsys):
        self.root, self.key, self.capsys = root, key, capsys
        self.out, self.home = root / "out", root / "home"
        self.results = self.out / SID / "results.jsonl"

    def batch(self, seq: int) -> Path:
        return self.out / "anchors" / SID / BATCHES["A" if seq <= 3 else "B" if seq <= 8 else "C"]

    def frame(self, seq: int) -> Path:
        return self.out / SID / "frames" / f"{seq:06d}.bgr.vsf"

    def mask(self, seq: int) -> Path:
        return self.out / SID / "masks" / f"{seq:06d}.png"

    def verify(self, seq: int, *extra) -> tuple[int, str, str]:
        self.capsys.readouterr()
        rc = chain_main(["--chain", "embedded", "--home", str(self.home), "anchor-verify",
                         str(self.batch(seq)), "--stream", SID, "--seq", str(seq),
                         "--result", str(self.results), *map(str, extra)])
        out, err = self.capsys.readouterr()
        return rc, out, err

    def refused(self, check: str, seq: int, *extra) -> str:
        rc, out, err = self.verify(seq, *extra)
        assert rc == 1 and out == "", (rc, out, err)
        (line,) = err.splitlines()
        assert line.startswith(f"anchor-verify failed [{check}]: "), line
        return line


@pytest.fixture
def run(pristine, tmp_path, capsys):
    base, key = pristine
    for sub in ("out", "home", "models"):
        shutil.copytree(base / sub, tmp_path / sub)
    # the registered URI names the blob in the pristine folder, which stays as it is
    return Run(tmp_path, key, capsys)


def test_every_kept_frame_hashes_to_its_leaf_and_rescores(run, pristine):
    base, _ = pristine
    rows = {r["seq"]: r for r in read_jsonl(run.results)}
    assert sorted(rows) == SCORED
    for seq in SCORED:
        image, colour = read_frame(run.frame(seq))
        # the kept frame is the decoded source image, pixel for pixel
        assert colour == "BGR" and np.array_equal(image, cv2.imread(str(base / SID / f"{seq:04d}.png")))
        b, _ = anchoring.AnchorBatch.read(run.batch(seq))
        leaf = b.leaves[b.index_of(SID, seq)]
        assert frame_digest(image, colour) == leaf.frame == bytes.fromhex(rows[seq]["frame"])
        assert leaf.profile.as_dict() == rows[seq]["profile"]
        rc, out, err = run.verify(seq, "--rescore")
        assert rc == 0 and err == "", err
        assert out.rstrip().endswith("rescored: 1024 pixels compared, 1024 identical, 0 within "
                                     f"tolerance (exact; anchored with {leaf.profile}, re-run with "
                                     f"onnxruntime {onnxruntime.__version__} CPU fp32)")


def test_a_device_that_anchors_a_mask_the_model_did_not_produce_is_caught_by_rescore(run):
    """The device repaints a region of frame 6's mask before hashing it, then does
    everything consistently with its own keys: the leaf (frame digest and profile kept),
    the batch, its seal, the root anchored on chain by its anchorer account, the results
    line. Every check anchor-verify had passes; re-running the model refuses it."""
    seq = 6
    m = cv2.imread(str(run.mask(seq)), cv2.IMREAD_UNCHANGED)
    m[8:16, 8:16] = (m[8:16, 8:16] + 5) % 13          # 64 pixels repainted
    cv2.imwrite(str(run.mask(seq)), m)
    doc = json.loads(run.batch(seq).read_text())
    leaves = [anchoring.Leaf.from_json(x) for x in doc["leaves"]]
    rows = read_jsonl(run.results)
    row = next(r for r in rows if r["seq"] == seq)
    card_names = [c.name for c in model_store.read_header(run.root / "models" / "tiny.vsb").classes]
    lf = leaves[[x.seq for x in leaves].index(seq)]
    rec = frame_record(SID, seq, run.key, m, ts=row["ts"], pos=row["pos"], class_names=card_names,
                       batch=row["batch"], mask=row["mask"], frame=lf.frame, profile=lf.profile)
    leaves[[x.seq for x in leaves].index(seq)] = rec.anchor_leaf
    forged = anchoring.AnchorBatch(run.key, leaves)
    reg = chain.connect(chain="embedded", home=run.home)   # the device's own anchorer account
    forged.anchor(reg)
    write_sealed(run.batch(seq), forged, load_secret(run.home, run.out))
    run.results.write_text("".join(json.dumps(dict(rec.line, latency_ms=r["latency_ms"]) if r["seq"] == seq
                                              else r) + "\n" for r in rows))

    rc, out, err = run.verify(seq)
    assert rc == 0 and out.startswith(f"verified: stream {SID} seq {seq}") and err == "", (out, err)
    line = run.refused("rescore_mismatch", seq, "--rescore")
    assert "rescore mismatch: 64 of 1024 pixels disagree" in line
    # its neighbours in the same forged batch still rescore
    assert run.verify(5, "--rescore")[0] == 0


def test_a_missing_or_another_frame_is_refused(run):
    run.frame(6).unlink()
    line = run.refused("frame_missing", 6, "--rescore")
    assert "keeps no frame 000006" in line and "VERISEG_KEEP_FRAMES" in line
    run.refused("frame_mismatch", 6, "--rescore", "--frame", run.frame(7))
    img, order = read_frame(run.frame(5))
    img = img.copy()
    img[0, 0, 0] ^= 1
    write_frame(run.frame(5).parent.parent, 5, img, order)
    line = run.refused("frame_mismatch", 5, "--rescore")
    assert "this is not the frame the device scored" in line
    run.refused("frame_missing", 7, "--rescore", "--frame", run.root / "nope.bgr.png")


def test_frame_needs_rescore_and_rescore_needs_a_blob(run, monkeypatch):
    rc, out, err = run.verify(7, "--frame", run.frame(7))
    assert rc == 1 and err.startswith("error: --frame is the frame to re-score")
    import chain.frame_proof
    monkeypatch.setattr(chain.frame_proof, "blob_of", lambda reg, key, blob=None: None)
    monkeypatch.setattr(chain.frame_proof, "_class_names",
                        lambda reg, key, blob=None: [c.name for c in model_store.read_header(
                            run.root / "models" / "tiny.vsb").classes])
    line = run.refused("rescore_unavailable", 7, "--rescore")
    assert "pass --blob BLOB" in line


def test_a_v2_leaf_cannot_be_rescored(tmp_path, capsys):
    """A run without frame digests (the benchmark's switch) writes v2 leaves: they verify,
    and --rescore says why it cannot re-run them."""
    blob = tmp_path / "models" / "tiny.vsb"
    make_blob(blob)
    register_embedded(tmp_path / "home", blob)
    folder = make_folder(tmp_path / SID, n=2)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=2, VERISEG_VIDEO=0,
                              VERISEG_KEEP_FRAMES="all"))
    run_main(build_flow(cfg.model_copy(update={"frame_digest": False})))
    row = read_jsonl(cfg.out / SID / "results.jsonl")[0]
    assert "frame" not in row and "profile" not in row
    args = ["--chain", "embedded", "--home", str(tmp_path / "home"), "anchor-verify",
            str(cfg.out / "anchors" / SID / "000000-000001.json"), "--stream", SID, "--seq", "0",
            "--result", str(cfg.out / SID / "results.jsonl")]
    capsys.readouterr()
    assert chain_main(args) == 0
    assert chain_main(args + ["--rescore"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("anchor-verify failed [rescore_unavailable]: ") and "v1/v2 leaf" in line


# ------------------------------------------------------------------ retention in the flow
def test_every_n_keeps_those_frames_and_a_budget_rotates_the_oldest_out(tmp_path):
    blob = tmp_path / "models" / "tiny.vsb"
    make_blob(blob)
    register_embedded(tmp_path / "home", blob)
    register_embedded(tmp_path / "b" / "home", blob)
    folder = make_folder(tmp_path / SID, n=12)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=0, VERISEG_VIDEO=0,
                              VERISEG_KEEP_FRAMES="every:5"))
    run_main(build_flow(cfg))
    kept = sorted(p.name for p in (cfg.out / SID / "frames").iterdir())
    assert kept == ["000000.bgr.vsf", "000005.bgr.vsf", "000010.bgr.vsf"]
    rows = {r["seq"]: r for r in read_jsonl(cfg.out / SID / "results.jsonl")}
    for name in kept:   # v2 leaves or not, the line states the kept frame's digest
        seq = int(name[:6])
        assert frame_digest(*read_frame(cfg.out / SID / "frames" / name)).hex() == rows[seq]["frame"]
    sizes = [len(encode_frame(cv2.imread(str(folder / f"{i:04d}.png")))) for i in range(12)]
    budget_mb = (sum(sizes[9:]) + min(sizes) / 2) / 1e6      # room for the last three frames
    cfg = load_config(env_for(tmp_path / "b", f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=0, VERISEG_VIDEO=0,
                              VERISEG_KEEP_FRAMES=f"budget:{budget_mb}"))
    run_main(build_flow(cfg))
    kept = sorted(int(p.name[:6]) for p in (cfg.out / SID / "frames").iterdir())
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert kept == [9, 10, 11]
    assert summary["frames_kept"] == {SID: 12} and summary["frames_rotated"] == {SID: 9}


def test_a_frame_that_cannot_be_kept_stops_the_flow_as_a_mask_does(tmp_path, monkeypatch):
    import operators.sinks.frames as frames_sink
    blob = tmp_path / "models" / "tiny.vsb"
    make_blob(blob)
    register_embedded(tmp_path / "home", blob)
    folder = make_folder(tmp_path / SID, n=40)
    calls = {"n": 0}
    real = frames_sink.write_frame

    def full(*a):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(28, "No space left on device")
        return real(*a)
    monkeypatch.setattr(frames_sink, "write_frame", full)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=0, VERISEG_VIDEO=0,
                              VERISEG_KEEP_FRAMES="all"))
    with pytest.raises(RuntimeError):
        run_main(build_flow(cfg))
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["error"].startswith(f"stream {SID}: writing outputs to ") and "No space left" in summary["error"]
    assert summary["frames_kept"] == {SID: 3}
    assert len(read_jsonl(cfg.out / SID / "results.jsonl")) == 3


def test_expected_classes_are_what_the_tiny_model_gives():
    """The lying-device test repaints a region with other classes: (c + 5) % 13 != c."""
    rgb = np.random.default_rng(1).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    c = expected_classes(rgb)
    assert not np.any((c + 5) % 13 == c)
