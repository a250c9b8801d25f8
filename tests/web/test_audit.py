"""The audit page's logic without a browser, over a real anchored run on the embedded chain:
batches with their blocks, thumbnails, and anchor-verify's verdict per frame (each
tampering names its check), and ``python -m web audit`` in a subprocess."""
from __future__ import annotations

import json
import os
import select
import time
import shutil
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.flow_fixtures import anchored_folder_run
from tests.web_fixtures import REPO, audit_site, get

pytest.importorskip("aiohttp")

SID = "frames"


@pytest.fixture(scope="module")
def anchored(tmp_path_factory):
    """Six frames, anchored every three, on the embedded chain (outputs copied per test)."""
    # ONNX Runtime: see web/test_browser.py (no OpenVINO before Chromium)
    cfg, key = anchored_folder_run(tmp_path_factory.mktemp("audit"), SID, frames=6, every=3,
                                   VERISEG_BACKEND="onnxruntime")
    return cfg, key


@pytest.fixture
def site(anchored, tmp_path):
    with audit_site(anchored[0], tmp_path) as s:
        yield s


def test_batches_are_listed_with_their_blocks_and_an_intact_frame_verifies(site, anchored):
    _, key = anchored
    rows = site.batch_rows()
    assert [(r["first_seq"], r["last_seq"], r["frames"]) for r in rows] == [(0, 2, 3), (3, 5, 3)]
    assert all(r["model_key"] == key and isinstance(r["block"], int) and r["block"] > 0 for r in rows)
    assert all(r["tx"].startswith("0x") and r["stream"] == SID for r in rows)
    frames = site.frames(rows[0]["id"])["frames"]
    assert [f["seq"] for f in frames] == [0, 1, 2] and frames[1]["line"]["model_key"] == key
    assert "latency_ms" not in frames[1]["line"]
    v = site.verify(rows[0]["id"], 1)
    assert v["ok"] and v["failed"] is None and v["line"].startswith(f"verified: stream {SID} seq 1")
    assert {c["state"] for c in v["checks"]} == {"passed"}
    png = site.thumbnail(SID, 1)
    thumb = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and thumb.shape[1] == 128


def _edit_line(out, seq, fn):
    p = out / SID / "results.jsonl"
    lines = [json.loads(x) for x in p.read_text().splitlines()]
    for rec in lines:
        if rec["seq"] == seq:
            fn(rec)
    p.write_text("".join(json.dumps(r) + "\n" for r in lines))


def _pixel(out, seq):
    p = out / SID / "masks" / f"{seq:06d}.png"
    m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    m[0, 0] = (int(m[0, 0]) + 1) % 13
    cv2.imwrite(str(p), m)


def _symlink_mask(out, seq):
    p = out / SID / "masks" / f"{seq:06d}.png"
    p.unlink()
    p.symlink_to(out / SID / "masks" / "000000.png")


def _mask_out_of_out_dir(out, seq):
    """The line names the very class map, copied out of OUT_DIR by an absolute path."""
    outside = out.parent / "outside.png"
    shutil.copy(out / SID / "masks" / f"{seq:06d}.png", outside)
    _edit_line(out, seq, lambda r: r.update(mask=str(outside)))


def _symlink_mask_out(out, seq):
    outside = out.parent / "outside.png"
    p = out / SID / "masks" / f"{seq:06d}.png"
    shutil.copy(p, outside)
    p.unlink()
    p.symlink_to(outside)


def _fifo_mask(out, seq):
    os.mkfifo(out / SID / "masks" / "fifo.png")
    _edit_line(out, seq, lambda r: r.update(mask="masks/fifo.png"))


def _line_twice(out, seq):
    """A second line for the frame (the index showed the last, verify read the first)."""
    p = out / SID / "results.jsonl"
    rec = next(json.loads(x) for x in p.read_text().splitlines() if json.loads(x)["seq"] == seq)
    with open(p, "a") as f:
        f.write(json.dumps({**rec, "pos": "elsewhere"}) + "\n")


def _root(out, seq):
    p = out / "anchors" / SID / "000000-000002.json"
    d = json.loads(p.read_text())
    d["root"] = "00" * 32
    p.write_text(json.dumps(d))


