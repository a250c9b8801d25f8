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
- the backends (``bench/_backends.py``, issue 21): raw ORT, raw OpenVINO with the LATENCY
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ._table import cell as _f, markdown

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
PAPER = {"jetson_agx_xavier_fps": 21.0, "jetson_tx2_fps": 10.0,
         "note": "paper (Wang et al.), full pipeline on the Jetsons, 512x512"}


# =========================================================================== child side
def _pct(a, q):
    return round(float(np.percentile(np.asarray(a), q)), 2) if len(a) else None


def _ort_session(model_path: str, o: dict):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[o.get("level", "all")]
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if o.get("mode") == "parallel"
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    so.intra_op_num_threads = int(o.get("intra", 2))
    so.inter_op_num_threads = int(o.get("inter", 1))
    so.log_severity_level = 3
    if o.get("spin") is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", str(int(o["spin"])))
        so.add_session_config_entry("session.inter_op.allow_spinning", str(int(o["spin"])))
    provs = o.get("providers") or ["CPUExecutionProvider"]
    opts = [{"trt_fp16_enable": "True", "trt_engine_cache_enable": "True",
             "trt_engine_cache_path": o.get("trt_cache", "/tmp/veriseg-trt-cache")}
            if p == "TensorrtExecutionProvider" else {} for p in provs]
    t = time.perf_counter()
    sess = ort.InferenceSession(model_path, so, providers=provs, provider_options=opts)
    return sess, (time.perf_counter() - t) * 1e3


def _timed_loop(step, frames: np.ndarray, batch: int, seconds: float, min_frames: int):
    """Run ``step(x)`` over the frames in chunks of ``batch`` (cycling) for at least
    ``seconds`` and ``min_frames``; returns (fps, per-call latencies ms)."""
    n = len(frames)
    for i in range(3):                                           # warm-up (kernels, caches)
        i %= n
        step(frames[i:i + 1] if batch == 1 else np.stack([frames[(i + j) % n] for j in range(batch)]))
    chunks = [np.ascontiguousarray(frames[i:i + batch]) for i in range(0, n - batch + 1, batch)] or \
        [np.stack([frames[j % n] for j in range(batch)])]
    lat, done, i = [], 0, 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    while True:
        x = chunks[i % len(chunks)]
        t = time.perf_counter()
        step(x)
        lat.append((time.perf_counter() - t) * 1e3)
        done += len(x)
        i += 1
        el = time.perf_counter() - t0
        if (el >= seconds and done >= min_frames) or el > 4 * seconds + 60:
            break
    el = time.perf_counter() - t0
    _CPU["ms_per_frame"] = round((time.process_time() - c0) * 1e3 / done, 2)
    return done / el, lat


_CPU: dict = {}   # CPU time (all threads) per frame of the last timed loop


def child_ort(spec: dict) -> dict:
    frames = np.load(spec["frames"], mmap_mode="r")
    frames = np.ascontiguousarray(frames[: spec.get("limit", len(frames))])
    sess, load_ms = _ort_session(spec["model"], spec.get("ort", {}))
    iname, oname = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    batch = int(spec.get("batch", 1))
    fps, lat = _timed_loop(lambda x: sess.run([oname], {iname: x}), frames, batch,
                           spec.get("seconds", 6.0), spec.get("min_frames", 20))
    return {"fps": round(fps, 2), "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "batch": batch,
            "cpu_ms_per_frame": _CPU.get("ms_per_frame"), "session_ms": round(load_ms, 1),
            "providers": sess.get_providers()}


def child_ort_frames_parallel(spec: dict) -> dict:
    """Frame-level parallelism: ``workers`` frames in flight at once, each ORT run on one
    intra-op thread (one session; ORT's Run is thread-safe), results in frame order.
    What ScoreLogic could do with a micro-batch instead of one multi-threaded run."""
    from concurrent.futures import ThreadPoolExecutor
    frames = np.load(spec["frames"], mmap_mode="r")
    frames = np.ascontiguousarray(frames[: spec.get("limit", len(frames))])
    k = int(spec.get("workers", 2))
    sess, load_ms = _ort_session(spec["model"], dict(spec.get("ort", {}), intra=1))
    iname, oname = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    pool = ThreadPoolExecutor(k)

    def one(x):
        t = time.perf_counter()
        y = sess.run([oname], {iname: x})[0]
        return y, (time.perf_counter() - t) * 1e3
    lat_all = []

    def step(x):   # x: k frames; each scored on its own thread
        res = list(pool.map(one, [x[i:i + 1] for i in range(len(x))]))
        lat_all.extend(r[1] for r in res)
    fps, _ = _timed_loop(step, frames, k, spec.get("seconds", 6.0), spec.get("min_frames", 20))
    lat = lat_all[3 * k:]
    return {"fps": round(fps, 2), "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "batch": 1, "workers": k,
            "cpu_ms_per_frame": _CPU.get("ms_per_frame"), "session_ms": round(load_ms, 1)}


