"""The fleet operator's audit page over a finished run: ``python -m web audit OUT_DIR``.

A table of the run's anchor batches (stream, frame range, model key, root, block, tx); per
frame of a batch its mask as a coloured thumbnail and its results line; and a verify action
(``web.verify``) that runs ``anchor-verify``'s checks and shows each check passed, the one
that failed with its message, and those not run.

Read-only: files are read only under OUT_DIR, through ``chain.files.FileRoot`` (no symlink
followed, only regular files); streams and batches are named by the index built from
OUT_DIR's own listing (``web.run_index``), never by a path from the request. Every registry
call runs on one worker thread (the embedded chain is not thread-safe); one verify runs at
a time (another is answered 503), and one that takes over ``VERIFY_TIMEOUT_S`` is answered
504 and left to its old worker: the page goes on with a new one, so no request holds it.
"""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from aiohttp import web

from model_store.util import first_line

from chain.blob_index import card_of
from chain.files import FileRoot, PathRefused
from .run_index import Batch, RunIndex
from .server import WebServer, static_route
from .verify import CHECKS, verify_frame

__all__ = ["CHECKS", "AuditSite", "Batch", "run_audit"]

MAX_MASK_BYTES = 64 << 20
MAX_FRAMES_LISTED = 2000
THUMB_WIDTH = 128
VERIFY_TIMEOUT_S = 30.0   # a verify reads a few files and asks the chain ~5 times: < 1 s


