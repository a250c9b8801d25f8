"""Attacks on anchored results, end to end: a real flow run anchors its results on the
embedded chain, then the outputs in ``out/`` are altered or the anchor batch files forged,
and ``python -m chain anchor-verify`` must refuse each with one line naming the failing
check (``anchor-verify failed [CHECK]: ...``) and exit status 1, while the untouched
frames still verify.

The flow scores a 10-image folder whose image 4 is corrupt (skipped: the model never
scored seq 4), anchoring every 4 results: batches 0..3, 5..8 and 9..9.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from bytewax.testing import run_main

import chain
from chain import anchoring
from chain.cli import main as chain_main
from dataflows.segment import build_flow
from tests.flow_fixtures import ANCHORED_BATCHES, ANCHORED_SCORED, anchored_folder_run, env_for, make_blob, read_jsonl
from operators.config import load_config

REPO = Path(__file__).resolve().parents[2]
SID = "frames"
SCORED, BATCHES = ANCHORED_SCORED, ANCHORED_BATCHES


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One flow run on the embedded chain; tests work on copies of its outputs and chain."""
    base = tmp_path_factory.mktemp("anchored")
    cfg, key = anchored_folder_run(base, SID, frames=10, every=4, bad=4)
    summary = json.loads((cfg.out / "summary.json").read_text())
    # the flow's own counters: every batch anchored, none failed, the corrupt frame counted
    assert summary["anchors_sent"] == 3 and summary["anchor_failures"] == 0, summary
    assert summary["bad"] == 1
    assert [r["seq"] for r in read_jsonl(cfg.out / SID / "results.jsonl")] == SCORED
    assert sorted(p.name for p in (cfg.out / "anchors" / SID).iterdir()) == sorted(BATCHES.values())
    return base, key


class Run:
    """A private copy of the run (outputs and chain state) and anchor-verify on it."""

    def __init__(self, root: Path, key: str, capsys):
        self.root, self.key, self.capsys = root, key, capsys
        self.out = root / "out"
        self.home = root / "home"

    def batch(self, name: str) -> Path:
        return self.out / "anchors" / SID / BATCHES.get(name, name)

    def mask(self, seq: int) -> Path:
        return self.out / SID / "masks" / f"{seq:06d}.png"

    @property
    def results(self) -> Path:
        return self.out / SID / "results.jsonl"

    def args(self, batch: str, seq: int, mask=None, result=False, stream=SID) -> list[str]:
        a = ["--chain", "embedded", "--home", str(self.home), "anchor-verify", str(self.batch(batch)),
             "--stream", stream, "--seq", str(seq)]
        if mask is not False:
            a += ["--mask", str(mask or self.mask(seq))]
        if result:
            a += ["--result", str(self.results)]
        return a

    def verify(self, batch: str, seq: int, **kw) -> tuple[int, str, str]:
        """``python -m chain anchor-verify`` in process: (exit status, stdout, stderr)."""
        self.capsys.readouterr()
        rc = chain_main(self.args(batch, seq, **kw))
        out, err = self.capsys.readouterr()
        return rc, out, err

    def refused(self, check: str, batch: str, seq: int, **kw) -> str:
        """Assert a refusal by ``check``: exit 1, nothing on stdout, one line on stderr."""
        rc, out, err = self.verify(batch, seq, **kw)
        assert rc == 1 and out == "", (rc, out, err)
        lines = err.splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"anchor-verify failed [{check}]: "), lines[0]
        assert "Traceback" not in err
        return lines[0]

    def verifies(self, batch: str, seq: int, **kw) -> str:
        rc, out, err = self.verify(batch, seq, **kw)
        assert rc == 0 and err == "", (rc, out, err)
        assert out.startswith(f"verified: stream {SID} seq {seq} is in batch root "), out
        assert f"for model {self.key} (active)" in out
        return out

    def doc(self, name: str) -> dict:
        return json.loads(self.batch(name).read_text())

    def write(self, name: str, doc: dict) -> Path:
        p = self.batch(name) if name in BATCHES else self.out / "anchors" / SID / name
        p.write_text(json.dumps(doc))
        return p


