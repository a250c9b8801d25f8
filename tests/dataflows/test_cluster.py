"""A Bytewax cluster on loopback: 3 processes x 1 worker, 6 folder streams, recovery on.

One process is killed with SIGKILL mid-run; Bytewax cannot go on without it, so the whole
cluster is killed and restarted on the same recovery store, as an operator would. Every
frame must then have exactly one result across the streams' results.jsonl files, and
anchor-verify must prove frames of several streams against the (embedded) chain.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flow_fixtures import env_for, make_blob, make_folder, read_jsonl, register_embedded

REPO = Path(__file__).resolve().parents[2]
PROCESSES = 3
STREAMS = 6
FRAMES = 400          # per stream: the cluster is still running when its first snapshot is in
ANCHOR_EVERY = 50


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _snapshot_frontier(store: Path) -> int:
    """The epoch every worker of the latest execution has reached (0: not all known yet):
    a snapshot of everything before it is in the store. Reads Bytewax 0.21's recovery
    tables (bytewax is pinned); a table being written counts as 0 until the next look."""
    fronts: dict[tuple[int, int], int] = {}
    for part in store.glob("part-*.sqlite3"):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True,
                                                    timeout=0.2)) as db:
                for ex, worker, frontier in db.execute(
                        "SELECT ex_num, worker_index, worker_frontier FROM fronts"):
                    fronts[ex, worker] = frontier
        except sqlite3.Error:
            return 0
    latest = max((ex for ex, _ in fronts), default=None)
    frontiers = [f for (ex, _), f in fronts.items() if ex == latest]
    return min(frontiers) if len(frontiers) == PROCESSES else 0


def _results(out: Path) -> list[dict]:
    return [row for f in sorted(out.glob("*/results.jsonl")) for row in read_jsonl(f)]


def _batch_for(out: Path, stream: str, seq: int) -> Path:
    for p in sorted((out / "anchors" / stream).glob("*.json")):
        first, last = (int(x) for x in p.stem.split("-"))
        if first <= seq <= last:
            return p
    raise AssertionError(f"no anchor batch of stream {stream} covers seq {seq}")


@pytest.mark.slow
def test_a_cluster_killed_mid_run_and_restarted_outputs_every_frame_once(tmp_path):
    blob = tmp_path / "m.vsb"
    make_blob(blob)
    home = tmp_path / "home"
    register_embedded(home, blob)   # registered by a file URI: anchor-verify finds the classes
    folders = [make_folder(tmp_path / "frames" / f"cam{i}", FRAMES, size=(48, 64))
               for i in range(STREAMS)]
    streams = [f.name for f in folders]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VERISEG_", "BYTEWAX_"))}
    env.update(env_for(tmp_path, ";".join(f"dir:{f}" for f in folders), blob,
                       VERISEG_ANCHOR_EVERY=ANCHOR_EVERY))
    env["PYTHONPATH"] = str(REPO)
    store = tmp_path / "recovery"
    store.mkdir()             # bytewax.recovery fills a folder, it does not create one
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(store), str(PROCESSES)],
                   check=True, env=env, timeout=60)
    addresses = ";".join(f"127.0.0.1:{p}" for p in _free_ports(PROCESSES))
    out = tmp_path / "out"

    def start_cluster(run: str) -> list[subprocess.Popen]:
        procs = []
        for i in range(PROCESSES):
            log = open(tmp_path / f"{run}.p{i}.log", "wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bytewax.run", "dataflows.segment", "-i", str(i),
                 "-a", addresses, "-r", str(store), "-s", "1", "-b", "0"],
                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log))
            log.close()
        return procs

    def logs(run: str) -> str:
        return "\n".join(f"--- process {i}:\n" + (tmp_path / f"{run}.p{i}.log").read_text()[-2000:]
                         for i in range(PROCESSES))

    total = STREAMS * FRAMES
    procs = start_cluster("first")
    t0 = time.monotonic()
    wanted = None           # a frontier past the one in force when the first results came
    while time.monotonic() - t0 < 90 and all(p.poll() is None for p in procs):
        if wanted is None and any(f.stat().st_size for f in out.glob("*/results.jsonl")):
            wanted = max(2, _snapshot_frontier(store) + 1)
        if wanted is not None and _snapshot_frontier(store) >= wanted:
            break
        time.sleep(0.05)
    time.sleep(0.3)         # results past the snapshot: the restart must not write them twice
    running = [p.poll() is None for p in procs]
    procs[1].send_signal(signal.SIGKILL)
    for p in procs:         # Bytewax cannot go on without a process: restart them all
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
    assert all(running), "a process ended before the kill:\n" + logs("first")
    killed_at = collections.Counter(r["stream"] for r in _results(out))
    assert 0 < sum(killed_at.values()) < total, "the cluster was not killed mid-run: make FRAMES larger"

    procs = start_cluster("restart")
    for p in procs:
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the restarted cluster did not finish in 120 s:\n" + logs("restart"))
    assert [p.returncode for p in procs] == [0] * PROCESSES, logs("restart")
    assert "resuming at position" in logs("restart"), "no stream resumed from a snapshot"

    rows = _results(out)
    seen = collections.Counter((r["stream"], r["seq"]) for r in rows)
    dups = sorted(k for k, c in seen.items() if c > 1)
    missing = sorted({(s, n) for s in streams for n in range(FRAMES)} - set(seen))
    assert not dups and not missing, f"duplicated {dups[:10]}, missing {missing[:10]}"
    assert all(r["pos"].endswith(f"{r['seq']:04d}.png") for r in rows)

    # anchor-verify proves a frame of several streams, each scored after the restart
    checks = []
    for stream in streams[::2]:
        seq = min(FRAMES - 1, killed_at[stream])
        checks.append(subprocess.Popen(
            [sys.executable, "-m", "chain", "--home", str(home), "anchor-verify",
             str(_batch_for(out, stream, seq)), "--stream", stream, "--seq", str(seq),
             "--result", str(out / stream / "results.jsonl")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for stream, c in zip(streams[::2], checks):
        stdout, stderr = c.communicate(timeout=120)
        assert c.returncode == 0 and "verified: stream " + stream in stdout, stderr
    for batch in (out / "anchors").glob("*/*.json"):
        assert json.loads(batch.read_text())["chain"], f"{batch} was never anchored"
