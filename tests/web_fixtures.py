"""Helpers for the web tests: raw HTTP (no client that would normalise the path), a free
port, a flow running in a thread, the audit page over a copy of a run, small PNG screenshots."""
from __future__ import annotations

import contextlib
import http.client
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
from tests.chain_fixtures import free_port

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "docs" / "web"
SCREENSHOT_LIMIT = 150_000


def get(url_or_port, path: str, *, method: str = "GET", headers=None, body=None,
        host: str = "127.0.0.1"):
    """(status, headers, body) of one request sent as written (the path is not normalised)."""
    port = url_or_port if isinstance(url_or_port, int) else int(url_or_port.rstrip("/").rsplit(":", 1)[1])
    c = http.client.HTTPConnection(host, port, timeout=60)
    try:
        c.putrequest(method, path, skip_accept_encoding=True,
                     skip_host=any(k.lower() == "host" for k in (headers or {})))
        for k, v in (headers or {}).items():
            c.putheader(k, v)
        if body is not None:
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


@contextlib.contextmanager
def audit_site(cfg, tmp_path):
    """The audit page's site over a copy of the run ``cfg`` wrote (a test may tamper with
    its copy), on that run's embedded chain."""
    import chain
    from web.audit import AuditSite
    out = tmp_path / "out"
    shutil.copytree(cfg.out, out, symlinks=True)
    s = AuditSite(out, chain.connect(chain="embedded", home=cfg.home))
    s.refresh()
    try:
        yield s
    finally:
        s.close()


class FlowThread:
    """``bytewax.testing.run_main(flow)`` in a thread; ``stop()`` ends the sources."""

    def __init__(self, flow):
        from bytewax.testing import run_main
        self.flow = flow
        self.error = None

        def run():
            try:
                run_main(flow)
            except BaseException as e:  # noqa: BLE001 - reported by stop()
                self.error = e
        self.thread = threading.Thread(target=run, daemon=True, name="test-flow")
        self.thread.start()

    def stop(self, timeout: float = 120.0):
        self.flow.context.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the flow did not stop"


def save_small_png(png: bytes, name: str) -> Path:
    """A screenshot for docs/web/, under SCREENSHOT_LIMIT bytes: fewer colours (the page is
    flat colours and one photo), then smaller, until it fits."""
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    while True:
        for levels in (1, 16, 32):   # 1: as taken; then fewer colours (white stays white)
            q = img if levels == 1 else np.clip(
                (img.astype(np.int32) + levels // 2) // levels * levels, 0, 255).astype(np.uint8)
            ok, buf = cv2.imencode(".png", q, [cv2.IMWRITE_PNG_COMPRESSION, 9])
            assert ok
            if len(buf) <= SCREENSHOT_LIMIT:
                break
        if len(buf) <= SCREENSHOT_LIMIT or img.shape[1] < 300:
            break
        img = cv2.resize(img, (int(img.shape[1] * 0.85), int(img.shape[0] * 0.85)),
                         interpolation=cv2.INTER_AREA)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    path.write_bytes(buf.tobytes())
    return path
