"""``python -m chain`` on both chains: exit codes, one-line refusals, restarts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chain.cli import main
from tests.chain_fixtures import *  # noqa: F401,F403

GOLDEN = REPO / "tests" / "data" / "golden.vsb"


@pytest.fixture
def blob(tmp_path):
    p = tmp_path / "model.vsb"
    shutil.copy(GOLDEN, p)
    return p


@pytest.fixture
def cli(chain_env, monkeypatch, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    def run(*argv, account: int = 0):
        for k, v in chain_env.cli_env(account).items():
            monkeypatch.setenv(k, v)
        rc = main([*chain_env.cli_args(), *map(str, argv)])
        out, err = capsys.readouterr()
        return rc, out, err
    run.env = chain_env
    return run


def refused(res, *words):
    rc, out, err = res
    assert rc == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_register_status_revoke_status(cli, blob):
    import model_store
    key = model_store.verify(blob)
    rc, out, _ = cli("register", blob, "--uri", "file:///m.vsb")
    assert rc == 0 and key in out and "'tiny'" in out
    rc, out, _ = cli("status", blob)
    assert rc == 0 and f"{key}: active" in out
    rc, out, _ = cli("status", key, "--json")
    st = json.loads(out)
    assert st["state"] == "active" and st["uri"] == "file:///m.vsb" and st["name"] == "tiny"
    rc, out, _ = cli("deploy", "carla-enet", blob)
    assert rc == 0 and "version 1" in out
    rc, out, _ = cli("current", "carla-enet", "--json")
    assert json.loads(out) == {"deployment": "carla-enet", "key": key, "version": 1}
    rc, out, _ = cli("revoke", blob, "--reason", "leaked test set")
    assert rc == 0
    rc, out, _ = cli("status", blob)
    assert "revoked" in out and "leaked test set" in out
    rc, out, err = cli("events", "--json")
    kinds = [json.loads(line)["kind"] for line in out.splitlines()]
    assert kinds == ["Deployed", "Revoked"]


def test_refusals_are_one_line_exit_1(cli, blob, tmp_path):
    cli("register", blob)
    refused(cli("register", blob), "already registered")
    refused(cli("deploy", "d", "ab" * 32), "not registered")
    refused(cli("current", "nope"), "'nope' does not exist")
    refused(cli("status", "12345"), "neither a model key")
    refused(cli("register", tmp_path / "missing.vsb"), "does not exist")
    bad = tmp_path / "bad.vsb"
    data = bytearray(blob.read_bytes())
    data[-40] ^= 1
    bad.write_bytes(bytes(data))
    refused(cli("status", bad), "bad.vsb")           # model_store refuses the tampered blob
    refused(cli("grant", "publisher", "0x12"), "not an address")
    # an account without roles
    other = cli.env.address(1)
    refused(cli("register", blob, account=1), "lacks the PUBLISHER role", other)
    refused(cli("grant", "publisher", other, account=1), "not the owner")
    assert cli("grant", "publisher", other)[0] == 0
    key2 = "cd" * 32
    refused(cli("deploy", "d", key2, account=1), "not registered")
    refused(cli("revoke", "ef" * 32, "--reason", "x", account=1), "not registered")


def test_rollback_refused_on_cli(cli, tmp_path, blob):
    import blake3
    import model_store
    data = bytearray(blob.read_bytes())
    data[-40] ^= 1
    resealed = bytes(data[:-32]) + blake3.blake3(bytes(data[:-32])).digest()
    b2 = tmp_path / "m2.vsb"
    b2.write_bytes(resealed)
    for b in (blob, b2):
        assert cli("register", b, "--name", b.stem)[0] == 0
    assert cli("deploy", "d", blob)[0] == 0
    assert cli("deploy", "d", b2)[0] == 0
    refused(cli("deploy", "d", blob), "rollback is refused")
    assert model_store.verify(b2) in cli("current", "d")[1]


def test_anchor_verify_cli(cli, tmp_path, blob):
    cv2 = pytest.importorskip("cv2")
    import model_store
    from chain.anchoring import AnchorBatcher
    key = model_store.verify(blob)
    cli("register", blob)
    reg = cli.env.reg()
    rng = np.random.default_rng(0)
    masks = {}
    batcher = AnchorBatcher(tmp_path / "anchors", every=8, registry=reg)
    for seq in range(8):
        cm = rng.integers(0, 13, size=(16, 24), dtype=np.uint8)
        masks[seq] = tmp_path / f"{seq:06d}.png"
        cv2.imwrite(str(masks[seq]), cm)
        batcher.add("cam0", seq, key, cm)
    assert len(batcher.written) == 1
    batch = batcher.written[0]
    rc, out, err = cli("anchor-verify", batch, "--stream", "cam0", "--seq", 5, "--mask", masks[5])
    assert rc == 0 and out.startswith("verified:"), err
    refused(cli("anchor-verify", batch, "--stream", "cam0", "--seq", 5, "--mask", masks[4]),
            "[leaf_mismatch]")
    refused(cli("anchor-verify", batch, "--stream", "cam1", "--seq", 5, "--mask", masks[5]),
            "[leaf_missing]")
    # a batch written without a chain, then anchored by the CLI
    loose = AnchorBatcher(tmp_path / "loose", every=100)
    cm = np.zeros((4, 4), np.uint8)
    cv2.imwrite(str(tmp_path / "z.png"), cm)
    loose.add("cam9", 1, key, cm)
    path = loose.flush()
    refused(cli("anchor-verify", path, "--stream", "cam9", "--seq", 1, "--mask", tmp_path / "z.png"),
            "[root_not_anchored]")
    assert cli("anchor", path)[0] == 0
    refused(cli("anchor", path), "already anchored")
    assert cli("anchor-verify", path, "--stream", "cam9", "--seq", 1,
               "--mask", tmp_path / "z.png")[0] == 0
    refused(cli("anchor-verify", tmp_path / "nope.json", "--stream", "a", "--seq", 1,
                "--mask", tmp_path / "z.png"), "does not exist")


def _sink_line(key, cm, names, seq, ts, pos, mask):
    """A results line as the flow's sink writes it (its leaf binds ts and pos)."""
    from chain.anchoring import leaf_digest
    from chain.results import frame_record
    line = dict(frame_record("cam0", seq, key, cm, ts=ts, pos=pos, class_names=names, batch=1,
                             mask=mask).line, latency_ms={"score": 1.5})
    # the record's leaf is the anchoring module's v2 leaf over what the line states
    assert line["leaf"] == leaf_digest("cam0", seq, key, cm, ts=ts, pos=pos).hex()
    return line


