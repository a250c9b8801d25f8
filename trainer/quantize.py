"""int8 post-training quantisation of a registered blob into a *separate* blob (NNCF).

    python -m trainer quantize models/carla-enet.vsb --data ../shared/data/carla \\
        -o models/carla-enet-int8.vsb [--calib 100] [--max-loss 0.5]

Why here and not in ``model_store``: quantising needs the training data (calibration
frames from the time split's training part), the evaluation code (pixel accuracy and mIoU
at the labels' resolution) and NNCF (the ``train`` extra); ``model_store`` only packs and
verifies bytes and stays free of all three.

- The source blob is verified (its key) and its ONNX graph quantised with
  ``nncf.quantize`` on the ``onnx.ModelProto`` itself: the result is a QDQ ONNX graph, so
  the new blob holds ONNX like every other one and runs on OpenVINO (int8 kernels) and on
  ONNX Runtime alike; nothing is converted at load.
- Calibration: ``--calib`` frames spread over the training part of the time split
  (``trainer.data.time_split``: frames 0021-0393 of the CARLA drive); the validation part
  (0404-0499) is never seen.
- Both models are evaluated on the validation part by ONNX Runtime on the CPU
  (``trainer.ort_session``, as every trainer figure; the QDQ graph is the one every
  backend runs); the card of the new blob says int8, the calibration set, the source key
  and both accuracies.  With a pixel-accuracy loss over
  ``--max-loss`` points nothing is written (exit 1, one line).
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

import model_store
from model_store.blob_key import BlobKey
from model_store.card import utc_now
from model_store.display import shell_command
from model_store.graph import check_graph

from .evaluate import evaluate_folder
from .ort_session import class_maps, describe, ort_session

__all__ = ["calibration_indices", "quantize_onnx", "int8_card", "main"]


def calibration_indices(n_frames: int, n: int, val_fraction: float = 0.2, gap: int = 10):
    """(calibration indices spread over the training part, validation indices)."""
    from .data import time_split
    tr, va = time_split(n_frames, val_fraction, gap)
    sel = sorted(set(np.linspace(tr[0], tr[-1], min(n, len(tr))).astype(int).tolist()))
    return sel, va


def _frames(pairs, idx, size) -> np.ndarray:
    """RGB uint8 frames resized to the model input as the flow does (area when shrinking)."""
    from .data import read_image
    h, w = size
    return np.stack([cv2.resize(read_image(pairs[i][0]), (w, h), interpolation=cv2.INTER_AREA) for i in idx])


def quantize_onnx(onnx_bytes: bytes, calib: np.ndarray, *, fast_bias_correction: bool = True) -> bytes:
    """A QDQ int8 ONNX graph of ``onnx_bytes`` calibrated on ``calib`` (uint8 NHWC frames)."""
    import nncf
    import onnx
    m = onnx.load_from_string(onnx_bytes)
    name = m.graph.input[0].name
    ds = nncf.Dataset(list(calib), lambda x: {name: x[None]})
    q = nncf.quantize(m, ds, subset_size=len(calib), fast_bias_correction=fast_bias_correction)
    return q.SerializeToString()


def _evaluate(onnx_bytes: bytes, data, size) -> dict:
    sess = ort_session(onnx_bytes)
    s, _, _ = evaluate_folder(lambda x: class_maps(sess, x), data, size[0], grid_n=0)
    return {"pixel_accuracy": s["pixel_accuracy"], "mean_iou": s["mean_iou"],
            "mean_class_accuracy": s["mean_class_accuracy"], "runtime": describe(sess)}


def int8_card(card, *, source_key: BlobKey, calib_names: list, val_names: list, params: dict,
              fp32: dict, int8: dict, name: str = ""):
    t = utc_now()
    loss = round(100 * (fp32["pixel_accuracy"] - int8["pixel_accuracy"]), 3)
    q = {"precision": "int8", "method": "NNCF post-training quantisation (nncf.quantize, QDQ ONNX)",
         "source_blob_key": source_key, "calibration": {
             "frames": len(calib_names), "first": calib_names[0], "last": calib_names[-1],
             "part": "training part of the time split (val_fraction 0.2, gap 10)"}, **params}
    metrics = {"int8": int8, "fp32": fp32, "pixel_accuracy_loss_pt": loss,
               "mean_iou_loss_pt": round(100 * (fp32["mean_iou"] - int8["mean_iou"]), 3),
               "evaluated_on": f"validation part {val_names[0]}..{val_names[-1]} ({len(val_names)} frames), "
                               "labels at native resolution, predictions resized back (nearest)"}
    return card.replace(name=name or f"{card.name}-int8",
                        description=f"int8 (NNCF) of {card.name} {source_key.short}: {card.description}",
                        algorithm=f"{card.algorithm}, int8 QDQ (NNCF post-training quantisation)",
                        created=t, modified=t,
                        training_params={**dict(card.training_params), "quantization": q},
                        metrics=metrics)


def main(a) -> int:
    from .data import FolderData, find_pairs, read_label
    t0 = time.time()
    key = model_store.verify(a.blob)
    card, onnx_bytes = model_store.load(a.blob, expected_key=key)
    size = tuple(card.input_size)
    pairs = find_pairs(a.data)
    cal, va = calibration_indices(len(pairs), a.calib)
    if a.val_limit:
        va = va[:: max(1, len(va) // a.val_limit)][: a.val_limit]
    calib = _frames(pairs, cal, size)
    t1 = time.time()
    q = quantize_onnx(onnx_bytes, calib, fast_bias_correction=not a.slow_bias_correction)
    qs = time.time() - t1
    from .data import read_image
    val = FolderData(np.stack([read_image(pairs[i][0]) for i in va]), np.stack([read_label(pairs[i][1]) for i in va]),
                     [pairs[i][0].stem for i in va])
    fp32 = _evaluate(onnx_bytes, val, size)
    int8 = _evaluate(q, val, size)
    loss = 100 * (fp32["pixel_accuracy"] - int8["pixel_accuracy"])
    print(f"fp32: pixel accuracy {fp32['pixel_accuracy']:.4f}, mIoU {fp32['mean_iou']:.4f}; "
          f"int8: {int8['pixel_accuracy']:.4f}, mIoU {int8['mean_iou']:.4f} ({loss:+.2f} pt loss) "
          f"on {len(va)} validation frames ({fp32['runtime']}); quantised in {qs:.0f} s on {len(cal)} frames; "
          f"{len(onnx_bytes)} -> {len(q)} bytes of ONNX")
    if loss > a.max_loss:
        print(f"error: int8 loses {loss:.2f} pt of pixel accuracy, more than --max-loss {a.max_loss}: "
              f"not written (more --calib frames, or keep fp32)")
        return 1
    c8 = int8_card(card, source_key=key, calib_names=[pairs[i][0].stem for i in cal],
                   val_names=val.names, fp32=fp32, int8=int8, name=a.name,
                   params={"calibration_frames_requested": a.calib, "quantise_seconds": round(qs, 1),
                           "fast_bias_correction": not a.slow_bias_correction,
                           "nncf": __import__("nncf").__version__})
    check_graph(c8, q, a.output)
    new_key = model_store.write(a.output, q, c8)
    print(f"wrote {a.output} ({Path(a.output).stat().st_size} bytes), key {new_key} "
          f"(register it: {shell_command('python', '-m', 'chain', 'register', a.output)}); "
          f"{time.time() - t0:.0f} s in all")
    return 0


def add_parser(sub) -> None:
    q = sub.add_parser("quantize", help="int8 (NNCF) of a blob into a separate blob with its own card")
    q.add_argument("blob", help="the fp32 .vsb (verified first)")
    q.add_argument("--data", default="../shared/data/carla", help="folder with images/ + labels/")
    q.add_argument("--calib", type=int, default=100, help="calibration frames from the training part")
    q.add_argument("--val-limit", type=int, default=0, help="evaluate on this many validation frames (0: all)")
    q.add_argument("--max-loss", type=float, default=0.5, help="most pixel-accuracy points int8 may lose")
    q.add_argument("--slow-bias-correction", action="store_true", help="NNCF's full bias correction")
    q.add_argument("--name", default="", help="card name (default: <name>-int8)")
    q.add_argument("-o", "--output", required=True)