@pytest.fixture
def run(pristine, tmp_path, capsys):
    base, key = pristine
    root = tmp_path / "run"
    for sub in ("out", "home"):
        shutil.copytree(base / sub, root / sub)
    return Run(root, key, capsys)


def _batch_of(seq: int) -> str:
    return "A" if seq <= 3 else "B" if seq <= 8 else "C"


def _redigest(key: str, x: dict, class_map) -> str:
    """A batch leaf's digest for another class map, every other claim it binds kept (ts,
    pos, frame digest, profile)."""
    lf = anchoring.Leaf.from_json(x)
    return anchoring.leaf_digest(lf.stream, lf.seq, key, class_map, ts=lf.ts, pos=lf.pos,
                                 frame=lf.frame, profile=lf.profile).hex()


def _rebuilt(doc: dict, leaves: list[dict]) -> dict:
    """What a forger with write access (and no anchorer key) can do: a batch file whose
    leaves, proofs and root are all consistent with each other."""
    b = anchoring.AnchorBatch(doc["model_key"], [anchoring.Leaf.from_json(x) for x in leaves])
    d = b.to_json(include_proofs=True)
    d["chain"] = doc["chain"]
    return d


# --------------------------------------------------------------------------- untouched
def test_every_untouched_frame_verifies_with_its_mask_and_results_line(run):
    for seq in SCORED:
        run.verifies(_batch_of(seq), seq)
    out = run.verifies("B", 6, result=True)
    assert out.rstrip().endswith(f"its line in {run.results} matches")
    # the results line names the mask: --mask can be left out
    run.verifies("B", 7, mask=False, result=True)


