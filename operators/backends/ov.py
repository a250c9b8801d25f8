"""OpenVINO backend: the verified ONNX bytes compiled for an OpenVINO device, run in order.

- The model is read from the bytes in memory (``Core.read_model(bytes)``), never from a
  path, so what OpenVINO compiles is exactly what ``model_store`` verified.
- A graph that computes integers from the frame is refused (:mod:`.ov_integer`: OpenVINO
  saturates, rounds and narrows integer arithmetic where ONNX does not), so ``auto`` scores
  it on ONNX Runtime and says why.
- One exact graph rewrite before compiling (:mod:`.ov_graph`: the class arg-max moved to the
  innermost axis, -11 % (fp32) to -19 % (int8) CPU a frame on the 512² ENet); the key and the class maps are the
  verified model's.
- No compiled-model cache (``CACHE_DIR`` is set empty on purpose): OpenVINO names a cache
  entry by a hash of the graph and loads it without checking it against the model, so a
  planted file would run in place of the registered one; compiling the 512² ENet for the
  CPU takes well under a second (``compile_ms`` in ``bench perf``), less than checking
  a cache entry against the verified bytes would save.
- The precision is pinned (:mod:`.precision`): ``INFERENCE_PRECISION_HINT`` is always set
  (f32 for an fp32 card, on every device: the CPU plugin's own default is bf16 wherever the
  CPU has native bf16) and read back from the compiled model into the runner's profile; a
  compiled model that does not run what was set is refused.
- ``submit`` runs on a pool of the device's optimal number of requests (2 on a 2-core CPU
  with the THROUGHPUT hint), one worker thread and infer request each: a request is free
  again as soon as its inference ends (its output is copied there), so streams that share
  a model never wait on each other's collection, and a run that fails raises in its own
  worker, failing only its own frames at once. (``AsyncInferQueue`` calls no callback for a
  failed run: its frames waited out the run timeout, and the request's next start raised
  the old error, failing later frames too.) A stream keeps one run more than there are
  requests in flight (``depth``), so a request that ends starts the next run at once.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from google.protobuf.message import DecodeError

from chain.profile import ExecutionProfile
from model_store.blob_key import BlobKey
from model_store.util import first_line

from . import ov_devices
from . import precision as precisions
from ..telemetry import name_os_thread
from .base import FuturePending, Pending, Port, Runner, ScoreError, cpu_threads
from .ov_graph import argmax_innermost
from .ov_integer import integer_arithmetic_on_frames

__all__ = ["available", "version", "OvRunner", "build", "HINTS"]

HINTS = ("THROUGHPUT", "LATENCY")


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str:
    import openvino as ov
    return ov.get_version().split("-")[0]


def _ort_type(port) -> str:
    """OpenVINO element type as ONNX Runtime spells it ('tensor(uint8)', 'tensor(float)')."""
    try:
        name = np.dtype(port.get_element_type().to_dtype()).name
    except Exception:  # noqa: BLE001 - types numpy has no name for
        name = str(port.get_element_type())
    return "tensor(" + {"float32": "float", "float64": "double"}.get(name, name) + ")"


def _port(port) -> Port:
    dims = tuple(d.get_length() if d.is_static else "?" for d in port.get_partial_shape())
    return Port(port.get_any_name(), _ort_type(port), dims)


def _infer(request, x: np.ndarray) -> np.ndarray:
    """One run of ``request`` on ``x``.  ``x`` goes in as a tensor of its own type and shape,
    so a wrong one is refused as ONNX Runtime refuses it (``infer({0: x})`` would convert
    its type silently); the output buffer is reused by the next run, so it is copied."""
    import openvino as ov
    request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x)))
    request.infer()
    return np.array(request.get_output_tensor(0).data, copy=True)


class OvRunner(Runner):
    backend = "openvino"

    def __init__(self, key, compiled, inp, out, device, how, requests: int, profile: ExecutionProfile):
        super().__init__(key, compiled, inp, out, device, how, profile)
        # one run more than requests: a request that ends finds the next run waiting, instead
        # of idling while the score stage hands its result on (6 % of the CPU, 1 stream)
        self.depth = requests + 1
        self._sync = compiled.create_infer_request()
        self._sync_lock = threading.Lock()
        # one infer request per worker thread, owned by the runner (freed with it)
        self._requests = queue.SimpleQueue()
        for _ in range(requests):
            self._requests.put(compiled.create_infer_request())
        self._pool = None
        self._lock = threading.Lock()

    def run(self, x):
        with self._sync_lock:
            return _infer(self._sync, x)

    def _timed(self, x):
        request = self._requests.get()     # never waits: as many requests as workers
        try:
            t = time.perf_counter()
            y = _infer(request, x)
            return y, (time.perf_counter() - t) * 1e3
        finally:
            self._requests.put(request)

    def submit(self, x) -> Pending:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.depth - 1, thread_name_prefix=f"veriseg-ov-{self.key.short}",
                                                initializer=name_os_thread)
            return FuturePending(self._pool.submit(self._timed, x))

    def close(self):
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)   # runs in flight end before the compiled model is freed

    def __del__(self):
        pool, self._pool = getattr(self, "_pool", None), None
        if pool is not None:
            pool.shutdown(wait=False)


def build(onnx: bytes, *, key: BlobKey, threads: int = 0, hint: str = "THROUGHPUT",
          device: str = "auto", rewrite: bool = True, precision: str = "card") -> OvRunner:
    """``onnx`` compiled for ``device`` (``auto``: :mod:`.ov_devices`' order, the next device
    when one refuses the model) in ``precision`` (``VERISEG_PRECISION``: card, fp32, bf16,
    fp16); ``rewrite=False`` compiles the graph exactly as read, without :mod:`.ov_graph`'s
    exact rewrite (for the benchmark's side-by-side row)."""
    import openvino as ov
    key = BlobKey(key)
    _refuse_integer_arithmetic(onnx, key)
    want = precisions.wanted(precision, onnx)
    hint = hint.upper()
    if hint not in HINTS:
        raise ValueError(f"OpenVINO hint must be one of {', '.join(HINTS)}, not {hint!r}")
    core = ov.Core()
    devices, why = ov_devices.pick(device, list(core.available_devices), lambda d: _device_type(core, d))
    refused = []
    for dev in devices:
        try:
            return _build_on(core, dev, onnx, key=key, threads=threads, hint=hint, rewrite=rewrite,
                             want=want, why=why + "".join(f"; {r}" for r in refused))
        except ScoreError as e:
            if dev == devices[-1]:
                raise ScoreError(str(e) + "".join(f" ({r})" for r in refused)) from None
            refused.append(f"{dev} refused it: {str(e).split(': ', 1)[-1]}")
    raise AssertionError("unreachable: pick() returns at least one device")


def _refuse_integer_arithmetic(onnx: bytes, key: BlobKey) -> None:
    """A graph OpenVINO would compute other numbers for than ONNX (:mod:`.ov_integer`) is a
    ScoreError naming its first nodes; bytes that do not parse are left to OpenVINO to refuse,
    and a graph the check cannot judge is refused too (it then scores on ONNX Runtime)."""
    try:
        nodes = integer_arithmetic_on_frames(onnx)
    except DecodeError:   # not a protobuf: read_model refuses it in its own words
        return
    except Exception as e:  # noqa: BLE001 - fail closed: never OpenVINO on a graph not judged
        raise ScoreError(f"model {key.short}: cannot tell whether OpenVINO computes this graph as ONNX does "
                         f"({first_line(e)}); score it on ONNX Runtime (VERISEG_BACKEND=onnxruntime)") from None
    if nodes:
        raise ScoreError(f"model {key.short}: OpenVINO computes integer arithmetic unlike ONNX (saturating, "
                         f"through float, int64 in 32 bits) and this graph does it on the frame: "
                         f"{', '.join(nodes)}; score it on ONNX Runtime (VERISEG_BACKEND=onnxruntime)")


def _batch_of_one(model) -> None:
    """The NPU compiles static shapes only: a dynamic batch becomes 1 (the flow's batch on
    every device but an NVIDIA GPU); any other dynamic dimension is left for the device to
    refuse, in one line."""
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_static and shape.rank.get_length() >= 1 and shape[0].is_dynamic \
            and all(d.is_static for d in list(shape)[1:]):
        model.reshape([1, *(d.get_length() for d in list(shape)[1:])])


def _device_type(core, device: str) -> str:
    try:
        return str(core.get_property(device, "DEVICE_TYPE")).lower().split(".")[-1]
    except Exception:  # noqa: BLE001 - a plugin without the property: count it integrated
        return "integrated"


def _capabilities(core, device: str):
    """The precisions ``device`` computes natively (OPTIMIZATION_CAPABILITIES: 'FP32',
    'BF16', 'FP16', ...), or None where the device does not say (a virtual device)."""
    try:
        return {str(c).upper() for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")}
    except Exception:  # noqa: BLE001 - a plugin without the property
        return None


def _hint_for(core, device: str, want, key: str) -> tuple[str, str]:
    """The precision to set on ``device`` and, where it is not the one asked for, why."""
    precision, explicit = want
    caps = _capabilities(core, device)
    if precision == "fp32" or caps is None or precision.upper() in caps:
        return precision, ""
    offers = ", ".join(sorted(caps)) or "nothing"
    if explicit:
        raise ScoreError(f"model {key.short}: VERISEG_PRECISION={precision}: OpenVINO's {device} does not "
                         f"compute {precision} natively (it offers {offers}); set VERISEG_PRECISION=card or fp32")
    return "fp32", f"the card's {precision} runs fp32: {device} has no native {precision}"


def _build_on(core, device: str, onnx: bytes, *, key: str, threads: int, hint: str, rewrite: bool,
              want, why: str) -> OvRunner:
    precision, widened = _hint_for(core, device, want, key)
    # set on every device: the CPU plugin's default is bf16 where the CPU has native bf16
    config = {"PERFORMANCE_HINT": hint, "CACHE_DIR": "",
              "INFERENCE_PRECISION_HINT": precisions.OV_HINTS[precision]}
    cpu = device == "CPU"
    if cpu:
        config["INFERENCE_NUM_THREADS"] = threads or cpu_threads()
    try:
        model = core.read_model(onnx)          # the verified bytes, in memory
        if device.startswith("NPU"):
            _batch_of_one(model)
        moved = 0
        if rewrite and cpu:                    # measured on the CPU plugin only
            try:
                moved = argmax_innermost(model)
            except Exception:  # noqa: BLE001 - an optimisation is never why a model is refused
                model = core.read_model(onnx)
        compiled = core.compile_model(model, device, config)
        requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        inp, out = _ports(compiled)
    except ScoreError as e:
        raise ScoreError(f"model {key.short}: OpenVINO on {device}: {e}") from None
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError and others
        raise ScoreError(f"model {key.short}: OpenVINO cannot compile it for {device}: "
                         f"{_reason(e)}") from None
    runs = _compiled_precision(compiled, precision)
    if runs != precision:
        raise ScoreError(f"model {key.short}: OpenVINO's {device} compiled it for {runs or 'another precision'} "
                         f"though {precision} was set; set VERISEG_PRECISION to what {device} offers")
    requests = min(max(requests, 2), 4)
    streams = compiled.get_property("NUM_STREAMS")
    how = (f"OpenVINO {version()} {device}, hint {hint}, {streams} streams, "
           f"{config.get('INFERENCE_NUM_THREADS', 'auto')} threads, {requests} requests"
           + (", arg-max on the innermost axis" if moved else "")
           + f", precision {runs} ({widened or ('VERISEG_PRECISION' if want[1] else 'the card')})"
           + f"; device {why}")
    profile = ExecutionProfile("openvino", device, runs, version())
    return OvRunner(key, compiled, inp, out, device, how, requests, profile)


def _compiled_precision(compiled, precision: str) -> str:
    """The precision the compiled model runs, read back from it; the one set where a
    (virtual) device does not report it."""
    try:
        return precisions.from_ov_type(compiled.get_property("INFERENCE_PRECISION_HINT"))
    except Exception:  # noqa: BLE001 - a plugin without the property
        return precision


def _ports(compiled) -> tuple:
    """The one input and the first output, or a ScoreError: a graph whose only input is
    shadowed by an initializer compiles with no input at all."""
    ins, outs = list(compiled.inputs), list(compiled.outputs)
    if len(ins) != 1 or not outs:
        raise ScoreError(f"the compiled graph has {len(ins)} inputs and {len(outs)} outputs; "
                         "the flow feeds exactly one image and reads the first output")
    return _port(ins[0]), _port(outs[0])


def _reason(e: Exception) -> str:
    """OpenVINO's first line is where it threw ('Exception from src/...:105:'); the reason follows."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith(("Exception from", "Check "))]
    return (said or lines or [type(e).__name__])[0]
