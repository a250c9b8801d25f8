"""How a mask was produced: the execution profile that a results line states and a v3 leaf binds.

Two runs of one verified model agree pixel for pixel only when they run the same numerics,
so an anchor names them: the backend (``onnxruntime`` | ``openvino``), the device it ran on
(``CPU``, ``CUDA``, ``TensorRT``, ``GPU.0``, ...), the arithmetic precision the runtime was
told to use (``fp32`` | ``bf16`` | ``fp16``; an int8 blob's quantised layers are int8 whatever
this says: it names the precision of everything else) and the runtime's version.

Encoding (what the leaf hashes): the four fields in that order, each ``u16 len | UTF-8``.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass

__all__ = ["PRECISIONS", "ExecutionProfile"]

PRECISIONS = ("fp32", "bf16", "fp16")
_FIELDS = ("backend", "device", "precision", "runtime")
_MAX_FIELD = 256


@dataclass(frozen=True)
class ExecutionProfile:
    backend: str
    device: str
    precision: str
    runtime: str

    def __post_init__(self):
        for name in _FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value.encode("utf-8")) > _MAX_FIELD:
                raise ValueError(f"execution profile: {name} must be a non-empty string of at most "
                                 f"{_MAX_FIELD} bytes, not {value!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"execution profile: precision must be one of {', '.join(PRECISIONS)}, "
                             f"not {self.precision!r}")

    def encode(self) -> bytes:
        """The bytes a v3 leaf hashes."""
        out = bytearray()
        for name in _FIELDS:
            value = getattr(self, name).encode("utf-8")
            out += struct.pack(">H", len(value)) + value
        return bytes(out)

    def as_dict(self) -> dict:
        """The results line's ``profile`` object."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> "ExecutionProfile":
        """A results line's ``profile``; ``ValueError`` (one line) for anything else."""
        if not isinstance(d, dict) or set(d) != set(_FIELDS):
            raise ValueError(f"execution profile must be an object with exactly {', '.join(_FIELDS)}")
        return cls(**{k: d[k] for k in _FIELDS})

    def __str__(self) -> str:
        return f"{self.backend} {self.runtime} {self.device} {self.precision}"
