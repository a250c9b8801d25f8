"""Before Bytewax runs: check the configuration, verify the model, make the flow's context.

Everything that can refuse a start happens here, so a bad value or model is one line and
exit status 2 before any step runs; the dataflows then only compose the operators.
"""
from __future__ import annotations

import sys
import threading
from typing import Callable, Optional, Sequence

from chain.errors import ChainError
from model_store import read_secret

from .batching import GPU_AUTO_BATCH, Batcher
from .config import Config, ConfigError, load_config
from .context import FlowContext
from .model_reader import ModelRefused, ModelWatcher, connect_registry
from .preprocess import Preprocessor
from .sessions import GPU_PROVIDERS, ScoreError
from .sources import check_pipeline
from .telemetry import log

__all__ = ["start_flow", "LockedRegistry", "startup_error", "flow_from_env", "lazy_flow"]

class LockedRegistry:
    """Serialises calls to one registry client shared by the model reader and the anchor
    sender (the embedded chain is not thread-safe)."""

    def __init__(self, reg):
        self._reg = reg
        self._lock = threading.RLock()

    def __getattr__(self, name):
        a = getattr(self._reg, name)
        if not callable(a):
            return a
        lock = self._lock

        def call(*args, **kw):
            with lock:
                return a(*args, **kw)
        return call


def _check_pipelines(cfg: Config) -> None:
    problems = []
    for s in cfg.source:
        if s.kind == "gst":
            try:
                check_pipeline(s.kind, s.target)
            except (ValueError, RuntimeError) as e:
                problems.append(str(e) if str(e).startswith("VERISEG_SOURCE") else
                                f"VERISEG_SOURCE: {e}")
    if problems:
        raise ConfigError(problems)


def _decrypt_key(cfg: Config) -> Optional[bytes]:
    if cfg.decrypt_key is None:
        return None
    try:
        return read_secret(cfg.decrypt_key)
    except (OSError, ValueError) as e:
        raise ConfigError([f"VERISEG_DECRYPT_KEY: {cfg.decrypt_key}: {e}"]) from None


def start_flow(cfg: Optional[Config] = None, *, registry=None,
               decrypt_key: Optional[bytes] = None, views: Sequence[Callable] = ()) -> FlowContext:
    """The context of a new flow with its model verified; raises ConfigError or
    ModelRefused (one line each). ``views``: each called with the ready context, returns
    a started view for ``FlowContext.views`` or None (it said why in its own line)."""
    cfg = cfg or load_config()
    _check_pipelines(cfg)
    if decrypt_key is None:
        decrypt_key = _decrypt_key(cfg)
    ctx = FlowContext(cfg)
    for sid in cfg.stream_ids:   # a scraper reads 0 for every stream's counters, not nothing
        ctx.stats.known_stream(sid)
    ctx.registry = LockedRegistry(registry if registry is not None else connect_registry(cfg))
    ctx.watcher = ModelWatcher(ctx, ctx.registry, decrypt_key=decrypt_key)
    ctx.first = ctx.watcher.resolve()
    try:   # a model the runtime cannot load is refused here, not on every frame
        provider = ctx.sessions.get(ctx.first).provider
    except ScoreError as e:
        raise ModelRefused(f"model refused: {e}") from None
    ctx.preprocessor = Preprocessor.for_card(ctx.first.card) if cfg.preprocess != "off" else None
    ctx.batch = cfg.batch or 0
    if not ctx.batch:   # auto: batching helps GPUs; on the CPU it measured no faster a frame
        ctx.batch = GPU_AUTO_BATCH if provider in GPU_PROVIDERS else 1
    ctx.batcher = Batcher(ctx.batch, cfg.batch_wait_ms)
    log.info("scoring profile: %s", _profile_line(cfg, ctx, provider))
    if cfg.web is not None and not views:
        log.warning("VERISEG_WEB is set but this flow serves no live view: run "
                    "`python -m bytewax.run web.flow` for the flow with its live view")
    ctx.views = [v for v in (start(ctx) for start in views) if v is not None]
    return ctx


def _profile_line(cfg: Config, ctx: FlowContext, provider: str) -> str:
    """What the flow chose to score with, and why, in one line (a GPU box's operator reads
    here whether the GPU and cross-stream batching are on)."""
    runner = ctx.sessions.get(ctx.first).runner
    gpu = provider in GPU_PROVIDERS
    how = "set by VERISEG_BATCH" if cfg.batch else ("auto: a GPU provider" if gpu else "auto: the CPU")
    batch = (f"up to {ctx.batch} frames a run, of one replay or across streams, the first waiting "
             f"at most {cfg.batch_wait_ms:g} ms ({how})" if ctx.batch > 1 else f"one frame a run ({how})")
    return (f"{provider}, {runner.profile.precision}; {batch}; {ctx.batcher.depth(runner)} runs in "
            f"flight a stream; {len(cfg.source)} stream(s)")


def startup_error(e: BaseException) -> "SystemExit":
    for line in str(e).splitlines() or [type(e).__name__]:
        print(f"veriseg: error: {line}", file=sys.stderr)
    return SystemExit(2)


def flow_from_env(build: Callable):
    """``build()`` for ``python -m bytewax.run``: one line per problem, exit status 2 (a
    registry or node error the resolver did not word itself included)."""
    try:
        return build()
    except (ConfigError, ModelRefused, ChainError) as e:
        raise startup_error(e) from None


def lazy_flow(module: str, build: Callable):
    """The ``__getattr__`` of a dataflow module whose ``flow`` is built on first access,
    so that importing the module (for ``build_flow``) costs nothing."""
    def __getattr__(name):
        if name == "flow":
            flow = build()
            setattr(sys.modules[module], "flow", flow)
            return flow
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return __getattr__
