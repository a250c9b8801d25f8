"""The reference pre- and postprocessing of a DriveSpec: what "the flow does what the card says" means.

numpy only, except the resize, which is OpenCV's (a base dependency; the flow resizes with
the same call, so its tensors are byte-equal to these). No onnxruntime. The flow may use
faster paths; they must give the same class maps (tests/model_store/test_byo_models.py checks these
functions against models run directly in ONNX Runtime).

    x = preprocess(frame_bgr, spec)            # frame: uint8 [H0, W0, 3], BGR (OpenCV's order)
    y = session.run([spec.output_name], {spec.input_name: x})[0]
    ids = postprocess(y, spec)                 # uint8 [N, h, w] at the output's resolution
    ids = postprocess(y, spec, frame.shape[:2])  # or at the frame's size, letterbox undone

preprocess, step by step (each exactly as written; float arithmetic in float32):

1. resize to spec.size = (h, w), if set and different from the frame's:
   - stretch: cv2.resize to (w, h);
   - letterbox: s = min(h / H0, w / W0), resize to (round(W0 * s), round(H0 * s)), paste
     at top = (h - nh) // 2, left = (w - nw) // 2 on zeros (black);
   the interpolation is cv2.INTER_AREA when the frame shrinks in both directions and at
   least 2x in height, else cv2.INTER_LINEAR.
2. colour: BGR -> RGB by reversing the channel axis when spec.colour is "RGB".
3. values: a uint8 input gets the bytes as they are. A float input gets
   x = x.astype(float32) * float32(scale); then, with a mean, x = (x - mean) / std with
   mean and std as float32 arrays in the model's channel order.
4. layout: NHWC as is, NCHW by transpose(2, 0, 1); a batch axis of 1 in front.
5. dtype: cast to spec.input_dtype (float16 from the float32 values: round to nearest).

postprocess:

- class map ([N, H, W], or with a channel axis of size 1): ids as they are;
- logits/probabilities: argmax over spec.class_axis (first maximum on ties, numpy's rule);
- ids outside 0..num_classes-1 (a class map's own values) become 255 ("no class");
- result uint8 [N, h, w]; with `frame_size`, a letterbox border is cropped off (in the
  output's resolution) and the map is resized to the frame's size by nearest neighbour.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

from .classes import ClassInfo
from .drive_spec import DriveSpec

__all__ = ["NO_CLASS", "letterbox_box", "pad_pictures", "palette_lut", "picture_size", "postprocess", "preprocess",
           "resize_frame", "resize_picture", "to_frame", "to_tensor"]

NO_CLASS = 255  # the id a uint8 class map gives a pixel with no valid class


def _cv2():
    import cv2  # lazy: model_store imports without OpenCV until a frame is processed

    return cv2


def _interpolation(src: Tuple[int, int], dst: Tuple[int, int]) -> int:
    cv2 = _cv2()
    shrink = src[0] > dst[0] and src[1] > dst[1]
    return cv2.INTER_AREA if shrink and src[0] >= 2 * dst[0] else cv2.INTER_LINEAR


def letterbox_box(frame_size: Tuple[int, int], size: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(top, left, height, width) of the frame's picture inside a letterboxed `size` input."""
    (h0, w0), (h, w) = frame_size, size
    s = min(h / h0, w / w0)
    nh, nw = max(1, min(h, round(h0 * s))), max(1, min(w, round(w0 * s)))
    return (h - nh) // 2, (w - nw) // 2, nh, nw


def picture_size(frame_size: Tuple[int, int], spec_or_size, mode: Optional[str] = None) -> Tuple[int, int]:
    """(height, width) of the frame's picture in the model input: the input size for
    stretch, the aspect-kept fit for letterbox, the frame's own size for a dynamic graph
    packed without a size. `spec_or_size` is a DriveSpec, or a size with `mode`."""
    size, mode = (spec_or_size.size, spec_or_size.resize) if mode is None else (spec_or_size, mode)
    if size is None:
        return tuple(frame_size)
    if mode == "letterbox":
        _, _, nh, nw = letterbox_box(frame_size, size)
        return nh, nw
    return tuple(size)


def resize_picture(frame: np.ndarray, picture: Tuple[int, int]) -> np.ndarray:
    """The frame resized to `picture` (height, width) with the interpolation rule above."""
    if tuple(frame.shape[:2]) == tuple(picture):
        return frame
    h, w = picture
    return _cv2().resize(frame, (w, h), interpolation=_interpolation(frame.shape[:2], (h, w)))


