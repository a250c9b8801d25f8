"""The live view of a running flow: ``VERISEG_WEB=127.0.0.1:8080 python -m bytewax.run web.flow``
serves one page.

Per stream: the latest overlay picture, frames scored, FPS and p50/p99 latency over the
last minute (a chart), dropped and bad frames, the model in use (name, key, version,
on-chain status) and a red banner when that model is revoked, the chain is unreachable or
the flow failed; and the last anchor batches with their transactions.

It never slows scoring: the flow's only work is :meth:`LiveView.offer` in each stream's
writer thread (a reference to the newest ``ScoredFrame`` and one append, no copy, no
encoding). Everything else runs in the server's own thread: a sampler once a second
(counters, percentiles, anchor files) and a JPEG encoded only when a page asks for one,
at most ``1 / FRAME_INTERVAL`` times a second per stream however many pages watch.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import cv2
import numpy as np
from aiohttp import web

from chain.anchoring import AnchorBatch
from model_store.blob_key import BlobKey
from model_store.util import first_line

from operators.sinks.overlay import ClassColours, classes_of, overlay_bgr
from operators.telemetry import log as flow_log

from .server import WebServer, json_error, log, static_route

__all__ = ["LiveView", "start_live_view", "FRAME_INTERVAL", "WINDOW_S"]

FRAME_INTERVAL = 0.2      # s between two JPEG encodes of a stream: at most 5 per second
WINDOW_S = 60             # the chart and the percentiles cover the last minute
FPS_WINDOW_S = 5          # the FPS figure: frames written over the last 5 s
ANCHORS_SHOWN = 8
_SAMPLER = web.AppKey("sampler", asyncio.Task)
JPEG_WIDTH = 640          # the picture is scaled down to this width at most


def _counters(stats) -> dict:
    """What the page shows of the flow's ``Stats``, read through its public attributes
    only (one place to adapt if they change). Dict copies under the GIL: never the stats
    lock, which the scoring thread takes for every batch."""
    dropped = {s: dict(d) for s, d in list(stats.dropped.items())}
    return {"scored": dict(stats.scored), "written": dict(stats.written), "dropped": dropped,
            "bad": dict(stats.bad), "key_in_use": dict(stats.key_in_use),
            "models_loaded": list(stats.models_loaded), "provider": stats.provider,
            "error": stats.error, "anchors": stats.anchors,
            "anchor_failures": stats.anchor_failures,
            "deploy_pending": dict(stats.deploy_pending or {})}


def _pct(values, q) -> Optional[float]:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


class LiveView:
    """The live view of one flow (its ``FlowContext``)."""

    def __init__(self, ctx, host: str, port: int, token: Optional[str] = None):
        self.ctx = ctx
        self.sids = list(ctx.config.stream_ids)
        self.latest: dict = {}                    # stream -> newest ScoredFrame
        self.written: dict = {}                   # stream -> deque of (monotonic t, total ms)
        self.series: dict = {s: deque(maxlen=WINDOW_S + 1) for s in self.sids}
        self.anchors: list[dict] = []
        self._batches: dict = {}                  # path -> (mtime_ns, summary)
        self._jpeg: dict = {}                     # stream -> (monotonic t, ScoredFrame, bytes)
        # the overlay video's colours: the scoring model's classes, else the first model's
        self.colours = ClassColours(classes_of(getattr(ctx.first, "card", None)))
        self.encoded = 0                          # JPEGs encoded so far (bench/web_view.py)
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="veriseg-live-jpeg")
        self.server = WebServer(self._setup, host, port, token=token, name="veriseg-live")

    # -- the flow's side: each stream's writer thread ---------------------------------
    def offer(self, r, total_ms: Optional[float] = None) -> None:
        """The frame just written (a reference; dict and deque operations are atomic)."""
        self.latest[r.stream_id] = r
        d = self.written.get(r.stream_id)
        if d is None:
            d = self.written.setdefault(r.stream_id, deque(maxlen=8192))
        d.append((time.monotonic(), total_ms if total_ms is not None else r.latency_ms.get("score")))

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> "LiveView":
        self.server.start()
        return self

    def close(self) -> None:
        self.server.close()
        self._encoder.shutdown(wait=False)

    # -- the server's side ----------------------------------------------------------------
    def _setup(self, app: web.Application) -> None:
        static_route(app, {"/": "live.html"})
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/frame.jpg", self._frame)
        app.on_startup.append(self._start_sampler)
        app.on_cleanup.append(self._stop_sampler)

    async def _start_sampler(self, app) -> None:
        app[_SAMPLER] = asyncio.get_running_loop().create_task(self._sampler())

    async def _stop_sampler(self, app) -> None:
        app[_SAMPLER].cancel()
        await asyncio.gather(app[_SAMPLER], return_exceptions=True)

    async def _sampler(self) -> None:
        loop = asyncio.get_running_loop()
        tick = 0
        while True:
            try:
                self._sample()
                if tick % 2 == 0:   # anchor files: every 2 s, off the loop (a folder listing)
                    self.anchors = await loop.run_in_executor(None, self._read_anchors)
            except Exception as e:  # noqa: BLE001 - the page goes on with the last figures
                log.warning("live view: sampling failed: %s: %s", type(e).__name__, first_line(e))
            tick += 1
            await asyncio.sleep(1.0)

    def _window(self, sid: str, now: float):
        return [x for x in list(self.written.get(sid, ())) if x[0] >= now - WINDOW_S]

    def _fps(self, window, now: float, span: float) -> float:
        n = sum(1 for t, _ in window if t > now - span)
        return round(n / span, 2)

    def _sample(self) -> None:
        now, wall = time.monotonic(), time.time()
        for sid in self.sids:
            window = self._window(sid, now)
            lat = [ms for _, ms in window if ms is not None]
            self.series[sid].append((round(wall, 1), self._fps(window, now, 2.0),
                                     _pct(lat, 50), _pct(lat, 99)))

    def _read_anchors(self) -> list[dict]:
        """The newest anchor batch files of every stream (their tx once sent)."""
        found = []
        for sid in self.sids:
            folder = self.ctx.config.out / "anchors" / sid
            try:
                with os.scandir(folder) as it:
                    entries = [(e.stat().st_mtime_ns, e.path) for e in it
                               if e.name.endswith(".json") and e.is_file(follow_symlinks=False)]
            except OSError:
                continue
            for mtime, path in sorted(entries)[-ANCHORS_SHOWN:]:
                hit = self._batches.get(path)
                if hit is None or hit[0] != mtime:
                    try:
                        b, raw = AnchorBatch.read(path)
                        chain = raw.get("chain") or {}
                        hit = (mtime, {"stream": sid, "first_seq": b.first_seq, "last_seq": b.last_seq,
                                       "model_key": b.model_key, "root": str(raw.get("root")),
                                       "tx": chain.get("tx_hash"), "sent": bool(chain),
                                       "t": mtime / 1e9})
                    except Exception:  # noqa: BLE001 - a torn or foreign file is not shown
                        continue
                    self._batches[path] = hit
                found.append(hit[1])
        if len(self._batches) > 4 * ANCHORS_SHOWN * max(1, len(self.sids)):
            keep = {id(x) for x in found}
            self._batches = {p: h for p, h in self._batches.items() if id(h[1]) in keep}
        return sorted(found, key=lambda x: x["t"], reverse=True)[:ANCHORS_SHOWN]

    def _chain_down_s(self) -> Optional[float]:
        """Seconds the model reader has not reached the registry, None while it does."""
        since = getattr(getattr(self.ctx.watcher, "follower", None), "down_since", None)
        return None if since is None else round(time.monotonic() - since, 1)

    def _models(self, c: dict) -> dict:
        """key -> what is known of that model (the verified first one, hot swaps)."""
        out = {}
        for m in (self.ctx.first, getattr(self.ctx.watcher, "current", None)):
            if m is not None:
                out[m.key] = {"key": m.key, "name": getattr(m.card, "name", "") or m.name,
                              "deployment": m.name, "version": m.version}
        for m in c["models_loaded"]:
            out.setdefault(m.get("key"), {"key": m.get("key"), "name": m.get("name"),
                                          "deployment": m.get("name"), "version": m.get("version")})
        return out

    def state(self) -> dict:
        """What the page shows, read now (the banner is never older than this request)."""
        ctx, c, now = self.ctx, _counters(self.ctx.stats), time.monotonic()
        down = self._chain_down_s()
        models = self._models(c)
        first_key = ctx.first.key if ctx.first is not None else None
        banner, streams = [], []
        for sid in self.sids:
            key = c["key_in_use"].get(sid) or first_key
            m = dict(models.get(key) or {"key": key, "name": "", "deployment": "", "version": None})
            if key is not None and key in ctx.revoked:
                m["status"], m["reason"] = "revoked", ctx.revoked.reason(key)
                banner.append(f"model {BlobKey(key).short}… in use on stream {sid} is REVOKED on chain "
                              f"({m['reason'] or 'no reason given'}): scoring stopped")
            else:
                m["status"], m["reason"] = ("unknown" if down is not None else "active"), ""
            window = self._window(sid, now)
            lat = [ms for _, ms in window if ms is not None]
            r = self.latest.get(sid)
            streams.append({"id": sid, "scored": c["scored"].get(sid, 0),
                            "written": c["written"].get(sid, 0),
                            "dropped": c["dropped"].get(sid, {}), "bad": c["bad"].get(sid, 0),
                            "fps": self._fps(window, now, FPS_WINDOW_S),
                            "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
                            "seq": None if r is None else r.seq, "model": m,
                            "series": list(self.series.get(sid, ()))})
        if down is not None:
            banner.append(f"chain unreachable for {down:.0f} s: the on-chain status of the model "
                          "is unknown (scoring goes on with the verified model)")
        if c["error"]:
            banner.append(f"flow stopped: {first_line(c['error'])}")
        return {"banner": banner, "streams": streams, "anchors": self.anchors,
                "chain": {"kind": ctx.config.chain, "reachable": down is None, "down_s": down,
                          "endpoint": getattr(ctx.registry, "endpoint", None)},
                "provider": c["provider"], "anchors_sent": c["anchors"],
                "anchor_failures": c["anchor_failures"], "deploy_pending": c["deploy_pending"],
                "window_s": WINDOW_S}

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    def _encode(self, r) -> bytes:
        img = overlay_bgr(r, self.colours.of(r))
        if img.shape[1] > JPEG_WIDTH:
            h = max(2, round(img.shape[0] * JPEG_WIDTH / img.shape[1]))
            img = cv2.resize(img, (JPEG_WIDTH, h), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 75])
        if not ok:
            raise ValueError("JPEG encoding failed")
        self.encoded += 1
        return buf.tobytes()

    async def _frame(self, request: web.Request) -> web.Response:
        sid = request.query.get("stream", "")
        if sid not in self.sids:
            return json_error(404, "no such stream")
        r = self.latest.get(sid)
        if r is None:
            return json_error(404, "no frame scored yet")
        now = time.monotonic()
        hit = self._jpeg.get(sid)
        if hit is None or (hit[1] is not r and now - hit[0] >= FRAME_INTERVAL):
            body = await asyncio.get_running_loop().run_in_executor(self._encoder, self._encode, r)
            hit = self._jpeg[sid] = (now, r, body)
        return web.Response(body=hit[2], content_type="image/jpeg",
                            headers={"X-Frame-Seq": str(hit[1].seq)})


def start_live_view(ctx) -> Optional[LiveView]:
    """The live view of the flow ``ctx`` on ``VERISEG_WEB`` (one line: where, or why not)."""
    cfg = ctx.config
    if cfg.web is None:
        flow_log.warning("VERISEG_WEB is not set: the flow runs without the live view (set it to "
                         "host:port, e.g. 127.0.0.1:8080)")
        return None
    host, port = cfg.web
    view = LiveView(ctx, host, port, cfg.web_token)
    try:
        view.start()
    except OSError as e:
        flow_log.error("VERISEG_WEB=%s:%d: cannot listen (%s): the flow runs without the live view",
                  host, port, e.strerror or first_line(e))
        return None
    hint = " (open it once with ?token=<VERISEG_WEB_TOKEN>)" if cfg.web_token else ""
    flow_log.info("live view on %s%s", view.url, hint)
    return view
