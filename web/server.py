"""An aiohttp application served from its own thread and event loop (the live view) or on
the main thread until SIGINT or SIGTERM (the audit page), safe by default.

Both pages (the live view, the audit page) run on a ``WebServer``; every rule that keeps
them read-only and small lives here, once:

- only GET and HEAD; no request body (``client_max_size``), request line and each header
  at most 4 KiB, at most 64 headers;
- at most ``max_connections`` open connections (one more is answered 503 and closed), idle
  keep-alive connections closed after 15 s;
- a path that still holds a ``%`` escape of ``/``, ``\\``, ``.``, ``%`` or NUL is refused
  (400), whatever route it would reach: no decoding trick reaches a file handler;
- without a token the server answers only to a ``Host`` of its own loopback name (a web
  page elsewhere cannot reach it through DNS rebinding); with a token (``VERISEG_WEB_TOKEN``)
  every request carries it: header ``Authorization: Bearer T``, or ``?token=T`` once, which
  sets an HttpOnly, SameSite=Strict cookie and redirects to the same address without it.
  Tokens are compared with ``hmac.compare_digest`` (constant time);
- the API (``/api/...``, ``/files/...``) answers the page's own origin only: a request a
  browser marks ``Sec-Fetch-Site: cross-site`` or ``same-site``, or one whose ``Origin`` is
  not the page's own, is refused (403): a page elsewhere cannot make a visitor's browser
  run a verify (or read a file) however it names the address;
- any error is a short JSON body ``{"error": ...}``: never a stack trace (one log line);
  a request aiohttp refuses before any handler (a header over 4 KiB, a malformed request
  line) is one log line too (``_OneLineLog``), never a traceback per request;
- every response carries ``Content-Security-Policy: default-src 'self'`` (no inline
  script, nothing from elsewhere), ``X-Content-Type-Options: nosniff``,
  ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store``.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

from aiohttp import web

from model_store.util import first_line, one_line

from chain.files import FileRoot, PathRefused

__all__ = ["WebServer", "STATIC", "static_route", "json_error", "is_loopback", "SECURITY_HEADERS"]

log = logging.getLogger("veriseg.web")
STATIC = Path(__file__).parent / "static"
MAX_LINE = 4096
MAX_HEADERS = 64
COOKIE = "veriseg_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# an escape that could become a separator or a parent folder once decoded (or twice)
_ESCAPED = re.compile(r"%(2f|5c|2e|25|00)", re.IGNORECASE)
_API = ("/api/", "/files/")
_FOREIGN_FETCH = ("cross-site", "same-site")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_names(host: str, port: int) -> set[str]:
    names = {"localhost", "127.0.0.1", "[::1]", host if ":" not in host else f"[{host}]"}
    return names | {f"{n}:{port}" for n in names}


class _OneLineLog(logging.LoggerAdapter):
    """aiohttp's server logger: every error it logs (above all ``BadHttpMessage``, one per
    refused request) is one line with the exception's message, without the traceback a
    client could otherwise make the server write for each request it sends."""

    def log(self, level, msg, *args, exc_info=None, **kwargs):
        if not self.isEnabledFor(level):
            return
        exc = exc_info if isinstance(exc_info, BaseException) else (sys.exc_info()[1] if exc_info else None)
        if exc is not None:
            msg, args = f"{msg}: %s: %s", (*args, type(exc).__name__, one_line(exc)[:300])
        self.logger.log(level, msg, *args, **kwargs)


class _Guard:
    """The middleware every request passes first (see the module's docstring)."""

    def __init__(self, token: Optional[str], hosts: Callable[[], set[str]]):
        self.token = token.encode() if token else None
        self.hosts = hosts

    def _has_token(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        given = given[7:] if given.startswith("Bearer ") else request.cookies.get(COOKIE, "")
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token)

    @staticmethod
    def _foreign(request: web.Request) -> bool:
        """Whether a browser sent ``request`` for a page of another origin."""
        if request.headers.get("Sec-Fetch-Site", "").lower() in _FOREIGN_FETCH:
            return True
        origin = request.headers.get("Origin")
        # the host part only: behind a TLS proxy the page's own origin is https
        return origin is not None and urlsplit(origin).netloc.lower() != request.host.lower()

    @web.middleware
    async def handle(self, request: web.Request, handler):
        try:
            if request.method not in ("GET", "HEAD"):
                return json_error(405, "read-only: only GET and HEAD")
            if request.path.startswith(_API) and self._foreign(request):
                return json_error(403, "cross-site request refused: the API answers its own "
                                       "page only")
            if _ESCAPED.search(request.rel_url.raw_path):
                return json_error(400, "escaped '/', '\\', '.', '%' or NUL in the path")
            if self.token is None:
                if request.host.lower() not in self.hosts():
                    return json_error(421, "this server answers to its loopback address only")
            elif "token" in request.query:
                if not hmac.compare_digest(request.query["token"].encode("utf-8", "replace"),
                                           self.token):
                    return json_error(401, "wrong token")
                resp = web.Response(status=303, headers={
                    "Location": str(request.rel_url.without_query_params("token"))})
                resp.set_cookie(COOKIE, self.token.decode(), httponly=True, samesite="Strict",
                                path="/")
                return resp
            elif not self._has_token(request):
                return json_error(401, "token required: open the address with ?token=... once, "
                                       "or send 'Authorization: Bearer ...'")
            return await handler(request)
        except web.HTTPException as e:
            if e.status >= 400:
                return json_error(e.status, e.reason)
            return e
        except PathRefused:
            return json_error(404, "not found")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - one log line, never a stack trace to the client
            log.error("web: %s %s failed: %s: %s", request.method, request.rel_url.raw_path,
                      type(e).__name__, first_line(e))
            return json_error(500, "internal error")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)