def child_torch(spec: dict) -> dict:
    import torch
    torch.set_num_threads(int(spec.get("threads", 2)))
    sys.path.insert(0, str(REPO))
    from trainer.data import MEAN, STD
    from trainer.optimize import random_enet
    net = random_enet(spec.get("variant", "relu"))
    cl = bool(spec.get("channels_last"))
    if cl:
        net = net.to(memory_format=torch.channels_last)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    inv = (1.0 / torch.tensor(STD)).view(1, 3, 1, 1)
    frames = np.load(spec["frames"], mmap_mode="r")
    frames = np.ascontiguousarray(frames[: spec.get("limit", len(frames))])
    bf16 = bool(spec.get("bf16"))

    def step(x):   # what a user writes by hand
        with torch.inference_mode():
            t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
            t = (t - mean) * inv
            if cl:
                t = t.contiguous(memory_format=torch.channels_last)
            if bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = net(t)
            else:
                y = net(t)
            return y.argmax(1).to(torch.uint8).numpy()

    fps, lat = _timed_loop(step, frames, int(spec.get("batch", 1)), spec.get("seconds", 6.0),
                           spec.get("min_frames", 10))
    return {"fps": round(fps, 2), "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
            "batch": int(spec.get("batch", 1)), "cpu_ms_per_frame": _CPU.get("ms_per_frame"),
            "weights": "random init (trainer.enet.ENet)",
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def child_decode(spec: dict) -> dict:
    """Decode (+ resize/colour conversion as the flow does) of the clip alone."""
    import cv2
    sys.path.insert(0, str(REPO))
    from operators.frames import Frame
    from operators.preprocess import Preprocessor
    cv2.setNumThreads(int(spec.get("cv_threads", 0)) or cv2.getNumThreads())
    pre = Preprocessor((spec["size"], spec["size"]), "RGB")
    cap = cv2.VideoCapture(spec["clip"])
    lat, n = [], 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    while True:
        t = time.perf_counter()
        ok, img = cap.read()
        if not ok:
            break
        pre(Frame("s", n, 0.0, "", img))
        lat.append((time.perf_counter() - t) * 1e3)
        n += 1
    el = time.perf_counter() - t0
    return {"fps": round(n / el, 1) if el else None, "frames": n, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
            "cpu_ms_per_frame": round((time.process_time() - c0) * 1e3 / n, 2) if n else None}


def child_profile(spec: dict) -> dict:
    """ORT's own profiler: where a frame's time goes, per op type (after graph rewrites)."""
    import collections
    import onnxruntime as ort
    frames = np.load(spec["frames"], mmap_mode="r")
    o = spec.get("ort", {})
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(spec["result"]).with_suffix(""))
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if o.get("level", "all") == "all" \
        else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.intra_op_num_threads = int(o.get("intra", 2))
    so.add_session_config_entry("session.intra_op.allow_spinning", str(int(o.get("spin", 0))))
    sess = ort.InferenceSession(spec["model"], so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for i in range(int(spec.get("runs", 20))):
        sess.run(None, {name: np.ascontiguousarray(frames[i % len(frames)][None])})
    ev = json.loads(Path(sess.end_profiling()).read_text())
    per_op, nodes, runs, total = collections.Counter(), collections.Counter(), 0, 0.0
    for e in ev:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            runs += 1
            total += e["dur"]
        elif e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e["args"].get("op_name")] += e["dur"]
            nodes[e["args"].get("op_name")] += 1
    runs = max(runs, 1)
    s = sum(per_op.values()) or 1
    return {"run_ms": round(total / runs / 1e3, 2),
            "ops": [{"op": k, "ms": round(v / runs / 1e3, 2), "share": round(v / s, 3), "nodes": nodes[k] // runs}
                    for k, v in per_op.most_common()]}


def child_sinkcost(spec: dict) -> dict:
    """Single-thread cost (ms) of what the decoder and the writers do per frame."""
    import cv2
    cv2.setNumThreads(1)
    frames = np.load(spec["frames"], mmap_mode="r")
    img = np.ascontiguousarray(frames[0])
    rng = np.random.default_rng(0)
    cm = cv2.resize(rng.integers(0, 13, (24, 24), dtype=np.uint8), img.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    lut = np.zeros((256, 1, 3), np.uint8)
    lut[:13, 0] = rng.integers(0, 255, (13, 3))
    over = cv2.addWeighted(img, 0.5, cv2.LUT(cv2.merge([cm, cm, cm]), lut), 0.5, 0)
    vw = cv2.VideoWriter(str(Path(spec["result"]).with_suffix(".avi")), cv2.VideoWriter_fourcc(*"MJPG"), 10,
                         img.shape[1::-1])
    cap = cv2.VideoCapture(spec["clip"])

    def dec():
        ok, im = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            cap.read()
    big = None
    ok, big = cv2.VideoCapture(spec["clip"]).read()
    rle = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):
        rle += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    png = lambda **kw: cv2.imencode(".png", cm, [cv2.IMWRITE_PNG_COMPRESSION, 1] + sum(([k, v] for k, v in kw.items()), []))
    items = {
        "decode (clip frame)": dec,
        "resize clip frame -> model input": lambda: cv2.resize(big, img.shape[1::-1], interpolation=cv2.INTER_LINEAR),
        "BGR->RGB": lambda: cv2.cvtColor(big, cv2.COLOR_BGR2RGB),
        "mask PNG, level 1 (before)": lambda: png(),
        "mask PNG, level 1 + RLE + no filter (sinks now)": lambda: cv2.imencode(".png", cm, rle),
        "class shares, np.bincount (before)": lambda: np.bincount(cm.ravel(), minlength=13),
        "class shares, cv2.calcHist (sinks now)": lambda: cv2.calcHist([cm], [0], None, [256], [0, 256]),
        "overlay colours, cv2.LUT": lambda: cv2.LUT(cv2.merge([cm, cm, cm]), lut),
        "overlay blend, addWeighted": lambda: cv2.addWeighted(img, 0.5, over, 0.5, 0),
        "overlay MJPG VideoWriter.write": lambda: vw.write(over),
        "overlay JPEG imencode q90": lambda: cv2.imencode(".jpg", over, [cv2.IMWRITE_JPEG_QUALITY, 90]),
    }
    try:
        from chain import anchoring
        items["anchor leaf digest"] = lambda: anchoring.leaf_digest("s", 1, "ab" * 32, cm)
    except Exception:  # noqa: BLE001 - chain extras missing: skip that line
        pass
    out = {}
    for k, fn in items.items():
        fn()
        t = time.perf_counter()
        for _ in range(30):
            fn()
        out[k] = round((time.perf_counter() - t) / 30 * 1e3, 3)
    vw.release()
    sizes = {"png_level1_bytes": len(png()[1]),
             "png_rle_bytes": len(cv2.imencode(".png", cm, rle)[1])}
    return {"ms": out, "sizes": sizes, "note": "synthetic blocky class map; one OpenCV thread"}


def child_main(path: str) -> int:
    spec = json.loads(Path(path).read_text())
    from . import _backends
    fn = {"ort": child_ort, "ort_frames": child_ort_frames_parallel, "torch": child_torch, "decode": child_decode, "profile": child_profile,
          "sinkcost": child_sinkcost, "ov": _backends.child_ov, "agree": _backends.child_agree}[spec["kind"]]
    res = fn(spec)
    Path(spec["result"]).write_text(json.dumps(res))
    return 0


# =========================================================================== parent side
def _busy() -> list[str]:
    """Other processes using the CPU right now (name and %CPU), e.g. a training run."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True,
                             text=True, timeout=5).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return []
    me = {os.getpid()}
    res = []
    for line in out[:8]:
        parts = line.split(None, 2)
        if len(parts) == 3 and int(parts[0]) not in me and float(parts[1]) >= 20:
            res.append(f"{parts[1]}% {parts[2][:90]}")
    return res


# A fresh, small process starts every measured one: Linux carries the peak RSS of the
# process image that calls exec into the child's ru_maxrss, so children forked from this
# (torch-sized) parent would all report at least its size.
_LAUNCHER = r"""
import json, os, subprocess, sys, time
spec = json.loads(sys.argv[1])
out = open(spec["log"], "wb") if spec.get("log") else subprocess.DEVNULL
t0 = time.perf_counter()
p = subprocess.Popen(spec["argv"], env=spec.get("env"), cwd=spec.get("cwd"), stdout=out, stderr=subprocess.STDOUT)
deadline = time.monotonic() + spec["timeout"]
while True:
    pid, status, ru = os.wait4(p.pid, os.WNOHANG)
    if pid:
        break
    if time.monotonic() > deadline:
        p.kill()
        pid, status, ru = os.wait4(p.pid, 0)
        break
    time.sleep(0.02)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall_s": time.perf_counter() - t0,
                  "maxrss_kib": ru.ru_maxrss, "cpu_s": ru.ru_utime + ru.ru_stime}))
