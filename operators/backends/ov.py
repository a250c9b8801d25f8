"""OpenVINO backend: the verified ONNX bytes compiled for an OpenVINO device, run in order.

- The model is read from the bytes in memory (``Core.read_model(bytes)``), never from a
  path, so what OpenVINO compiles is exactly what ``model_store`` verified.
- One exact graph rewrite before compiling (:mod:`.ov_graph`: the class arg-max moved to the
  innermost axis, -11 % (fp32) to -19 % (int8) CPU a frame on the 512² ENet); the key and the class maps are the
  verified model's.
- No compiled-model cache (``CACHE_DIR`` is set empty on purpose): OpenVINO names a cache
  entry by a hash of the graph and loads it without checking it against the model, so a
  planted file would run in place of the registered one; compiling the 512² ENet for the
  CPU takes well under a second (``compile_ms`` in ``bench perf``), less than checking
  a cache entry against the verified bytes would save.
- ``submit`` uses an :class:`openvino.AsyncInferQueue` of the device's optimal number of
  requests (2 on a 2-core CPU with the THROUGHPUT hint): a request is free again as soon
  as its inference ends (its output is copied in the callback), so streams that share a
  model never wait on each other's collection.
"""
from __future__ import annotations

import threading

import numpy as np

from model_store.util import first_line

from . import ov_devices
from .base import Pending, Port, Runner, ScoreError, cpu_threads
from .ov_graph import argmax_innermost

__all__ = ["available", "version", "OvRunner", "build", "HINTS"]

HINTS = ("THROUGHPUT", "LATENCY")
# the longest a run may take before the score window gives up on it (a hung device)
RUN_TIMEOUT_S = 120.0


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


class _Request(Pending):
    def __init__(self):
        self.done_event = threading.Event()
        self.y = None
        self.ms = 0.0
        self.err = None

    def done(self):
        return self.done_event.is_set()

    def result(self):
        if not self.done_event.wait(RUN_TIMEOUT_S):
            raise ScoreError(f"OpenVINO run did not finish in {RUN_TIMEOUT_S:.0f} s")
        if self.err is not None:
            raise self.err
        return self.y, self.ms


def _finished(request, pending: _Request):
    try:
        # the request's output buffer is reused by its next run: copy it out now
        pending.y = np.array(request.get_output_tensor(0).data, copy=True)
        pending.ms = float(request.latency)
    except Exception as e:  # noqa: BLE001 - handed to whoever collects the result
        pending.err = e
    finally:
        pending.done_event.set()


class OvRunner(Runner):
    backend = "openvino"

    def __init__(self, key, compiled, inp, out, device, how, requests: int):
        super().__init__(key, compiled, inp, out, device, how)
        import openvino as ov
        self.depth = requests
        self._sync = compiled.create_infer_request()
        self._sync_lock = threading.Lock()
        self._queue = ov.AsyncInferQueue(compiled, requests)
        self._queue.set_callback(_finished)
        self._submit_lock = threading.Lock()

    def run(self, x):
        with self._sync_lock:
            self._sync.infer({0: x})
            return np.array(self._sync.get_output_tensor(0).data, copy=True)

    def submit(self, x) -> Pending:
        p = _Request()
        try:
            with self._submit_lock:   # start_async waits for a free request
                self._queue.start_async({0: x}, p)
        except Exception as e:  # noqa: BLE001 - a bad input fails its own frames only
            p.err, p.y = e, None
            p.done_event.set()
        return p

    def close(self):
        try:
            self._queue.wait_all()
        except Exception:  # noqa: BLE001 - closing: errors were reported per run
            pass


def build(onnx: bytes, *, key: str, threads: int = 0, hint: str = "THROUGHPUT",
          device: str = "auto", rewrite: bool = True) -> OvRunner:
    """``onnx`` compiled for ``device`` (``auto``: :mod:`.ov_devices`' order, the next device
    when one refuses the model); ``rewrite=False`` compiles the graph exactly as read,
    without :mod:`.ov_graph`'s exact rewrite (for the benchmark's side-by-side row)."""
    import openvino as ov
    hint = hint.upper()
    if hint not in HINTS:
        raise ValueError(f"OpenVINO hint must be one of {', '.join(HINTS)}, not {hint!r}")
    core = ov.Core()
    devices, why = ov_devices.pick(device, list(core.available_devices), lambda d: _device_type(core, d))
    refused = []
    for dev in devices:
        try:
            return _build_on(core, dev, onnx, key=key, threads=threads, hint=hint, rewrite=rewrite,
                             why=why + "".join(f"; {r}" for r in refused))
        except ScoreError as e:
            if dev == devices[-1]:
                raise ScoreError(str(e) + "".join(f" ({r})" for r in refused)) from None
            refused.append(f"{dev} refused it: {str(e).split(': ', 1)[-1]}")
    raise AssertionError("unreachable: pick() returns at least one device")


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


def _build_on(core, device: str, onnx: bytes, *, key: str, threads: int, hint: str, rewrite: bool,
              why: str) -> OvRunner:
    config = {"PERFORMANCE_HINT": hint, "CACHE_DIR": ""}
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
        raise ScoreError(f"model {key[:12]}: OpenVINO on {device}: {e}") from None
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError and others
        raise ScoreError(f"model {key[:12]}: OpenVINO cannot compile it for {device}: "
                         f"{_reason(e)}") from None
    requests = min(max(requests, 2), 4)
    streams = compiled.get_property("NUM_STREAMS")
    how = (f"OpenVINO {version()} {device}, hint {hint}, {streams} streams, "
           f"{config.get('INFERENCE_NUM_THREADS', 'auto')} threads, {requests} requests in flight"
           + (", arg-max on the innermost axis" if moved else "") + f"; device {why}")
    return OvRunner(key, compiled, inp, out, device, how, requests)


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
