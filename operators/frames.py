"""The items that travel through the flow: decoded frames, model events and scored frames.

All are frozen: a step that changes an item returns a new one (``dataclasses.replace``),
so no step sees another step's edits.  Inside one process Bytewax passes them by
reference (no pickling); across processes they are pickled, so they hold plain data only
(never an ONNX Runtime session).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from chain.profile import ExecutionProfile
from model_store.blob_key import BlobKey

__all__ = ["Decoded", "NOT_YET", "Frame", "ModelLoaded", "ModelRevoked", "ModelEvent",
           "ScoredFrame", "StreamEnd"]


@dataclass(frozen=True, eq=False)
class Decoded:
    """What a reader decoded at one position of its source."""
    seq: int                 # position in the source (frame index / row / file index)
    pos: str                 # human-readable position (file#frame, CSV row, image path, ...)
    image: np.ndarray        # HxWx3 uint8 in ``colour`` order
    colour: str = "BGR"
    label: Optional[str] = None   # label path (CSV / dataset replay)
    ts: Optional[float] = None    # capture time the source states (CSV column), else None


class _NotYet(enum.Enum):
    NOT_YET = "no frame yet"


#: a live reader's answer when no frame has arrived yet (``None`` means the stream ended)
NOT_YET = _NotYet.NOT_YET


@dataclass(frozen=True, eq=False)
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
    raw: Optional[np.ndarray] = None  # the picture as decoded, when kept (reports, VERISEG_KEEP_FRAMES)
    raw_colour: str = "BGR"           # its colour order
    digest: Optional[bytes] = None    # chain.frame_digest of the decoded picture (a v3 leaf binds it)


@dataclass(frozen=True, eq=False)
class ModelLoaded:
    """A verified model to score with.  ``uid`` increases per event, so a stream ignores
    one it has seen; ``onnx`` is dropped from old events (bounded memory over hot swaps)."""
    key: BlobKey
    uid: int
    name: str = ""           # deployment name or blob path
    version: int = 0
    card: Any = None         # model_store.ModelCard
    onnx: Optional[bytes] = None
    source: str = ""         # where the blob came from

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", BlobKey(self.key))


@dataclass(frozen=True, eq=False)
class ModelRevoked:
    """A key that must stop scoring at once: revoked on chain, or (``superseded``) replaced
    by a newer deploy whose blob did not arrive within VERISEG_PENDING_DEPLOY_MAX_S (not
    revoked: it is not added to the revoked keys)."""
    key: BlobKey
    uid: int
    reason: str = ""
    superseded: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", BlobKey(self.key))


ModelEvent = Union[ModelLoaded, ModelRevoked]


@dataclass(frozen=True, eq=False)
class ScoredFrame:
    """The scored frame: its ids, the class map, the key of the model that scored it and
    how that model ran (``profile``: backend, device, precision, runtime version)."""
    stream_id: str
    seq: int
    ts: float
    pos: str
    class_map: np.ndarray    # HxW uint8 class ids at the model's output size
    model_key: BlobKey
    batch: int = 1
    latency_ms: dict = field(default_factory=dict)
    image: Optional[np.ndarray] = None   # the scored input (for the overlay video)
    colour: str = "RGB"
    orig_size: tuple = ()
    label: Optional[str] = None
    raw: Optional[np.ndarray] = None
    t_emit: float = 0.0      # perf_counter when the source queued the frame
    classes: tuple = ()      # the scoring model's (name, RGB colour) per id; () : the flow's first model's
    raw_colour: str = "BGR"
    frame_digest: Optional[bytes] = None   # the decoded frame's digest (Frame.digest)
    profile: Optional[ExecutionProfile] = None   # the runner's; None only where no runner scored it


@dataclass(frozen=True, eq=False)
class StreamEnd:
    """Emitted by the score step when its input ends: makes sure every stream's sink
    partition exists (Bytewax builds them on the first item) so its summary is written."""
    stream_id: str