"""


def _spawn(argv: list[str], env=None, cwd=None, timeout: float = 600, log: Optional[Path] = None) -> dict:
    """Run argv (through the small launcher); wall time, exit status, its own peak RSS (MiB)."""
    la0 = os.getloadavg()[0]
    spec = {"argv": argv, "env": env, "cwd": cwd, "timeout": timeout, "log": str(log) if log else None}
    p = subprocess.run([PY, "-S", "-c", _LAUNCHER, json.dumps(spec)], capture_output=True, text=True,
                       timeout=timeout + 60)
    try:
        r = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        r = {"rc": 1, "wall_s": 0.0, "maxrss_kib": 0, "cpu_s": 0.0}
        if log:
            Path(log).write_text(p.stderr[-2000:])
    return {"rc": r["rc"], "wall_s": round(r["wall_s"], 2), "peak_rss_mib": round(r["maxrss_kib"] / 1024, 1),
            "cpu_s": round(r["cpu_s"], 2), "load_1min_before": round(la0, 2),
            "load_1min_after": round(os.getloadavg()[0], 2)}


class Suite:
    def __init__(self, a, work: Path):
        self.a, self.work = a, work
        self.n = 0
        self.startup_cpu: Optional[float] = None
        self.startup_wall: Optional[float] = None
        self.env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.env = {k: v for k, v in self.env.items() if not k.startswith("VERISEG_")}
        self.env.update(OMP_NUM_THREADS=str(a.threads))

    def log(self, msg: str):
        print(msg, flush=True)

    def child(self, spec: dict, label: str) -> dict:
        self.n += 1
        sp = self.work / f"spec{self.n}.json"
        spec = dict(spec, result=str(self.work / f"res{self.n}.json"))
        sp.write_text(json.dumps(spec))
        logf = self.work / f"child{self.n}.log"
        proc = _spawn([PY, "-m", "bench.perf", "--child", str(sp)], env=self.env, cwd=str(REPO), log=logf)
        res = {"label": label}
        if proc["rc"] == 0 and Path(spec["result"]).exists():
            res.update(json.loads(Path(spec["result"]).read_text()))
        else:
            res["error"] = logf.read_text(errors="replace")[-600:]
        res.update({k: proc[k] for k in ("peak_rss_mib", "load_1min_before", "load_1min_after")})
        self.log(_line(res))
        return res


def _line(r: dict) -> str:
    if "error" in r:
        return f"  {r['label']:<44} FAILED: {r['error'].strip().splitlines()[-1] if r['error'].strip() else '?'}"
    extra = f" acc {r['pixel_accuracy']:.4f}" if r.get("pixel_accuracy") is not None else ""
    if r.get("cpu_ms_per_frame") is not None:
        extra = f"  CPU {r['cpu_ms_per_frame']} ms/frame" + extra
    return (f"  {r['label']:<44} {r.get('fps', 0):>7.2f} FPS  p50 {r.get('p50_ms')!s:>7} ms  p99 "
            f"{r.get('p99_ms')!s:>7} ms  RSS {r.get('peak_rss_mib')!s:>6} MiB  load {r.get('load_1min_before')}{extra}")


# ----------------------------------------------------------------------------- inputs
def carla_dir() -> Optional[Path]:
    for c in (os.environ.get("VERISEG_CARLA_DIR"), REPO.parent / "shared" / "data" / "carla"):
        if c and (Path(c) / "images").is_dir():
            return Path(c)
    return None


def prepare_clip(work: Path, size: int, frames: int) -> tuple[Path, str]:
    import cv2
    vids = sorted(p for p in (REPO / "models").glob("*.avi")) if (REPO / "models").is_dir() else []
    if vids:
        return vids[0], f"committed clip {vids[0].relative_to(REPO)}"
    clip = work / "clip.avi"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (size, size))
    d = carla_dir()
    if d is not None:
        imgs = sorted((d / "images").glob("*.jpg"))[:frames]
        for p in imgs:
            img = cv2.imread(str(p))
            w.write(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))
        what = f"first {len(imgs)} CARLA frames of {d} resized to {size}x{size}, MJPG"
    else:
        from trainer.data import synthetic_scene
        rng = np.random.default_rng(0)
        for _ in range(frames):
            img, _ = synthetic_scene(rng, size, size)
            w.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        what = f"{frames} synthetic scenes {size}x{size}, MJPG"
    w.release()
    return clip, what


def decode_frames(clip: Path, size: int, limit: int) -> np.ndarray:
    """``limit`` frames of the clip (looped when it is shorter, as the flow replays it),
    resized and colour-converted exactly as the flow's preprocess window does."""
    import cv2
    from operators.frames import Frame
    from operators.preprocess import Preprocessor
    pre = Preprocessor((size, size), "RGB")
    cap = cv2.VideoCapture(str(clip))
    out = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        out.append(pre(Frame("s", len(out), 0.0, "", img)).image)
        if len(out) >= limit:
            break
    if not out:
        raise SystemExit(f"error: no frame could be decoded from {clip}")
    n = len(out)
    return np.stack([out[i % n] for i in range(limit)]), n


