"""The main job: score frames with the verified model and write masks, video, JSONL, metrics.

    python -m bytewax.run dataflows.segment            # sample clip + committed blob -> ./out
    python -m bytewax.run "dataflows.segment:build()"  # the same, through the factory

Configuration comes only from ``VERISEG_*`` variables (docs/dataflow.md).  ``flow`` is
built on first access, so importing this module (for ``build_flow``) costs nothing; a bad
configuration or model ends the run with one line per problem and exit status 2.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from operators.config import Config
from operators.context import VerisegFlow
from operators.model_reader import verified_models
from operators.score import score
from operators.sinks import write_results
from operators.sources import read_frames
from operators.startup import flow_from_env, lazy_flow, start_flow

__all__ = ["build", "build_flow", "flow"]


def build_flow(cfg: Optional[Config] = None, *, registry=None, decrypt_key: Optional[bytes] = None,
               reader_factory: Optional[Callable] = None, views: Sequence[Callable] = ()) -> VerisegFlow:
    """The segment flow with its own context (``flow.context``); raises ConfigError or
    ModelRefused (one line each).  ``registry`` and ``reader_factory`` stand in for the
    chain client and the frame readers (tests, benchmarks); ``views`` start what watches the
    flow (``operators.startup.start_flow``; ``web.flow`` passes the live view)."""
    ctx = start_flow(cfg, registry=registry, decrypt_key=decrypt_key, views=views)
    flow = VerisegFlow("veriseg_segment", context=ctx)
    frames = read_frames("frames", flow, ctx, reader_factory=reader_factory)
    models = verified_models("models", flow, ctx)
    scored = score("score", frames, models, ctx)
    write_results("results", scored, ctx)
    return flow


def build() -> VerisegFlow:
    """The flow from ``VERISEG_*`` (``python -m bytewax.run "dataflows.segment:build()"``):
    a bad configuration or model is one line per problem and exit status 2."""
    return flow_from_env(build_flow)


__getattr__ = lazy_flow(__name__, build)
