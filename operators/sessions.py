"""ONNX Runtime sessions of a flow: providers, the TensorRT cache per key, the session cache.

- :func:`providers_for` maps ``VERISEG_PROVIDERS`` to ORT providers (auto: TensorRT > CUDA >
  CPU); :func:`build_session` records the provider actually loaded (``get_providers()``:
  the GPU build silently falls back to CPU) and refuses to run when a GPU is required but
  none loaded, or when the card does not describe the graph.
- :class:`SessionCache` holds a flow's sessions per model key; the model reader warms it in
  its own thread, so a hot swap does not stall scoring.
"""
from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

from model_store.graph import ORT_TYPES

from .frames import ModelLoaded
from .preprocess import Preprocessor
from .telemetry import log

__all__ = ["ScoreError", "GPU_PROVIDERS", "providers_for", "provider_options", "trt_cache_dir", "build_session",
           "card_mismatch", "drive_spec", "SessionEntry", "SessionCache", "cpu_threads", "gpu_driver"]

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class ScoreError(RuntimeError):
    """A model that cannot be scored here (one line)."""


def cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@functools.cache
def gpu_driver() -> bool:
    """True when an NVIDIA driver is loadable (else auto skips the GPU providers, which the
    GPU build of ORT lists even on machines without CUDA, with a noisy fallback)."""
    import ctypes
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def providers_for(choice: str, available=None) -> list:
    import onnxruntime as ort
    avail = list(available if available is not None else ort.get_available_providers())
    choice = (choice or "auto").lower()
    if choice == "cpu":
        want = ["CPUExecutionProvider"]
    elif choice == "cuda":
        want = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    elif choice == "tensorrt":
        want = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        want = ([p for p in GPU_PROVIDERS if p in avail] if gpu_driver() else []) + ["CPUExecutionProvider"]
    return [p for p in want if p in avail or p == "CPUExecutionProvider"]


def trt_cache_dir(key: str, home=None):
    """Where TensorRT engines of one blob key are cached: ``VERISEG_HOME/trt-cache/<key>``.
    ONNX Runtime names an engine by its graph, not its weights, so one folder shared by all
    keys could run a retrained (or revoked) model's engine under another key's name."""
    from pathlib import Path
    root = Path(str(home) if home else "~/.veriseg").expanduser() / "trt-cache"
    return root, root / key


def _private_dir(path) -> None:
    """Create ``path`` (mode 700) or accept it only as a real folder of this user that no one
    else can write: whoever writes an engine cache decides what TensorRT runs."""
    import stat
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        raise ScoreError(f"TensorRT engine cache {path}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ScoreError(f"TensorRT engine cache {path} must be a folder of this user that no one else "
                         f"can write (mode {stat.S_IMODE(st.st_mode):o}, owner uid {st.st_uid}, "
                         f"{'a folder' if stat.S_ISDIR(st.st_mode) else 'not a folder'}); fix or remove it")


def provider_options(wanted, key: str, home=None) -> list:
    """ORT provider options for ``wanted``: TensorRT caches engines per key, in a private folder."""
    opts = []
    for p in wanted:
        if p == "TensorrtExecutionProvider":
            root, cache = trt_cache_dir(key, home)
            _private_dir(root)
            _private_dir(cache)
            opts.append({"trt_fp16_enable": "True", "trt_engine_cache_enable": "True",
                         "trt_engine_cache_path": str(cache), "trt_engine_cache_prefix": key})
        else:
            opts.append({})
    return opts


@dataclass
class SessionEntry:
    key: str
    session: object
    input_name: str
    output_name: str
    provider: str
    pre: Preprocessor
    max_batch: Optional[int]     # None: dynamic batch dim
    card: object = None
    how: str = ""                # providers asked for and threads, for the log
    spec: object = None          # model_store.card.DriveSpec: how to feed it and read its output

    @functools.cached_property
    def classes(self) -> tuple:
        """(name, RGB colour) of each class id, from the card: a hot swap to a model with
        other classes names and colours its frames by its own card."""
        return tuple((c.name, tuple(c.color)) for c in self.card.classes) if self.card is not None else ()


