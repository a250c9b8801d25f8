"""Which OpenVINO device scores: ``VERISEG_OPENVINO_DEVICE``.

``auto`` tries, in order, the discrete GPUs, the integrated GPUs, then the CPU that OpenVINO
lists, and the next one when a device refuses the model: the order of OpenVINO's own AUTO
device (docs.openvino.ai, "Automatic Device Selection"), NPU left out as AUTO leaves it out
(it has no dynamic shapes, and a small model may run slower there than on the CPU). AUTO
itself is not used: it starts on the CPU and moves to the GPU when that has compiled, so
the device that scored a frame would not be known, and every device here gets its own
settings (threads and the arg-max rewrite are CPU-only).

A device named explicitly (``CPU``, ``GPU``, ``GPU.1``, ``NPU``, or one of OpenVINO's
virtual devices such as ``HETERO:GPU,CPU``) is used alone, and refused with one line when
OpenVINO does not list it. The NPU compiles static shapes only, so ``ov.build`` gives it a
batch of one.
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

from .base import ScoreError

__all__ = ["pick", "VIRTUAL"]

VIRTUAL = ("AUTO", "HETERO", "MULTI", "BATCH")


def pick(wanted: str, listed: Sequence[str], kind: Callable[[str], str]) -> Tuple[list, str]:
    """The devices to try in order, and why (one line).  ``listed``: OpenVINO's
    ``available_devices``; ``kind(name)``: its ``DEVICE_TYPE`` ('discrete' / 'integrated')."""
    wanted = (wanted or "auto").strip()
    shown = ", ".join(listed) or "no device"
    if wanted.lower() != "auto":
        dev = wanted.upper()
        base = dev.split(":")[0].split(".")[0]
        if dev not in listed and base not in VIRTUAL and base not in {d.split(".")[0] for d in listed}:
            raise ScoreError(f"VERISEG_OPENVINO_DEVICE={wanted}: OpenVINO lists {shown} here "
                             "(set one of them, or auto)")
        return [dev], f"VERISEG_OPENVINO_DEVICE={dev}"
    gpus = sorted((d for d in listed if d.startswith("GPU")), key=lambda d: kind(d) != "discrete")
    order = gpus + (["CPU"] if "CPU" in listed else [])
    if not order:
        raise ScoreError(f"OpenVINO lists no GPU or CPU here ({shown}): set VERISEG_OPENVINO_DEVICE, "
                         "or VERISEG_BACKEND=onnxruntime")
    return order, f"auto: {' > '.join(order)} (discrete GPU, integrated GPU, CPU; OpenVINO lists {shown})"
