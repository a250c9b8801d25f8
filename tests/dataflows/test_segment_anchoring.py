"""The segment flow's anchor batches: unsent batches sent at the next start (planted ones
never), a revoked key's batch never anchored, the seal secret's checks."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from bytewax.testing import run_main

from dataflows.segment import build_flow
from tests.flow_fixtures import FakeRegistry, env_for, make_folder, read_jsonl
from operators.config import load_config

from tests.dataflows.segment_runs import registered_model, run_flow, slow_readers, two_models, when_scored


class _RefusingAnchors(FakeRegistry):
    """A node that refuses every anchor transaction while ``refuse`` is set."""

    refuse = False

    def anchor(self, *a, **kw):
        if self.refuse:
            import chain
            raise chain.errors.ChainError("node refused the transaction")
        return super().anchor(*a, **kw)


def test_unsent_batches_the_flow_wrote_are_sent_at_the_next_start_and_planted_ones_never(tmp_path):
    from chain import anchoring
    reg = _RefusingAnchors()
    _, blob, key = registered_model(tmp_path, reg=reg)
    reg.refuse = True
    cfg = run_flow(tmp_path, f"f@dir:{make_folder(tmp_path / 'a', n=10)}", blob, reg,
               VERISEG_ANCHOR_EVERY=4, VERISEG_VIDEO=0)
    left = sorted((cfg.out / "anchors" / "f").glob("*.json"))
    assert len(left) == 3 and not reg.anchors
    assert all(json.loads(p.read_text())["chain"] is None for p in left)
    planted = anchoring.AnchorBatch(key, [anchoring.Leaf("f", 3, b"\x07" * 32)])
    planted.write(cfg.out / "anchors" / "f" / "000003-000003.json", include_proofs=True)
    reg.refuse = False
    run_flow(tmp_path, f"f@dir:{make_folder(tmp_path / 'b', n=2)}", blob, reg,
         VERISEG_ANCHOR_EVERY=4, VERISEG_VIDEO=0)
    for p in left:   # each genuine one went on chain once, from its own file
        doc = json.loads(p.read_text())
        assert doc["chain"] and reg.anchors[bytes.fromhex(doc["root"])][1:3] == (
            doc["first_seq"], doc["last_seq"]), p.name
    assert planted.root not in reg.anchors and len(reg.anchors) == 4   # + the new run's batch
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["anchors_refused"] == 1


def test_a_batch_of_a_revoked_key_is_never_anchored_by_the_flow(tmp_path):
    """The fake node anchors anything (a real contract refuses KeyRevoked): the flow itself
    must not send results of a revoked model, now or at the next start."""
    reg, blob_a, key_a, blob_b, key_b = two_models(tmp_path)
    folder = make_folder(tmp_path / "f", n=40)
    env = dict(VERISEG_ANCHOR_EVERY=1000, VERISEG_VIDEO=0)   # A's batch closes at the key change
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", "tiny", **env))
    flow = build_flow(cfg, registry=reg, reader_factory=slow_readers(0.01))
    marks = {}

    def revoke():
        reg.revoke(key_a, "compromised")
        marks["block"] = reg.block
        time.sleep(0.2)
        reg.deploy("tiny", key_b)
    th = when_scored(flow, 10, revoke)
    run_main(flow)
    th.join()
    keys = [r["model_key"] for r in read_jsonl(cfg.out / "f" / "results.jsonl")]
    assert key_a in keys and key_b in keys
    late = [v for v in reg.anchors.values() if v[0] == key_a and v[3] > marks["block"]]
    assert not late, late
    a_files = [p for p in (cfg.out / "anchors" / "f").glob("*.json")
               if json.loads(p.read_text())["model_key"] == key_a]
    assert a_files and all(json.loads(p.read_text())["chain"] is None for p in a_files)
    assert json.loads((cfg.out / "summary.json").read_text())["anchor_failures"] >= 1
    # the next start re-sends sealed batches, but not one of a revoked key
    run_flow(tmp_path, f"f@dir:{make_folder(tmp_path / 'g', n=2)}", "tiny", reg, **env)
    assert not [v for v in reg.anchors.values() if v[0] == key_a and v[3] > marks["block"]]


def test_the_seal_secret_is_refused_unless_private_and_outside_the_outputs(tmp_path):
    from operators.anchor_seal import SECRET_FILE, SealError, load_secret
    home, out = tmp_path / "home", tmp_path / "out"
    s = load_secret(home, out)
    p = home / SECRET_FILE
    assert len(s) == 32 and (p.stat().st_mode & 0o777) == 0o600 and load_secret(home, out) == s
    p.chmod(0o640)
    with pytest.raises(SealError, match="no one else can read or write"):
        load_secret(home, out)
    p.chmod(0o600)
    p.write_bytes(b"short")
    with pytest.raises(SealError, match="holds 5 bytes"):
        load_secret(home, out)
    p.unlink()
    p.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SealError) as ei:
        load_secret(home, out)
    assert "\n" not in str(ei.value) and str(p) in str(ei.value)
    with pytest.raises(SealError, match="inside the output folder"):
        load_secret(out / "home", out)


def test_a_fifo_in_place_of_the_seal_secret_is_refused_not_waited_on(tmp_path):
    """A FIFO named anchor-seal.key held the flow at start for good (an open that waits for
    a writer); now it is one line."""
    from operators.anchor_seal import SECRET_FILE, SealError, load_secret
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    os.mkfifo(home / SECRET_FILE, 0o600)
    got: list = []

    def load():
        try:
            load_secret(home, out)
        except SealError as e:
            got.append(str(e))
    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():   # let the blocked open return, then fail
        os.close(os.open(home / SECRET_FILE, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("load_secret waited on the FIFO")
    assert len(got) == 1 and "\n" not in got[0] and "regular file" in got[0], got
