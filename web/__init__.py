"""Pages served locally to look at VeriSeg: the live view of a running flow (``web.live``,
``VERISEG_WEB=HOST:PORT python -m bytewax.run web.flow``) and the fleet operator's audit
page over a run's outputs (``web.audit``, ``python -m web audit OUT_DIR``). Both run on
``web.server.WebServer`` (the live view from its own thread and event loop, the audit page
on the main thread until SIGINT or SIGTERM; read-only, bounded, token in constant time);
``chain.files`` opens files under a root without ever following a symlink or waiting on a
FIFO. aiohttp comes with the optional extra ``web``: this package imports it only in
``server``, ``live`` and ``audit``.

| module | what |
|---|---|
| ``flow`` | the segment flow with the live view as its view (``python -m bytewax.run web.flow``) |
| ``cli`` | ``python -m web audit``: the audit page with ``python -m chain``'s registry options |
| ``server`` | ``WebServer``: the thread or the signals, the loop, limits, token, security headers, errors |
| ``live`` | ``LiveView``, ``start_live_view(ctx)``: the flow's page |
| ``audit`` | ``AuditSite``, ``run_audit(...)``: the audit page, its routes and thumbnails |
| ``run_index`` | ``RunIndex``, ``Batch``: the anchor batches and results lines under OUT_DIR |
| ``verify`` | ``verify_frame``, ``CHECKS``: anchor-verify's checks on one frame, each one's state |
| ``static/`` | the pages' HTML, JS and CSS (no CDN, no build step) |
"""
