"""One lent-GPU session in one command: CUDA inference figures, then a batch of training runs
side by side, then (optionally) a batch of fine-tunes that start from those runs' weights.

    python3 bench/gpu_session.py --data DIR --onnx MODEL.onnx --out OUT [--minutes M]
    python3 bench/gpu_session.py --data DIR --out OUT --skip-inference --jobs rcm-f1-s0 rcm-f2-s0 \
        --epochs 85 --finetunes cond60-f1 cond60-f2 --finetune-epochs 31 --deadline-minutes 9

The machine is lent for minutes, not hours, so everything is sized to end by a deadline:
the training runs share the GPU and use ``--minutes`` (a cosine schedule fitted to the wall
clock), so each one finishes its schedule however busy the machine turns out to be, and all
of them see the same conditions.  A run that dies in its first minute stops the whole batch
at once, so a rerun still fits the lease.  What comes back is small: the environment, the
inference timings (JSON), and two tars of every run's log, metrics and EMA weights (last and best).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

RECIPE = ["--size", "384", "--batch", "8", "--lr", "2e-3", "--weight-decay", "1e-2", "--weight-c", "1.50",
          "--scale", "0.5", "1.5", "--ema", "0.99", "--val-every", "4", "--load-size", "512",
          "--variant", "relu", "--rare-crops", "0.5", "--class-mix", "0.5"]

# name -> extra arguments on top of the shipped recipe (docs/trainer.md).  This batch: more
# seeds of the recipe on both folds (the CPU gave seed 0 of each), and one seed each of three
# changes aimed at fold 1's generalisation.  Earlier batches are in bench/results/.
F2 = ["--val-at", "start"]
JOBS = {
    "rcm-f1-s1": ["--seed", "1"],
    "rcm-f1-s2": ["--seed", "2"],
    "rcm-f1-s3": ["--seed", "3"],
    "rcm-f2-s1": ["--seed", "1", *F2],
    "rcm-f2-s2": ["--seed", "2", *F2],
    "wide-f1-s1": ["--seed", "1", "--scale", "0.35", "2.0"],
    "wd5-f1-s1": ["--seed", "1", "--weight-decay", "5e-2"],
    "drop2-f1-s1": ["--seed", "1", "--dropout", "0.2"],
    # the lease's last minutes: more seeds of the recipe, four side by side
    "rcm-f1-s4": ["--seed", "4"],
    "rcm-f1-s5": ["--seed", "5"],
    "rcm-f2-s3": ["--seed", "3", *F2],
    "rcm-f2-s4": ["--seed", "4", *F2],
    # the final fit (every frame, no validation), as shipped
    "rcm-all-s0": ["--seed", "0", "--val-fraction", "0"],
    # seed 0 of each fold, the base of the fold fine-tunes below
    "rcm-f1-s0": ["--seed", "0"],
    "rcm-f2-s0": ["--seed", "0", *F2],
}

# The second stage of the shipped recipe (docs/trainer.md, "Robustness"): a fine-tune from a
# first-stage run's last EMA weights (a job name above) or from a checkpoint path, with
# training conditions.  name -> (init, extra arguments).  They measure the clean two-fold
# mean of this recipe at full length, and whether a smaller conditions share or the
# Jensen-Shannon consistency term (recipe (c)) keeps more clean accuracy.
FINETUNE = ["--lr", "1e-3", "--seed", "0"]
# the base final fit (key ff104ca3...) that the shipped blob was tuned from: `git show
# 748f49b:models/carla-enet.ckpt.pt`, carried beside the data (the repo now holds the fine-tune)
SHIPPED_BASE = ".dev/base-ff104ca3.pt"
COND_C = ["--conditions", "0.8", "--consistency", "2.0"]
COND_GEO = ["--conditions", "0.6", "--geometry", "0.5"]
LOVASZ = ["--lovasz", "0.5"]
FINETUNES = {
    "cond60-f1": ("rcm-f1-s0", ["--conditions", "0.6"]),
    "cond60-f2": ("rcm-f2-s0", ["--conditions", "0.6", *F2]),
    "cond35-f1": ("rcm-f1-s0", ["--conditions", "0.35"]),
    "cond35-f2": ("rcm-f2-s0", ["--conditions", "0.35", *F2]),
    "cons-f1": ("rcm-f1-s0", COND_C),
    "cons-f2": ("rcm-f2-s0", [*COND_C, *F2]),
    # final fits (every frame) from the shipped base, candidates to ship
    "cond35-all": (SHIPPED_BASE, ["--conditions", "0.35", "--val-fraction", "0"]),
    "cons-all": (SHIPPED_BASE, [*COND_C, "--val-fraction", "0"]),
    # a second seed of the fold fine-tunes (the bases' weights placed in --work beforehand)
    "cond35-f1-s1": ("rcm-f1-s0", ["--conditions", "0.35", "--seed", "1"]),
    "cond35-f2-s1": ("rcm-f2-s0", ["--conditions", "0.35", "--seed", "1", *F2]),
    "cond60-f1-s1": ("rcm-f1-s0", ["--conditions", "0.6", "--seed", "1"]),
    "cond60-f2-s1": ("rcm-f2-s0", ["--conditions", "0.6", "--seed", "1", *F2]),
    "cond60-all": (SHIPPED_BASE, ["--conditions", "0.6", "--val-fraction", "0"]),
    # other cameras (trainer.geometry) and the Lovász loss in the second stage, per fold and
    # as final fits: what the reduced-budget CPU comparison (robustness_stage2_geometry.json)
    # leaves to measure at full length
    "geo-f1": ("rcm-f1-s0", [*COND_GEO]),
    "geo-f2": ("rcm-f2-s0", [*COND_GEO, *F2]),
    "geolov-f1": ("rcm-f1-s0", [*COND_GEO, *LOVASZ]),
    "geolov-f2": ("rcm-f2-s0", [*COND_GEO, *LOVASZ, *F2]),
    "geo-all": (SHIPPED_BASE, [*COND_GEO, "--val-fraction", "0"]),
    "geolov-all": (SHIPPED_BASE, [*COND_GEO, *LOVASZ, "--val-fraction", "0"]),
}
DEFAULT_JOBS = ["rcm-f1-s1", "rcm-f1-s2", "rcm-f1-s3", "rcm-f2-s1", "rcm-f2-s2", "wide-f1-s1", "wd5-f1-s1",
                "drop2-f1-s1"]


def environment() -> dict:
    import torch
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "cpus": os.cpu_count()}
    try:
        import onnxruntime as ort
        env.update(onnxruntime=ort.__version__, ort_providers=ort.get_available_providers())
    except ImportError as e:
        env["onnxruntime"] = f"missing: {e}"
    try:
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                            "--format=csv,noheader"], capture_output=True, text=True,
                                           timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        env["nvidia_smi"] = str(e)
    return env


def _time_cuda(fn, iters: int) -> float:
    """Mean milliseconds per call, by CUDA events after a warm-up."""
    import torch
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / iters


def inference_figures() -> list[dict]:
    """ENet at 512x512, uint8 NHWC in, uint8 class map out (the deployed graph's contract),
    in PyTorch on the GPU: fp32 and fp16 autocast, each eager and replayed as a CUDA graph."""
    import torch
    from trainer.enet import ENet
    from trainer.train import to_tensor
    rows = []

    def record(variant, batch, mode, fn, iters):
        try:
            ms = _time_cuda(fn, iters)
            rows.append({"variant": variant, "batch": batch, "mode": mode, "ms": round(ms, 3),
                         "fps": round(batch * 1000 / ms, 1)})
        except Exception as e:          # one mode failing must not lose the others
            rows.append({"variant": variant, "batch": batch, "mode": mode, "error": repr(e)})
        print(rows[-1], flush=True)

    for variant in ("relu", "prelu"):
        model = ENet(13, variant=variant).cuda().eval().to(memory_format=torch.channels_last)
        for batch in (1, 8):
            x = torch.randint(0, 256, (batch, 512, 512, 3), dtype=torch.uint8, device="cuda")

            def step(half: bool, cache: bool = True):
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=half,
                                                     cache_enabled=cache):
                    return model(to_tensor(x).contiguous(memory_format=torch.channels_last)).argmax(1).to(torch.uint8)
            for mode, half in (("fp32", False), ("fp16", True)):
                record(variant, batch, mode, lambda: step(half), 50)
            for mode, half in (("fp32 CUDA graph", False), ("fp16 CUDA graph", True)):
                try:
                    graph = torch.cuda.CUDAGraph()
                    s = torch.cuda.Stream()
                    s.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(s):
                        for _ in range(3):
                            step(half, cache=False)
                    torch.cuda.current_stream().wait_stream(s)
                    with torch.cuda.graph(graph):
                        step(half, cache=False)
                    record(variant, batch, mode, graph.replay, 100)
                except Exception as e:
                    rows.append({"variant": variant, "batch": batch, "mode": mode, "error": repr(e)})
    return rows


def ort_cpu_figures(onnx_path: str) -> list[dict]:
    """The shipped ONNX graph through this machine's onnxruntime (CPU), for scale."""
    import numpy as np
    import onnxruntime as ort
    x = np.random.default_rng(0).integers(0, 256, (1, 512, 512, 3), dtype=np.uint8)
    rows = []
    for threads in (2, 16):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for _ in range(5):
            sess.run(None, {name: x})
        t = time.perf_counter()
        n = 30
        for _ in range(n):
            sess.run(None, {name: x})
        ms = (time.perf_counter() - t) / n * 1000
        rows.append({"provider": "CPU", "threads": threads, "ms": round(ms, 2), "fps": round(1000 / ms, 1)})
    return rows


def train_batch(data: str, work: Path, runs_args: dict[str, list[str]], workers: int, device: str,
                extra: list[str], deadline: float) -> dict:
    """Run ``python -m trainer train`` once per entry of ``runs_args`` side by side; kill what
    is still running at ``deadline`` (time.time()) so that the lease ends with results."""
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, args in runs_args.items():
        log = open(runs / f"{name}.log", "w")
        cmd = [sys.executable, "-m", "trainer", "train", "--data", data, "--out", str(runs / name), *RECIPE,
               *args, "--device", device, "--workers", str(workers), "--threads", "1", "--no-progress", *extra]
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
    t0 = time.time()
    status = {}
    while procs:
        time.sleep(2)
        for name, (p, log) in list(procs.items()):
            rc = p.poll()
            if rc is None:
                continue
            log.close()
            status[name] = {"rc": rc, "wall_s": round(time.time() - t0, 1)}
            del procs[name]
            if rc != 0 and time.time() - t0 < 90:      # broken, not unlucky: stop now, keep the lease
                print(f"{name} failed early (rc {rc}); stopping the batch", flush=True)
                print((runs / f"{name}.log").read_text()[-3000:], flush=True)
                for q, lg in procs.values():
                    q.kill()
                    lg.close()
                for other in procs:
                    status[other] = {"rc": "killed"}
                procs.clear()
                break
        if procs and time.time() > deadline:
            for name, (q, lg) in procs.items():
                q.kill()
                lg.close()
                status[name] = {"rc": "overran"}
            procs.clear()
    return status


def budget(epochs: int | None, minutes: float) -> list[str]:
    """A run's length: ``--epochs`` (a step-based schedule, the recipe's own length) with
    ``--minutes`` as a stop so it cannot outlive the lease, or the wall clock alone."""
    return ["--epochs", str(epochs), "--minutes", str(minutes)] if epochs else ["--minutes", str(minutes)]


def init_path(name: str, work: Path) -> Path:
    """The weights fine-tune ``name`` starts from: a first-stage run's last EMA weights (run
    in this session, or placed in ``work`` beforehand) or a checkpoint path."""
    init = FINETUNES[name][0]
    return work / "runs" / init / "last.pt" if init in JOBS else Path(init)


def finetune_args(name: str, work: Path, epochs: int | None, minutes: float) -> list[str]:
    return [*FINETUNE, *FINETUNES[name][1], "--init", str(init_path(name, work)), *budget(epochs, minutes)]


def pack_runs(work: Path, out: Path) -> None:
    """Two tars: runs.tar.gz (logs, metrics, configs and each run's last EMA weights, the
    held-out estimate) and best.tar.gz (the EMA weights chosen on validation), without the
    optimizer state, each under the 16 MiB a file that comes back may weigh."""
    import torch
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar, tarfile.open(out / "best.tar.gz", "w:gz") as best:
        for run in sorted((work / "runs").iterdir()):
            if run.suffix == ".log":
                tar.add(run, arcname=f"runs/{run.name}")
                continue
            for f in ("metrics.jsonl", "summary.json", "config.json"):
                if (run / f).exists():
                    tar.add(run / f, arcname=f"runs/{run.name}/{f}")
            for ck_name, into in (("last.pt", tar), ("best.pt", best)):
                if not (run / ck_name).exists():
                    continue
                ck = torch.load(run / ck_name, map_location="cpu", weights_only=False)
                ck.pop("optimizer", None)
                if ck.get("ema") is not None:
                    ck["model"] = ck["ema"]      # the weights that are evaluated and exported
                b = io.BytesIO()
                torch.save(ck, b)
                info = tarfile.TarInfo(f"runs/{run.name}/{ck_name}")
                info.size = b.tell()
                b.seek(0)
                into.addfile(info, b)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--onnx")
    ap.add_argument("--out", required=True, help="what comes back: a JSON and two tars")
    ap.add_argument("--work", default="/tmp/gpu_session", help="the runs' own folders")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--minutes", type=float, default=5.0, help="each first-stage run's wall-clock budget")
    ap.add_argument("--epochs", type=int, help="first-stage runs take this many epochs (--minutes stops them)")
    ap.add_argument("--finetunes", nargs="*", default=[], choices=list(FINETUNES),
                    help="second-stage runs, started once every --jobs run has ended")
    ap.add_argument("--finetune-epochs", type=int)
    ap.add_argument("--finetune-minutes", type=float, default=4.0)
    ap.add_argument("--finetune-workers", type=int)
    ap.add_argument("--deadline-minutes", type=float,
                    help="from the start: runs still going are killed then (default: stage budgets + 2 min each)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--jobs", nargs="*", default=DEFAULT_JOBS, choices=list(JOBS))
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--extra", default="", help="arguments appended to every run (a smoke test's small sizes)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"environment": environment()}
    print(json.dumps(result["environment"]), flush=True)
    if not a.skip_inference:
        try:
            result["torch_cuda_inference_512"] = inference_figures()
        except Exception as e:           # figures, not the batch: record and go on
            result["torch_cuda_inference_512"] = f"failed: {e!r}"
        if a.onnx:
            try:
                result["ort_cpu_inference_512"] = ort_cpu_figures(a.onnx)
            except Exception as e:       # a figure for scale only: never worth the batch
                result["ort_cpu_inference_512"] = f"failed: {e!r}"
        (out / "gpu_session.json").write_text(json.dumps(result, indent=1))
    if not a.jobs and not a.finetunes:
        return 0
    t = time.time()
    deadline = t + 60 * (a.deadline_minutes or (a.minutes + 2 + (a.finetune_minutes + 2) * bool(a.finetunes)))
    work, extra = Path(a.work), a.extra.split()
    status = train_batch(a.data, work, {n: [*JOBS[n], *budget(a.epochs, a.minutes)] for n in a.jobs},
                         a.workers, a.device, extra, deadline)
    result["training"] = {"minutes": a.minutes, "epochs": a.epochs, "workers": a.workers, "recipe": RECIPE,
                          "jobs": {n: JOBS[n] for n in a.jobs}, "status": status,
                          "wall_s": round(time.time() - t, 1)}
    (out / "gpu_session.json").write_text(json.dumps(result, indent=1))
    ready = [n for n in a.finetunes if init_path(n, work).exists() and status.get(FINETUNES[n][0], {}).get("rc", 0) == 0]
    if ready:
        t2 = time.time()
        # what is left of the lease, less a minute to pack, caps each fine-tune's clock
        minutes = max(0.5, min(a.finetune_minutes, (deadline - t2 - 60) / 60))
        status2 = train_batch(a.data, work,
                              {n: finetune_args(n, work, a.finetune_epochs, minutes) for n in ready},
                              a.finetune_workers or a.workers, a.device, extra, deadline)
        result["finetuning"] = {"epochs": a.finetune_epochs, "minutes": round(minutes, 2), "common": FINETUNE,
                                "runs": {n: {"init": FINETUNES[n][0], "args": FINETUNES[n][1]} for n in ready},
                                "skipped": [n for n in a.finetunes if n not in ready],
                                "status": status2, "wall_s": round(time.time() - t2, 1)}
        status = {**status, **status2}
        (out / "gpu_session.json").write_text(json.dumps(result, indent=1))
    pack_runs(Path(a.work), out)
    print(json.dumps(status), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
