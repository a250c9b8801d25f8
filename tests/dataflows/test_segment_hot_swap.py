"""The segment flow while the registry changes mid-stream: hot swaps, revocations, a
follower that fails, a chain outage, deploys whose blob is late or never arrives."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest
from bytewax.testing import run_main

from dataflows.segment import build_flow
from tests.flow_fixtures import (HOSTILE_HEADERS, FakeRegistry, env_for, hostile_blob, make_blob, make_folder,
                                 prom_value, read_jsonl, score_start, wait_for)
from operators.config import load_config

from tests.dataflows.segment_runs import (POLL, assert_revocation_honoured, dominant_class, registered_model,
                                         slow_readers, two_models, when_scored)


def _model_c_and_slow_flow(tmp_path, reg, c_dir):
    """Blob C (classes shifted by two) in ``c_dir``, registered as 'tiny' with its URI, and a
    slowed 80-frame folder flow following 'tiny' that scans ``tmp_path/models`` for blobs:
    (key_c, cfg, flow)."""
    blob_c = c_dir / "c.vsb"
    key_c = make_blob(blob_c, shift=2)
    reg.register(key_c, "tiny", blob_c.as_uri())
    folder = make_folder(tmp_path / "f", n=80)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", "tiny", VERISEG_ANCHOR_EVERY=0,
                              VERISEG_MODEL_DIRS=tmp_path / "models"))
    return key_c, cfg, build_flow(cfg, registry=reg, reader_factory=slow_readers(0.01))


class _SwapGate:
    """Holds the replay, once a deploy was sent, until the flow has compiled the new model
    (about a second for OpenVINO on a loaded 2-core box, a tenth of that for ONNX Runtime),
    so the swap lands mid-stream on every backend whatever the machine's load."""

    def __init__(self):
        self.sent = threading.Event()
        self.stats = None

    def wait(self):
        if self.sent.is_set():
            assert wait_for(lambda: len(self.stats.models_loaded) >= 2, timeout=60)

    def deploy(self, reg, name, key):
        reg.deploy(name, key)
        self.sent.set()

    @classmethod
    def run(cls, cfg, reg, key, after: int) -> None:
        """Run a slowed replay of ``cfg`` that deploys ``key`` as 'tiny' once ``after``
        frames are scored, the swap landing mid-stream."""
        gate = cls()
        flow = build_flow(cfg, registry=reg, reader_factory=slow_readers(0.02, gate))
        gate.stats = flow.context.stats
        th = when_scored(flow, after, lambda: gate.deploy(reg, "tiny", key))
        run_main(flow)
        th.join()


def test_hot_swap_on_new_deploy_mid_stream(tmp_path, backend):
    reg, blob_a, key_a, blob_b, key_b = two_models(tmp_path, uri_b=False)
    folder = make_folder(tmp_path / "f", n=40)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", "tiny", VERISEG_ANCHOR_EVERY=0,
                              VERISEG_MODEL_DIRS=str(tmp_path / "models"), VERISEG_BACKEND=backend))
    _SwapGate.run(cfg, reg, key_b, after=10)
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    assert [r["seq"] for r in rows] == list(range(40))
    keys = [r["model_key"] for r in rows]
    switch = keys.index(key_b)
    assert 10 <= switch < 40 and keys == [key_a] * switch + [key_b] * (40 - switch)
    for r in rows:   # each frame's mask is what its model computes
        shift = 0 if r["model_key"] == key_a else 1
        assert dominant_class(cfg.out / "f" / r["mask"]) == (r["seq"] % 13 + shift) % 13


