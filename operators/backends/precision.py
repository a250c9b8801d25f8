"""Pinned numerics: the arithmetic precision a backend runs a verified model in.

Two runs of one verified model give the same class map only when they compute in the same
precision, so no runtime picks one on its own: OpenVINO's CPU plugin would run an fp32 graph
in bf16 wherever the CPU has native bf16 (AVX512_BF16, AMX) and the class maps would differ
from the card's with nothing saying so. ``VERISEG_PRECISION`` says which:

- ``card`` (default): the card's precision. A card states no precision of its own, so it is
  the precision of the graph's float weights (:func:`card_precision`): fp32 for the shipped
  ENet and for its int8 (QDQ) blob, whose quantised layers are int8 whatever this says.
  Where the device cannot compute the card's precision natively (an fp16 graph on a CPU
  without fp16 arithmetic) it runs fp32, which holds every fp16 and bf16 value exactly,
  and the load log says so.
- ``fp32`` | ``bf16`` | ``fp16``: an explicit choice, faster where the device computes it
  natively (bench precision). A device that cannot is refused with one line naming what it
  offers; the flow never falls back silently from an explicit choice.

The precision that actually runs is part of the runner's :class:`chain.profile.ExecutionProfile`.
"""
from __future__ import annotations

from typing import Iterable

from chain.profile import PRECISIONS
from model_store.errors import BlobError
from model_store.graph import read_graph

__all__ = ["CHOICES", "card_precision", "wanted", "OV_HINTS", "from_ov_type"]

CHOICES = ("card",) + PRECISIONS

#: our precision -> OpenVINO's INFERENCE_PRECISION_HINT value
OV_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_FROM_OV = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def card_precision(onnx: bytes) -> str:
    """The card's precision: that of the graph's widest float weights (fp32 when it has
    float32 or float64 weights, or none at all; else fp16, else bf16).  Bytes that are no
    ONNX model are fp32 here: the runtime refuses them with its own line."""
    try:
        return _widest(read_graph(onnx).weight_dtypes)
    except BlobError:
        return "fp32"


def _widest(dtypes: Iterable[str]) -> str:
    dtypes = set(dtypes)
    if dtypes & {"float32", "float64"} or not dtypes & {"float16", "bfloat16"}:
        return "fp32"
    return "fp16" if "float16" in dtypes else "bf16"


def wanted(choice: str, onnx: bytes) -> tuple[str, bool]:
    """``(precision, explicit)`` for ``VERISEG_PRECISION=choice``: an explicit precision is
    refused where the device cannot run it; the card's may widen to fp32."""
    choice = (choice or "card").lower()
    if choice not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "card":
        return card_precision(onnx), False
    return choice, True


def from_ov_type(t) -> str:
    """OpenVINO's element type (``Type.f32``, or its name) as a profile precision; ``""``
    for any other type."""
    name = t.get_type_name() if hasattr(t, "get_type_name") else str(t)
    return _FROM_OV.get(name.lower(), "")
