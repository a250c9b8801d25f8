"""Frames of 1, 3 and 8 streams scored together (VERISEG_BATCH): each stream keeps its order,
its masks and its per-frame model keys, a revocation is honoured before every run, a hot
swap never puts two models in one run, and a killed flow resumes with each frame once."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from bytewax.testing import run_main

import operators.batching as batching
from dataflows.segment import build_flow
from operators.config import load_config
from tests.dataflows.segment_runs import (assert_revocation_honoured, dominant_class, slow_readers,
                                         two_models, when_scored)
from tests.flow_fixtures import env_for, frame_image, read_jsonl, wait_for

STREAMS = [1, 3, 8]


def stream_folders(root: Path, streams: int, n: int) -> str:
    """``streams`` folders of ``n`` frames; stream k's frames carry k in their blue channel
    (the tiny model reads red only), so a run's frames tell which streams they came from."""
    specs = []
    for k in range(streams):
        d = root / f"s{k}"
        d.mkdir(parents=True)
        for i in range(n):
            img = frame_image(i)
            img[..., 0] = 20 * k + 10
            cv2.imwrite(str(d / f"{i:04d}.png"), img)
        specs.append(f"dir:{d}")
    return ";".join(specs)


class RunSpy:
    """Every run the batcher starts: its runner's key and the streams of its frames."""

    def __init__(self, monkeypatch):
        self.runs: list[tuple[str, list[int]]] = []
        self._lock = threading.Lock()
        start = batching._Group.start
        spy = self

        def recording_start(group):
            streams = [int(round((int(p[0, 0, 2]) - 10) / 20)) for part in group.parts for p in part]
            with spy._lock:
                spy.runs.append((group.runner.key, streams))
            start(group)
        monkeypatch.setattr(batching._Group, "start", recording_start)

    def shared(self) -> int:
        """How many runs held frames of more than one stream."""
        return sum(len(set(s)) > 1 for _, s in self.runs)


def batched_flow(tmp_path, reg, source, backend, **extra):
    cfg = load_config(env_for(tmp_path, source, "tiny", VERISEG_ANCHOR_EVERY=0, VERISEG_BATCH=8,
                              VERISEG_BATCH_WAIT_MS=50, VERISEG_BACKEND=backend, **extra))
    return cfg


def check_streams(cfg, streams, n, keys_of=None):
    """Each stream's lines are its frames once, in order, each mask what its model computes."""
    rows_of = {}
    for k in range(streams):
        rows = read_jsonl(cfg.out / f"s{k}" / "results.jsonl")
        assert [r["seq"] for r in rows] == list(range(n)), f"stream s{k}"
        for r in rows:
            shift = keys_of[r["model_key"]] if keys_of else 0
            assert dominant_class(cfg.out / f"s{k}" / r["mask"]) == (r["seq"] % 13 + shift) % 13
            assert 1 <= r["batch"] <= 8
        rows_of[k] = rows
    return rows_of


@pytest.mark.parametrize("streams", STREAMS)
def test_streams_scored_together_keep_their_order_masks_and_keys(tmp_path, monkeypatch, backend, streams):
    reg, blob_a, key_a, blob_b, key_b = two_models(tmp_path)
    spy = RunSpy(monkeypatch)
    n = 30
    cfg = batched_flow(tmp_path, reg, stream_folders(tmp_path / "in", streams, n), backend)
    flow = build_flow(cfg, registry=reg, reader_factory=slow_readers(0.005))
    run_main(flow)
    rows = check_streams(cfg, streams, n)
    assert {r["model_key"] for rs in rows.values() for r in rs} == {key_a}
    assert sum(len(s) for _, s in spy.runs) == streams * n     # every frame in exactly one run
    assert max(len(s) for _, s in spy.runs) <= 8
    if streams > 1:
        assert spy.shared() > 0, "no run held frames of two streams"
    summary = json.loads((cfg.out / "summary.json").read_text())
    runs = Counter({int(k): v for k, v in summary["batch_sizes"].items()})
    assert sum(size * count for size, count in runs.items()) == streams * n


