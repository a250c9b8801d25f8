"""The frame digest: what a v3 leaf binds of the picture the model was given.

It covers exactly what the model's input is made from: the decoded frame, before any
resizing or colour conversion (those are the card's preprocessing, which an auditor re-runs)::

    frame = BLAKE3(u16 len | "veriseg/frame/v1"
                   | u8 len | colour order (ASCII: "BGR" | "RGB" | "GRAY")
                   | u32 H | u32 W | u32 C
                   | u64 len | pixels (uint8, C order, H x W x C))

A GRAY frame is H x W (or H x W x 1) with C = 1; BGR and RGB frames are H x W x 3. The same
pixels in another colour order are another frame (the model would see other values), so
the order is hashed. BLAKE3 runs at GB/s: an 800x600 BGR frame costs about 0.5 ms.
"""

from __future__ import annotations

import struct

import blake3
import numpy as np

__all__ = ["COLOUR_ORDERS", "FRAME_DOMAIN", "frame_digest"]

FRAME_DOMAIN = b"veriseg/frame/v1"
COLOUR_ORDERS = {"BGR": 3, "RGB": 3, "GRAY": 1}   # colour order -> channels


def frame_digest(image, colour: str) -> bytes:
    """The 32-byte digest of a decoded frame (uint8 H x W x C in ``colour`` order).
    ``ValueError`` (one line) for anything that is not such a frame."""
    arr = np.asarray(image)
    channels = COLOUR_ORDERS.get(colour)
    if channels is None:
        raise ValueError(f"frame colour order must be one of {', '.join(COLOUR_ORDERS)}, "
                         f"not {colour!r}")
    if arr.ndim == 2 and channels == 1:
        arr = arr[..., None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != channels:
        raise ValueError(f"a {colour} frame is uint8 H x W x {channels}, not {arr.dtype} "
                         f"{list(arr.shape)}")
    h, w, c = arr.shape
    order = colour.encode("ascii")
    hasher = blake3.blake3()
    hasher.update(struct.pack(">H", len(FRAME_DOMAIN)) + FRAME_DOMAIN)
    hasher.update(struct.pack(">B", len(order)) + order)
    hasher.update(struct.pack(">III", h, w, c))
    hasher.update(struct.pack(">Q", h * w * c))
    hasher.update(np.ascontiguousarray(arr).data)   # no copy for a C-order frame
    return hasher.digest()
