"""ONNX Runtime backend: providers, the TensorRT engine cache per key, the runner.

- :func:`providers_for` maps ``VERISEG_PROVIDERS`` to ORT providers (auto: TensorRT > CUDA >
  CPU, the GPU ones only when an NVIDIA driver loads); :func:`build` records the provider
  actually loaded (``get_providers()``: the GPU build silently falls back to CPU).
- TensorRT engines are cached per blob key in a private folder (:func:`provider_options`),
  built once for every batch of 1 to ``max_batch`` frames (:func:`trt_profile`): without a
  profile, TensorRT builds a new engine for each batch size it meets, seconds each, while the
  batcher's runs vary from 1 to ``VERISEG_BATCH`` frames.
- Precision (:mod:`.precision`): the CPU and CUDA providers run the graph as written, so
  they run the card's precision only; TensorRT builds its engine in fp32 unless fp16 or
  bf16 is asked for (a cached engine's name starts with the key and that precision).
- :class:`OrtRunner` runs on the caller's thread (``run``) or on one worker thread
  (``submit``), so the score stage's own work overlaps inference (ORT releases the GIL).
"""
from __future__ import annotations

import functools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from google.protobuf.message import DecodeError
from onnx import ModelProto

from chain.config import default_home
from chain.profile import ExecutionProfile
from model_store.blob_key import BlobKey
from model_store.graph import fed_inputs
from model_store.util import first_line

from . import precision as precisions
from ..telemetry import name_os_thread
from .base import FuturePending, Pending, Port, Runner, ScoreError, cpu_threads

__all__ = ["GPU_PROVIDERS", "providers_for", "provider_options", "trt_cache_dir", "trt_profile", "gpu_driver",
           "gpu_provider_available", "OrtRunner", "build"]

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# a provider as an execution profile names its device
_DEVICES = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA", "TensorrtExecutionProvider": "TensorRT"}


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


def gpu_provider_available(choice: str) -> bool:
    """Whether ``providers_for(choice)`` asks for a GPU provider (it may still not load)."""
    try:
        return any(p in GPU_PROVIDERS for p in providers_for(choice))
    except ImportError:
        return False


def trt_cache_dir(key: str, home=None):
    """Where TensorRT engines of one blob key are cached: ``VERISEG_HOME/trt-cache/<key>``.
    ONNX Runtime names an engine by its graph, not its weights, so one folder shared by all
    keys could run a retrained (or revoked) model's engine under another key's name."""
    from pathlib import Path
    root = (Path(str(home)).expanduser() if home else default_home()) / "trt-cache"
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


def trt_profile(onnx: bytes, max_batch: int) -> dict:
    """TensorRT's optimisation profile for the graph's one input at every batch of 1 to
    ``max_batch`` frames, tuned for ``max_batch`` (ORT's ``trt_profile_*_shapes``, written
    ``name:dxdxd``); empty where the input's batch is fixed or another dimension is not, and
    TensorRT takes the shapes it meets."""
    model = ModelProto()
    try:
        model.ParseFromString(onnx)
    except DecodeError:   # not a protobuf: the session refuses it in its own words
        return {}
    inputs = fed_inputs(model.graph)
    if len(inputs) != 1 or not inputs[0].type.HasField("tensor_type"):
        return {}
    dims = list(inputs[0].type.tensor_type.shape.dim)
    rest = [d.dim_value for d in dims[1:]]
    # ORT's profile string cannot quote a name with ':' or ','
    if not dims or dims[0].dim_value > 0 or not all(v > 0 for v in rest) or set(":,") & set(inputs[0].name):
        return {}

    def shape(n: int) -> str:
        return f"{inputs[0].name}:" + "x".join(str(v) for v in (n, *rest))
    return {"trt_profile_min_shapes": shape(1), "trt_profile_opt_shapes": shape(max_batch),
            "trt_profile_max_shapes": shape(max_batch)}


def provider_options(wanted, key: str, home=None, precision: str = "fp32", profile: dict = None,
                     max_batch: int = 1) -> list:
    """ORT provider options for ``wanted``: TensorRT caches engines per key, in a private
    folder, computes in fp16 or bf16 only when ``precision`` says so, and builds its engine
    for ``profile`` (:func:`trt_profile` of batches up to ``max_batch``)."""
    opts = []
    for p in wanted:
        if p == "TensorrtExecutionProvider":
            root, cache = trt_cache_dir(key, home)
            _private_dir(root)
            _private_dir(cache)
            opts.append({"trt_fp16_enable": str(precision == "fp16"), "trt_bf16_enable": str(precision == "bf16"),
                         "trt_engine_cache_enable": "True",
                         # an engine of one precision or batch range is never loaded for another
                         "trt_engine_cache_path": str(cache),
                         "trt_engine_cache_prefix": f"{key}_{precision}" + (f"_b{max_batch}" if profile else ""),
                         **(profile or {})})
        else:
            opts.append({})
    return opts