def static_route(app: web.Application, pages: dict[str, str]) -> None:
    """``/static/NAME`` from the package's ``static/`` folder, and ``pages``: URL path ->
    file name there (the HTML pages)."""
    root = FileRoot(STATIC)

    async def send(name: str) -> web.Response:
        body = root.read(name, 1 << 20)
        ctype = _TYPES.get(Path(name).suffix, "application/octet-stream")
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def asset(request: web.Request) -> web.Response:
        return await send(request.match_info["name"])

    def page(name: str):
        async def handler(request: web.Request) -> web.Response:
            return await send(name)
        return handler

    for path, name in pages.items():
        app.router.add_get(path, page(name))
    app.router.add_get("/static/{name:[A-Za-z0-9_.-]+}", asset)


class _RefuseProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                        b"Content-Length: 0\r\n\r\n")
        transport.close()


class _BoundedSite(web.BaseSite):
    """A listening socket whose connections beyond ``limit`` are answered 503 and closed."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, limit: int):
        super().__init__(runner)
        self._sock = sock
        self._limit = limit

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server

        def protocol():
            if len(server.connections) >= self._limit:
                return _RefuseProtocol()
            return server()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocol, sock=self._sock, backlog=self._backlog)


class WebServer:
    """Serves an application on ``host:port``: from a daemon thread with its own event loop
    (``start``/``close``: nothing it does runs on the caller's threads), or on the main
    thread until SIGINT or SIGTERM (``serve_until_signalled``: a command of its own).
    ``setup(app)`` adds the routes (it runs on the server's loop); ``port`` 0 takes a free
    one (``url`` says which)."""

    def __init__(self, setup: Callable[[web.Application], None], host: str, port: int, *,
                 token: Optional[str] = None, max_connections: int = 32, name: str = "veriseg-web"):
        self.setup = setup
        self.host, self.port = host, port
        self.token = token
        self.max_connections = max_connections
        self.name = name
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.thread: Optional[threading.Thread] = None
        self._runner: Optional[web.AppRunner] = None
        self._stop: Optional[asyncio.Future] = None   # its result: why serving stopped

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def _socket(self) -> socket.socket:
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else socket.AF_INET
        except ValueError:
            family = socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        return sock

    async def _start(self, sock: socket.socket) -> None:
        guard = _Guard(self.token, lambda: _loopback_names(self.host, self.port))
        app = web.Application(client_max_size=1024, middlewares=[guard.handle])   # no bodies: GET only
        app.on_response_prepare.append(_security_headers)
        self.setup(app)
        self._runner = web.AppRunner(app, access_log=None, logger=_OneLineLog(log, {}),
                                     handle_signals=False, shutdown_timeout=1.0,
                                     keepalive_timeout=15.0, max_line_size=MAX_LINE,
                                     max_field_size=MAX_LINE, max_headers=MAX_HEADERS)
        await self._runner.setup()
        await _BoundedSite(self._runner, sock, self.max_connections).start()

    async def _serve(self, sock: socket.socket, ready: Callable[[], None],
                     signals: tuple = ()) -> Optional[str]:
        """Serve until :meth:`close` or one of ``signals``; the runner is cleaned up either
        way. Returns the signal's name (None after ``close``)."""
        loop = asyncio.get_running_loop()
        self.loop, self._stop = loop, loop.create_future()
        for sig in signals:   # before ``ready``: a signal sent once it says so is never lost
            loop.add_signal_handler(sig, self._stopped, signal.Signals(sig).name)
        try:
            try:
                await self._start(sock)
            except BaseException:
                sock.close()
                raise
            ready()
            return await self._stop
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if self._runner is not None:
                await self._runner.cleanup()   # on_cleanup: the live view's sampler ends

    def _stopped(self, why: Optional[str] = None) -> None:
        if not self._stop.done():
            self._stop.set_result(why)

    def _listening_socket(self) -> socket.socket:
        if not self.token and not is_loopback(self.host):
            raise PermissionError(f"{self.host} is reachable from other machines: serving there "
                                  "needs a token (VERISEG_WEB_TOKEN, 16+ characters)")
        return self._socket()

    def start(self) -> "WebServer":
        """Listen, and serve from a daemon thread with its own event loop until
        :meth:`close`; raises OSError when the address cannot be bound, and
        PermissionError for an address beyond loopback without a token."""
        sock = self._listening_socket()
        ready = threading.Event()
        failed: list[BaseException] = []

        def run():
            try:
                asyncio.run(self._serve(sock, ready.set))
            except BaseException as e:  # noqa: BLE001 - reported to start(), or one line
                if not ready.is_set():
                    failed.append(e)
                    ready.set()
                else:
                    log.error("web: %s stopped: %s: %s", self.name, type(e).__name__, first_line(e))
        self.thread = threading.Thread(target=run, daemon=True, name=self.name)
        self.thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        return self

    def serve_until_signalled(self, ready: Callable[[], None] = lambda: None) -> Optional[str]:
        """Listen, and serve on this thread (the main one) until SIGINT or SIGTERM; returns
        the signal's name. The event loop's own handlers are installed before ``ready`` is
        called: Python's KeyboardInterrupt is not relied on, because a process started as a
        shell's background job inherits SIGINT *ignored* and Python then installs none (the
        audit page once served on, in a CI run started with ``&``, after its test sent
        SIGINT). Raises like :meth:`start`."""
        sock = self._listening_socket()
        return asyncio.run(self._serve(sock, ready, (signal.SIGINT, signal.SIGTERM)))

    def call(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` on the server's loop (from any thread)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving (from any thread) and, from another thread, wait until it has."""
        if self.loop is not None and self._stop is not None:
            try:
                self.loop.call_soon_threadsafe(self._stopped)
            except RuntimeError:
                pass   # the loop closed already
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)
