"""The audit page's re-score action: ``anchor-verify --rescore`` on a frame of a run that
kept its frames, over HTTP, with the picture of the pixels the re-run model disagrees on."""
from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest

from tests.flow_fixtures import anchored_folder_run
from tests.web_fixtures import audit_site, get

pytest.importorskip("aiohttp")

SID = "frames"


@pytest.fixture(scope="module")
def anchored(tmp_path_factory):
    """Six frames anchored every three, every frame kept."""
    return anchored_folder_run(tmp_path_factory.mktemp("audit-rescore"), SID, frames=6, every=3,
                               VERISEG_BACKEND="onnxruntime", VERISEG_KEEP_FRAMES="all")


@pytest.fixture
def site(anchored, tmp_path):
    with audit_site(anchored[0], tmp_path) as s:
        yield s


def _picture(v) -> np.ndarray:
    head, _, data = v["picture"].partition(",")
    assert head == "data:image/png;base64"
    return cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)


def test_an_intact_frame_rescores_over_http_and_verify_does_not_list_the_rescore_checks(site):
    from web.verify import RESCORE_CHECKS
    bid = site.batch_rows()[0]["id"]
    server = site.serve()
    try:
        status, _, body = get(server.url, f"/api/rescore?batch={bid}&seq=1")
    finally:
        server.close()
    v = json.loads(body)
    assert status == 200 and v["ok"], v
    assert {c["state"] for c in v["checks"]} == {"passed"}
    assert v["rescore"]["compared"] == v["rescore"]["identical"] == 1024
    assert "rescored: 1024 pixels compared, 1024 identical" in v["line"]
    assert not (_picture(v) == (0, 0, 255)).all(axis=2).any()     # no red pixel
    plain = site.verify(bid, 1)
    assert plain["ok"] and "picture" not in plain
    assert not {c["check"] for c in plain["checks"]} & set(RESCORE_CHECKS)


def test_a_repainted_region_shows_in_red_and_fails_the_rescore(site, monkeypatch):
    """The mask and everything off chain edited to match would fail earlier checks; here only
    the re-score's comparison is under test, so the proof is taken as given."""
    import chain.frame_proof
    bid = site.batch_rows()[0]["id"]
    mask = cv2.imread(str(site.out / SID / "masks" / "000001.png"), cv2.IMREAD_UNCHANGED)
    lied = mask.copy()
    lied[4:12, 20:28] = (lied[4:12, 20:28] + 3) % 13
    real = chain.frame_proof._prove

    def proven_with_the_lie(*a, **kw):
        v, _, reg = real(*a, **kw)
        return v, lied, reg
    monkeypatch.setattr(chain.frame_proof, "_prove", proven_with_the_lie)
    v = site.rescore(bid, 1)
    assert not v["ok"] and v["failed"] == "rescore_mismatch" and "64 of 1024 pixels disagree" in v["message"]
    assert v["rescore"]["mismatched"] == 64
    red = (_picture(v) == (0, 0, 255)).all(axis=2)
    assert red.sum() == 64 and red[4:12, 20:28].all()
    states = {c["check"]: c["state"] for c in v["checks"]}
    assert states["rescore_mismatch"] == "failed" and states["frame_mismatch"] == "passed"


def test_a_frame_not_kept_is_frame_missing(site):
    bid = site.batch_rows()[0]["id"]
    (site.out / SID / "frames" / "000002.bgr.vsf").unlink()
    v = site.rescore(bid, 2)
    assert v["failed"] == "frame_missing" and "picture" not in v
    states = {c["check"]: c["state"] for c in v["checks"]}
    assert states["result_mask_mismatch"] == "passed" and states["rescore_mismatch"] == "not run"
