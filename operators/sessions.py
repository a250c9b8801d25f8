"""The compiled models of a flow: one per verified blob key, on the backend chosen for it.

- :func:`build_session` compiles the verified ONNX bytes with the backend that
  ``VERISEG_BACKEND`` picks (``operators.backends``: ONNX Runtime on an NVIDIA GPU,
  OpenVINO on a CPU, ONNX Runtime CPU as the fallback), refuses a model whose card does not
  describe its graph, and records the device actually used.
- :class:`SessionCache` holds a flow's compiled models per model key; the model reader
  warms it in its own thread, so a hot swap does not stall scoring.  A model compiled for
  one key is never handed out for another (the key is the cache's only index).
"""
from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

from model_store.blob_key import BlobKey
from model_store.errors import BlobError
from model_store.graph import ORT_TYPES

from .backends import Runner, ScoreError, compile_verified, cpu_threads
from .backends.ort import GPU_PROVIDERS, gpu_driver, provider_options, providers_for, trt_cache_dir
from .frames import ModelLoaded
from .preprocess import Preprocessor
from .telemetry import log

__all__ = ["ScoreError", "GPU_PROVIDERS", "providers_for", "provider_options", "trt_cache_dir", "build_session",
           "card_mismatch", "drive_spec", "SessionEntry", "SessionCache", "cpu_threads", "gpu_driver"]


@dataclass
class SessionEntry:
    key: BlobKey                 # the verified blob key (the runner was compiled from its bytes)
    runner: Runner
    pre: Preprocessor
    max_batch: Optional[int]     # None: dynamic batch dim
    card: object = None
    how: str = ""                # backend settings, for the log
    why: str = ""                # why this backend (VERISEG_BACKEND / auto's reason)
    spec: object = None          # model_store.card.DriveSpec: how to feed it and read its output

    def __post_init__(self) -> None:
        self.key = BlobKey(self.key)

    @functools.cached_property
    def classes(self) -> tuple:
        """(name, RGB colour) of each class id, from the card: a hot swap to a model with
        other classes names and colours its frames by its own card."""
        return tuple((c.name, tuple(c.color)) for c in self.card.classes) if self.card is not None else ()

    @property
    def session(self):           # the runtime's own object (ORT session, OpenVINO model)
        return self.runner.native

    @property
    def input_name(self) -> str:
        return self.runner.input.name

    @property
    def output_name(self) -> str:
        return self.runner.output.name

    @property
    def provider(self) -> str:
        """The device in use: an ORT provider name, or 'OpenVINO <device>'."""
        r = self.runner
        return r.device if r.backend == "onnxruntime" else f"OpenVINO {r.device}"


def drive_spec(card, key: str):
    """The card's DriveSpec; a model the flow cannot drive is a ScoreError (one line)."""
    try:
        return card.drive_spec()
    except BlobError as e:
        raise ScoreError(f"model {key.short}: {e}") from None


def build_session(onnx: bytes, *, key: str, card=None, backend: str = "auto", providers: str = "auto",
                  require_gpu: bool = False, threads: int = 0, home=None,
                  hint: str = "throughput", spin: bool = False, ov_device: str = "auto",
                  precision: str = "card", arena_bytes: int = 0, batch: int = 1) -> SessionEntry:
    key = BlobKey(key)
    spec = drive_spec(card, key) if card is not None else None   # before the costly compile
    runner, why = compile_verified(onnx, key=key, backend=backend, providers=providers,
                                   require_gpu=require_gpu, threads=threads, home=home, hint=hint,
                                   spin=spin, ov_device=ov_device, precision=precision,
                                   arena_bytes=arena_bytes, batch=batch)
    inp, out = runner.input, runner.output
    if card is not None:
        problem = card_mismatch(card, inp, out)
        if problem:
            runner.close()
            raise ScoreError(f"model {key.short}: its card does not describe its graph: {problem}")
    runner.warm_up()              # here, in the reader's thread, not on a stream's first frames
    shp = list(inp.shape)
    fixed_batch = None
    if shp and isinstance(shp[0], int) and shp[0] > 0:
        fixed_batch = shp[0]
    if spec is not None:
        pre = Preprocessor.for_spec(spec)
    else:
        size = None
        if len(shp) == 4 and all(isinstance(d, int) and d > 0 for d in shp[1:3]):
            size = (shp[1], shp[2])
        pre = Preprocessor(size, "RGB")
    return SessionEntry(key, runner, pre, fixed_batch, card, runner.how, why, spec)


