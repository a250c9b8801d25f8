"""Bytewax recovery (-r): a flow killed mid-stream and restarted loses and repeats nothing."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flow_fixtures import env_for, make_blob, make_clip, read_jsonl, register_embedded

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("busy, n, streams", [(0, 3000, 1), (12, 600, 1), (12, 400, 3)],
                         ids=["runs-of-microseconds", "runs-of-40-ms", "3-streams-batched"])
def test_kill_and_resume_with_recovery_outputs_each_frame_once(tmp_path, busy, n, streams):
    """With runs of ~40 ms (``busy``), runs are in flight at every snapshot: their frames
    must come back from the score step's snapshot, not be lost between source and sink.
    Three streams share runs (VERISEG_BATCH): each stream's frames in a shared run come
    back from its own snapshot."""
    import chain
    blob = tmp_path / "m.vsb"
    make_blob(blob, busy=busy)
    register_embedded(tmp_path / "home", blob)
    clips = [make_clip(tmp_path / f"{name}.avi", n=n, size=(240, 320))
             for name in ["long", "cam2", "cam3"][:streams]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERISEG_")}
    env.update(env_for(tmp_path, ";".join(map(str, clips)), blob, VERISEG_ANCHOR_EVERY=50,
                       VERISEG_THREADS=2, VERISEG_BATCH=8 if streams > 1 else 1))
    env["PYTHONPATH"] = str(REPO)
    rec = tmp_path / "rec"
    rec.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(rec), "1"], check=True, env=env)
    cmd = [sys.executable, "-m", "bytewax.run", "dataflows.segment", "-r", str(rec), "-s", "1", "-b", "0"]
    jsonl = tmp_path / "out" / "long" / "results.jsonl"
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while time.time() - t0 < 120 and p.poll() is None:
        if jsonl.exists() and jsonl.stat().st_size:
            break
        time.sleep(0.02)
    time.sleep(1.7)     # past the first 1 s snapshot, well before the end
    assert p.poll() is None, "the flow ended before it could be killed: make the clip longer"
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = len(read_jsonl(jsonl))
    assert killed_at < n
    p2 = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert "resuming at position" in p2.stderr
    reg = chain.connect(chain="embedded", home=tmp_path / "home")
    for clip in clips:
        sid = clip.stem
        seqs = [r["seq"] for r in read_jsonl(tmp_path / "out" / sid / "results.jsonl")]
        dups = [s for s, c in collections.Counter(seqs).items() if c > 1]
        assert not dups and seqs == list(range(n)), sid
        batches = sorted((tmp_path / "out" / "anchors" / sid).glob("*.json"))
        assert len(batches) == n // 50
        # every batch ends up on chain exactly once (in-flight ones are re-sent on resume)
        for b in batches:
            doc = json.loads(b.read_text())
            assert doc["chain"], b.name
            got = reg.anchor_of(bytes.fromhex(doc["root"]))
            assert got is not None and got[1:3] == (doc["first_seq"], doc["last_seq"])