def drive_spec(card, key: str):
    """The card's DriveSpec; a model the flow cannot drive is a ScoreError (one line)."""
    from model_store.errors import BlobError
    try:
        return card.drive_spec()
    except BlobError as e:
        raise ScoreError(f"model {key[:12]}: {e}") from None


def build_session(onnx: bytes, *, key: str, card=None, providers: str = "auto",
                  require_gpu: bool = False, threads: int = 0, home=None) -> SessionEntry:
    import onnxruntime as ort
    spec = drive_spec(card, key) if card is not None else None   # before the costly build
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or cpu_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # ORT's intra-op threads spin-wait by default; in the flow they would burn the CPU the
    # decoder and writer threads need (and any other load on the machine): off unless
    # VERISEG_ORT_SPIN=1 (measured on the shared 2-core box: +80 % raw FPS under load)
    spin = os.environ.get("VERISEG_ORT_SPIN", "0")
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin == "1" else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin == "1" else "0")
    wanted = providers_for(providers)
    opts = provider_options(wanted, key, home)
    try:
        sess = ort.InferenceSession(onnx, sess_options=so, providers=wanted, provider_options=opts)
    except Exception as e:  # noqa: BLE001 - ORT raises several types
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ScoreError(f"model {key[:12]}: ONNX Runtime cannot build a session: {msg}") from None
    got = sess.get_providers()
    active = got[0] if got else "none"
    if require_gpu and active not in GPU_PROVIDERS:
        raise ScoreError(f"VERISEG_REQUIRE_GPU=1 but ONNX Runtime loaded only {', '.join(got)} "
                         f"(asked for {', '.join(wanted)}; available: "
                         f"{', '.join(ort.get_available_providers())})")
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    if card is not None:
        problem = card_mismatch(card, inp, out)
        if problem:
            raise ScoreError(f"model {key[:12]}: its card does not describe its graph: {problem}")
    shp = list(inp.shape)
    max_batch = None
    if shp and isinstance(shp[0], int) and shp[0] > 0:
        max_batch = shp[0]
    if spec is not None:
        pre = Preprocessor.for_spec(spec)
    else:
        size = None
        if len(shp) == 4 and all(isinstance(d, int) and d > 0 for d in shp[1:3]):
            size = (shp[1], shp[2])
        pre = Preprocessor(size, "RGB")
    return SessionEntry(key, sess, inp.name, out.name, active, pre, max_batch, card,
                        f"asked for {', '.join(wanted)}; {so.intra_op_num_threads} intra-op threads",
                        spec)


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
    """ORT sessions per model key.

    Only the newest session is kept: a superseded one stays alive exactly as long as a
    stream still scores with it (its ``ScoreLogic.entry``) and is freed after the hand-over.
    Keeping three cost ~134 MiB per 512² ENet session, so RSS doubled after two hot swaps
    (the soak, ``bench/soak.py``); freeing a session returns its memory to the OS."""

    def __init__(self, *, keep: int = 1, stats=None, providers: str = "auto",
                 require_gpu: bool = False, threads: int = 0, home=None):
        self.keep = keep
        self.stats = stats           # records the provider in use
        self._d: OrderedDict[str, SessionEntry] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[str, threading.Event] = {}
        self.options = dict(providers=providers, require_gpu=require_gpu, threads=threads, home=home)
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
                    raise ScoreError(f"model {update.key[:12]}: update carries no model bytes")
                e = build_session(update.onnx, key=update.key, card=update.card, **self.options)
                if self.provider != e.provider:
                    log.info("ONNX Runtime provider in use: %s (%s)", e.provider, e.how)
                    self.provider = e.provider
                if self.stats is not None:
                    self.stats.provider = e.provider
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