class OrtRunner(Runner):
    backend = "onnxruntime"
    # one run on the worker thread and the next one queued: the scoring thread stacks,
    # emits and checks revocation meanwhile
    depth = 2

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._pool = None
        self._lock = threading.Lock()

    def run(self, x):
        return self.native.run([self.output.name], {self.input.name: x})[0]

    def _timed(self, x):
        t = time.perf_counter()
        y = self.run(x)
        return y, (time.perf_counter() - t) * 1e3

    def submit(self, x) -> Pending:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"veriseg-ort-{self.key.short}",
                                                initializer=name_os_thread)
            return FuturePending(self._pool.submit(self._timed, x))

    def close(self):
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def __del__(self):
        self.close()


def _precision(want: str, explicit: bool, card: str, provider: str) -> str:
    """The precision ``provider`` runs for ``VERISEG_PRECISION``; ScoreError (one line) when
    it cannot run an explicit choice."""
    if provider == "TensorrtExecutionProvider" or want == card:
        return want
    if not explicit:   # the card's own precision: the graph as written
        return card
    raise ScoreError(f"VERISEG_PRECISION={want}: ONNX Runtime's {provider} runs the graph's own precision "
                     f"({card}) only; set VERISEG_PRECISION=card, or use TensorRT or OpenVINO for {want}")


_arena = {"max_bytes": 0}   # the cap registered with ONNX Runtime's environment, 0: none yet
_arena_lock = threading.Lock()


def _cpu_arena(max_bytes: int) -> None:
    """Register ONNX Runtime's CPU arena capped at ``max_bytes`` with its environment (again
    only when the cap changes): the sessions built after share it. An allocation past the cap fails that run (its
    frames are counted) instead of taking the machine's memory. Sessions built before keep the
    arena they had. Constant folding at session build allocates outside any arena: the graph
    limits (model_store.graph_limits) bound what it could fold."""
    import onnxruntime as ort
    with _arena_lock:
        if _arena["max_bytes"] != max_bytes:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg({"max_mem": max_bytes}))
            _arena["max_bytes"] = max_bytes


def build(onnx: bytes, *, key: BlobKey, providers: str = "auto", require_gpu: bool = False,
          threads: int = 0, home=None, spin: bool = False, precision: str = "card",
          arena_bytes: int = 0, max_batch: int = 1) -> OrtRunner:
    """An ONNX Runtime session of the verified bytes, for runs of up to ``max_batch`` frames
    (TensorRT's engine profile); ``arena_bytes`` > 0 caps the CPU memory
    arena it allocates from (VERISEG_MAX_ARENA_BYTES), shared by the process's sessions (which
    also lets a hot swap reuse the old session's memory: measured 150 MiB RSS with two 512²
    ENet sessions alive, 216 MiB with an arena each)."""
    import onnxruntime as ort
    key = BlobKey(key)
    want, explicit = precisions.wanted(precision, onnx)
    card = precisions.card_precision(onnx)
    so = ort.SessionOptions()
    if arena_bytes:
        _cpu_arena(arena_bytes)
        so.add_session_config_entry("session.use_env_allocators", "1")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or cpu_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # ORT's intra-op threads spin-wait by default; in the flow they would burn the CPU the
    # decoder and writer threads need (and any other load on the machine): off unless
    # VERISEG_ORT_SPIN=1 (measured on a 2-core AMD EPYC: +80 % raw FPS under load)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    wanted = providers_for(providers)
    profile = trt_profile(onnx, max_batch) if "TensorrtExecutionProvider" in wanted else {}
    opts = provider_options(wanted, key, home, want, profile, max_batch)
    try:
        sess = ort.InferenceSession(onnx, sess_options=so, providers=wanted, provider_options=opts)
    except Exception as e:  # noqa: BLE001 - ORT raises several types
        raise ScoreError(f"model {key.short}: ONNX Runtime cannot build a session: {first_line(e)}") from None
    got = sess.get_providers()
    active = got[0] if got else "none"
    if require_gpu and active not in GPU_PROVIDERS:
        raise ScoreError(f"VERISEG_REQUIRE_GPU=1 but ONNX Runtime loaded only {', '.join(got)} "
                         f"(asked for {', '.join(wanted)}; available: "
                         f"{', '.join(ort.get_available_providers())})")
    ins, outs = sess.get_inputs(), sess.get_outputs()
    if len(ins) != 1 or not outs:   # an input shadowed by an initializer is no input at all
        raise ScoreError(f"model {key.short}: ONNX Runtime sees {len(ins)} inputs and {len(outs)} outputs; "
                         "the flow feeds exactly one image and reads the first output")
    inp, out = ins[0], outs[0]
    runs = _precision(want, explicit, card, active)
    profile = ExecutionProfile("onnxruntime", _DEVICES.get(active, active.removesuffix("ExecutionProvider")),
                               runs, ort.__version__)
    return OrtRunner(key, sess, Port(inp.name, inp.type, tuple(inp.shape)),
                     Port(out.name, out.type, tuple(out.shape)), active,
                     f"asked for {', '.join(wanted)}; {so.intra_op_num_threads} intra-op threads; "
                     f"precision {runs} ({'VERISEG_PRECISION' if explicit else 'the card'})", profile)