def write_clip(path: Path, frames: np.ndarray) -> Path:
    """An MJPG clip of already-sized RGB frames (the flow then skips the resize)."""
    import cv2
    h, w = frames.shape[1:3]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    for f in frames:
        wr.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    wr.release()
    return path


def _card(size: int, name: str, description: str):
    from model_store import CARLA_CLASSES, ModelCard, TensorSpec
    t = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return ModelCard(name=name, description=description, algorithm="ENet", created=t, modified=t,
                     training_params={"weights": "random init"}, classes=CARLA_CLASSES,
                     scoring_function="uint8 NHWC RGB -> normalise -> ENet -> argmax -> uint8",
                     inputs=(TensorSpec("image", "uint8", ("N", size, size, 3), "NHWC", "RGB"),),
                     outputs=(TensorSpec("classes", "uint8", ("N", size, size), "NHW", None),),
                     metrics={}, onnx_opset=17)


def prepare_model(work: Path, size: int, random_model: bool = False) -> dict:
    """The model under test: the committed trained blob, else a random-weight ENet relu."""
    import model_store
    blob = REPO / "models" / "carla-enet.vsb"
    if blob.exists() and not random_model:
        key = model_store.verify(str(blob))
        card, onnx = model_store.load(str(blob), expected_key=key)
        if tuple(card.input_size) != (size, size):
            raise SystemExit(f"error: {blob} takes {card.input_size}, not {size}x{size}: pass --size")
        variant = "prelu" if "prelu" in (card.description or "").lower() else "relu"
        what = f"trained blob models/carla-enet.vsb ({card.description})"
        card_ = card
    else:
        from trainer.optimize import export_random
        variant = "relu"
        onnx = export_random(variant, size)
        blob = work / "model.vsb"
        card_ = _card(size, "bench-enet", "random-weight ENet relu")
        key = model_store.write(str(blob), onnx, card_)
        what = ("random-weight ENet relu exported by trainer.export ("
                + ("--random-model)" if random_model else "models/carla-enet.vsb absent)"))
    path = work / "model.onnx"
    path.write_bytes(onnx)
    return {"onnx": path, "blob": blob, "key": key, "variant": variant, "what": what, "card": card_}


def variant_blob(work: Path, model: dict, tag: str, onnx: bytes, what: str) -> dict:
    """A blob of a rewritten model (same card), registered on the bench's embedded chain."""
    import model_store
    blob = work / f"model-{tag}.vsb"
    key = model_store.write(str(blob), onnx, model["card"])
    register(work / "home", blob, key)
    path = work / f"model-{tag}.onnx"
    path.write_bytes(onnx)
    return dict(model, onnx=path, blob=blob, key=key, what=what)


