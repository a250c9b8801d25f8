"""The main job with its live view: ``dataflows.segment``'s flow, and the page
``VERISEG_WEB`` names serving it while it runs.

    VERISEG_WEB=127.0.0.1:8080 python -m bytewax.run web.flow     # then open http://127.0.0.1:8080/

The flow offers each written frame to its views (``FlowContext.views``); this module is
the one place that composes the two, so the flow's packages never import the page.
Without the web extra (aiohttp) it refuses in one line, exit status 2.
"""
from __future__ import annotations

from typing import Callable, Optional

from dataflows.segment import build_flow as build_segment_flow
from operators.config import Config
from operators.context import VerisegFlow
from operators.startup import flow_from_env, lazy_flow, startup_error

try:
    from .live import start_live_view
except ImportError as e:   # aiohttp comes with the optional extra
    raise startup_error(ImportError(f"the live view needs the web extra ({e}): "
                                    "pip install 'veriseg[web]'")) from None

__all__ = ["build", "build_flow", "flow"]


def build_flow(cfg: Optional[Config] = None, *, registry=None, decrypt_key: Optional[bytes] = None,
               reader_factory: Optional[Callable] = None) -> VerisegFlow:
    """``dataflows.segment.build_flow`` with the live view on ``VERISEG_WEB``."""
    return build_segment_flow(cfg, registry=registry, decrypt_key=decrypt_key,
                              reader_factory=reader_factory, views=(start_live_view,))


def build() -> VerisegFlow:
    """The flow from ``VERISEG_*`` (``python -m bytewax.run "web.flow:build()"``)."""
    return flow_from_env(build_flow)


__getattr__ = lazy_flow(__name__, build)