def test_anchor_verify_result_requires_the_leaf_and_binds_every_claim(cli, tmp_path, blob):
    """Finding 9: a results line with its leaf and shares deleted was accepted, shares were
    compared as sorted values without the card's class names, and ts/pos were bound to
    nothing. Now every field a line carries is bound by the proven leaf, recomputed from
    the proven mask, or a known diagnostic; anything else is refused, naming the check."""
    cv2 = pytest.importorskip("cv2")
    import model_store
    from chain.anchoring import AnchorBatch
    key = model_store.verify(blob)
    names = [c.name for c in model_store.read_header(blob).classes]
    cli("register", blob)              # no URI: this machine records where the blob is
    cms = {0: np.full((4, 6), 7, np.uint8), 1: np.full((4, 6), 10, np.uint8)}   # Road / Car
    cms[1][0, :3] = 7
    ts = {0: 1_700_000_000.123456, 1: 1_700_000_000.223456}
    (tmp_path / "masks").mkdir()
    for seq, cm in cms.items():
        cv2.imwrite(str(tmp_path / "masks" / f"{seq:06d}.png"), cm)
    batch = AnchorBatch.build(key, [("cam0", s, cm, ts[s], f"clip.avi#{s}") for s, cm in cms.items()])
    batch.anchor(cli.env.reg())
    bpath = batch.write(tmp_path / "batch.json")
    results = tmp_path / "results.jsonl"
    good = {s: _sink_line(key, cm, names, s, ts[s], f"clip.avi#{s}", f"masks/{s:06d}.png")
            for s, cm in cms.items()}

    def verify(line, *extra, batch_path=bpath, seq=1):
        lines = [good[0], line]
        results.write_text("".join(json.dumps(x) + "\n" for x in lines))
        return cli("anchor-verify", batch_path, "--stream", "cam0", "--seq", seq, "--result",
                   results, *extra)

    rc, out, err = verify(good[1], "--blob", blob)
    assert rc == 0 and "its line in" in out, err
    assert verify(good[1])[0] == 0     # the blob `register` recorded gives the card's names
    # without the card's names (the recorded blob moved away, no --blob) the shares cannot
    # be checked: refused, not compared by value
    away = Path(blob).rename(tmp_path / "moved-away.vsb")
    refused(verify(good[1]), "[result_shares_unverifiable]", "--blob")
    away.rename(blob)
    edits = {
        "leaf and shares deleted": ({k: v for k, v in good[1].items() if k not in ("leaf", "shares")},
                                    "result_leaf_missing"),
        "shares moved to another class": ({**good[1], "shares": {"Car": good[1]["shares"]["Road"],
                                                                 "Road": good[1]["shares"]["Car"]}},
                                          "result_shares_mismatch"),
        "ts moved": ({**good[1], "ts": ts[1] + 5}, "result_claim_mismatch"),
        "pos moved": ({**good[1], "pos": "clip.avi#0"}, "result_claim_mismatch"),
        "field added": ({**good[1], "label": "pedestrian-free"}, "result_unbound_field"),
        "another frame's mask": ({**good[1], "mask": "masks/000000.png"}, "result_mask_mismatch"),
    }
    for what, (line, check) in edits.items():
        line_ = refused(verify(line, "--blob", blob, "--mask", tmp_path / "masks" / "000001.png"),
                        f"[{check}]")
        assert "stream 'cam0' seq 1" in line_, (what, line_)
    # a v1 batch (leaves that bind no ts/pos; other frames, so no conflicting anchor): a
    # line claiming a ts is refused
    v1 = AnchorBatch.build(key, [("cam0", 10 + s, cm) for s, cm in cms.items()])
    v1.anchor(cli.env.reg())
    v1path = v1.write(tmp_path / "v1.json")
    line = {**good[1], "seq": 11, "leaf": v1.leaves[1].digest.hex()}
    refused(verify(line, "--blob", blob, "--mask", tmp_path / "masks" / "000001.png",
                   batch_path=v1path, seq=11), "[result_claim_mismatch]", "binds no ts")
    line = {k: v for k, v in line.items() if k not in ("ts", "pos")}
    assert verify(line, "--blob", blob, batch_path=v1path, seq=11)[0] == 0