def register(home: Path, blob: Path, key: str):
    import chain
    reg = chain.connect(chain="embedded", home=home)
    if not reg.status(key).registered:
        reg.register(key, "bench", blob.resolve().as_uri())


# ----------------------------------------------------------------------------- flow
def run_flow(s: Suite, model: dict, clip: Path, *, label: str, workers: int = 1, streams: int = 1,
             frames: int, extra: Optional[dict] = None) -> dict:
    s.n += 1
    out = s.work / f"flow{s.n}"
    src = ";".join(f"s{i}@{clip}" for i in range(streams))
    env = dict(s.env, VERISEG_SOURCE=src, VERISEG_MODEL=str(model["blob"]), VERISEG_HOME=str(s.work / "home"),
               VERISEG_OUT=str(out), VERISEG_PROGRESS="0", VERISEG_MAX_FRAMES=str(frames),
               VERISEG_THREADS=str(s.a.threads), VERISEG_PROVIDERS=s.a.providers, VERISEG_LOOP="1")
    env.update({k: str(v) for k, v in (extra or {}).items()})
    argv = [PY, "-m", "bytewax.run", "dataflows.segment"] + (["-w", str(workers)] if workers > 1 else [])
    proc = _spawn(argv, env=env, cwd=str(s.work), log=s.work / f"flow{s.n}.log", timeout=900)
    res = {"label": label, "workers": workers, "streams": streams, "settings": extra or {}}
    summ = out / "summary.json"
    if proc["rc"] != 0 or not summ.exists():
        res["error"] = (s.work / f"flow{s.n}.log").read_text(errors="replace")[-800:]
        res.update({k: proc[k] for k in ("peak_rss_mib", "load_1min_before", "load_1min_after")})
        s.log(_line(res))
        return res
    sm = json.loads(summ.read_text())
    n = sm.get("scored", 0)
    lat = {"total": [], "score": [], "wait": [], "sink": []}
    for f in out.glob("*/results.jsonl"):
        for line in f.read_text().splitlines():
            r = json.loads(line).get("latency_ms", {})
            for k in ("score", "wait", "sink"):
                if k in r:
                    lat[k].append(r["score_per_frame"] if k == "score" else r[k])
            lat["total"].append(r.get("wait", 0) + r.get("score", 0) + r.get("sink", 0))
    res.update({
        "fps": round(sm.get("fps", 0.0), 2),                       # the flow's own steady scoring rate
        "fps_wall": round(n / proc["wall_s"], 2) if proc["wall_s"] else None,   # incl. start-up
        "frames": n, "dropped": sm.get("dropped"), "provider": sm.get("provider"),
        "batch_sizes": sm.get("batch_sizes"),
        "p50_ms": _pct(lat["total"], 50), "p99_ms": _pct(lat["total"], 99),
        "score_per_frame_p50_ms": _pct(lat["score"], 50), "wait_p50_ms": _pct(lat["wait"], 50),
        "sink_p50_ms": _pct(lat["sink"], 50),
        "decode_p50_ms": (sm.get("latency", {}).get("decode") or {}).get("p50_ms"),
        "wall_s": proc["wall_s"], "cpu_s": proc["cpu_s"]})
    if s.startup_wall is not None and n > 1 and proc["wall_s"] > s.startup_wall:
        # timed here: the extra frames over the extra wall time against the 1-frame run
        res["fps_timed"] = round((n - 1) / (proc["wall_s"] - s.startup_wall), 2)
    if s.startup_cpu is not None and n > 1:
        # CPU of all threads per frame, the start-up (imports, chain, session) taken off:
        # robust to other load on the machine, unlike FPS
        c = (proc["cpu_s"] - s.startup_cpu) * 1e3 / (n - 1)
        res["cpu_ms_per_frame"] = round(c, 2) if c > 0 else None   # too few frames for the start-up noise
    res.update({k: proc[k] for k in ("peak_rss_mib", "load_1min_before", "load_1min_after")})
    s.log(_line(res) + f"  (timed here {res.get('fps_timed')} FPS; {res['fps_wall']} incl. start-up; "
                       f"batches {res['batch_sizes']})")
    return res


