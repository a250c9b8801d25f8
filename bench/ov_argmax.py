"""OpenVINO's class arg-max as read against moved to the innermost axis, alternated in one run.

    python -m bench ov_argmax [--blob models/carla-enet.vsb --blob models/carla-enet-int8.vsb]
                              [--rounds 5] [--seconds 2.5] [--threads 1] [--frames 40]

For each blob, both graphs (``operators.backends.ov_graph.argmax_innermost`` off and on) are
compiled for the CPU with one stream of ``--threads`` threads; the models are then run in turn,
``--rounds`` times each, for ``--seconds`` of process CPU each, on CARLA frames (or the sample
clip's) at the model's size, so a drift of a shared machine falls on all of them. Reports the
median CPU ms a frame, the share of pixels where both graphs agree, and OpenVINO's per-node-type
profile (``PERF_COUNT``) of each graph. Writes bench/results/ov_argmax.json (or ``--out``).
"""
from __future__ import annotations

import argparse
import collections
import statistics
import time
from pathlib import Path

import numpy as np

from ._table import markdown
from .machine import save

REPO = Path(__file__).resolve().parents[1]


def _frames(n: int, size) -> np.ndarray:
    """``n`` frames, resized and colour-converted by the flow's own preprocessor."""
    import cv2
    from bench._perf.inputs import carla_dir
    from operators.frames import Frame
    from operators.preprocess import Preprocessor
    d = carla_dir()
    if d is not None:
        paths = sorted((Path(d) / "images").iterdir())
        imgs = [cv2.imread(str(p)) for p in paths[:: max(1, len(paths) // n)][:n]]
    else:
        cap, imgs = cv2.VideoCapture(str(REPO / "models" / "sample.avi")), []
        while len(imgs) < n:
            ok, img = cap.read()
            if not ok:
                break
            imgs.append(img)
    pre = Preprocessor(tuple(size), "RGB")
    return np.stack([pre(Frame("s", i, 0.0, "", im)).image for i, im in enumerate(imgs)])[:, None]


def _compile(core, onnx: bytes, rewrite: bool, threads: int, profile: bool):
    from operators.backends.ov_graph import argmax_innermost
    model = core.read_model(onnx)
    shape = model.inputs[0].get_partial_shape()
    if shape[0].is_dynamic:
        model.reshape([1, *[d.get_length() for d in list(shape)[1:]]])
    moved = argmax_innermost(model) if rewrite else 0
    cfg = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "CACHE_DIR": ""}
    if profile:
        cfg["PERF_COUNT"] = "YES"
    req = core.compile_model(model, "CPU", cfg).create_infer_request()
    return req, moved


def _run(req, x):
    req.infer({0: x})
    return np.array(req.get_output_tensor(0).data, copy=True)


def _profile(req, x) -> dict:
    for _ in range(5):
        req.infer({0: x})
    agg: dict = collections.defaultdict(float)
    for p in req.profiling_info:
        agg[p.node_type] += p.real_time.total_seconds() * 1e3
    return {k: round(v, 2) for k, v in sorted(agg.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def main(argv: list[str]) -> int:
    import openvino as ov
    import model_store
    ap = argparse.ArgumentParser(prog="python -m bench ov_argmax", description=__doc__.split("\n\n")[0])
    ap.add_argument("--blob", action="append", default=None, help="a .vsb (repeatable; default: both shipped)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--out", default="ov_argmax")
    ap.add_argument("--results", default=None, help="folder for the JSON (default bench/results)")
    a = ap.parse_args(argv)
    blobs = a.blob or [str(REPO / "models" / "carla-enet.vsb"), str(REPO / "models" / "carla-enet-int8.vsb")]
    core = ov.Core()
    runs, agree, profiles, frames = {}, {}, {}, None
    for blob in blobs:
        card, onnx = model_store.load(blob, model_store.verify(blob))
        size = tuple(card.inputs[0].shape[1:3])
        frames = _frames(a.frames, size) if frames is None or frames.shape[2:4] != size else frames
        name = Path(blob).name
        outs = {}
        for rewrite in (False, True):
            label = f"{name}, {'arg-max innermost' if rewrite else 'as read'}"
            req, moved = _compile(core, onnx, rewrite, a.threads, profile=False)
            if rewrite and not moved:
                print(f"{name}: no channel arg-max to move: the two graphs are the same")
            runs[label] = (req, frames)
            outs[rewrite] = np.concatenate([_run(req, f) for f in frames])
            profiles[label] = _profile(_compile(core, onnx, rewrite, a.threads, profile=True)[0], frames[0])
        agree[name] = round(float((outs[False] == outs[True]).mean()), 8)
    cpu: dict = {k: [] for k in runs}
    for _ in range(a.rounds):
        for label, (req, fr) in runs.items():
            c, n = time.process_time(), 0
            while time.process_time() - c < a.seconds:
                req.infer({0: fr[n % len(fr)]})
                n += 1
            cpu[label].append(round((time.process_time() - c) * 1e3 / n, 2))
    med = {k: statistics.median(v) for k, v in cpu.items()}
    rows = [[k, " ".join(f"{x:.1f}" for x in cpu[k]), f"{med[k]:.1f}"] for k in cpu]
    print("\n".join(markdown(["model", f"CPU ms a frame, {a.rounds} alternated rounds", "median"], rows)))
    for name, v in agree.items():
        print(f"{name}: {100 * v:.6f} % of pixels the same class in both graphs")
    path = save(a.out, {"threads": a.threads, "rounds": a.rounds, "seconds": a.seconds,
                        "frames": int(len(frames)), "cpu_ms_per_frame": cpu, "median_cpu_ms": med,
                        "same_class": agree, "profile_ms": profiles}, a.results)
    print(path)
    return 0
