"""The main job: score frames with the verified model and write masks, video, JSONL, metrics.

    python -m bytewax.run dataflows.segment          # sample clip + committed blob -> ./out

Configuration comes only from ``VERISEG_*`` variables (see ``operators.config.ENV_DOC``
and docs/dataflow.md).  ``flow`` is built on first access, so importing this module (for
``build_flow``) costs nothing; a bad configuration or model ends the run with one line
per problem and exit status 2.
"""
from __future__ import annotations

from operators.pipeline import build_flow, flow_from_env

__all__ = ["build_flow", "flow"]


def __getattr__(name):
    if name == "flow":
        f = flow_from_env(build_flow)
        globals()["flow"] = f
        return f
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
