"""bench.flow_ab: a blob named in --env VERISEG_MODEL is registered on each run's own chain,
from the checkout the run uses (the flow refuses an unregistered key)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import bench._perf.inputs as inputs
import bench.flow_ab as flow_ab
import model_store


def test_a_model_blob_is_registered_per_run_from_its_own_checkout(tmp_path, monkeypatch):
    registered, ran = [], []
    monkeypatch.setattr(inputs, "register", lambda home, blob, key: registered.append((home, blob, key)))
    monkeypatch.setattr(model_store, "verify", lambda path: "k" * 64)

    def fake_run(cmd, cwd, env, **kw):
        ran.append((cwd, env["VERISEG_MODEL"]))
        out = Path(env["VERISEG_OUT"])
        out.mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps({"fps": 10.0, "scored": 5}))
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(flow_ab.subprocess, "run", fake_run)
    r = flow_ab._run(tmp_path / "checkout", 5, {"VERISEG_MODEL": "models/x.vsb"}, tmp_path / "work")
    assert r["fps"] == 10.0
    assert registered == [(tmp_path / "work" / "home", (tmp_path / "checkout" / "models" / "x.vsb").resolve(), "k" * 64)]
    # a deployment name is the registry's business: nothing to register
    flow_ab._run(tmp_path / "checkout", 5, {"VERISEG_MODEL": "demo"}, tmp_path / "work2")
    assert len(registered) == 1 and len(ran) == 2
