"""The fleet operator's audit page over a finished run: ``python -m chain audit OUT_DIR``.

A table of the run's anchor batches (stream, frame range, model key, root, block, tx); per
frame of a batch its mask as a coloured thumbnail and its results line; and a verify action
that runs ``anchor-verify``'s checks (``chain.cli.prove_frame``: the same code, not a copy)
and shows each check passed, the one that failed with its message, and those not run.

Read-only: files are read only under OUT_DIR, through ``web.files.FileRoot`` (no symlink
followed, only regular files); streams and batches are named by the index built from
OUT_DIR's own listing, never by a path from the request. Every registry call runs on one
worker thread (the embedded chain is not thread-safe).
"""
from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from aiohttp import web

from model_store.util import first_line, one_line

from .files import FileRoot, PathRefused
from .server import WebServer, static_route

__all__ = ["CHECKS", "AuditSite", "run_audit"]

#: anchor-verify's checks in the order ``chain.cli.prove_frame`` runs them (the names are
#: ``AnchorVerificationFailed.check``; tests/test_web_http.py fails when chain/ raises one
#: that is missing here)
CHECKS = (
    ("result_missing", "the frame has a results line"),
    ("mask", "its mask is a readable class map"),
    ("batch", "the batch file is a valid anchor batch"),
    ("leaf_missing", "the frame is in the batch"),
    ("leaf_mismatch", "the mask hashes to the batch's leaf"),
    ("proof_invalid", "the Merkle proof leads to the batch root"),
    ("root_not_anchored", "the root is anchored on chain"),
    ("model_key_mismatch", "the chain anchored it for the batch's model key"),
    ("seq_out_of_range", "the frame is in the anchored seq range"),
    ("stream_mismatch", "the chain anchored it for this stream"),
    ("anchor_history_incomplete", "the node returned the stream's whole anchor history"),
    ("conflicting_anchor", "no other anchor claims another result for the frame"),
    ("result_model_key_mismatch", "the line names the anchored model key"),
    ("result_leaf_missing", "the line carries its leaf"),
    ("result_leaf_mismatch", "the line's leaf is the proven leaf"),
    ("result_claim_mismatch", "the line's ts and pos are the anchored ones"),
    ("result_unbound_field", "the line carries no unanchored field"),
    ("result_shares_unverifiable", "the model's class names are known"),
    ("result_shares_mismatch", "the line's class shares match the mask"),
    ("result_mask_mismatch", "the line names the proven mask"),
)
MAX_BATCH_BYTES = 64 << 20
MAX_MASK_BYTES = 64 << 20
MAX_LINE_BYTES = 1 << 20
MAX_FRAMES_LISTED = 2000
THUMB_WIDTH = 128


@dataclass
class Batch:
    id: str              # "<stream>/<file>": how the page names it (a key of the index)
    stream: str
    file: str            # relative to OUT_DIR
    first_seq: int
    last_seq: int
    model_key: str
    root: str
    tx: Optional[str]
    seqs: list = field(default_factory=list)

    def row(self, block) -> dict:
        return {"id": self.id, "stream": self.stream, "file": self.file,
                "first_seq": self.first_seq, "last_seq": self.last_seq,
                "model_key": self.model_key, "root": self.root, "tx": self.tx,
                "frames": len(self.seqs), "block": block}


class _Results:
    """seq -> (offset, length) of the last line per seq of one ``results.jsonl``, rebuilt
    when the file changes."""

    def __init__(self, files: FileRoot, name: str):
        self.files, self.name = files, name
        self.sig = None
        self.index: dict[int, tuple[int, int]] = {}

    def _refresh(self):
        with self.files.open(self.name) as f:
            st = os.fstat(f.fileno())
            if (st.st_size, st.st_mtime_ns) == self.sig:
                return
            index, off = {}, 0
            for raw in f:
                n = len(raw)
                if n <= MAX_LINE_BYTES:
                    try:
                        rec = json.loads(raw)
                        index[int(rec["seq"])] = (off, n)
                    except (ValueError, KeyError, TypeError):
                        pass   # a torn or foreign line: not listed (verify still reads it)
                off += n
            self.index, self.sig = index, (st.st_size, st.st_mtime_ns)

    def line(self, seq: int) -> Optional[dict]:
        self._refresh()
        at = self.index.get(seq)
        if at is None:
            return None
        with self.files.open(self.name) as f:
            f.seek(at[0])
            try:
                rec = json.loads(f.read(at[1]))
            except ValueError:
                return None
        return rec if isinstance(rec, dict) else None


