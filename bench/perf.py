"""Scoring speed: raw ONNX Runtime vs PyTorch eager vs the full Bytewax flow, same frames.

    python -m bench perf [--frames N] [--size 512] [--quick] [--skip-experiments]

One run, on the same decoded frames:

- **raw ORT**: the model's ONNX Runtime session on frames preloaded in memory (the
  model-only ceiling), batch 1 and micro-batch 4;
- **PyTorch eager**: what a user writes by hand (uint8 -> float, normalise, forward,
  argmax) on the same ENet architecture and variant, *random weights* (speed does not
  depend on them);
- **flow**: ``python -m bytewax.run dataflows.segment`` (decode + preprocess + score +
  every sink: masks, overlay video, JSON lines, anchoring) on the clip, 1 and 2 workers;
  its own ``summary.json`` gives the steady scoring rate and latencies;
- the backends (``bench/_backends.py``): raw ORT, raw OpenVINO with the LATENCY
  and THROUGHPUT hints, the NNCF int8 blob on both, the flow on each backend, the cost
  curve 256²/512²/1024² per backend and the flow's per-stage CPU budget
  (``--only-backends``: just these, with the decode and sink costs);
- the cost curve: raw ORT at 256², 512², 1024² (random-weight ENet exported at each
  size) and the flow with 1, 2, 4 streams;
- the experiments (ORT optimisation level, threads, execution mode, spinning, ReLU vs
  PReLU, int8 static QDQ, offline-optimised graph, flow settings).

Every measurement runs in its own subprocess so that its peak RSS (``os.wait4``) is its
own.  The machine's 1-minute load average is stored before and after each one, and the
processes that were competing for the CPU (a training run...) are named, so readers can
judge contamination.  Frames: the committed clip ``models/*.avi`` when there is one, else
the first N CARLA frames (``../shared/data/carla`` or ``VERISEG_CARLA_DIR``) resized and
written to an MJPG clip, else synthetic scenes.  Model: ``models/carla-enet.vsb`` (loaded
through model_store with its own key) when it exists, else a random-weight ENet (relu)
exported at the size.  Results: ``bench/results/perf.json`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ._perf.experiments import run_experiments
from ._perf.inputs import REPO, decode_frames, prepare_clip, prepare_model, register
from ._perf.measure import _timed_loop, child_main  # noqa: F401 - _timed_loop: the tests import it from here
from ._perf.report import tables
from ._perf.suite import Suite, _spawn, run_flow  # noqa: F401 - _spawn: as _timed_loop
from .machine import busy as _busy

PAPER = {"jetson_agx_xavier_fps": 21.0, "jetson_tx2_fps": 10.0,
         "note": "paper (Wang et al.), full pipeline on the Jetsons, 512x512"}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=200, help="frames per measurement (default 200)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seconds", type=float, default=6.0, help="minimum seconds per raw measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--providers", default="cpu",
                   help="cpu | auto | cuda | tensorrt: VERISEG_PROVIDERS of the flow and the raw ORT "
                        "providers (default cpu; on a GPU machine run again with auto)")
    p.add_argument("--quick", action="store_true", help="a smoke run: few frames, 1 s each, no extras")
    p.add_argument("--skip-experiments", action="store_true")
    p.add_argument("--skip-curve", action="store_true")
    p.add_argument("--skip-backends", action="store_true", help="no OpenVINO / int8 / per-backend rows")
    p.add_argument("--only-backends", action="store_true",
                   help="the backend rows, the decode and sink costs only (bench/run_backends.sh's figures, ~6 min)")
    p.add_argument("--calib", type=int, default=50, help="CARLA frames for int8 calibration")
    p.add_argument("--int8-blob", help="benchmark this int8 blob (python -m trainer quantize) instead of "
                                       "quantising the model here")
    p.add_argument("--out", default="perf", help="results name under bench/results (default perf)")
    p.add_argument("--work", help="keep the work folder here (default: a temporary one)")
    p.add_argument("--results", help="folder for the JSON (default bench/results)")
    p.add_argument("--random-model", action="store_true",
                   help="a random-weight ENet relu even when models/carla-enet.vsb exists")
    p.add_argument("--table", metavar="JSON", help="print the markdown tables of a results file and exit")
    p.add_argument("--part", help="with --table: main | backends | curve | experiments | int8 | profile | sinks")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.int8_blob:   # the flow rows run in a work folder: a relative path would not resolve there
        a.int8_blob = str(Path(a.int8_blob).resolve())
    if a.child:
        return child_main(a.child)
    if a.table:
        print(tables(json.loads(Path(a.table).read_text()), a.part))
        return 0
    if a.quick:
        a.frames, a.seconds = min(a.frames, 8), min(a.seconds, 1.0)
    sys.path.insert(0, str(REPO))
    tmp = None
    if a.work:
        work = Path(a.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="veriseg-perf-")
        work = Path(tmp.name)
    load0 = os.getloadavg()
    busy0 = _busy()
    t_start = time.time()
    print(f"work folder {work}; load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}"
          + (f"; busy: {'; '.join(busy0)}" if busy0 else ""), flush=True)
    s = Suite(a, work)
    size = a.size
    clip, clip_what = prepare_clip(work, size, max(a.frames, 8))
    frames, clip_len = decode_frames(clip, size, a.frames)
    clip_what += f", {clip_len} frames" + (f" (looped to {a.frames})" if clip_len < a.frames else "")
    fpath = work / "frames.npy"
    np.save(fpath, frames)
    model = prepare_model(work, size, a.random_model)
    register(work / "home", model["blob"], model["key"])
    from trainer.optimize import batchnorm_nodes, op_counts
    onnx_bytes = model["onnx"].read_bytes()
    print(f"frames: {len(frames)} x {size}x{size} from {clip_what}\nmodel: {model['what']} (key {model['key'][:16]}…)",
          flush=True)
    base = {"kind": "ort", "model": str(model["onnx"]), "frames": str(fpath), "seconds": a.seconds,
            "min_frames": min(len(frames), 40),
            # the flow's own session settings (operators/score.py): all optimisations,
            # sequential, intra-op threads = cores, spinning off
            "ort": {"level": "all", "intra": a.threads, "inter": 1, "spin": 0}}
    if a.providers != "cpu":   # the same providers as the flow (CUDA / TensorRT fp16 when present)
        from operators.sessions import providers_for
        base["ort"]["providers"] = providers_for(a.providers)
    R: dict = {"inputs": {"frames": len(frames), "size": size, "clip": clip_what, "model": model["what"],
                          "model_key": model["key"], "variant": model["variant"],
                          "batchnorm_nodes_in_export": batchnorm_nodes(onnx_bytes),
                          "ops": op_counts(onnx_bytes)},
               "paper": PAPER}

    if a.only_backends:
        return _only_backends(a, s, R, base, model, clip, fpath, work, frames, load0, busy0, t_start, argv, tmp)
    print("== main table", flush=True)
    main_rows = {}
    main_rows["ort_b1"] = s.child(base, f"raw ORT {size}² batch 1")
    main_rows["ort_b4"] = s.child(dict(base, batch=4), f"raw ORT {size}² batch 4")
    main_rows["torch"] = s.child({"kind": "torch", "frames": str(fpath), "variant": model["variant"],
                                  "threads": a.threads, "seconds": a.seconds, "min_frames": min(len(frames), 20)},
                                 f"PyTorch eager {size}² batch 1 ({model['variant']}, random w.)")
    main_rows["decode"] = s.child({"kind": "decode", "clip": str(clip), "size": size}, "decode+preprocess only")
    if not a.quick:
        up = run_flow(s, model, clip, label="flow start-up only (1 frame)", frames=1)
        s.startup_cpu, s.startup_wall = up.get("cpu_s"), up.get("wall_s")
        main_rows["flow_startup"] = up
    main_rows["flow_w1"] = run_flow(s, model, clip, label="flow 1 worker", frames=a.frames)
    main_rows["flow_w2"] = run_flow(s, model, clip, label="flow 2 workers", workers=2, frames=a.frames)
    ort1 = main_rows["ort_b1"].get("fps") or 0
    ort4 = main_rows["ort_b4"].get("fps") or 0
    for k in ("flow_w1", "flow_w2"):
        f = main_rows[k].get("fps")
        if f and ort1:
            main_rows[k]["ratio_vs_ort_b1"] = round(f / ort1, 3)
            main_rows[k]["ratio_vs_ort_b4"] = round(f / ort4, 3) if ort4 else None
    R["main"] = main_rows

    if not a.skip_backends:
        print("== backends", flush=True)
        from . import _backends
        R["backends"] = _backends.run_section(s, a, base, model, clip, fpath, work, frames)

    if not (a.skip_curve or a.quick):
        print("== cost curve", flush=True)
        from trainer.export import export_random
        curve = []
        for sz in (256, 512, 1024):
            mp = work / f"random{sz}.onnx"
            mp.write_bytes(export_random("relu", sz))
            fr = work / f"frames{sz}.npy"
            np.save(fr, np.stack([__import__("cv2").resize(f, (sz, sz)) for f in frames[:40]]))
            r = s.child(dict(base, model=str(mp), frames=str(fr), min_frames=20 if sz < 1024 else 8),
                        f"raw ORT {sz}² (random relu)")
            r["size"] = sz
            curve.append(r)
        R["curve_size"] = curve
        streams = []
        for k in (1, 2, 4):
            r = run_flow(s, model, clip, label=f"flow {k} stream(s), 1 worker", streams=k,
                         frames=max(8, a.frames // k))
            streams.append(r)
        r = run_flow(s, model, clip, label="flow 4 streams, 2 workers", streams=4, workers=2,
                     frames=max(8, a.frames // 4))
        streams.append(r)
        R["curve_streams"] = streams

    if not (a.skip_experiments or a.quick):
        run_experiments(s, a, R, base, model, clip, fpath, work, frames, clip_len)

    return _finish(a, R, load0, busy0, t_start, argv, tmp)


def _only_backends(a, s, R, base, model, clip, fpath, work, frames, load0, busy0, t_start, argv, tmp) -> int:
    """``--only-backends``: the backend rows, without the other experiments."""
    from . import _backends
    print("== decode and sink costs", flush=True)
    R["main"] = {"decode": s.child({"kind": "decode", "clip": str(clip), "size": a.size}, "decode+preprocess only")}
    R["sink_costs"] = s.child({"kind": "sinkcost", "frames": str(fpath), "clip": str(clip)}, "decoder/writer costs")
    print("== backends", flush=True)
    R["backends"] = _backends.run_section(s, a, base, model, clip, fpath, work, frames)
    return _finish(a, R, load0, busy0, t_start, argv, tmp)


def _finish(a, R, load0, busy0, t_start, argv, tmp) -> int:
    R["load_average_start"] = [round(x, 2) for x in load0]
    R["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    R["busy_at_start"] = busy0
    R["busy_at_end"] = _busy()
    R["duration_s"] = round(time.time() - t_start, 1)
    R["command"] = "python -m bench perf " + " ".join(argv)
    from .machine import save
    path = save(a.out, R, a.results)
    print(f"saved {path}\n")
    print(tables(json.loads(path.read_text())))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