def test_revocation_mid_stream_stops_scoring_until_a_new_deploy(tmp_path, backend):
    reg, blob_a, key_a, blob_b, key_b = two_models(tmp_path)
    folder = make_folder(tmp_path / "f", n=60)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", "tiny", VERISEG_ANCHOR_EVERY=0,
                              VERISEG_PENDING=8, VERISEG_BACKEND=backend))
    flow = build_flow(cfg, registry=reg, reader_factory=slow_readers(0.01))
    marks = {}

    def revoke():
        marks["t_revoke"] = time.time()
        reg.revoke(key_a, "compromised")
        time.sleep(0.4)   # ~40 frames would arrive with no valid model: the replay pauses instead
        reg.deploy("tiny", key_b)
    th = when_scored(flow, 10, revoke)
    run_main(flow)
    th.join()
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    keys = [r["model_key"] for r in rows]
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert_revocation_honoured(rows, summary, key_a, marks["t_revoke"])
    n_a = keys.count(key_a)
    assert keys == [key_a] * n_a + [key_b] * (len(keys) - n_a)
    assert key_b in keys
    # a file replay waits for the next deploy: every frame is scored, none by the revoked key late
    assert [r["seq"] for r in rows] == list(range(60))
    assert summary["frames_dropped"].get("f", {}).get("no_model", 0) == 0
    assert summary["revoked"][0]["key"] == key_a


@pytest.mark.parametrize("hostile", sorted(HOSTILE_HEADERS))
def test_a_hostile_file_in_the_model_folder_never_turns_revocation_off(tmp_path, hostile):
    """A re-keyed blob with a hostile header sits in the model folder; a deploy whose blob is
    found by scanning that folder reads it. It is skipped, named and counted, and the
    follower goes on: revoking the key in use stops scoring within one poll."""
    reg, blob_a, key_a, blob_b, key_b = two_models(tmp_path, uri_b=False)
    bad = hostile_blob(tmp_path / "models" / "0-hostile.vsb", HOSTILE_HEADERS[hostile])
    key_c, cfg, flow = _model_c_and_slow_flow(tmp_path, reg, tmp_path / "models")
    marks = {}

    def attack():
        reg.deploy("tiny", key_b)     # B is found by scanning the folder: past the hostile file
        marks["b_loaded"] = wait_for(lambda: flow.context.stats.key_in_use.get("f") == key_b, timeout=10)
        marks["t_revoke"] = time.time()
        reg.revoke(key_b, "compromised")
        time.sleep(0.3)
        reg.deploy("tiny", key_c)     # the replay resumes with C and ends
    th = when_scored(flow, 10, attack)
    run_main(flow)
    th.join()
    assert marks["b_loaded"], "the deploy found by scanning the folder was never loaded"
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert_revocation_honoured(rows, summary, key_b, marks["t_revoke"])
    keys = [r["model_key"] for r in rows]
    assert [r["seq"] for r in rows] == list(range(80)) and keys[-1] == key_c
    assert summary["bad_model_files"] == 1 and str(bad) in summary["bad_model_file_reports"][0]
    assert "\n" not in summary["bad_model_file_reports"][0]
    assert prom_value((cfg.out / "metrics.prom").read_text(), "veriseg_bad_model_files_total") == 1


class _BrokenEvents(FakeRegistry):
    """A registry client whose event reading fails with an error nobody expected."""

    broken_at = None

    def events(self, *a, **kw):
        if self.broken_at is not None:
            raise TypeError("'NoneType' object is not subscriptable")
        return super().events(*a, **kw)


def test_an_unexpected_error_in_the_follower_stops_scoring_with_one_line(tmp_path, caplog):
    """Fail safe: the follower cannot see revocations any more, so scoring stops at once
    and the flow ends with one line; never a silent thread death or a retry loop that
    keeps scoring unfollowed."""
    reg = _BrokenEvents()
    _, blob, key = registered_model(tmp_path, reg=reg)
    folder = make_folder(tmp_path / "f", n=200)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=0))
    flow = build_flow(cfg, registry=reg, reader_factory=slow_readers(0.01))

    def brk():
        reg.broken_at = time.time()
    th = when_scored(flow, 10, brk)
    with pytest.raises(RuntimeError) as ei:
        run_main(flow)
    th.join()
    msgs = []
    e = ei.value
    while e is not None:
        msgs.append(str(e))
        e = e.__cause__
    assert any("model reader stopped (TypeError" in m for m in msgs), msgs
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model reader stopped")]
    assert len(said) == 1 and "\n" not in said[0], said
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    assert 10 <= len(rows) < 200
    # no frame scored later than one poll after the follower broke
    late = [r["seq"] for r in rows if score_start(r) > reg.broken_at + POLL + 0.5]
    assert not late, late
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert "model reader stopped" in summary["error"]


