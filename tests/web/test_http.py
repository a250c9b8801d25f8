"""The web layer without a browser: file access under a root, the server's guards (path
tricks, methods, sizes, connections, Host, token, errors, headers), the check list of the
audit page, and the live view's state and picture on fake flow parts."""
from __future__ import annotations

import logging
import os
import re
import socket
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.web_fixtures import REPO, get

pytest.importorskip("aiohttp")

from chain.files import FileRoot, PathRefused  # noqa: E402
from web.server import SECURITY_HEADERS, WebServer  # noqa: E402

TOKEN = "0123456789abcdef-token"


@pytest.fixture
def tree(tmp_path):
    """OUT_DIR with a stream's files, and a secret beside it (outside the root)."""
    out = tmp_path / "out"
    (out / "cam0" / "masks").mkdir(parents=True)
    (out / "cam0" / "results.jsonl").write_text('{"stream":"cam0","seq":0}\n')
    cv2.imwrite(str(out / "cam0" / "masks" / "000000.png"), np.zeros((4, 4), np.uint8))
    (tmp_path / "secret.txt").write_text("TOP-SECRET")
    (out / "link_file").symlink_to(tmp_path / "secret.txt")
    (out / "link_dir").symlink_to(tmp_path)
    (out / "cam0" / "inner_link").symlink_to(out / "cam0" / "results.jsonl")   # inside, still refused
    os.mkfifo(out / "cam0" / "fifo")
    return out


# ---------------------------------------------------------------- files under a root

def test_a_regular_file_under_the_root_is_read(tree):
    root = FileRoot(tree)
    assert root.read("cam0/results.jsonl", 1000).startswith(b'{"stream"')
    assert root.is_file("cam0/masks/000000.png")


@pytest.mark.parametrize("name", [
    "../secret.txt", "cam0/../../secret.txt", "/etc/passwd", str(Path("/etc/passwd")),
    "cam0//results.jsonl", "./cam0/results.jsonl", "cam0/./results.jsonl", "",
    "cam0%2fresults.jsonl", "..%2fsecret.txt", "%2e%2e/secret.txt", "cam0\\results.jsonl",
    "cam0/results.jsonl\x00.png", "link_file", "link_dir/secret.txt", "cam0/inner_link",
    "cam0/fifo", "cam0", "cam0/masks", "cam0/missing.png", "x" * 600,
])
def test_anything_but_a_regular_file_below_the_root_is_refused(tree, name):
    with pytest.raises(PathRefused):
        FileRoot(tree).open(name).close()


def test_a_file_over_the_limit_is_refused(tree):
    with pytest.raises(PathRefused):
        FileRoot(tree).read("cam0/results.jsonl", 5)


# ---------------------------------------------------------------- the server's guards

@pytest.fixture
def audit_server(tree):
    """The audit page over ``tree`` (no chain needed for files and the page itself)."""
    from web.audit import AuditSite
    site = AuditSite(tree, registry=None)
    srv = site.serve("127.0.0.1", 0)
    yield srv
    srv.close()
    site.close()


def test_files_under_out_dir_are_served_with_the_security_headers(audit_server):
    status, headers, body = get(audit_server.url, "/files/cam0/results.jsonl")
    assert status == 200 and body.startswith(b'{"stream"')
    assert headers["content-disposition"].startswith("attachment")
    for k, v in SECURITY_HEADERS.items():
        assert headers[k.lower()] == v
    assert "default-src 'self'" in headers["content-security-policy"]
    status, headers, _ = get(audit_server.url, "/")
    assert status == 200 and headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", [
    "/files/../secret.txt", "/files/cam0/../../secret.txt", "/files/%2e%2e/secret.txt",
    "/files/..%2fsecret.txt", "/files/..%2Fsecret.txt", "/files/cam0%2f..%2f..%2fsecret.txt",
    "/files/%252e%252e/secret.txt", "/files/..%5csecret.txt", "/files//etc/passwd",
    "/files/%2fetc%2fpasswd", "/files/link_file", "/files/link_dir/secret.txt",
    "/files/cam0/inner_link", "/files/cam0/fifo", "/files/cam0/results.jsonl%00.png",
    "/static/../../web/server.py", "/static/%2e%2e%2fserver.py", "/../secret.txt",
])
def test_path_tricks_never_reach_a_file_outside_out_dir(audit_server, path):
    status, headers, body = get(audit_server.url, path)
    assert status in (400, 404), (path, status, body)
    assert b"TOP-SECRET" not in body and b"Traceback" not in body
    assert headers["content-type"].startswith("application/json")
    assert headers["x-content-type-options"] == "nosniff"


