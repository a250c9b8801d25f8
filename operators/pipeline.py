"""Where the flow used to be wired; it is composed in ``dataflows.segment`` now.

Kept only for callers of the old path (``bench/soak.py``): import from
``dataflows.segment`` and ``operators.startup`` instead.
"""
from __future__ import annotations

from .startup import LockedRegistry, flow_from_env, startup_error

__all__ = ["build_flow", "LockedRegistry", "startup_error", "flow_from_env"]


def build_flow(cfg=None, **kw):
    """``dataflows.segment.build_flow``."""
    from dataflows.segment import build_flow as build
    return build(cfg, **kw)
