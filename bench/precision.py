"""Each backend at each precision it runs here: FPS side by side and agreement with ONNX Runtime fp32.

    python -m bench precision [--blob models/carla-enet.vsb --blob models/carla-enet-int8.vsb]
                              [--rounds 5] [--seconds 2.5] [--threads 1] [--frames 8]

For each blob, every (backend, precision) the flow would accept on this CPU is compiled with the
flow's own ``compile_verified`` (ONNX Runtime CPU: the card's precision; OpenVINO CPU: fp32, and
bf16 / fp16 where ``OPTIMIZATION_CAPABILITIES`` lists them), then run in turn, ``--rounds``
times each, for ``--seconds`` of wall time each, one frame a run, so a drift of a shared machine
falls on all of them. Reports the median frames a second, the ratio to ONNX Runtime fp32 of the
same blob, and the share of pixels whose class equals ONNX Runtime fp32's on ``--frames`` frames
spread over the sample clip (the default flow's). Writes bench/results/precision.json (or ``--out``)
with the load average before and after: others may share the machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from ._table import markdown
from .machine import save

REPO = Path(__file__).resolve().parents[1]


def _clip_frames(card, n: int) -> np.ndarray:
    """``n`` frames spread over the sample clip, prepared by the flow's own preprocessor."""
    import cv2
    from operators.config import default_sample_clip
    from operators.frames import Frame
    from operators.preprocess import Preprocessor
    pre = Preprocessor.for_card(card)
    cap = cv2.VideoCapture(str(default_sample_clip()))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or n
    frames = []
    for i in np.linspace(0, total - 1, n).astype(int):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
        ok, img = cap.read()
        if ok:
            frames.append(pre(Frame("s", int(i), 0.0, "", img)).image)
    return np.stack(frames)[:, None]


def _rows() -> list:
    """(backend, precision) pairs this CPU runs."""
    rows = [("onnxruntime", "card")]
    try:
        import openvino as ov
    except ImportError:
        return rows
    caps = {str(c).upper() for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")}
    return rows + [("openvino", "fp32")] + [("openvino", p) for p in ("bf16", "fp16") if p.upper() in caps]


def main(argv: list[str]) -> int:
    import model_store
    from operators.backends import compile_verified
    ap = argparse.ArgumentParser(prog="python -m bench precision", description=__doc__.split("\n\n")[0])
    ap.add_argument("--blob", action="append", default=None, help="a .vsb (repeatable; default: both shipped)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--out", default="precision")
    ap.add_argument("--results", default=None, help="folder for the JSON (default bench/results)")
    a = ap.parse_args(argv)
    blobs = a.blob or [str(REPO / "models" / "carla-enet.vsb"), str(REPO / "models" / "carla-enet-int8.vsb")]
    load_before = os.getloadavg()
    runners, agree, frames = {}, {}, {}
    for blob in blobs:
        name = Path(blob).name
        key = model_store.verify(blob)
        card, onnx = model_store.load(blob, key)
        x = frames[name] = _clip_frames(card, a.frames)
        ref = None
        for backend, precision in _rows():
            r, _ = compile_verified(onnx, key=key, backend=backend, providers="cpu", threads=a.threads,
                                    hint="latency", ov_device="CPU", precision=precision)
            label = f"{name}, {r.profile.backend} {r.profile.precision}"
            got = np.concatenate([r.run(f) for f in x])
            ref = got if ref is None else ref      # ONNX Runtime fp32 comes first
            agree[label] = round(float((got == ref).mean()), 8)
            runners[label] = (name, r)
    fps: dict = {k: [] for k in runners}
    for _ in range(a.rounds):
        for label, (name, r) in runners.items():
            x, n, t = frames[name], 0, time.perf_counter()
            while time.perf_counter() - t < a.seconds:
                r.run(x[n % len(x)])
                n += 1
            fps[label].append(round(n / (time.perf_counter() - t), 2))
    med = {k: statistics.median(v) for k, v in fps.items()}
    base = {name: med[label] for label, (name, r) in runners.items() if r.profile.backend == "onnxruntime"}
    ratio = {k: round(med[k] / base[name], 3) for k, (name, _) in runners.items()}
    rows = [[k, " ".join(f"{v:.1f}" for v in fps[k]), f"{med[k]:.1f}", f"{ratio[k]:.2f}x",
             f"{100 * agree[k]:.4f} %"] for k in runners]
    print("\n".join(markdown(["blob, backend precision", f"FPS, {a.rounds} alternated rounds", "median",
                              "vs ORT fp32", "pixels = ORT fp32"], rows)))
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (others share the machine)")
    path = save(a.out, {"threads": a.threads, "rounds": a.rounds, "seconds": a.seconds, "frames": a.frames,
                        "profiles": {k: r.profile.as_dict() for k, (_, r) in runners.items()},
                        "fps": fps, "median_fps": med, "ratio_to_ort_fp32": ratio, "same_class_as_ort_fp32": agree,
                        "loadavg_before": load_before, "loadavg_after": load_after}, a.results)
    for _, r in runners.values():
        r.close()
    print(path)
    return 0