def test_only_get_and_head_no_body_and_bounded_headers(audit_server):
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, _, body = get(audit_server.url, "/files/cam0/results.jsonl", method=method, body=b"x")
        assert status == 405, (method, status, body)
    status, _, _ = get(audit_server.url, "/", headers={"X-Big": "a" * 20000})
    assert status in (400, 431)
    status, _, _ = get(audit_server.url, "/", headers={f"X-H{i}": "1" for i in range(200)})
    assert status in (400, 431)
    status, _, body = get(audit_server.url, "/files/cam0/results.jsonl", method="HEAD")
    assert status == 200 and body == b""


def test_a_bad_request_is_one_log_line_never_a_traceback(audit_server, caplog):
    """An 8 KiB header made aiohttp log a multi-line traceback per request (log flooding)."""
    caplog.set_level(logging.DEBUG)
    for headers in ({"X-Big": "a" * 8192}, {"X-Esc": "\x1b[2J" + "b" * 8192}):
        assert get(audit_server.url, "/", headers=headers)[0] in (400, 431)
    time.sleep(0.2)
    said = [r for r in caplog.records if r.name.startswith(("aiohttp", "veriseg"))
            and r.levelno >= logging.WARNING]
    assert len(said) == 2, [r.getMessage() for r in said]
    for r in said:
        text = logging.Formatter().format(r)
        assert r.exc_info is None and "Traceback" not in text and "\n" not in text, text
        assert "BadHttpMessage" in text or "LineTooLong" in text, text
        assert "\x1b" not in text


def test_connections_beyond_the_limit_are_refused_with_503(tree):
    from web.audit import AuditSite
    site = AuditSite(tree, registry=None)
    srv = WebServer(site.setup, "127.0.0.1", 0, max_connections=3).start()
    held = []
    try:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert s.recv(12).startswith(b"HTTP/1.1 200")   # each one is open and served
            held.append(s)
        extra = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        assert extra.recv(100).startswith(b"HTTP/1.1 503")
        extra.close()
        held.pop().close()
        deadline = time.time() + 30
        while True:   # a slot frees once the server has seen the close
            status, _, _ = get(srv.port, "/")
            if status == 200 or time.time() > deadline:
                break
            time.sleep(0.05)
        assert status == 200
    finally:
        for s in held:
            s.close()
        srv.close()


def test_a_foreign_host_header_is_refused_without_a_token(audit_server):
    """DNS rebinding: a page from evil.example resolved to 127.0.0.1 sends its own Host."""
    status, _, _ = get(audit_server.url, "/files/cam0/results.jsonl", headers={"Host": "evil.example"})
    assert status == 421
    status, _, _ = get(audit_server.url, "/files/cam0/results.jsonl",
                       headers={"Host": f"localhost:{audit_server.port}"})
    assert status == 200