@pytest.mark.parametrize("streams", STREAMS)
def test_a_hot_swap_under_batching_never_mixes_two_models_in_one_run(tmp_path, monkeypatch, backend,
                                                                     streams):
    reg, blob_a, key_a, blob_b, key_b = two_models(tmp_path)
    spy = RunSpy(monkeypatch)
    n = 40
    cfg = batched_flow(tmp_path, reg, stream_folders(tmp_path / "in", streams, n), backend)
    flow = build_flow(cfg, registry=reg, reader_factory=slow_readers(0.02))
    th = when_scored(flow, 8 * streams, lambda: reg.deploy("tiny", key_b))
    run_main(flow)
    th.join()
    rows = check_streams(cfg, streams, n, keys_of={key_a: 0, key_b: 1})
    for k, rs in rows.items():     # per stream: A's frames, then B's, never back
        keys = [r["model_key"] for r in rs]
        n_a = keys.count(key_a)
        assert keys == [key_a] * n_a + [key_b] * (n - n_a), f"stream s{k}"
    assert {key for key, _ in spy.runs} == {key_a, key_b}, "the swap did not land mid-stream"


@pytest.mark.parametrize("streams", STREAMS)
def test_a_revocation_under_batching_is_honoured_before_every_run(tmp_path, monkeypatch, backend, streams):
    reg, blob_a, key_a, blob_b, key_b = two_models(tmp_path)
    n = 40
    cfg = batched_flow(tmp_path, reg, stream_folders(tmp_path / "in", streams, n), backend,
                       VERISEG_PENDING=8)
    flow = build_flow(cfg, registry=reg, reader_factory=slow_readers(0.01))
    marks = {}

    def revoke():
        marks["t"] = time.time()
        reg.revoke(key_a, "compromised")
        time.sleep(0.4)
        reg.deploy("tiny", key_b)
    th = when_scored(flow, 8 * streams, revoke)
    run_main(flow)
    th.join()
    rows = check_streams(cfg, streams, n, keys_of={key_a: 0, key_b: 1})
    summary = json.loads((cfg.out / "summary.json").read_text())
    everything = [r for rs in rows.values() for r in rs]
    assert_revocation_honoured(everything, summary, key_a, marks["t"])
    assert key_b in {r["model_key"] for r in everything}
    assert not any(d.get("no_model") for d in summary["frames_dropped"].values())


def _as_if_on(provider: str, monkeypatch):
    """Every compiled model reports ``provider`` as its device (an NVIDIA GPU where there is none)."""
    from operators.sessions import SessionCache
    real = SessionCache.get

    def get(self, update):
        entry = real(self, update)
        monkeypatch.setattr(entry.runner, "device", provider, raising=False)
        monkeypatch.setattr(entry.runner, "backend", "onnxruntime", raising=False)
        return entry
    monkeypatch.setattr(SessionCache, "get", get)


@pytest.mark.parametrize("provider, batch, expected", [
    ("CUDAExecutionProvider", None, 8), ("TensorrtExecutionProvider", None, 8),
    ("CPUExecutionProvider", None, 1), ("CUDAExecutionProvider", 2, 2), ("CPUExecutionProvider", 4, 4)])
def test_the_profile_batches_across_streams_on_a_gpu_and_says_so_in_one_line(tmp_path, monkeypatch, caplog,
                                                                              provider, batch, expected):
    reg, blob_a, key_a, blob_b, key_b = two_models(tmp_path)
    _as_if_on(provider, monkeypatch)
    extra = {"VERISEG_BATCH": batch} if batch else {}
    cfg = load_config(env_for(tmp_path, stream_folders(tmp_path / "in", 3, 2), "tiny", **extra))
    with caplog.at_level("INFO", logger="veriseg.flow"):
        flow = build_flow(cfg, registry=reg)
    assert flow.context.batch == expected and flow.context.batcher.size == expected
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scoring profile:")]
    assert provider in line and "3 stream(s)" in line
    if expected > 1:
        assert f"up to {expected} frames a run" in line and "waiting at most 10 ms" in line
    else:
        assert "one frame a run" in line
    assert ("set by VERISEG_BATCH" if batch else "auto") in line