def card_mismatch(card, inp, out) -> Optional[str]:
    """What the card says about the first input/output that the ONNX graph contradicts."""
    for what, spec, node in (("input", card.inputs[0], inp), ("output", card.outputs[0], out)):
        want = ORT_TYPES.get(str(spec.dtype))
        if want is not None and node.type != want:
            return f"{what} {spec.name!r} is {spec.dtype} on the card but {node.type} in the graph"
        dims = list(node.shape)
        if len(dims) != len(spec.shape):
            return f"{what} {spec.name!r} has {len(spec.shape)} dims on the card but {len(dims)} in the graph"
        for i, (a, b) in enumerate(zip(spec.shape, dims)):
            if isinstance(a, int) and isinstance(b, int) and a != b:
                return (f"{what} {spec.name!r} dim {i} is {a} on the card but {b} in the graph "
                        f"(card {list(spec.shape)}, graph {dims})")
    return None


class SessionCache:
    """Compiled models per blob key.

    Only the newest session is kept: a superseded one stays alive exactly as long as a
    stream still scores with it (its ``ScoreLogic.entry``) and is freed after the hand-over.
    Keeping three cost ~134 MiB per 512² ENet session, so RSS doubled after two hot swaps
    (the soak, ``bench/soak.py``); freeing a session returns its memory to the OS."""

    def __init__(self, *, keep: int = 1, stats=None, backend: str = "auto", providers: str = "auto",
                 require_gpu: bool = False, threads: int = 0, home=None, hint: str = "throughput",
                 spin: bool = False, ov_device: str = "auto", precision: str = "card",
                 arena_bytes: int = 0, batch: int = 1):
        self.keep = keep
        self.stats = stats           # records the provider in use
        self._d: OrderedDict[str, SessionEntry] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[str, threading.Event] = {}
        self.options = dict(backend=backend, providers=providers, require_gpu=require_gpu, threads=threads,
                            home=home, hint=hint, spin=spin, ov_device=ov_device, precision=precision,
                            arena_bytes=arena_bytes, batch=batch)
        self.provider: Optional[str] = None

    def get(self, update: ModelLoaded) -> SessionEntry:
        while True:
            with self._lock:
                e = self._d.get(update.key)
                if e is not None:
                    self._d.move_to_end(update.key)
                    return e
                ev = self._building.get(update.key)
                if ev is None:
                    ev = self._building[update.key] = threading.Event()
                    mine = True
                else:
                    mine = False
            if not mine:
                ev.wait(120)
                continue
            try:
                if update.onnx is None:
                    raise ScoreError(f"model {update.key.short}: update carries no model bytes")
                e = build_session(update.onnx, key=update.key, card=update.card, **self.options)
                if self.provider != e.provider:
                    log.info("scoring backend: %s (%s; %s)", e.provider, e.why, e.how)
                    self.provider = e.provider
                log.info("model %s runs as %s", update.key.short, e.runner.profile)
                if self.stats is not None:
                    self.stats.provider = e.provider
                    self.stats.backend = e.runner.backend
                with self._lock:
                    self._d[update.key] = e
                    while len(self._d) > self.keep:
                        self._d.popitem(last=False)
                return e
            finally:
                with self._lock:
                    self._building.pop(update.key, None)
                ev.set()

    def drop(self, key: str):
        with self._lock:
            self._d.pop(key, None)

    def keys(self) -> list:
        with self._lock:
            return list(self._d)