def resize_frame(frame: np.ndarray, size: Optional[Tuple[int, int]], mode: str = "stretch") -> np.ndarray:
    """Step 1 of preprocess: the frame at `size` (height, width), stretched or letterboxed."""
    if size is None or tuple(frame.shape[:2]) == tuple(size):
        return frame
    picture = resize_picture(frame, picture_size(frame.shape[:2], size, mode))
    return pad_pictures(picture[None], size, mode)[0]


def pad_pictures(pictures: np.ndarray, size: Optional[Tuple[int, int]], mode: str) -> np.ndarray:
    """Letterbox: pictures [N, nh, nw, C] centred on zeros of `size`; otherwise as they are."""
    if mode != "letterbox" or size is None or tuple(pictures.shape[1:3]) == tuple(size):
        return pictures
    (h, w), (nh, nw) = size, pictures.shape[1:3]
    top, left = (h - nh) // 2, (w - nw) // 2
    out = np.zeros((pictures.shape[0], h, w) + pictures.shape[3:], pictures.dtype)
    out[:, top : top + nh, left : left + nw] = pictures
    return out


def to_tensor(pictures: np.ndarray, spec: DriveSpec) -> np.ndarray:
    """Steps 3-5 (and the letterbox padding of step 1) on a batch: pictures uint8
    [N, h, w, 3] already at `picture_size` and in spec.colour order -> the input tensor.
    Today's uint8 NHWC graphs get the pictures as they are (no copy)."""
    x = pad_pictures(pictures, spec.size, spec.resize)
    if spec.input_dtype != "uint8":
        x = x.astype(np.float32) * np.float32(spec.scale)
        if spec.mean is not None:
            x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.dtype(spec.input_dtype))


def preprocess(frame_bgr: np.ndarray, spec: DriveSpec) -> np.ndarray:
    """A BGR uint8 frame [H0, W0, 3] -> the model's input tensor, batch 1 (see the module docstring)."""
    frame = np.asarray(frame_bgr)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected a BGR uint8 frame [H, W, 3], got {frame.dtype}{list(frame.shape)}")
    x = resize_picture(frame, picture_size(frame.shape[:2], spec))
    if spec.colour == "RGB":
        x = x[..., ::-1]
    return to_tensor(x[None], spec)


def postprocess(output: np.ndarray, spec: DriveSpec, frame_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """The model's output -> uint8 class map [N, h, w] (see the module docstring)."""
    y = np.asarray(output)
    if spec.output_kind == "class_map":
        if spec.class_axis is not None:
            y = y.squeeze(axis=spec.class_axis)
        ids = y
    else:
        ids = y.argmax(axis=spec.class_axis)
    if ids.ndim != 3:
        raise ValueError(f"output {spec.output_name!r} gives ids of shape {list(ids.shape)}; expected [N, H, W]")
    if ids.dtype == np.uint8 and int(ids.max(initial=0)) < spec.num_classes:
        out = ids   # today's ENet: ids in range already (one max pass, ~0.03 ms at 512²)
    else:
        bad = (ids < 0) | (ids >= spec.num_classes)
        out = np.where(bad, NO_CLASS, ids).astype(np.uint8)
    if frame_size is None:
        return out
    return to_frame(out, spec, frame_size)


def to_frame(maps: np.ndarray, spec: DriveSpec, frame_size: Tuple[int, int]) -> np.ndarray:
    """Per-pixel maps [N, h, w] at the output's resolution -> at the frame's size: the
    letterbox border cropped off, then resized by nearest neighbour (postprocess's last
    step; any dtype OpenCV resizes, e.g. int32 pixel indices)."""
    out = maps
    if spec.resize == "letterbox" and spec.size is not None:
        top, left, nh, nw = letterbox_box(frame_size, spec.size)
        sy, sx = out.shape[1] / spec.size[0], out.shape[2] / spec.size[1]  # the output may be smaller
        t, l = int(round(top * sy)), int(round(left * sx))
        out = out[:, t : t + max(1, int(round(nh * sy))), l : l + max(1, int(round(nw * sx)))]
    if out.shape[1:] == tuple(frame_size):
        return out
    cv2 = _cv2()
    h0, w0 = frame_size
    return np.stack([cv2.resize(m, (w0, h0), interpolation=cv2.INTER_NEAREST) for m in out])


def palette_lut(colours: Iterable[Sequence[int]], order: str) -> np.ndarray:
    """uint8 [256, 3]: the colour of each class id in ``order`` ("RGB" or "BGR"), from
    ``colours`` (RGB, as a card states them, in id order); white for the ids past them
    (255, no class, included)."""
    if order not in ("RGB", "BGR"):
        raise ValueError(f"palette order {order!r}; expected 'RGB' or 'BGR'")
    lut = np.full((256, 3), 255, np.uint8)
    for i, rgb in enumerate(colours):
        lut[i] = rgb if order == "RGB" else tuple(rgb)[::-1]
    return lut