TAMPERING = {
    "mask_pixel": (_pixel, "leaf_mismatch"),
    "mask_symlinked": (_symlink_mask, "mask"),
    "mask_deleted": (lambda out, seq: (out / SID / "masks" / f"{seq:06d}.png").unlink(), "mask"),
    "mask_absolute": (_mask_out_of_out_dir, "mask"),
    "mask_climbing": (lambda out, seq: _edit_line(
        out, seq, lambda r: r.update(mask=f"../{SID}/masks/{seq:06d}.png")), "mask"),
    "mask_etc_hostname": (lambda out, seq: _edit_line(out, seq, lambda r: r.update(mask="/etc/hostname")),
                          "mask"),
    "mask_symlinked_out": (_symlink_mask_out, "mask"),
    "mask_fifo": (_fifo_mask, "mask"),
    "line_twice": (_line_twice, "result_ambiguous"),
    "line_extra_field": (lambda out, seq: _edit_line(out, seq, lambda r: r.update(ok=True)),
                         "result_unbound_field"),
    "line_shares": (lambda out, seq: _edit_line(out, seq, lambda r: r.update(shares={"road": 1.0})),
                    "result_shares_mismatch"),
    "line_pos": (lambda out, seq: _edit_line(out, seq, lambda r: r.update(pos="elsewhere")),
                 "result_claim_mismatch"),
    "line_deleted": (lambda out, seq: _edit_line(out, seq, lambda r: r.update(seq=99)), "result_missing"),
    "batch_root": (_root, "proof_invalid"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_a_tampered_frame_fails_naming_the_check_and_its_neighbour_still_verifies(site, case):
    tamper, check = TAMPERING[case]
    rows = site.batch_rows()
    tamper(site.out, 1)
    v = site.verify(rows[0]["id"], 1)
    assert not v["ok"] and v["failed"] == check, v
    states = {c["check"]: c["state"] for c in v["checks"]}
    assert states[check] == "failed" and list(states.values()).count("failed") == 1
    order = [c["check"] for c in v["checks"]]
    assert all(states[c] == "passed" for c in order[:order.index(check)])
    assert all(states[c] == "not run" for c in order[order.index(check) + 1:])
    assert v["message"] and "\n" not in v["message"]
    if check == "result_ambiguous":   # the page shows neither line: none is the frame's
        assert [f["line"] for f in site.frames(rows[0]["id"])["frames"]][1] is None
    if case != "batch_root":
        assert site.verify(rows[0]["id"], 2)["ok"]


def test_a_fifo_named_by_a_line_neither_blocks_verify_nor_the_page(site):
    """Verify over HTTP on a frame whose line names a FIFO: one refusal within seconds, and
    the page's worker still answers the next requests."""
    rows = site.batch_rows()
    _fifo_mask(site.out, 1)
    srv = site.serve("127.0.0.1", 0)
    try:
        t0 = time.monotonic()
        status, _, body = get(srv.url, f"/api/verify?batch={rows[0]['id']}&seq=1")
        assert status == 200 and json.loads(body)["failed"] == "mask", body
        assert time.monotonic() - t0 < 30
        status, _, body = get(srv.url, "/api/batches")
        assert status == 200 and len(json.loads(body)["batches"]) == 2
        status, _, body = get(srv.url, f"/api/verify?batch={rows[0]['id']}&seq=2")
        assert status == 200 and json.loads(body)["ok"], body
    finally:
        srv.close()


def test_a_verify_that_hangs_is_answered_504_and_the_page_goes_on(site, monkeypatch):
    """One request cannot hold the page's worker: a verify that never returns is answered
    504 after the timeout, a second one meanwhile 503, and the other routes still answer."""
    import threading
    rows = site.batch_rows()
    release = threading.Event()
    monkeypatch.setattr(site, "verify", lambda bid, seq: release.wait(60) and {})
    site.verify_timeout = 2.0
    srv = site.serve("127.0.0.1", 0)
    try:
        url = f"/api/verify?batch={rows[0]['id']}&seq=1"
        hung = threading.Thread(target=lambda: results.append(get(srv.url, url)))
        results: list = []
        hung.start()
        time.sleep(0.5)
        assert get(srv.url, url)[0] == 503
        hung.join(30)
        assert results and results[0][0] == 504, results
        assert b"abandoned" in results[0][2] and b"\n" not in results[0][2].strip()
        status, _, body = get(srv.url, "/api/batches")
        assert status == 200 and len(json.loads(body)["batches"]) == 2
        assert get(srv.url, f"/api/frames?batch={rows[0]['id']}")[0] == 200
    finally:
        release.set()
        srv.close()


# how the child is started: as it is, or as a shell's background job (``cmd &`` without job
# control: SIGINT ignored, inherited by every child). The latter is how a CI run started
# with ``&`` ran this test, and the page, counting on KeyboardInterrupt, never stopped.
STOPS = {"SIGINT": (signal.SIGINT, False), "SIGTERM": (signal.SIGTERM, False),
         "SIGINT-to-a-background-job": (signal.SIGINT, True)}


@pytest.mark.parametrize("case", list(STOPS))
def test_python_m_web_audit_serves_the_page_until_a_signal_stops_it(anchored, tmp_path, case):
    cfg, _ = anchored
    sig, background = STOPS[case]
    cmd = [sys.executable, "-m", "web", "audit", str(cfg.out), "--port", "0",
           "--chain", "embedded", "--home", str(cfg.home)]
    if background:
        cmd = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *cmd]
    err_path = tmp_path / "stderr.txt"   # a file, not a pipe nobody reads until the end
    with open(err_path, "w") as err:
        p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)

    def output() -> str:
        return f"stdout so far: {line!r}; stderr: {err_path.read_text()[-3000:]!r}"
    line = ""
    try:
        # printed once it serves, its signal handlers installed (one flushed write)
        if select.select([p.stdout], [], [], 300)[0]:
            line = p.stdout.readline()
        assert "audit page for" in line and "(2 anchor batches)" in line, output()
        url = line.split(": ", 1)[1].strip()
        status, headers, body = get(url, "/api/batches")
        assert status == 200 and len(json.loads(body)["batches"]) == 2
        assert get(url, "/")[0] == 200
        p.send_signal(sig)
        try:
            rc = p.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"python -m web audit did not exit within 60 s of {sig.name}; {output()}")
        rest = p.stdout.read()
        assert rc == 0, f"exit status {rc}; {output()}"
        assert rest.splitlines() == [f"audit page stopped ({sig.name})"], output() + f"; then {rest!r}"
        assert "Traceback" not in err_path.read_text(), output()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_python_m_web_audit_refuses_a_public_address_without_a_token(anchored, tmp_path):
    cfg, _ = anchored
    env = {k: v for k, v in __import__("os").environ.items() if k != "VERISEG_WEB_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "web", "audit", str(cfg.out), "--host", "0.0.0.0",
                        "--port", "0", "--chain", "embedded", "--home", str(cfg.home)],
                       cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and "VERISEG_WEB_TOKEN" in r.stderr, r.stderr
