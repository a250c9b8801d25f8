"""``anchor-verify --rescore`` on the committed ENet blobs: a short run of the sample clip,
every frame kept and anchored, every frame re-run on ONNX Runtime CPU and accepted, on the
default backend, on ONNX Runtime and for the int8 blob. Which pixels differ depends on the
CPU (OpenVINO picks bf16 on some), so only the verdict and the counts' consistency are
asserted; docs/security.md has the whole-clip numbers."""
from __future__ import annotations

import json

import pytest
from bytewax.testing import run_main

import chain
import model_store
from chain.frame_proof import prove_and_rescore
from chain.rescore import reference_profile
from tests.conftest import REPO, need
from dataflows.segment import build_flow
from operators.backends import ov
from operators.config import load_config

FRAMES = 3


@pytest.mark.slow
@pytest.mark.parametrize("blob,backend", [("carla-enet.vsb", None), ("carla-enet.vsb", "onnxruntime"),
                                          ("carla-enet-int8.vsb", None)])
def test_every_frame_of_a_sample_clip_run_rescores(tmp_path, blob, backend):
    blob, clip = REPO / "models" / blob, REPO / "models" / "sample.avi"
    need(blob.exists() and clip.exists(), f"models/{blob.name} and models/sample.avi")
    home = tmp_path / "home"
    reg = chain.connect(chain="embedded", home=home)
    key = model_store.verify(str(blob))
    reg.register(key, blob.stem, blob.resolve().as_uri())
    env = {"VERISEG_SOURCE": str(clip), "VERISEG_MODEL": str(blob), "VERISEG_OUT": str(tmp_path / "out"),
           "VERISEG_HOME": str(home), "VERISEG_VIDEO": "0", "VERISEG_PROGRESS": "0", "VERISEG_THREADS": "2",
           "VERISEG_MAX_FRAMES": str(FRAMES), "VERISEG_ANCHOR_EVERY": str(FRAMES), "VERISEG_KEEP_FRAMES": "all"}
    if backend:
        env["VERISEG_BACKEND"] = backend
    run_main(build_flow(load_config(env)))
    out = tmp_path / "out"
    (sid,) = [p.name for p in (out / "anchors").iterdir()]
    (batch,) = (out / "anchors" / sid).iterdir()
    results = out / sid / "results.jsonl"
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    assert [r["seq"] for r in rows] == list(range(FRAMES))
    if backend == "onnxruntime" or not ov.available():
        assert rows[0]["profile"]["backend"] == "onnxruntime"
    for r in rows:
        v, got = prove_and_rescore(lambda: reg, batch, sid, r["seq"], result=results)
        got.check()
        assert got.compared == 512 * 512
        assert got.identical + got.within_tolerance == got.compared
        if got.profile.backend == "onnxruntime" and got.profile.device == "CPU":
            # the reference profile: every pixel identical, nothing left to tolerate
            assert (got.identical, got.tolerance) == (got.compared, None)
            assert got.reference.backend == reference_profile().backend