def test_chain_outage_mid_stream_keeps_scoring_with_the_verified_model(tmp_path):
    reg, blob, key = registered_model(tmp_path)
    folder = make_folder(tmp_path / "f", n=30)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob, VERISEG_ANCHOR_EVERY=10))
    flow = build_flow(cfg, registry=reg, reader_factory=slow_readers(0.01))

    def outage():
        reg.down = True
        time.sleep(0.3)
        reg.down = False
    th = when_scored(flow, 5, outage)
    run_main(flow)
    th.join()
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    assert [r["seq"] for r in rows] == list(range(30)) and {r["model_key"] for r in rows} == {key}
    assert len(reg.anchors) == 3   # queued anchors went out once the node was back


def test_hot_swap_to_a_model_with_another_input_size(tmp_path, backend):
    reg, blob_a, key_a, blob_b, key_b = two_models(tmp_path, size=(48, 64))
    folder = make_folder(tmp_path / "f", n=30)
    rng = np.random.default_rng(0)
    for p in folder.iterdir():   # textured: resizing twice is not resizing once
        cv2.imwrite(str(p), rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", "tiny", VERISEG_ANCHOR_EVERY=0,
                              VERISEG_BACKEND=backend, VERISEG_KEEP_FRAMES="all"))
    _SwapGate.run(cfg, reg, key_b, after=8)
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    assert [r["seq"] for r in rows] == list(range(30))
    shapes = {r["model_key"]: cv2.imread(str(cfg.out / "f" / r["mask"]), cv2.IMREAD_UNCHANGED).shape
              for r in rows}
    assert shapes == {key_a: (32, 32), key_b: (48, 64)}
    # the frames adapted to B's input in the score step were made from the decoded picture
    # (not A's resized one): re-running B on the kept frames gives their masks
    from types import SimpleNamespace

    from chain.rescore import rescore_frame
    from chain.retained_frame import find_frame
    for r in rows:
        v = SimpleNamespace(stream="f", seq=r["seq"], model_key=r["model_key"], frame=r["frame"],
                            profile=r["profile"])
        mask = cv2.imread(str(cfg.out / "f" / r["mask"]), cv2.IMREAD_UNCHANGED)
        rescore_frame(v, mask, blob_a if r["model_key"] == key_a else blob_b,
                      find_frame(cfg.out / "f", r["seq"])).check()


def test_a_deploy_whose_blob_never_arrives_stops_the_superseded_model_after_the_max_wait(
        tmp_path, caplog):
    """B is current on chain but its blob is not here: A scored on for good. Now A scores for
    at most VERISEG_PENDING_DEPLOY_MAX_S, then stops (one line, a counter; the replay waits
    as with no valid model, A is not marked revoked), and B scores once its blob arrives."""
    import shutil
    reg, blob_a, key_a = registered_model(tmp_path, name="a.vsb")
    reg.deploy("tiny", key_a)
    staged = tmp_path / "staging" / "b.vsb"
    key_b = make_blob(staged, shift=1)
    reg.register(key_b, "tiny", "")      # found only by scanning the model folder
    folder = make_folder(tmp_path / "f", n=80)
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", "tiny", VERISEG_ANCHOR_EVERY=0,
                              VERISEG_MODEL_DIRS=tmp_path / "models",
                              VERISEG_PENDING_DEPLOY_MAX_S=0.5))
    assert cfg.pending_deploy_max_s == 0.5
    flow = build_flow(cfg, registry=reg, reader_factory=slow_readers(0.02))
    stats, marks = flow.context.stats, {}

    def scenario():
        marks["t_deploy"] = time.time()
        reg.deploy("tiny", key_b)
        marks["stopped"] = wait_for(lambda: stats.deploy_pending_timeouts == 1, timeout=10)
        marks["t_stopped"] = time.time()
        marks["prom"] = stats.prometheus()
        n = sum(stats.scored.values())
        time.sleep(0.5)
        marks["idle"] = sum(stats.scored.values()) - n
        shutil.copy(staged, tmp_path / "models" / "b.vsb")
        marks["b_loaded"] = wait_for(lambda: stats.key_in_use.get("f") == key_b, timeout=10)
    th = when_scored(flow, 10, scenario)
    run_main(flow)
    th.join()
    assert marks["stopped"], "the superseded model never stopped scoring"
    assert marks["idle"] <= 1, marks["idle"]   # at most a run already in flight
    assert prom_value(marks["prom"], "veriseg_deploy_pending_timeouts_total") == 1
    said = [r.getMessage() for r in caplog.records if "stops scoring" in r.getMessage()]
    assert len(said) == 1 and key_a[:12] in said[0] and "VERISEG_PENDING_DEPLOY_MAX_S" in said[0]
    assert marks["b_loaded"]
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    summary = json.loads((cfg.out / "summary.json").read_text())
    keys = [r["model_key"] for r in rows]
    n_a = keys.count(key_a)
    assert [r["seq"] for r in rows] == list(range(80)) and keys == [key_a] * n_a + [key_b] * (80 - n_a)
    # the streams see the stop with the next model event (a reader poll, 0.05 s here)
    late = [(r["seq"], round(score_start(r) - marks["t_stopped"], 3)) for r in rows
            if r["model_key"] == key_a and score_start(r) > marks["t_stopped"] + 0.2]
    assert not late, late
    assert summary["deploy_pending_timeouts"] == 1 and summary["revoked"] == []
    assert summary["deploy_pending"] == {}