@pytest.mark.slow
def test_python_m_chain_anchor_verify_in_a_subprocess(run):
    """The real entry point: exit 0 for an untouched frame, exit 1 and one line (no
    traceback) once its mask was altered."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERISEG_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "chain"] + run.args("B", 6, result=True)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith(f"verified: stream {SID} seq 6"), p.stderr
    m = cv2.imread(str(run.mask(6)), cv2.IMREAD_UNCHANGED)
    m[0, 0] = (int(m[0, 0]) + 1) % 13
    cv2.imwrite(str(run.mask(6)), m)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stdout == "" and "Traceback" not in p.stderr
    (line,) = p.stderr.splitlines()
    assert line.startswith("anchor-verify failed [leaf_mismatch]: leaf mismatch: ")


# --------------------------------------------------------------------------- a result altered after anchoring
def test_one_pixel_changed_in_a_mask_is_refused_and_its_neighbours_still_verify(run):
    m = cv2.imread(str(run.mask(7)), cv2.IMREAD_UNCHANGED)
    m[31, 31] = (int(m[31, 31]) + 1) % 13
    assert cv2.imwrite(str(run.mask(7)), m)
    line = run.refused("leaf_mismatch", "B", 7)
    assert f"the mask's digest for stream '{SID}' seq 7 under model {run.key}" in line
    assert "the mask (or model key) is not the anchored result" in line
    for seq in (5, 6, 8):
        run.verifies("B", seq)


@pytest.mark.parametrize("how", ["another_frames_mask", "resized", "overlay_colours", "deleted",
                                 "not_an_image"])
def test_a_replaced_or_damaged_mask_is_refused(run, how):
    p = run.mask(7)
    if how == "another_frames_mask":
        shutil.copy(run.mask(6), p)
        check = "leaf_mismatch"
    elif how == "resized":
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(p), cv2.resize(m, (16, 16), interpolation=cv2.INTER_NEAREST))
        check = "leaf_mismatch"
    elif how == "overlay_colours":
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(p), cv2.merge((m, m, m)))
        check = "mask"
    elif how == "deleted":
        p.unlink()
        check = "mask"
    else:
        p.write_bytes(random.Random(1).randbytes(300))
        check = "mask"
    line = run.refused(check, "B", 7)
    if check == "mask":
        assert str(p) in line


@pytest.mark.parametrize("edit,check", [
    ("model_key", "result_model_key_mismatch"),
    ("shares_value", "result_shares_mismatch"),
    ("shares_swapped", "result_shares_mismatch"),
    ("leaf", "result_leaf_mismatch"),
    ("frame", "result_claim_mismatch"),
    ("profile", "result_claim_mismatch"),
    ("line_deleted", "result_missing"),
    ("edited_copy_appended", "result_ambiguous"),   # two lines: neither is the frame's
])
def test_a_results_line_altered_after_anchoring_is_refused(run, edit, check):
    lines = run.results.read_text().splitlines()
    i = next(n for n, x in enumerate(lines) if json.loads(x)["seq"] == 6)
    rec = json.loads(lines[i])
    other_key = "ab" * 32
    if edit == "model_key":
        rec["model_key"] = other_key
    elif edit == "shares_value":
        name = next(iter(rec["shares"]))
        rec["shares"][name] = round(rec["shares"][name] - 0.1, 5)
    elif edit == "shares_swapped":
        # a frame of one class: move its share to another class name
        (name, share), = rec["shares"].items()
        rec["shares"] = {("Road" if name != "Road" else "Car"): share}
    elif edit == "leaf":
        rec["leaf"] = "00" * 32
    elif edit == "frame":       # another frame's digest
        rec["frame"] = json.loads(lines[i - 1])["frame"]
    elif edit == "profile":     # claims the reference numerics it did not run with
        rec["profile"] = dict(rec["profile"], backend="tensorrt" if rec["profile"]["backend"] != "tensorrt" else "x")
    if edit == "line_deleted":
        del lines[i]
    elif edit == "edited_copy_appended":
        rec["model_key"] = other_key
        lines.append(json.dumps(rec))
    else:
        lines[i] = json.dumps(rec)
    run.results.write_text("\n".join(lines) + "\n")
    line = run.refused(check, "B", 6, result=True)
    assert f"stream '{SID}' seq 6" in line
    if check == "result_model_key_mismatch":
        assert f"says model {other_key}, the chain anchored this result for {run.key}" in line
    # the mask and the batch are untouched: without --result the frame verifies
    run.verifies("B", 6)
    run.verifies("B", 5, result=True)   # and the other lines still match


# --------------------------------------------------------------------------- forged anchor proofs
def test_a_changed_sibling_hash_in_a_proof_is_refused(run):
    doc = run.doc("B")
    idx = [x["seq"] for x in doc["leaves"]].index(6)
    step = doc["proofs"][idx][1]
    doc["proofs"][idx][1] = step[:2] + ("0" if step[2] != "0" else "1") + step[3:]
    run.write("B", doc)
    line = run.refused("proof_invalid", "B", 6)
    assert f"does not lead to the batch root {doc['root']}; the batch file was altered" in line
    run.verifies("B", 5)          # the other proofs in the file are intact


@pytest.mark.parametrize("root", ["random", "another_anchored_batch"])
def test_a_changed_stored_root_is_refused(run, root):
    doc = run.doc("B")
    doc["root"] = random.Random(2).randbytes(32).hex() if root == "random" else run.doc("A")["root"]
    run.write("B", doc)
    run.refused("proof_invalid", "B", 6)


def test_a_frame_pointed_to_another_batch_is_refused(run):
    # asked against the wrong batch file: the frame is not in it
    line = run.refused("leaf_missing", "B", 1)
    assert "covers seq 5..8" in line
    # its leaf copied into the other batch in place of frame 6: the proof there does not fit
    a, b = run.doc("A"), run.doc("B")
    moved = next(x for x in a["leaves"] if x["seq"] == 1)
    idx = [x["seq"] for x in b["leaves"]].index(6)
    b["leaves"][idx] = dict(moved)
    run.write("B", b)
    run.refused("proof_invalid", "B", 1)
    # ... and with proofs and root rebuilt to fit: that root was never anchored
    run.write("B", _rebuilt(b, b["leaves"]))
    line = run.refused("root_not_anchored", "B", 1)
    assert "is unknown to registry" in line


def test_a_changed_model_key_in_the_batch_is_refused(run):
    doc = run.doc("B")
    doc["model_key"] = "cd" * 32
    run.write("B", doc)
    run.refused("leaf_mismatch", "B", 6)


def test_a_self_consistent_forgery_of_an_altered_mask_is_refused_by_the_chain(run):
    """The forger alters a mask and rewrites everything off chain to match (leaf, proofs,
    root): only the on-chain root can tell, and does."""
    m = cv2.imread(str(run.mask(6)), cv2.IMREAD_UNCHANGED)
    m[:4, :4] = 12
    cv2.imwrite(str(run.mask(6)), m)
    doc = run.doc("B")
    for x in doc["leaves"]:
        if x["seq"] == 6:
            x["digest"] = _redigest(run.key, x, m)
    run.write("B", _rebuilt(doc, doc["leaves"]))
    line = run.refused("root_not_anchored", "B", 6)
    assert f"root {_rebuilt(doc, doc['leaves'])['root']} is unknown to registry" in line
    # without proofs in the file the verifier rebuilds the tree itself: same answer
    d = run.doc("B")
    del d["proofs"]
    run.write("B", d)
    run.refused("root_not_anchored", "B", 6)


@pytest.mark.parametrize("how", ["asked_in_a_batch", "leaf_added_root_kept",
                                 "leaf_added_tree_rebuilt", "past_the_end"])
def test_a_proof_for_a_frame_the_model_never_scored_is_refused(run, how):
    """Frame 4 was corrupt: the model never scored it. A forger makes a mask for it."""
    fake = np.full((32, 32), 4, np.uint8)
    cv2.imwrite(str(run.mask(4)), fake)
    leaf = {"stream": SID, "seq": 4, "digest": anchoring.leaf_digest(SID, 4, run.key, fake).hex()}
    doc = run.doc("B")
    if how == "asked_in_a_batch":
        line = run.refused("leaf_missing", "A", 4)
        assert f"has no result for stream '{SID}' seq 4 (it covers seq 0..3)" in line
        return
    if how == "past_the_end":
        cv2.imwrite(str(run.mask(42)), fake)
        run.refused("leaf_missing", "C", 42)
        return
    leaves = [leaf] + doc["leaves"]
    forged = _rebuilt(doc, leaves)
    if how == "leaf_added_root_kept":
        forged["root"] = doc["root"]
        run.write("B", forged)
        run.refused("proof_invalid", "B", 4)
    else:
        run.write("B", forged)
        run.refused("root_not_anchored", "B", 4)


def test_a_frame_of_a_stream_that_never_ran_is_refused(run):
    line = run.refused("leaf_missing", "B", 6, stream="cam9", mask=run.mask(6))
    assert "no result for stream 'cam9' seq 6" in line


@pytest.mark.parametrize("how,says", [
    ("not_json", "is not JSON"),
    ("wrong_format", "is not a VeriSeg anchor batch"),
    ("bad_proof_step", "is not 'L:<64 hex>' or 'R:<64 hex>'"),
    ("missing", "does not exist"),
])
def test_a_malformed_batch_file_is_one_error_line(run, how, says):
    p = run.batch("B")
    doc = run.doc("B")
    if how == "not_json":
        p.write_text(p.read_text()[:-20])
    elif how == "wrong_format":
        doc["format"] = "something-else"
        run.write("B", doc)
    elif how == "bad_proof_step":
        doc["proofs"][1][0] = "X:" + "zz" * 32
        run.write("B", doc)
    else:
        p.unlink()
    rc, out, err = run.verify("B", 6)
    assert rc == 1 and out == "" and "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("error: ") and says in line, line


# --------------------------------------------------------------------------- a lying anchorer
@pytest.mark.parametrize("lie,check", [("model_key", "model_key_mismatch"),
                                       ("seq_range", "seq_out_of_range")])
def test_an_anchor_whose_on_chain_record_disagrees_with_the_batch_is_refused(run, lie, check):
    """An anchorer key that anchors a forged batch's root but records another model key or
    a seq range that does not hold the frame: the chain's record wins."""
    m = cv2.imread(str(run.mask(6)), cv2.IMREAD_UNCHANGED)
    m[0, :] = 3
    cv2.imwrite(str(run.mask(6)), m)
    doc = run.doc("B")
    for x in doc["leaves"]:
        if x["seq"] == 6:
            x["digest"] = _redigest(run.key, x, m)
    forged = _rebuilt(doc, doc["leaves"])
    run.write("B", forged)
    reg = chain.connect(chain="embedded", home=run.home)
    if lie == "model_key":
        other = make_blob(run.root / "other.vsb", shift=1)
        reg.register(other, "other", "")
        reg.anchor(bytes.fromhex(forged["root"]), other, 5, 8, stream=SID)
    else:
        reg.anchor(bytes.fromhex(forged["root"]), run.key, 7, 8, stream=SID)
    line = run.refused(check, "B", 6)
    if check == "seq_out_of_range":
        assert "the chain anchored seq 7..8 for this root, not 6" in line


