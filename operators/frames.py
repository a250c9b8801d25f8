"""The items that travel through the flow: frames, model updates and results.

Inside one process Bytewax passes these by reference (no pickling); across processes they
are pickled, so they hold plain data only (never an ONNX Runtime session).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

__all__ = ["Frame", "ModelUpdate", "Result", "StreamEnd"]


@dataclass(eq=False)
class Frame:
    """One decoded frame. ``image`` is HxWx3 uint8 in ``colour`` order (BGR from OpenCV)."""
    stream_id: str
    seq: int                 # position in the source (frame index / row / file index)
    ts: float                # wall-clock time of capture/decoding (epoch seconds)
    pos: str                 # human-readable source position (file#frame, image path, ...)
    image: np.ndarray
    colour: str = "BGR"
    live: bool = False
    t_emit: float = 0.0      # time.perf_counter() when the source queued it
    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    orig_size: tuple = ()    # (h, w) before preprocessing
    label: Optional[str] = None   # label path (CSV / dataset replay)
    raw: Optional[np.ndarray] = None  # the undistorted original when kept for reports


@dataclass(eq=False)
class ModelUpdate:
    """A verified model to score with (``kind="load"``) or a key that must stop at once
    (``kind="revoke"``). ``uid`` increases per update so duplicates can be ignored."""
    kind: str
    key: str
    uid: int
    name: str = ""           # deployment name or blob path
    version: int = 0
    card: Any = None         # model_store.ModelCard
    onnx: Optional[bytes] = None
    reason: str = ""
    source: str = ""         # where the blob came from


@dataclass(eq=False)
class Result:
    """The scored frame: its ids, the class map and the key of the model that scored it."""
    stream_id: str
    seq: int
    ts: float
    pos: str
    class_map: np.ndarray    # HxW uint8 class ids at the model's output size
    model_key: str
    batch: int = 1
    latency_ms: dict = field(default_factory=dict)
    image: Optional[np.ndarray] = None   # the scored input (for the overlay video)
    colour: str = "RGB"
    orig_size: tuple = ()
    label: Optional[str] = None
    raw: Optional[np.ndarray] = None
    t_emit: float = 0.0      # perf_counter when the source queued the frame


@dataclass(eq=False)
class StreamEnd:
    """Emitted by the score step when its input ends: makes sure every stream's sink
    partition exists (Bytewax builds them on the first item) so its summary is written."""
    stream_id: str