class AuditSite:
    """The audit page over ``out`` with ``registry`` (a connected ``chain`` client)."""

    def __init__(self, out, registry, *, blob: Optional[str] = None):
        self.files = FileRoot(out)
        self.out = self.files.root
        self.registry = registry
        self.blob = blob
        self.chain_worker = ThreadPoolExecutor(1, thread_name_prefix="veriseg-audit-chain")
        self.lock = threading.Lock()   # the index, rebuilt by the worker, read by handlers
        self.batches: dict[str, Batch] = {}
        self._batch_sig: dict[str, tuple] = {}
        self.results: dict[str, _Results] = {}
        self.blocks: dict[str, Optional[int]] = {}
        self.cards: dict = {}

    # -- the index: what OUT_DIR holds -------------------------------------------------
    @staticmethod
    def _listing(root_fd: int, rel: str) -> list[str]:
        """Names in the folder ``rel`` under ``root_fd`` (no symlinked folder is entered,
        no symlink listed)."""
        try:
            fd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
        except OSError:
            return []
        try:
            return sorted(n for n in os.listdir(fd)
                          if not stat.S_ISLNK(os.stat(n, dir_fd=fd, follow_symlinks=False).st_mode))
        finally:
            os.close(fd)

    def refresh(self) -> None:
        """Rebuild the index of streams and batches (a batch file is read again only when
        it changed)."""
        from chain.anchoring import AnchorBatch
        from chain.errors import ChainError
        root_fd = os.open(self.out, os.O_RDONLY | os.O_DIRECTORY)
        try:
            streams = [s for s in self._listing(root_fd, ".") if s != "anchors"
                       and self.files.is_file(f"{s}/results.jsonl")]
            found = {}
            for s in self._listing(root_fd, "anchors"):
                for name in self._listing(root_fd, f"anchors/{s}"):
                    rel = f"anchors/{s}/{name}"
                    if not name.endswith(".json") or not self.files.is_file(rel):
                        continue
                    with self.files.open(rel) as f:
                        st = os.fstat(f.fileno())
                    sig = (st.st_size, st.st_mtime_ns)
                    old = self.batches.get(f"{s}/{name}")
                    if old is not None and self._batch_sig.get(old.id) == sig:
                        found[old.id] = old
                        continue
                    if st.st_size > MAX_BATCH_BYTES:
                        continue
                    try:
                        b, raw = AnchorBatch.read(self.out / rel)
                        stream = b.stream
                    except (ChainError, ValueError, OSError):
                        continue   # not a batch: not listed (the file is still served)
                    if stream != s:
                        continue   # a batch of another stream filed here: not this folder's
                    chain = raw.get("chain") or {}
                    found[f"{s}/{name}"] = Batch(f"{s}/{name}", s, rel, b.first_seq, b.last_seq,
                                                 b.model_key, str(raw["root"]),
                                                 chain.get("tx_hash"),
                                                 [lf.seq for lf in b.leaves])
                    self._batch_sig[f"{s}/{name}"] = sig
        finally:
            os.close(root_fd)
        with self.lock:
            self.batches = found
            for s in streams:
                self.results.setdefault(s, _Results(self.files, f"{s}/results.jsonl"))

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
        with self.lock:
            batches = sorted(self.batches.values(), key=lambda b: (b.stream, b.first_seq))
        return [b.row(self._block(b.root)) for b in batches]

    # -- frames ------------------------------------------------------------------------
    def _batch(self, bid: str) -> Batch:
        with self.lock:
            b = self.batches.get(bid)
        if b is None:
            raise PathRefused(f"no batch {bid!r}")
        return b

    def _line(self, stream: str, seq: int) -> Optional[dict]:
        with self.lock:
            res = self.results.get(stream)
        return None if res is None else res.line(seq)

    def frames(self, bid: str) -> dict:
        b = self._batch(bid)
        out = []
        for seq in b.seqs[:MAX_FRAMES_LISTED]:
            line = self._line(b.stream, seq)
            if line is not None:
                line = {k: v for k, v in line.items() if k != "latency_ms"}
            out.append({"seq": seq, "line": line})
        return {"batch": b.row(self.blocks.get(b.root)), "frames": out,
                "more": max(0, len(b.seqs) - MAX_FRAMES_LISTED)}

    def _mask_name(self, stream: str, seq: int) -> Optional[str]:
        line = self._line(stream, seq)
        if not line or not isinstance(line.get("mask"), str):
            return None
        return f"{stream}/{line['mask']}"

    def _card(self, key: str):
        if key not in self.cards:
            from chain.cli import card_of
            try:
                self.cards[key] = card_of(self.registry, key, self.blob)
            except Exception:  # noqa: BLE001 - no card: the CARLA colours
                self.cards[key] = None
        return self.cards[key]

    def thumbnail(self, stream: str, seq: int) -> bytes:
        """The frame's mask in its classes' colours, ``THUMB_WIDTH`` wide (PNG)."""
        from operators.sinks.overlay import class_lut, classes_of
        name = self._mask_name(stream, seq)
        if name is None:
            raise PathRefused("no mask for that frame")
        arr = cv2.imdecode(np.frombuffer(self.files.read(name, MAX_MASK_BYTES), np.uint8),
                           cv2.IMREAD_UNCHANGED)
        if arr is None or arr.ndim != 2 or arr.dtype != np.uint8:
            raise PathRefused("the mask is not a class map")
        line = self._line(stream, seq) or {}
        card = self._card(str(line.get("model_key", "")))
        lut = np.ascontiguousarray(class_lut(classes_of(card), "BGR").reshape(256, 1, 3))
        h = max(1, round(arr.shape[0] * THUMB_WIDTH / arr.shape[1]))
        small = cv2.resize(arr, (THUMB_WIDTH, h), interpolation=cv2.INTER_NEAREST)
        ok, buf = cv2.imencode(".png", cv2.applyColorMap(small, lut))
        if not ok:
            raise ValueError("PNG encoding failed")
        return buf.tobytes()

    # -- verification --------------------------------------------------------------------
    def verify(self, bid: str, seq: int) -> dict:
        """anchor-verify on one frame: each check passed, failed or not run."""
        from chain.cli import CliError, prove_frame
        from chain.errors import AnchorVerificationFailed, BatchFormatError, ChainError
        b = self._batch(bid)
        failed, message, line = None, "", None
        try:
            # the files the checks read must be regular files under OUT_DIR: a symlink (or a
            # FIFO that would block the worker) fails the check that reads it
            results = f"{b.stream}/results.jsonl"
            mask = self._mask_name(b.stream, seq)
            if not self.files.is_file(results) or mask is None:
                raise AnchorVerificationFailed(f"no results line for stream '{b.stream}' seq "
                                               f"{seq} in {results}", check="result_missing")
            if not self.files.is_file(mask):
                raise AnchorVerificationFailed(f"mask {mask} is missing or not a regular file "
                                               "under OUT_DIR", check="mask")
            if not self.files.is_file(b.file):
                raise BatchFormatError(f"{b.file} is not a regular file under OUT_DIR")
            v = prove_frame(lambda: self.registry, self.out / b.file, b.stream, seq,
                            result=self.out / results, blob=self.blob)
            line = v.line()
        except AnchorVerificationFailed as e:
            failed, message = e.check, one_line(e)
        except BatchFormatError as e:
            failed, message = "batch", one_line(e)
        except (ChainError, CliError, OSError, ValueError) as e:
            failed, message = "error", f"could not verify: {one_line(e)}"
        states, seen = [], failed is None
        for name, label in CHECKS:
            if name == failed:
                states.append({"check": name, "label": label, "state": "failed"})
                seen = True
            else:
                states.append({"check": name, "label": label,
                               "state": "not run" if (seen and failed) or failed == "error"
                               else "passed"})
        return {"ok": failed is None, "stream": b.stream, "seq": seq, "batch": b.id,
                "line": line, "failed": failed, "message": message[:2000], "checks": states}

    # -- HTTP ------------------------------------------------------------------------------
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
        with self.lock:
            if stream not in self.results:
                raise PathRefused("no such stream")
        body = await self._in_worker(self.thumbnail, stream, self._seq(request))
        return web.Response(body=body, content_type="image/png")

    async def _verify(self, request):
        return web.json_response(await self._in_worker(self.verify, request.query.get("batch", ""),
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
        app.router.add_get("/files/{name:.+}", self._file)

    def serve(self, host: str = "127.0.0.1", port: int = 0, token: Optional[str] = None) -> WebServer:
        self.refresh()
        return WebServer(self.setup, host, port, token=token, name="veriseg-audit").start()

    def close(self) -> None:
        self.chain_worker.shutdown(wait=False)


def run_audit(out_dir, registry, *, host: str = "127.0.0.1", port: int = 8081,
              token: Optional[str] = None, blob: Optional[str] = None) -> int:
    """``python -m chain audit``: serve until interrupted; one line says where."""
    site = AuditSite(out_dir, registry, blob=blob)
    try:
        server = site.serve(host, port, token)
    except PermissionError:
        raise   # beyond loopback without a token: its own line
    except OSError as e:
        raise OSError(f"audit page: cannot listen on {host}:{port} ({e.strerror or first_line(e)})") from None
    n = len(site.batches)
    hint = " (open it once with ?token=<VERISEG_WEB_TOKEN>)" if token else ""
    print(f"audit page for {site.out} ({n} anchor batch{'es' if n != 1 else ''}): {server.url}{hint}",
          flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        site.close()
    return 0