# ----------------------------------------------------------------------------- int8
def int8_variants(s: Suite, model: dict, size: int, calib_n: int) -> tuple[list, dict]:
    """Quantised models (written to the work folder) and their accuracy vs fp32."""
    from trainer import optimize as opt
    d = carla_dir()
    onnx = model["onnx"].read_bytes()
    info = {"weights": model["what"]}
    if d is None:
        s.log("  int8: no CARLA frames: skipped")
        return [], {"skipped": "no CARLA frames"}
    calib, val, lab = opt.calibration_frames(d, size, calib_n)
    val, lab = val[-30:], lab[-30:]
    # a random-weight model says nothing about accuracy: use the newest trained
    # checkpoint when the blob is not committed yet
    acc_onnx = onnx
    if "random" in model["what"]:
        ck = sorted((REPO / "runs").glob("carla-*/best.pt"), key=lambda p: p.stat().st_mtime)
        if ck:
            try:
                from trainer.export import export_onnx
                from trainer.train import load_checkpoint
                net, c = load_checkpoint(ck[-1])
                acc_onnx = export_onnx(net, size)
                info["weights"] = (f"accuracy on checkpoint {ck[-1].relative_to(REPO)} (epoch "
                                   f"{c.get('state', {}).get('epoch')}, training still running); "
                                   "speed on the random-weight model")
            except Exception as e:  # noqa: BLE001 - a checkpoint being rewritten: fall back
                info["weights"] += f" (checkpoint unreadable: {type(e).__name__})"
    ref = opt.run_model(acc_onnx, val)
    info.update(calibration_frames=len(calib), validation_frames=len(val),
                validation="last 30 frames of the time-split validation part (last 20%), labels resized "
                           f"to {size}x{size} (nearest)",
                fp32_pixel_accuracy=round(opt.pixel_accuracy(ref, lab), 4))
    out = []
    for name, kw, pad in (("int8 QDQ per-channel", {"per_channel": True}, False),
                          ("int8 QDQ per-tensor", {"per_channel": False}, False),
                          ("int8 QDQ per-channel, pad-as-conv graph", {"per_channel": True}, True)):
        t = time.perf_counter()
        try:
            src, src_acc = onnx, acc_onnx
            if pad:
                src = opt.channel_pad_as_conv(onnx, check=False)
                src_acc = src if acc_onnx is onnx else opt.channel_pad_as_conv(acc_onnx, check=False)
            q = opt.quantize_int8(src, calib, **kw)
            qa = q if src_acc is src else opt.quantize_int8(src_acc, calib, **kw)
        except Exception as e:  # noqa: BLE001 - report, keep the suite going
            s.log(f"  {name}: quantisation failed: {type(e).__name__}: {e}")
            info[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        got = opt.run_model(qa, val)
        p = s.work / f"{name.replace(' ', '_')}.onnx"
        p.write_bytes(q)
        info[name] = {"pixel_accuracy": round(opt.pixel_accuracy(got, lab), 4),
                      "agreement_with_fp32": round(opt.pixel_agreement(got, ref), 4),
                      "quantise_s": round(time.perf_counter() - t, 1)}
        out.append((name, p, info[name]))
    return out, info


# ----------------------------------------------------------------------------- tables
def tables(doc: dict, part: Optional[str] = None) -> str:
    """Markdown (README / docs/performance.md) from a perf.json document: every section, or
    one of main | curve | experiments | int8 | profile | sinks."""
    R, m = doc["results"], doc["machine"]
    M = R["main"]
    size = R["inputs"]["size"]
    sec: dict[str, list[str]] = {}
    from . import _backends
    if "ort_b1" not in M:     # --only-backends
        sec["backends"] = _backends.tables(R, size, M)
        return "\n".join(sec["backends"]) if part in (None, "backends") else ""
    ort1 = M["ort_b1"].get("fps")
    la = R.get("load_average_start", ["?"])[0]
    out = [f"{m['cpu']}, {m['cores']} cores, onnxruntime {m['versions'].get('onnxruntime')}, "
           f"torch {m['versions'].get('torch')}; {m['date']}; 1-min load average at start {la}"
           + (f"; also running: {'; '.join(R['busy_at_start'])}" if R.get("busy_at_start") else "")
           + f". Frames: {R['inputs']['clip']}. Model: {R['inputs']['model']}.", ""]
    rows = []
    for name, r in [("raw ONNX Runtime, preloaded frames, batch 1", M["ort_b1"]),
                    ("raw ONNX Runtime, preloaded frames, batch 4", M["ort_b4"]),
                    ("PyTorch eager (same ENet, random weights), batch 1", M["torch"]),
                    ("**VeriSeg flow** (decode + resize + score + all sinks), 1 worker", M["flow_w1"]),
                    ("**VeriSeg flow**, 2 workers", M["flow_w2"])]:
        if r.get("fps_timed"):
            name += f" (timed from outside: {r['fps_timed']:.1f} FPS)"
        if "error" in r:
            rows.append([name, "failed", "", "", "", "", ""])
            continue
        ratio = r.get("fps") / ort1 if r.get("fps") and ort1 else None
        rows.append([name, _f(r.get("fps")), _f(r.get("p50_ms")), _f(r.get("p99_ms")),
                     _f(r.get("cpu_ms_per_frame")), _f(r.get("peak_rss_mib"), 0), _f(ratio, 2)])
    P = R["paper"]
    rows += [["paper, Jetson AGX Xavier (11 TFLOPS GPU)", f"{P['jetson_agx_xavier_fps']:.0f}", "", "", "", "", ""],
             ["paper, Jetson TX2", f"{P['jetson_tx2_fps']:.0f}", "", "", "", "", ""]]
    sec["main"] = out + markdown([f"{size}²", "FPS", "p50 ms", "p99 ms", "CPU ms/frame", "peak RSS MiB",
                                  "FPS vs raw ORT"], rows)
    if R.get("curve_size"):
        out = markdown(["input (random-weight ENet ReLU)", "raw ORT FPS", "p50 ms", "CPU ms/frame", "peak RSS MiB"],
                       [[f"{r['size']}²", _f(r.get("fps")), _f(r.get("p50_ms")), _f(r.get("cpu_ms_per_frame")),
                         _f(r.get("peak_rss_mib"), 0)] for r in R["curve_size"]])
        out += ["", *markdown(["streams (flow, same clip each)", "workers", "total FPS", "CPU ms/frame", "peak RSS MiB"],
                              [[r["streams"], r["workers"], _f(r.get("fps")), _f(r.get("cpu_ms_per_frame")),
                                _f(r.get("peak_rss_mib"), 0)] for r in R.get("curve_streams", [])])]
        sec["curve"] = out
    ex = R.get("experiments_raw", []) + R.get("experiments_flow", [])
    if ex:
        b = R["experiments_raw"][0] if R.get("experiments_raw") else {}
        fb = M["flow_w1"]
        rows = []
        for r in ex:
            base = fb if r["label"].startswith("flow") else (M["torch"] if r["label"].startswith("PyTorch") else b)
            g = r.get("fps") / base["fps"] if r.get("fps") and base.get("fps") else None
            c = (r["cpu_ms_per_frame"] / base["cpu_ms_per_frame"]
                 if r.get("cpu_ms_per_frame") and base.get("cpu_ms_per_frame") else None)
            rows.append([r["label"], _f(r.get("fps")), _f(r.get("cpu_ms_per_frame")), _f(r.get("p50_ms")),
                         "–" if g is None else f"{(g - 1) * 100:+.0f}%",
                         "–" if c is None else f"{(c - 1) * 100:+.0f}%", _f(r.get("load_1min_before"), 1)])
        out = markdown(["experiment", "FPS", "CPU ms/frame", "p50 ms", "FPS vs baseline", "CPU vs baseline", "load"],
                       rows)
        out.append("")
        out.append("Baselines: ORT rows against the first ORT row, PyTorch rows against the PyTorch eager row "
                   "of the main table, flow rows against the main table's 1-worker flow.")
        sec["experiments"] = out
    q = R.get("int8")
    if q:
        rows = [["fp32", _f(q.get("fp32_pixel_accuracy"), 4), "100 %", ""]]
        rows += [[k, f"{v['pixel_accuracy']:.4f}", f"{100 * v['agreement_with_fp32']:.2f} %", v["quantise_s"]]
                 for k, v in q.items() if isinstance(v, dict) and "pixel_accuracy" in v]
        sec["int8"] = [f"Weights for accuracy: {q.get('weights')}. Calibration: {q.get('calibration_frames')} frames "
                       f"spread over the training part; validation: {q.get('validation')}.", "",
                       *markdown(["model", "pixel accuracy", "same class as fp32", "quantisation s"], rows)]
    pr = R.get("profile")
    if pr and "ops" in pr:
        sec["profile"] = [f"One frame: {pr['run_ms']} ms in the profiler (it adds overhead).", "",
                          *markdown(["op (after ORT's rewrites)", "nodes", "ms/frame", "share"],
                                    [[o["op"], o["nodes"], o["ms"], f"{100 * o['share']:.1f} %"]
                                     for o in pr["ops"][:12]])]
    if R.get("backends"):
        sec["backends"] = _backends.tables(R, size, M)
    sc = R.get("sink_costs")
    if sc and "ms" in sc:
        out = markdown(["step", "ms/frame"], sc["ms"].items())
        out += ["", f"PNG sizes: level 1 {sc['sizes']['png_level1_bytes']} B, RLE {sc['sizes']['png_rle_bytes']} B "
                    f"({sc.get('note')})."]
        sec["sinks"] = out
    if part:
        return "\n".join(sec.get(part, []))
    return "\n\n".join("\n".join(v) for v in sec.values())


# ----------------------------------------------------------------------------- main
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
                   help="the backend rows, the decode and sink costs only (issue 21's figures, ~6 min)")
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
        from operators.score import providers_for
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
        print("== backends (issue 21)", flush=True)
        from . import _backends
        R["backends"] = _backends.run_section(s, a, base, model, clip, fpath, work, frames)

    if not (a.skip_curve or a.quick):
        print("== cost curve", flush=True)
        from trainer.optimize import export_random
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
        print("== experiments: raw ORT", flush=True)
        ex = []
        o = base["ort"]
        for label, ort in (("baseline = flow settings (all, 2 thr, no spin)", o),
                           ("spinning on (ORT default)", dict(o, spin=1)),
                           ("level extended", dict(o, level="extended")),
                           ("level basic", dict(o, level="basic")),
                           ("level disable", dict(o, level="disable")),
                           ("intra 1 thread", dict(o, intra=1)),
                           ("parallel mode, inter 2", dict(o, mode="parallel", inter=2)),
                           ("level extended, spinning on", dict(o, level="extended", spin=1))):
            ex.append(s.child(dict(base, ort=ort), f"ORT {label}"))
        ex.append(s.child(dict(base, batch=2), "ORT batch 2"))
        ex.append(s.child(dict(base, kind="ort_frames", workers=2), "ORT 2 frames in flight, 1 thread each"))
        from trainer.optimize import export_random
        pr = work / "prelu.onnx"
        pr.write_bytes(export_random("prelu", size))
        rl = work / "relu.onnx"
        rl.write_bytes(export_random("relu", size))
        ex.append(s.child(dict(base, model=str(rl)), "ORT random relu (same graph, random w.)"))
        ex.append(s.child(dict(base, model=str(pr)), "ORT random prelu"))
        from trainer.optimize import channel_pad_as_conv, ort_optimized
        try:
            padconv = variant_blob(work, model, "padconv", channel_pad_as_conv(onnx_bytes),
                                   model["what"] + ", channel padding as 1x1 identity conv")
            R["inputs"]["padconv_ops_after_ort_all"] = op_counts(ort_optimized(padconv["onnx"].read_bytes(), "all"))
            R["inputs"]["ops_after_ort_all"] = op_counts(ort_optimized(onnx_bytes, "all"))
            ex.append(s.child(dict(base, model=str(padconv["onnx"])), "ORT channel pad as 1x1 conv (exact)"))
            ex.append(s.child(dict(base, model=str(padconv["onnx"]), ort=dict(o, intra=1)),
                              "ORT channel pad as 1x1 conv, intra 1"))
            from trainer.optimize import convtranspose_as_conv
            sp = work / "model-padconv-subpixel.onnx"
            sp.write_bytes(convtranspose_as_conv(padconv["onnx"].read_bytes()))
            ex.append(s.child(dict(base, model=str(sp)), "ORT pad as conv + ConvTranspose as sub-pixel conv"))
        except Exception as e:  # noqa: BLE001 - report, keep the suite going
            padconv = None
            s.log(f"  channel_pad_as_conv failed: {type(e).__name__}: {e}")
        off = work / "offline-extended.onnx"
        off.write_bytes(ort_optimized(onnx_bytes, "extended"))
        ex.append(s.child(dict(base, model=str(off), ort=dict(o, level="all")),
                          "ORT offline-optimised (extended) + all"))
        print("== experiments: int8", flush=True)
        q, qinfo = int8_variants(s, model, size, a.calib)
        for name, path, info in q:
            r = s.child(dict(base, model=str(path)), f"ORT {name}")
            r.update(info)
            ex.append(r)
        R["int8"] = qinfo
        print("== experiments: PyTorch", flush=True)
        tb = {"kind": "torch", "frames": str(fpath), "variant": model["variant"], "threads": a.threads,
              "seconds": a.seconds, "min_frames": 10}
        ex.append(s.child(dict(tb, channels_last=True), "PyTorch eager channels_last"))
        ex.append(s.child(dict(tb, channels_last=True, bf16=True), "PyTorch eager channels_last bf16 autocast"))
        R["experiments_raw"] = ex
        print("== where the time goes", flush=True)
        pr_ = s.child({"kind": "profile", "model": str(model["onnx"]), "frames": str(fpath), "ort": base["ort"]},
                      "ORT profile")
        R["profile"] = pr_
        if "ops" in pr_:
            print("  " + ", ".join(f"{o['op']} {o['ms']} ms" for o in pr_["ops"][:8]), flush=True)
        sc = s.child({"kind": "sinkcost", "frames": str(fpath), "clip": str(clip)}, "decoder/writer costs")
        R["sink_costs"] = sc
        if "ms" in sc:
            print("  " + ", ".join(f"{k} {v}" for k, v in sc["ms"].items()), flush=True)
        print("== experiments: flow", flush=True)
        fx = []
        clip512 = write_clip(work / f"clip{size}.avi", frames[:clip_len])
        for label, extra, c in (("flow spinning on", {"VERISEG_ORT_SPIN": "1"}, clip),
                                ("flow batch 4", {"VERISEG_BATCH": "4"}, clip),
                                ("flow masks+video off (jsonl, anchors)", {"VERISEG_MASKS": "0", "VERISEG_VIDEO": "0"}, clip),
                                ("flow overlay video at half size (VIDEO_SCALE 0.5)", {"VERISEG_VIDEO_SCALE": "0.5"}, clip),
                                ("flow 1 ORT thread", {"VERISEG_THREADS": "1"}, clip),
                                ("flow decoder/writers niced (AUX_NICE 10)", {"VERISEG_AUX_NICE": "10"}, clip),
                                (f"flow on a {size}² clip (no resize)", {}, clip512)):
            fx.append(run_flow(s, model, c, label=label, frames=a.frames, extra=extra))
        if padconv is not None:
            fx.append(run_flow(s, padconv, clip, label="flow, channel-pad-as-conv model", frames=a.frames))
            fx.append(run_flow(s, padconv, clip, label="flow, channel-pad-as-conv model, 2 workers", workers=2,
                               frames=a.frames))
        R["experiments_flow"] = fx

    return _finish(a, R, load0, busy0, t_start, argv, tmp)


