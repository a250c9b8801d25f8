"""One lent-GPU session in one command: CUDA inference figures, then a batch of training runs
side by side.

    python3 bench/gpu_session.py --data DIR --onnx MODEL.onnx --out OUT [--minutes M]

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


def train_batch(data: str, work: Path, minutes: float, workers: int, names: list[str], device: str,
                extra: list[str]) -> dict:
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name in names:
        log = open(runs / f"{name}.log", "w")
        cmd = [sys.executable, "-m", "trainer", "train", "--data", data, "--out", str(runs / name), *RECIPE,
               *JOBS[name], "--minutes", str(minutes), "--device", device, "--workers", str(workers),
               "--threads", "1", "--no-progress", *extra]
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
        if procs and time.time() - t0 > minutes * 60 + 120:
            for name, (q, lg) in procs.items():
                q.kill()
                lg.close()
                status[name] = {"rc": "overran"}
            procs.clear()
    return status


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
    ap.add_argument("--minutes", type=float, default=5.0)
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
    if not a.jobs:
        return 0
    t = time.time()
    status = train_batch(a.data, Path(a.work), a.minutes, a.workers, a.jobs, a.device, a.extra.split())
    result["training"] = {"minutes": a.minutes, "workers": a.workers, "recipe": RECIPE,
                          "jobs": {n: JOBS[n] for n in a.jobs}, "status": status,
                          "wall_s": round(time.time() - t, 1)}
    (out / "gpu_session.json").write_text(json.dumps(result, indent=1))
    pack_runs(Path(a.work), out)
    print(json.dumps(status), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