def test_a_deploy_whose_blob_arrives_later_is_kept_and_applied(tmp_path, caplog):
    """B is deployed before its blob reached this edge: the flow keeps scoring with the
    superseded A (one line, a metric), stops when A is revoked, and swaps to B once its
    blob arrives in the model folder."""
    import shutil
    reg, blob_a, key_a = registered_model(tmp_path, name="a.vsb")
    reg.deploy("tiny", key_a)
    staged = tmp_path / "staging" / "b.vsb"
    key_b = make_blob(staged, shift=1)
    reg.register(key_b, "tiny", "")      # found only by scanning the model folder
    key_c, cfg, flow = _model_c_and_slow_flow(tmp_path, reg, tmp_path / "staging")
    marks = {}

    def scenario():
        reg.deploy("tiny", key_b)
        marks["pending"] = wait_for(lambda: flow.context.stats.deploy_pending.get("key") == key_b, timeout=5)
        marks["prom"] = flow.context.stats.prometheus()
        n = sum(flow.context.stats.scored.values())
        marks["kept_scoring"] = wait_for(lambda: sum(flow.context.stats.scored.values()) >= n + 5, timeout=5)
        marks["t_revoke"] = time.time()
        reg.revoke(key_a, "compromised")
        time.sleep(0.3)
        shutil.copy(staged, tmp_path / "models" / "b.vsb")
        marks["b_loaded"] = wait_for(lambda: flow.context.stats.key_in_use.get("f") == key_b, timeout=5)
        if not marks["b_loaded"]:
            reg.deploy("tiny", key_c)    # let the paused replay end
    th = when_scored(flow, 10, scenario)
    run_main(flow)
    th.join()
    assert marks["pending"] and marks["kept_scoring"]
    assert prom_value(marks["prom"], "veriseg_deploy_pending", deployment="tiny", version="2",
                      key=key_b) == 1
    said = [r.getMessage() for r in caplog.records if "still scoring with the superseded" in r.getMessage()]
    assert len(said) == 1 and key_a[:12] in said[0] and key_b in said[0]
    assert marks["b_loaded"], "the deploy was dropped: its blob arrived and the flow never took it"
    rows = read_jsonl(cfg.out / "f" / "results.jsonl")
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert_revocation_honoured(rows, summary, key_a, marks["t_revoke"])
    keys = [r["model_key"] for r in rows]
    n_a = keys.count(key_a)
    assert [r["seq"] for r in rows] == list(range(80)) and keys == [key_a] * n_a + [key_b] * (80 - n_a)
    assert summary["deploy_pending"] == {}
