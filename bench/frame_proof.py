"""What the frame proof costs and what re-execution finds, on the sample clip.

    python -m bench frame_proof [--rounds 3] [--frames 300] [--env K=V ...]
    python -m bench frame_proof --rescore [--env K=V ...]

Cost (default): the main job on the sample clip looped to ``--frames`` frames, every default
sink on (masks, overlay video, JSON lines, anchors every 100 frames on a fresh embedded
chain), run in this process in four variants alternated per round (ABCD...): no frame
digest (v2 leaves: the flow's internal switch ``Config.frame_digest``, for this benchmark
only), the digest (v3 leaves, the default), keeping every 10th frame, keeping every frame.
Reports the median FPS of each, the digest's and a kept frame's own cost per frame, the mean
kept frame's size and the disk an hour of a 30 FPS camera of that resolution takes.

``--rescore``: the whole clip kept, anchored and re-scored frame by frame
(``chain.frame_proof.prove_and_rescore``) for the fp32 blob on the default backend, on ONNX Runtime and on OpenVINO in bf16 (asked
for: ``VERISEG_PRECISION=bf16``; a CPU without native bf16 refuses it) and for the int8 blob on the default backend and ONNX Runtime: pixels compared,
identical, within tolerance, mismatched, the largest score gap, and the time to re-score a
frame. Writes bench/results/frame_proof.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2

from .machine import save

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "models" / "sample.avi"
VARIANTS = {"no_digest": ("off", False), "digest": ("off", True), "keep_every_10": ("every:10", True),
            "keep_all": ("all", True)}
RESCORE_RUNS = {"fp32_default": ("carla-enet.vsb", {}),
                "fp32_onnxruntime": ("carla-enet.vsb", {"VERISEG_BACKEND": "onnxruntime"}),
                "fp32_openvino_bf16": ("carla-enet.vsb", {"VERISEG_BACKEND": "openvino",
                                                          "VERISEG_PRECISION": "bf16"}),
                "int8_default": ("carla-enet-int8.vsb", {}),
                "int8_onnxruntime": ("carla-enet-int8.vsb", {"VERISEG_BACKEND": "onnxruntime"})}


def _flow(work: Path, blob: Path, env_extra: dict, *, frames=None, keep="off", digest=True):
    """One run of the main job in this process: its output folder."""
    from bytewax.testing import run_main

    import chain
    import model_store
    from dataflows.segment import build_flow
    from operators.config import load_config
    reg = chain.connect(chain="embedded", home=work / "home")
    reg.register(model_store.verify(str(blob)), blob.stem, blob.as_uri())
    env = {"VERISEG_SOURCE": str(CLIP), "VERISEG_MODEL": str(blob), "VERISEG_OUT": str(work / "out"),
           "VERISEG_HOME": str(work / "home"), "VERISEG_PROGRESS": "0", "VERISEG_KEEP_FRAMES": keep,
           **env_extra}
    if frames:
        env.update(VERISEG_LOOP="1", VERISEG_MAX_FRAMES=str(frames))
    cfg = load_config(env).model_copy(update={"frame_digest": digest})
    run_main(build_flow(cfg))
    return work / "out"


def _unit_costs() -> dict:
    """The digest's and a kept frame's own cost per sample-clip frame (ms, median)."""
    from chain.frame_digest import frame_digest
    from chain.retained_frame import write_frame
    cap = cv2.VideoCapture(str(CLIP))
    frames = []
    while len(frames) < 30:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    digest, keep, size = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, f in enumerate(frames):
            t0 = time.perf_counter()
            frame_digest(f, "BGR")
            digest.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            p = write_frame(tmp, i, f, "BGR")
            keep.append(time.perf_counter() - t0)
            size.append(p.stat().st_size)
    h, w = frames[0].shape[:2]
    mean = statistics.mean(size)
    return {"frame": f"{w}x{h}", "digest_ms": round(statistics.median(digest) * 1e3, 3),
            "keep_frame_ms": round(statistics.median(keep) * 1e3, 2), "kept_frame_bytes": round(mean),
            "disk_gb_per_hour_30fps": {"all": round(mean * 30 * 3600 / 1e9, 1),
                                       "every_10": round(mean * 3 * 3600 / 1e9, 2)}}


def cost(a, extra: dict) -> dict:
    blob = REPO / "models" / extra.pop("VERISEG_MODEL", "carla-enet.vsb")
    runs: dict = {k: [] for k in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for name, (keep, digest) in VARIANTS.items():
                out = _flow(Path(tmp) / f"{name}-{r}", blob, extra, frames=a.frames, keep=keep, digest=digest)
                s = json.loads((out / "summary.json").read_text())
                kept = sorted((out / next(iter(s["frames_written"]))).glob("frames/*.vsf"))
                runs[name].append({"fps": s["fps"], "scored": s["scored"], "kept": len(kept),
                                   "kept_bytes": sum(p.stat().st_size for p in kept)})
                print(f"round {r + 1} {name}: {s['fps']} FPS, {len(kept)} frames kept", flush=True)
    med = {k: statistics.median(x["fps"] for x in v) for k, v in runs.items()}
    return {"frames": a.frames, "env": extra, "blob": blob.name, "runs": runs, "median_fps": med,
            "over_no_digest": {k: round(v / med["no_digest"], 4) for k, v in med.items()},
            "unit": _unit_costs()}


def rescore(a, extra: dict) -> dict:
    import chain
    from chain.frame_proof import prove_and_rescore
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (blob, env) in RESCORE_RUNS.items():
            out = _flow(Path(tmp) / name, REPO / "models" / blob, {**extra, **env, "VERISEG_VIDEO": "0",
                                                                   "VERISEG_ANCHOR_EVERY": "20"}, keep="all")
            reg = chain.connect(chain="embedded", home=Path(tmp) / name / "home")
            (sid,) = [p.name for p in (out / "anchors").iterdir()]
            results = out / sid / "results.jsonl"
            batches = sorted((out / "anchors" / sid).glob("*.json"))
            t = dict(frames=0, compared=0, identical=0, within_tolerance=0, mismatched=0, largest_gap=0.0)
            times = []
            for line in results.read_text().splitlines():
                seq = json.loads(line)["seq"]
                batch = next(b for b in batches if int(b.stem.split("-")[0]) <= seq <= int(b.stem.split("-")[1]))
                t0 = time.perf_counter()
                _, r = prove_and_rescore(lambda: reg, batch, sid, seq, result=results)
                times.append(time.perf_counter() - t0)
                t["frames"] += 1
                t["compared"] += r.compared
                t["identical"] += r.identical
                t["within_tolerance"] += r.within_tolerance
                t["mismatched"] += r.mismatched
                t["largest_gap"] = round(max(t["largest_gap"], r.max_gap), 4)
            t.update(profile=str(r.profile), tolerance=r.tolerance,
                     verify_and_rescore_s_median=round(statistics.median(times), 3))
            table[name] = t
            print(f"{name}: {t}", flush=True)
    return {"clip": CLIP.name, "env": extra, "rescore": table}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench frame_proof", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rescore", action="store_true", help="the whole-clip re-execution table instead")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--env", action="append", default=[], metavar="K=V")
    ap.add_argument("--out", default="frame_proof")
    a = ap.parse_args(argv)
    extra = dict(kv.split("=", 1) for kv in a.env)
    load = os.getloadavg()
    result = rescore(a, extra) if a.rescore else cost(a, extra)
    path = save(a.out, {"load_before": load, **result})
    print(f"{path}")
    return 0