def test_ownership_transfer_and_deployments_on_the_cli(cli, blob):
    rc, out, err = cli("register", blob)
    assert rc == 0, err
    a1 = cli.env.address(1)
    rc, out, err = cli("transfer-ownership", a1)
    assert rc == 0 and "accept-ownership" in out, err
    refused(cli("accept-ownership", account=2), "not the pending owner")
    rc, out, err = cli("accept-ownership", account=1)
    assert rc == 0 and a1 in out, err
    refused(cli("deploy", "d", blob), "lacks the PUBLISHER role")   # the old owner kept none
    assert cli("grant", "publisher", a1, account=1)[0] == 0
    assert cli("deploy", "d", blob, account=1)[0] == 0
    rc, out, err = cli("deployments", blob)
    assert rc == 0 and out.strip() == "'d' v1 (current)", (out, err)


def _run(home, *argv, env=None):
    e = {**os.environ, "VERISEG_HOME": str(home), **(env or {})}
    e.pop("VERISEG_CHAIN", None)
    return subprocess.run([sys.executable, "-m", "chain", *map(str, argv)], capture_output=True,
                          text=True, env=e, cwd=REPO, timeout=120)


def test_cli_processes_survive_restart_embedded(tmp_path, blob):
    """Done-when: register then status shows active; revoke shows revoked with the reason;
    each step a separate process on the embedded chain."""
    home = tmp_path / "home"
    r = _run(home, "register", blob)
    assert r.returncode == 0, r.stderr
    r = _run(home, "status", blob)
    assert r.returncode == 0 and ": active" in r.stdout
    r = _run(home, "revoke", blob, "--reason", "bad calibration")
    assert r.returncode == 0, r.stderr
    r = _run(home, "status", blob, "--json")
    st = json.loads(r.stdout)
    assert st["state"] == "revoked" and st["reason"] == "bad calibration"
    r = _run(home, "deploy", "x", blob)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "revoked" in r.stderr
    assert "Traceback" not in r.stderr
    r = _run(home, "deploy-registry")
    assert r.returncode == 0 and r.stdout.strip().startswith("0x")


