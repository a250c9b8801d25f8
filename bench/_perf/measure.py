"""The child side of ``python -m bench perf``: each measurement runs in its own process
(``python -m bench.perf --child SPEC``), reads its frames from a .npy file and writes its
figures to the spec's result file, so that its peak RSS is its own."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


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
    from trainer.export import random_enet
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
    from operators.sinks.mjpeg_avi import MjpegAvi
    avi = MjpegAvi(Path(spec["result"]).with_suffix(".turbo.avi"), img.shape[1::-1], 10)
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
        "overlay MJPG, FFmpeg VideoWriter.write (before)": lambda: vw.write(over),
        "overlay MJPG, libjpeg-turbo MjpegAvi.write (sinks now)": lambda: avi.write(over),
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
    avi.close()
    sizes = {"png_level1_bytes": len(png()[1]),
             "png_rle_bytes": len(cv2.imencode(".png", cm, rle)[1])}
    return {"ms": out, "sizes": sizes, "note": "synthetic blocky class map; one OpenCV thread"}


def child_main(path: str) -> int:
    spec = json.loads(Path(path).read_text())
    from .. import _backends
    fn = {"ort": child_ort, "ort_frames": child_ort_frames_parallel, "torch": child_torch, "decode": child_decode, "profile": child_profile,
          "sinkcost": child_sinkcost, "ov": _backends.child_ov, "agree": _backends.child_agree}[spec["kind"]]
    res = fn(spec)
    Path(spec["result"]).write_text(json.dumps(res))
    return 0
