"""CARLA class names and colour palette in the shapes training and evaluation use (numpy only).

The classes and colours are defined once, in ``model_store.classes.CARLA_CLASSES`` (what a
blob's card carries); this module gives them as names, an RGB table and lookups.
Ids follow the Lyft Perception Challenge / CARLA 0.8 semantic camera: the id is
stored in the red channel of the original label images.
"""
from __future__ import annotations

import numpy as np

from .classes import CARLA_CLASSES
from .drive import palette_lut

__all__ = ["CLASS_NAMES", "CLASS_COLORS", "NUM_CLASSES", "IGNORE_ID", "PALETTE", "colorize", "rgb_palette_to_ids"]

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CARLA_CLASSES)
NUM_CLASSES = len(CLASS_NAMES)
#: a label pixel without truth (the border of a wider camera view, ``trainer.geometry``): the
#: training loss and ``ConfusionMatrix`` skip it
IGNORE_ID = 255

#: RGB colour of each class id (the CARLA palette).
CLASS_COLORS: tuple[tuple[int, int, int], ...] = tuple(c.color for c in CARLA_CLASSES)
#: ``PALETTE[id]`` is the RGB colour, uint8 [13, 3].
PALETTE = np.array(CLASS_COLORS, dtype=np.uint8)
_LUT = palette_lut(CLASS_COLORS, "RGB")   # ids past the classes are drawn white

_CODE = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(CLASS_COLORS)}


def colorize(class_map: np.ndarray) -> np.ndarray:
    """uint8 class map [H, W] -> RGB image [H, W, 3]; ids > 12 are drawn white."""
    return _LUT[np.asarray(class_map, dtype=np.uint8)]


def rgb_palette_to_ids(rgb: np.ndarray) -> np.ndarray | None:
    """Map an RGB image drawn in the CARLA palette to class ids.

    Returns ``None`` if any pixel has a colour outside the palette.
    """
    rgb = np.asarray(rgb, dtype=np.uint32)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    uniq, inv = np.unique(code, return_inverse=True)
    ids = np.empty(len(uniq), np.uint8)
    for j, c in enumerate(uniq.tolist()):
        if c not in _CODE:
            return None
        ids[j] = _CODE[c]
    return ids[inv].reshape(code.shape)