def test_cli_unreachable_node_is_one_line():
    r = subprocess.run([sys.executable, "-m", "chain", "--chain", f"http://127.0.0.1:{free_port()}",
                        "--registry", "0x" + "11" * 20, "status", "ab" * 32],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "unavailable" in r.stderr


@pytest.mark.anvil
def test_cli_deploy_registry_on_anvil(anvil_node, tmp_path):
    kf = make_keyfile(tmp_path / "k.json", ANVIL_KEYS[0])
    env = {"VERISEG_KEYFILE": str(kf), "VERISEG_KEYFILE_PASSWORD": "pw"}
    r = _run(tmp_path, "--chain", anvil_node.url, "deploy-registry", env=env)
    assert r.returncode == 0, r.stderr
    addr = r.stdout.strip()
    r = _run(tmp_path, "--chain", anvil_node.url, "status", "ab" * 32, env={**env, "VERISEG_REGISTRY": addr})
    assert r.returncode == 0 and "unregistered" in r.stdout
    r = _run(tmp_path, "--chain", anvil_node.url, "status", "ab" * 32)
    assert r.returncode == 1 and "VERISEG_REGISTRY" in r.stderr


def test_usage_errors_are_one_line_exit_1(capsys):
    for argv in ([], ["frobnicate"], ["status"], ["grant", "admin", "0x" + "11" * 20],
                 ["anchor-verify", "b.json", "--stream", "s", "--seq", "x", "--mask", "m.png"]):
        with pytest.raises(SystemExit) as ei:
            main(argv)
        err = capsys.readouterr().err
        assert ei.value.code == 1 and err.count("\n") == 1 and err.startswith("error:"), (argv, err)


def test_deploy_model_alias(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VERISEG_KEYFILE", raising=False)
    home = ["--home", str(tmp_path)]
    assert main([*home, "register", str(GOLDEN)]) == 0
    assert main([*home, "deploy-model", "d", str(GOLDEN)]) == 0
    assert "version 1" in capsys.readouterr().out


def _anchored_frame(cli, tmp_path, blob):
    """One anchored frame (cam0 seq 1) with its results line as the sink writes it."""
    cv2 = pytest.importorskip("cv2")
    import model_store
    from chain.anchoring import AnchorBatch
    key = model_store.verify(blob)
    names = [c.name for c in model_store.read_header(blob).classes]
    cli("register", blob)
    cm = np.full((4, 6), 7, np.uint8)
    run = tmp_path / "run"
    (run / "masks").mkdir(parents=True)
    cv2.imwrite(str(run / "masks" / "000001.png"), cm)
    batch = AnchorBatch.build(key, [("cam0", 1, cm, 1_700_000_000.5, "clip.avi#1")])
    batch.anchor(cli.env.reg())
    line = _sink_line(key, cm, names, 1, 1_700_000_000.5, "clip.avi#1", "masks/000001.png")
    return batch.write(tmp_path / "batch.json"), run, line


def _write_lines(run, *lines):
    (run / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run / "results.jsonl"


def test_anchor_verify_reads_only_the_mask_under_the_results_folder(cli, tmp_path, blob):
    """A results line names its mask: an absolute path, a climbing one or a symlink out of
    the results file's folder is refused (check ``mask``), never opened."""
    batch, run, line = _anchored_frame(cli, tmp_path, blob)
    outside = tmp_path / "outside.png"
    shutil.copy(run / "masks" / "000001.png", outside)   # the very class map, out of the folder
    results = _write_lines(run, line)
    assert cli("anchor-verify", batch, "--stream", "cam0", "--seq", 1, "--result", results,
               "--blob", blob)[0] == 0
    (run / "masks" / "out.png").symlink_to(outside)
    for mask in (str(outside), "../outside.png", "masks/../../outside.png", "masks/out.png",
                 "/etc/hostname"):
        _write_lines(run, {**line, "mask": mask})
        err = refused(cli("anchor-verify", batch, "--stream", "cam0", "--seq", 1, "--result",
                          results, "--blob", blob), "[mask]")
        assert "refused" in err, (mask, err)


def test_anchor_verify_refuses_two_lines_for_one_frame(cli, tmp_path, blob):
    """Two lines for (stream, seq): a reader could be shown one and the verifier check the
    other, so neither is verified (one line naming the frame)."""
    batch, run, line = _anchored_frame(cli, tmp_path, blob)
    results = _write_lines(run, line, {**line, "pos": "elsewhere"})
    err = refused(cli("anchor-verify", batch, "--stream", "cam0", "--seq", 1, "--result", results,
                      "--blob", blob), "[result_ambiguous]", "stream 'cam0' seq 1", "lines 1, 2")
    # also with the mask given: the line is still checked, and still ambiguous
    refused(cli("anchor-verify", batch, "--stream", "cam0", "--seq", 1, "--result", results,
                "--blob", blob, "--mask", run / "masks" / "000001.png"), "[result_ambiguous]")
    assert err


def test_anchor_verify_refuses_a_fifo_mask_within_seconds(cli, tmp_path, blob):
    """A FIFO named by the line (or as --mask) blocked ``python -m chain anchor-verify`` for
    good; now it is one refusal line."""
    batch, run, line = _anchored_frame(cli, tmp_path, blob)
    os.mkfifo(run / "masks" / "fifo.png")
    results = _write_lines(run, {**line, "mask": "masks/fifo.png"})
    env = {**os.environ, **cli.env.cli_env()}
    for how in (["--result", results], ["--mask", run / "masks" / "fifo.png"]):
        r = subprocess.run([sys.executable, "-m", "chain", *cli.env.cli_args(), "anchor-verify",
                            batch, "--stream", "cam0", "--seq", "1", *map(str, how)],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
        assert r.returncode == 1 and r.stdout == "", r
        assert len(r.stderr.splitlines()) == 1 and "[mask]" in r.stderr, r.stderr
        assert "not a regular file" in r.stderr, r.stderr