def _only_backends(a, s, R, base, model, clip, fpath, work, frames, load0, busy0, t_start, argv, tmp) -> int:
    """``--only-backends``: what issue 21 asks for, without the older experiments."""
    from . import _backends
    print("== decode and sink costs", flush=True)
    R["main"] = {"decode": s.child({"kind": "decode", "clip": str(clip), "size": a.size}, "decode+preprocess only")}
    R["sink_costs"] = s.child({"kind": "sinkcost", "frames": str(fpath), "clip": str(clip)}, "decoder/writer costs")
    print("== backends (issue 21)", flush=True)
    R["backends"] = _backends.run_section(s, a, base, model, clip, fpath, work, frames)
    return _finish(a, R, load0, busy0, t_start, argv, tmp)


def _finish(a, R, load0, busy0, t_start, argv, tmp) -> int:
    R["load_average_start"] = [round(x, 2) for x in load0]
    R["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    R["busy_at_start"] = busy0
    R["busy_at_end"] = _busy()
    R["duration_s"] = round(time.time() - t_start, 1)
    R["command"] = "python -m bench perf " + " ".join(argv)
    from .machine import info, save
    if a.results:
        path = Path(a.results) / f"{a.out}.json"
        path.write_text(json.dumps({"machine": info(), "results": R}, indent=2) + "\n")
    else:
        path = save(a.out, R)
    print(f"saved {path}\n")
    print(tables(json.loads(path.read_text())))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