def test_without_the_cards_class_names_shares_are_refused_unless_the_blob_is_given(run, monkeypatch):
    """The blob of the anchored key is not at its registered URI: the class names are
    unknown, so shares cannot be checked and the line is refused (comparing values alone
    would accept shares moved to another class); --blob supplies the names."""
    import chain.frame_proof
    real = chain.frame_proof._class_names
    monkeypatch.setattr(chain.frame_proof, "_class_names",
                        lambda reg, key, blob=None: real(reg, key, blob) if blob else None)
    run.refused("result_shares_unverifiable", "B", 6, result=True)
    from urllib.parse import unquote, urlparse
    uri = chain.connect(chain="embedded", home=run.home).info(run.key)[1]
    blob = Path(unquote(urlparse(uri).path))   # the registered blob, named explicitly
    blob_args = ["--blob", str(blob)]
    run.capsys.readouterr()
    assert chain_main(run.args("B", 6, result=True) + blob_args) == 0
    lines = run.results.read_text().splitlines()
    i = next(n for n, x in enumerate(lines) if json.loads(x)["seq"] == 6)
    rec = json.loads(lines[i])
    rec["shares"] = {k: round(v / 2, 5) for k, v in rec["shares"].items()}
    lines[i] = json.dumps(rec)
    run.results.write_text("\n".join(lines) + "\n")
    run.capsys.readouterr()
    assert chain_main(run.args("B", 6, result=True) + blob_args) == 1
    (line,) = run.capsys.readouterr().err.splitlines()
    assert line.startswith("anchor-verify failed [result_shares_mismatch]: "), line


