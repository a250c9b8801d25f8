"""``python -m bench soak``: the checker on crafted runs (each defect is reported) and a
short soak of the real flow (hot swaps and a revocation on the embedded chain) that must
pass the same checks."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import check_run, schedule, score_start

REPO = Path(__file__).resolve().parents[2]
K1, K2, K3 = "a1" * 32, "b2" * 32, "c3" * 32
T = 1_800_000_000.0


def _run_of(n=300):
    """A consistent run at 10 frames/s: k1 deployed at T, k2 at T+10 (loaded +0.5 s),
    k2 revoked at T+20 (seen +0.2 s), k3 deployed at T+25 (loaded +0.3 s); the frames that
    arrive with no valid model are dropped (reason no_model)."""
    timeline = [
        {"action": "deploy", "key": K1, "version": 1, "t_sent": T - 1, "t_mined": T - 0.95},
        {"action": "deploy", "key": K2, "version": 2, "t_sent": T + 10, "t_mined": T + 10.05},
        {"action": "revoke", "key": K2, "t_sent": T + 20, "t_mined": T + 20.05},
        {"action": "deploy", "key": K3, "version": 3, "t_sent": T + 25, "t_mined": T + 25.05},
    ]
    loaded = {K1: T - 0.5, K2: T + 10.55, K3: T + 25.35}
    seen = T + 20.25
    rows, dropped = [], 0
    for seq in range(n):
        ts = T + seq * 0.1
        t0 = ts + 0.002
        if t0 < loaded[K2]:
            key = K1
        elif t0 < seen:
            key = K2
        elif t0 < loaded[K3]:
            dropped += 1
            continue
        else:
            key = K3
        rows.append({"stream": "soak", "seq": seq, "ts": ts, "model_key": key,
                     "latency_ms": {"decode": 2.0, "preprocess": 1.0, "wait": 1.0, "score": 40.0}})
    summary = {"frames_decoded": {"soak": n}, "frames_written": {"soak": len(rows)},
               "frames_scored": {"soak": len(rows)}, "frames_dropped": {"soak": {"no_model": dropped}},
               "bad_frames": {}, "models_loaded": [{"key": k, "at": t} for k, t in loaded.items()],
               "revoked": [{"key": K2, "at": seen}]}
    return rows, summary, timeline


def _failed(rows, summary, timeline, **kw):
    res = check_run(rows, summary, timeline, poll=1.0, **kw)
    return {c["name"] for c in res["checks"] if not c["ok"]}, res


def test_a_consistent_run_passes_every_check():
    failed, res = _failed(*_run_of())
    assert not failed and res["passed"], res["checks"]
    assert res["frames"]["dropped_total"] > 0 and res["frames"]["lost"] == 0
    assert [k["frames"] > 0 for k in res["keys"]] == [True] * 3
    assert res["revocations"][0]["last_score_minus_seen_s"] < 0


def test_a_frame_scored_by_the_revoked_key_after_the_revocation_fails():
    rows, summary, timeline = _run_of()
    # one frame that should have waited is scored by the revoked key 3 s after the revocation
    row = {"stream": "soak", "seq": 232, "ts": T + 23.2, "model_key": K2,
           "latency_ms": {"preprocess": 1.0, "wait": 1.0}}
    rows = sorted(rows + [row], key=lambda r: r["seq"])
    summary["frames_written"]["soak"] += 1
    summary["frames_scored"]["soak"] += 1
    summary["frames_dropped"]["soak"]["no_model"] -= 1
    failed, res = _failed(rows, summary, timeline)
    assert {"no_frame_scored_by_revoked_key_after_seen",
            "no_frame_scored_by_revoked_key_after_one_poll"} <= failed
    assert not res["passed"]
    # the same frame inside the allowed race (scored as the revocation was being seen) passes
    row["ts"] = T + 20.25 + 0.02
    row["seq"] = 202
    rows, summary2, _ = _run_of()
    rows = sorted([r for r in rows if r["seq"] != 202] + [row], key=lambda r: r["seq"])
    summary2["frames_dropped"]["soak"]["no_model"] = 300 - len(rows)
    for k in ("frames_written", "frames_scored"):
        summary2[k]["soak"] = len(rows)
    assert not _failed(rows, summary2, timeline)[0]


def test_a_duplicate_a_lost_frame_and_an_unexplained_gap_each_fail():
    rows, summary, timeline = _run_of()
    dup = rows[:10] + [copy.deepcopy(rows[9])] + rows[10:]
    assert "no_duplicates" in _failed(dup, summary, timeline)[0]

    s = copy.deepcopy(summary)
    s["frames_decoded"]["soak"] += 1                   # read but neither scored nor dropped
    assert "no_frame_lost" in _failed(rows, s, timeline)[0]

    gap = [r for r in rows if r["seq"] != 50]          # frame 50 (a valid model in force) missing
    s = copy.deepcopy(summary)
    s["frames_dropped"]["soak"]["no_model"] += 1
    for k in ("frames_written", "frames_scored"):
        s[k]["soak"] -= 1
    assert _failed(gap, s, timeline)[0] == {"missing_seqs_are_the_counted_drops"}

    s = copy.deepcopy(summary)
    s["frames_dropped"]["soak"] = {"no_model": s["frames_dropped"]["soak"]["no_model"] - 1,
                                   "score_error": 1}
    assert "drops_only_while_no_valid_model" in _failed(rows, s, timeline)[0]


def test_keys_out_of_their_time_and_an_unseen_revocation_fail():
    rows, summary, timeline = _run_of()
    early = copy.deepcopy(rows)
    early[100]["model_key"] = K3                      # k3 at T+10, 15 s before its deploy
    failed = _failed(early, summary, timeline)[0]
    assert {"no_key_before_its_deploy", "keys_follow_deploy_order"} <= failed

    late = copy.deepcopy(rows)
    i = next(j for j, r in enumerate(late) if r["model_key"] == K2)
    late[i + 30]["model_key"] = K1                    # k1 3 s after k2 was loaded
    assert {"superseded_key_stops_after_the_swap", "keys_follow_deploy_order"} <= _failed(late, summary, timeline)[0]

    s = copy.deepcopy(summary)
    s["revoked"] = []
    assert "revocation_seen" in _failed(rows, s, timeline)[0]

    s = copy.deepcopy(summary)
    s["models_loaded"] = s["models_loaded"][:2]       # k3 deployed but never loaded
    assert "every_deploy_hot_swapped" in _failed(rows, s, timeline)[0]

    foreign = copy.deepcopy(rows)
    foreign[5]["model_key"] = "dd" * 32
    assert "known_keys" in _failed(foreign, summary, timeline)[0]


def test_anchor_batches_of_valid_keys_must_be_on_chain():
    rows, summary, timeline = _run_of()
    batches = [{"model_key": K1, "anchored": True}, {"model_key": K2, "anchored": False}]
    assert not _failed(rows, summary, timeline, anchors=batches)[0]
    batches[0]["anchored"] = False
    assert "anchors_of_valid_keys_on_chain" in _failed(rows, summary, timeline, anchors=batches)[0]


def test_score_start_and_schedule():
    assert score_start({"ts": 10.0, "latency_ms": {"preprocess": 2.0, "wait": 500.0}}) == pytest.approx(10.502)
    acts = schedule(600, 60, 5)
    assert [t for t, w in acts if w == "swap"] == [60, 120, 180, 240, 300, 360, 420, 480, 540]
    assert ("revoke", "fresh") == tuple(w for t, w in acts if t in (330, 335))
    acts = schedule(45, 15, 3)
    assert [w for _, w in acts] == ["swap", "revoke", "fresh", "swap"]


@pytest.mark.slow
def test_short_soak_of_the_real_flow_passes(tmp_path):
    """~45 s of the real flow on the looped sample clip: hot swaps every 15 s, the key in
    use revoked in the middle and a fresh one deployed 3 s later, then every check."""
    if not (REPO / "models" / "carla-enet.vsb").exists() or not (REPO / "models" / "sample.avi").exists():
        pytest.skip("models/carla-enet.vsb or models/sample.avi is missing")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERISEG_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "soak.json"
    p = subprocess.run([sys.executable, "-m", "bench", "soak", "--minutes", "0.75", "--swap-every", "15",
                        "--revoke-gap", "3", "--warmup", "5", "--sample", "1", "--poll", "0.5",
                        "--out", str(out), "--work", str(tmp_path / "work")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    doc = json.loads(out.read_text())["results"]
    assert p.returncode == 0 and doc["passed"], p.stdout[-4000:] + p.stderr[-2000:]
    names = {c["name"] for c in doc["checks"]}
    assert {"no_frame_lost", "no_duplicates", "no_frame_scored_by_revoked_key_after_seen",
            "superseded_key_stops_after_the_swap", "every_deploy_hot_swapped",
            "flow_ran_and_ended_cleanly"} <= names
    assert [e["action"] for e in doc["timeline"]] == ["deploy", "deploy", "revoke", "deploy", "deploy"]
    assert len([k for k in doc["keys"] if k["frames"] > 0]) == 4
    assert doc["revocations"][0]["t_seen"] is not None and doc["frames"]["with_result"] > 0
    assert doc["rss"]["start_mib"] > 0 and len(doc["rss"]["samples_t_s_mib"]) > 10