FOREIGN = [{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
           {"Origin": "http://evil.example"}, {"Origin": "null"},
           {"Origin": "http://127.0.0.1:1", "Sec-Fetch-Site": "same-origin"}]


def _own(port):
    return [{}, {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"},
            {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}]


@pytest.mark.parametrize("headers", FOREIGN)
def test_a_cross_site_fetch_of_the_audit_api_is_refused(audit_server, headers):
    """A page elsewhere made the visitor's browser run /api/verify (and read files)."""
    for path in ("/api/verify?batch=x&seq=1", "/api/batches", "/files/cam0/results.jsonl"):
        status, _, body = get(audit_server.url, path, headers=headers)
        assert status == 403 and b"cross-site" in body, (path, headers, status, body)
        assert body.count(b"\n") <= 1
    for own in _own(audit_server.port):
        assert get(audit_server.url, "/files/cam0/results.jsonl", headers=own)[0] == 200, own
    # the page itself may be opened from a link elsewhere; its API calls are its own
    assert get(audit_server.url, "/", headers=headers)[0] == 200


@pytest.mark.parametrize("headers", FOREIGN)
def test_a_cross_site_fetch_of_the_live_api_is_refused(tmp_path, headers):
    from web.live import LiveView
    view = LiveView(_fake_ctx(tmp_path), "127.0.0.1", 0).start()
    try:
        for path in ("/api/state", "/api/frame.jpg?stream=cam0"):
            status, _, body = get(view.url, path, headers=headers)
            assert status == 403 and b"cross-site" in body, (path, headers, status, body)
        port = int(view.url.rstrip("/").rsplit(":", 1)[1])
        for own in _own(port):
            assert get(view.url, "/api/state", headers=own)[0] == 200, own
    finally:
        view.close()


def test_the_token_is_required_and_set_as_a_cookie(tree):
    from web.audit import AuditSite
    site = AuditSite(tree, registry=None)
    srv = site.serve("127.0.0.1", 0, token=TOKEN)
    try:
        assert get(srv.url, "/files/cam0/results.jsonl")[0] == 401
        assert get(srv.url, "/files/cam0/results.jsonl?token=wrong-token-1234567")[0] == 401
        assert get(srv.url, "/files/cam0/results.jsonl", headers={"Authorization": "Bearer nope"})[0] == 401
        status, headers, _ = get(srv.url, f"/files/cam0/results.jsonl?token={TOKEN}")
        assert status == 303 and "token" not in headers["location"]
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        jar = cookie.split(";")[0]
        assert get(srv.url, "/files/cam0/results.jsonl", headers={"Cookie": jar})[0] == 200
        assert get(srv.url, "/files/cam0/results.jsonl",
                   headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        # with a token any Host is fine (it is meant to be reached from elsewhere)
        assert get(srv.url, "/", headers={"Authorization": f"Bearer {TOKEN}",
                                          "Host": "cam-box.example"})[0] == 200
    finally:
        srv.close()
        site.close()


def test_the_token_is_compared_in_constant_time():
    src = (REPO / "web" / "server.py").read_text()
    assert src.count("hmac.compare_digest(") >= 2
    assert not re.search(r"token\s*==|==\s*self\.token", src)


def test_beyond_loopback_the_server_refuses_to_start_without_a_token(tree):
    with pytest.raises(PermissionError):
        WebServer(lambda app: None, "0.0.0.0", 0).start()


def test_an_error_in_a_handler_is_a_json_line_never_a_stack_trace(caplog):
    def setup(app):
        async def boom(request):
            raise RuntimeError("secret internals\nline 2")
        app.router.add_get("/boom", boom)
    srv = WebServer(setup, "127.0.0.1", 0).start()
    try:
        status, headers, body = get(srv.url, "/boom")
    finally:
        srv.close()
    assert status == 500 and body == b'{"error": "internal error"}'
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert b"Traceback" not in body and b"secret" not in body


# ---------------------------------------------------------------- the audit page's checks

def test_every_check_anchor_verify_can_name_is_on_the_audit_page():
    from web.audit import CHECKS
    raised = set()
    for p in (REPO / "chain").glob("*.py"):
        src = p.read_text()
        raised |= set(re.findall(r'check="([a-z_]+)"', src)) | set(re.findall(r'fail\("([a-z_]+)"', src))
    listed = [name for name, _ in CHECKS]
    assert raised and raised <= set(listed), raised - set(listed)
    assert len(listed) == len(set(listed))


# ---------------------------------------------------------------- the live view, on fake flow parts

def _fake_ctx(tmp_path, key="ab" * 32):
    from operators.revocation import RevokedKeys
    from operators.telemetry import Stats
    first = types.SimpleNamespace(key=key, name="tiny", version=1, card=None, source="x")
    cfg = types.SimpleNamespace(stream_ids=("cam0",), out=tmp_path, chain="embedded")
    return types.SimpleNamespace(config=cfg, stats=Stats(), revoked=RevokedKeys(), first=first,
                                 watcher=types.SimpleNamespace(current=first, follower=None),
                                 registry=None)


def _scored(seq, key="ab" * 32):
    from operators.frames import ScoredFrame
    img = np.full((48, 64, 3), seq * 20 % 256, np.uint8)
    return ScoredFrame("cam0", seq, time.time(), f"clip#{seq}", np.full((48, 64), seq % 13, np.uint8),
                       key, image=img, colour="RGB", latency_ms={"score": 5.0})


def test_the_live_view_encodes_only_while_asked_and_shows_revocation_and_outage(tmp_path, monkeypatch):
    from web.live import LiveView
    ctx = _fake_ctx(tmp_path)
    view = LiveView(ctx, "127.0.0.1", 0)
    encoded = []
    real = view._encode
    monkeypatch.setattr(view, "_encode", lambda r: encoded.append(r.seq) or real(r))
    view.start()
    try:
        for i in range(50):   # the flow's side: references only
            ctx.stats.scored_batch("cam0", ctx.first.key, 1, {"score": 5.0})
            ctx.stats.add("written", "cam0")
            view.offer(_scored(i), 12.0)
        state = view.state()
        s = state["streams"][0]
        assert s["scored"] == 50 and s["seq"] == 49 and s["model"]["key"] == ctx.first.key
        assert s["model"]["status"] == "active" and state["banner"] == []
        assert s["p50_ms"] == 12.0 == s["p99_ms"]
        assert encoded == []
        status, headers, body = get(view.url, "/api/frame.jpg?stream=cam0")
        assert status == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
        assert headers["x-frame-seq"] == "49" and encoded == [49]
        status, _, again = get(view.url, "/api/frame.jpg?stream=cam0")   # same newest frame: cached
        assert again == body and encoded == [49]
        assert get(view.url, "/api/frame.jpg?stream=../cam0")[0] == 404

        ctx.revoked.add(ctx.first.key, "compromised")
        state = view.state()
        assert state["streams"][0]["model"]["status"] == "revoked"
        assert state["streams"][0]["model"]["reason"] == "compromised"
        assert any("REVOKED" in b for b in state["banner"])

        ctx.watcher.follower = types.SimpleNamespace(down_since=time.monotonic() - 3)
        state = view.state()
        assert not state["chain"]["reachable"] and any("chain unreachable" in b for b in state["banner"])
    finally:
        view.close()


def test_the_live_view_colours_a_frame_as_the_overlay_video_does(tmp_path):
    """By the classes of the model that scored it (a hot swap), else the first model's."""
    import dataclasses

    from operators.sinks.overlay import OverlayVideo, classes_of
    from web.live import LiveView
    view = LiveView(_fake_ctx(tmp_path), "127.0.0.1", 0)   # never started: encodes only
    swapped = (("sky", (255, 0, 0)), ("road", (0, 0, 255)))
    video = OverlayVideo(tmp_path, classes_of(None), fps=10)
    try:
        for classes in ((), swapped):
            r = dataclasses.replace(_scored(1), image=np.zeros((48, 64, 3), np.uint8),
                                    classes=classes)   # every pixel class 1, on a black frame
            want = video.colours.of(r)[1, 0] * 0.5     # BGR, half blended with black
            got = cv2.imdecode(np.frombuffer(view._encode(r), np.uint8), cv2.IMREAD_COLOR)
            assert np.abs(got.reshape(-1, 3).mean(0) - want).max() < 6, (classes, got[0, 0], want)
        assert not np.array_equal(video.colours.lut3()[1], video.colours.lut3(swapped)[1])
    finally:
        view.close()
