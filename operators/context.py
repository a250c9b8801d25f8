"""One ``FlowContext`` per built flow: everything its steps share, passed to each of them.

Nothing in ``operators/`` lives at module level: two flows built in one process (tests,
``bench.flow_fps``, an embedding application) keep their own counters, revoked keys,
sessions and stream states.  ``VerisegFlow`` is a Bytewax ``Dataflow`` that carries its
context, so whoever runs a flow can read its counters.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Optional

from bytewax.dataflow import Dataflow

from .batching import GPU_AUTO_BATCH, Batcher
from .config import Config
from .revocation import RevokedKeys
from .sessions import SessionCache
from .streams import StreamControl
from .telemetry import Stats

__all__ = ["FlowContext", "VerisegFlow"]


@dataclass(eq=False)
class FlowContext:
    config: Optional[Config] = None
    stats: Stats = field(default_factory=Stats)
    revoked: RevokedKeys = field(default_factory=RevokedKeys)
    sessions: SessionCache = None            # type: ignore[assignment] - set in __post_init__
    streams: StreamControl = field(default_factory=StreamControl)
    # set when the outputs fail or the model reader fails safe: every source ends
    stop: threading.Event = field(default_factory=threading.Event)
    registry: Any = None      # the (locked) registry client shared by the reader and anchors
    watcher: Any = None       # operators.model_reader.ModelWatcher
    first: Any = None         # the model verified at build time (ModelLoaded)
    preprocessor: Any = None  # operators.preprocess.Preprocessor for the model's input, or None
    batch: int = 1            # most frames a run scores (VERISEG_BATCH, auto resolved)
    batcher: Batcher = field(default_factory=Batcher)   # groups the streams' runs (operators.batching)
    # what watches the flow (web.flow's live view): each gets offer(scored, total_ms) for every
    # written frame, from the stream's writer thread, and close() when the outputs close
    views: list = field(default_factory=list)

    def __post_init__(self):
        if self.sessions is None:
            cfg = self.config
            opts = ({} if cfg is None else
                    dict(backend=cfg.backend, providers=cfg.providers, require_gpu=cfg.require_gpu,
                         threads=cfg.threads, home=cfg.home, hint=cfg.openvino_hint,
                         spin=cfg.ort_spin, ov_device=cfg.openvino_device, precision=cfg.precision,
                         arena_bytes=cfg.max_arena_bytes,
                         # the batch is chosen once the provider is known: build for auto's GPU batch
                         batch=cfg.batch or GPU_AUTO_BATCH))
            self.sessions = SessionCache(stats=self.stats, **opts)


@dataclass(frozen=True)
class VerisegFlow(Dataflow):
    """A Bytewax dataflow with the context its steps share (``flow.context.stats``, ...)."""
    context: Optional[FlowContext] = field(default=None, compare=False, repr=False)
