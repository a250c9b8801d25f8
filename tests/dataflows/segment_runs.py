"""Helpers the segment flow's tests share: a registered tiny model, two models, a run,
slowed readers, an action once some frames are scored, a mask's dominant class, the check that a
revocation was honoured."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
from bytewax.testing import run_main

from dataflows.segment import build_flow
from tests.flow_fixtures import FakeRegistry, env_for, make_blob, score_start
from operators.config import load_config
from operators.sources import open_reader


def run_flow(tmp_path, source, model, reg, **extra):
    cfg = load_config(env_for(tmp_path, source, model, **extra))
    flow = build_flow(cfg, registry=reg)
    run_main(flow)
    return cfg


def registered_model(tmp_path, shift=0, name="tiny.vsb", reg=None, **kw):
    reg = reg or FakeRegistry()
    blob = tmp_path / "models" / name
    key = make_blob(blob, shift=shift, **kw)
    reg.register(key, "tiny", blob.as_uri())
    return reg, blob, key


def two_models(tmp_path, uri_b=True, **b_kw):
    """Blobs A and B (B's classes shifted by one; ``b_kw`` go to its ``make_blob``) registered
    as 'tiny', A deployed: (reg, blob_a, key_a, blob_b, key_b). ``uri_b=False``: B is found by
    scanning the folder."""
    reg, blob_a, key_a = registered_model(tmp_path, shift=0, name="a.vsb")
    blob_b = tmp_path / "models" / "b.vsb"
    key_b = make_blob(blob_b, shift=1, **b_kw)
    reg.register(key_b, "tiny", blob_b.as_uri() if uri_b else "")
    reg.deploy("tiny", key_a)
    return reg, blob_a, key_a, blob_b, key_b


def dominant_class(mask_path) -> int:
    m = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    assert m is not None and m.ndim == 2 and m.dtype == np.uint8
    return int(np.bincount(m.ravel()).argmax())


class SlowReader:
    """Wraps a reader so a small folder takes a while (hot swap happens mid-stream)."""

    gate = None

    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def read(self, *a):
        time.sleep(self.delay)
        if self.gate is not None:
            self.gate.wait()
        return self.inner.read(*a)


def slow_readers(delay, gate=None):
    def make(spec, **kw):
        r = SlowReader(open_reader(spec, **kw), delay)
        r.gate = gate
        return r
    return make


def when_scored(flow, n, action, timeout=30):
    """Run ``action`` in a thread once ``flow`` has scored ``n`` frames."""
    stats = flow.context.stats

    def run():
        t0 = time.time()
        while sum(stats.scored.values()) < n and time.time() - t0 < timeout:
            time.sleep(0.005)
        action()
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


POLL = 0.05   # VERISEG_POLL of env_for


def assert_revocation_honoured(rows, summary, key, t_sent, slack=1.0, race=0.05):
    """Per results line: the flow saw the revocation of ``key`` within one poll (+ ``slack``
    to read the events) and no frame was scored by that key after it saw it (+ ``race`` for
    a run that passed the check as the key was added)."""
    seen = [r for r in summary["revoked"] if r["key"] == key]
    assert seen, f"the flow never saw the revocation of {key[:12]}"
    t_seen = seen[0]["at"]
    assert t_seen - t_sent <= POLL + slack, t_seen - t_sent
    late = [(r["seq"], round(score_start(r) - t_seen, 3)) for r in rows
            if r["model_key"] == key and score_start(r) > t_seen + race]
    assert not late, f"frames scored by the revoked key after the flow saw it: {late}"