# --------------------------------------------------------------------------- a planted batch
@pytest.mark.parametrize("seal", ["none", "copied_from_a_genuine_batch"])
def test_a_batch_planted_in_the_output_folder_is_never_anchored_by_the_flow(pristine, run, seal):
    """Someone who can write only the output folder plants a never-sent one-leaf batch for a
    forged mask of frame 6, then the flow restarts on the same outputs: it re-sends only
    batches it sealed itself, so the forged mask stays unprovable and the genuine one
    verifies."""
    base, key = pristine
    genuine = run.root / "genuine-000006.png"
    shutil.copy(run.mask(6), genuine)
    forged_mask = cv2.imread(str(genuine), cv2.IMREAD_UNCHANGED)
    forged_mask[:8, :8] = 12
    forged = run.root / "forged-000006.png"
    cv2.imwrite(str(forged), forged_mask)
    planted = anchoring.AnchorBatch(run.key, [anchoring.Leaf(
        SID, 6, anchoring.leaf_digest(SID, 6, run.key, forged_mask))])
    doc = planted.to_json(include_proofs=True)
    if seal != "none":
        doc["seal"] = run.doc("B")["seal"]
    run.write("000006-000006.json", doc)
    cfg = load_config(env_for(run.root, f"dir:{base / SID}", base / "models" / "tiny.vsb",
                              VERISEG_ANCHOR_EVERY=4, VERISEG_VIDEO=0))
    run_main(build_flow(cfg))
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["anchors_refused"] == 1
    reg = chain.connect(chain="embedded", home=run.home)
    assert reg.anchor_of(planted.root) is None
    assert json.loads(run.batch("000006-000006.json").read_text())["chain"] is None
    run.refused("root_not_anchored", "000006-000006.json", 6, mask=forged)
    run.verifies("B", 6, mask=genuine)