class AuditSite:
    """The audit page over ``out`` with ``registry`` (a connected ``chain`` client)."""

    def __init__(self, out, registry, *, blob: Optional[str] = None,
                 verify_timeout: float = VERIFY_TIMEOUT_S):
        self.files = FileRoot(out)
        self.out = self.files.root
        self.index = RunIndex(self.files)
        self.registry = registry
        self.blob = blob
        self.chain_worker = self._new_worker()
        self.verify_timeout = verify_timeout
        self._verifying = False   # read and set on the server's loop only
        self.blocks: dict[str, Optional[int]] = {}
        self.cards: dict = {}
        self.colours = None   # operators.sinks.overlay.ClassColours: the overlay video's colours

    @property
    def batches(self) -> dict[str, Batch]:
        return self.index.batches

    def refresh(self) -> None:
        """Rebuild the index of streams and batches (a changed batch file is read again)."""
        self.index.refresh()

    def _block(self, root: str) -> Optional[int]:
        if root not in self.blocks:
            try:
                rec = self.registry.anchor_record(root)
                self.blocks[root] = rec.block if rec is not None else None
            except Exception:  # noqa: BLE001 - unknown now; asked again next time
                return None
        return self.blocks[root]

    def batch_rows(self) -> list[dict]:
        self.refresh()
        return [b.row(self._block(b.root)) for b in self.index.sorted_batches()]

    # -- frames ------------------------------------------------------------------------
    def frames(self, bid: str) -> dict:
        b = self.index.batch(bid)
        out = []
        for seq in b.seqs[:MAX_FRAMES_LISTED]:
            line = self.index.line(b.stream, seq)
            if line is not None:
                line = {k: v for k, v in line.items() if k != "latency_ms"}
            out.append({"seq": seq, "line": line})
        return {"batch": b.row(self.blocks.get(b.root)), "frames": out,
                "more": max(0, len(b.seqs) - MAX_FRAMES_LISTED)}

    def _card(self, key: str):
        if key not in self.cards:
            try:
                self.cards[key] = card_of(self.registry, key, self.blob)
            except Exception:  # noqa: BLE001 - no card: the CARLA colours
                self.cards[key] = None
        return self.cards[key]

    def thumbnail(self, stream: str, seq: int) -> bytes:
        """The frame's mask in its classes' colours, ``THUMB_WIDTH`` wide (PNG)."""
        from operators.sinks.overlay import ClassColours, classes_of
        name = self.index.mask_name(stream, seq)
        if name is None:
            raise PathRefused("no mask for that frame")
        arr = cv2.imdecode(np.frombuffer(self.files.read(name, MAX_MASK_BYTES), np.uint8),
                           cv2.IMREAD_UNCHANGED)
        if arr is None or arr.ndim != 2 or arr.dtype != np.uint8:
            raise PathRefused("the mask is not a class map")
        line = self.index.line(stream, seq) or {}
        card = self._card(str(line.get("model_key", "")))
        if self.colours is None:   # imported here: operators.sinks costs ~1 s to import
            self.colours = ClassColours()
        lut = self.colours.lut3(classes_of(card))
        h = max(1, round(arr.shape[0] * THUMB_WIDTH / arr.shape[1]))
        small = cv2.resize(arr, (THUMB_WIDTH, h), interpolation=cv2.INTER_NEAREST)
        ok, buf = cv2.imencode(".png", cv2.applyColorMap(small, lut))
        if not ok:
            raise ValueError("PNG encoding failed")
        return buf.tobytes()

    def verify(self, bid: str, seq: int) -> dict:
        """anchor-verify on one frame: each check passed, failed or not run."""
        return verify_frame(self.index, self.registry, self.index.batch(bid), seq, blob=self.blob)

    def rescore(self, bid: str, seq: int) -> dict:
        """anchor-verify --rescore on one frame: the checks, the counts and the picture of
        the pixels whose anchored class the model does not give."""
        return verify_frame(self.index, self.registry, self.index.batch(bid), seq, blob=self.blob,
                            rescore=True)

    # -- HTTP ------------------------------------------------------------------------------
    @staticmethod
    def _new_worker() -> ThreadPoolExecutor:
        return ThreadPoolExecutor(1, thread_name_prefix="veriseg-audit-chain")

    async def _in_worker(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.chain_worker, fn, *args)

    @staticmethod
    def _seq(request: web.Request) -> int:
        raw = request.query.get("seq", "")
        if not raw.isdigit() or len(raw) > 19:
            raise web.HTTPBadRequest(reason="seq: expected a frame number")
        return int(raw)

    async def _batches(self, request):
        rows = await self._in_worker(self.batch_rows)
        return web.json_response({"out": str(self.out), "batches": rows,
                                  "endpoint": str(getattr(self.registry, "endpoint", ""))})

    async def _frames(self, request):
        return web.json_response(await self._in_worker(self.frames, request.query.get("batch", "")))

    async def _thumb(self, request):
        stream = request.query.get("stream", "")
        if not self.index.has_stream(stream):
            raise PathRefused("no such stream")
        body = await self._in_worker(self.thumbnail, stream, self._seq(request))
        return web.Response(body=body, content_type="image/png")

    async def _verify(self, request):
        bid, seq = request.query.get("batch", ""), self._seq(request)
        if self._verifying:   # queued behind a slow verify, they would hold the worker too
            raise web.HTTPServiceUnavailable(reason="a verify is running: try again shortly")
        self._verifying = True
        worker = self.chain_worker
        fut = asyncio.get_running_loop().run_in_executor(worker, self.verify, bid, seq)
        fut.add_done_callback(lambda _: setattr(self, "_verifying", False))
        try:
            return web.json_response(await asyncio.wait_for(asyncio.shield(fut),
                                                            self.verify_timeout))
        except asyncio.TimeoutError:
            # the stuck call keeps its thread; every later request gets a fresh worker
            if self.chain_worker is worker:
                self.chain_worker = self._new_worker()
                worker.shutdown(wait=False, cancel_futures=True)
            self._verifying = False
            raise web.HTTPGatewayTimeout(reason=f"verify took over {self.verify_timeout:g} s "
                                                "and was abandoned") from None

    async def _rescore(self, request):
        return web.json_response(await self._in_worker(self.rescore, request.query.get("batch", ""),
                                                       self._seq(request)))

    async def _file(self, request):
        """A file under OUT_DIR as it is (downloaded; never rendered as a page)."""
        name = request.match_info["name"]
        f = self.files.open(name)
        try:
            size = os.fstat(f.fileno()).st_size
            ctype = {".json": "application/json", ".png": "image/png",
                     ".jsonl": "text/plain; charset=utf-8", ".prom": "text/plain; charset=utf-8"
                     }.get(Path(name).suffix, "application/octet-stream")
            resp = web.StreamResponse(headers={
                "Content-Type": ctype, "Content-Length": str(size),
                "Content-Disposition": f'attachment; filename="{Path(name).name}"'})
            await resp.prepare(request)
            left = size
            while left > 0 and request.method != "HEAD":
                chunk = f.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        finally:
            f.close()

    def setup(self, app: web.Application) -> None:
        static_route(app, {"/": "audit.html"})
        app.router.add_get("/api/batches", self._batches)
        app.router.add_get("/api/frames", self._frames)
        app.router.add_get("/api/thumb", self._thumb)
        app.router.add_get("/api/verify", self._verify)
        app.router.add_get("/api/rescore", self._rescore)
        app.router.add_get("/files/{name:.+}", self._file)

    def server(self, host: str = "127.0.0.1", port: int = 0,
               token: Optional[str] = None) -> WebServer:
        """The page's server, not started yet (the index is built first)."""
        self.refresh()
        return WebServer(self.setup, host, port, token=token, name="veriseg-audit")

    def serve(self, host: str = "127.0.0.1", port: int = 0, token: Optional[str] = None) -> WebServer:
        """The page served from a thread of its own until ``close`` (tests, embedding)."""
        return self.server(host, port, token).start()

    def close(self) -> None:
        # a verify in progress finishes (the interpreter joins the worker); queued ones do not
        self.chain_worker.shutdown(wait=False, cancel_futures=True)


def run_audit(out_dir, registry, *, host: str = "127.0.0.1", port: int = 8081,
              token: Optional[str] = None, blob: Optional[str] = None) -> int:
    """``python -m web audit``: serve on the main thread until SIGINT or SIGTERM; one
    line says where once it serves (a signal sent after it is never lost), one that it
    stopped."""
    site = AuditSite(out_dir, registry, blob=blob)
    server = site.server(host, port, token)
    n = len(site.batches)
    hint = " (open it once with ?token=<VERISEG_WEB_TOKEN>)" if token else ""

    def serving():
        print(f"audit page for {site.out} ({n} anchor batch{'es' if n != 1 else ''}): "
              f"{server.url}{hint}", flush=True)
    try:
        why = server.serve_until_signalled(serving)
    except PermissionError:
        raise   # beyond loopback without a token: its own line
    except OSError as e:
        raise OSError(f"audit page: cannot listen on {host}:{port} ({e.strerror or first_line(e)})") from None
    finally:
        site.close()
    print(f"audit page stopped ({why})", flush=True)
    return 0
