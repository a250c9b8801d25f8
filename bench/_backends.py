"""The backend rows of ``python -m bench perf``, one run, same frames and graph:

- raw ONNX Runtime vs raw OpenVINO with its LATENCY hint (one synchronous request, all
  threads) and its THROUGHPUT hint (an AsyncInferQueue of the optimal number of requests,
  the way the flow runs it), each with its compile time, CPU ms a frame and peak RSS;
  OpenVINO compiles the graph the flow compiles (``ov_graph``'s exact arg-max rewrite), and
  once more as read, for what that rewrite gains;
- int8: the same graph quantised by NNCF (``trainer.quantize.quantize_onnx``) on CARLA
  frames of the training part, packed as its own blob, on both runtimes (class maps
  compared with fp32 on the benchmark frames; the card's accuracy comes from
  ``python -m trainer quantize``);
- the flow (``dataflows.segment``, every default sink) on each backend, and on int8;
- the cost curve 256² / 512² / 1024² per backend (random-weight ENet exported at each size);
- the flow's per-stage CPU budget: decode + resize (one thread), inference (the backend's
  CPU ms a frame), the sinks' single-thread costs.

Part of ``bench.perf`` (which calls :func:`run_section` and :func:`tables`), kept apart so
that module stays readable; the leading underscore keeps it out of ``python -m bench``'s list.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from ._table import cell as _f, markdown

__all__ = ["child_ov", "child_agree", "run_section", "tables"]


# =========================================================================== child side
def child_ov(spec: dict) -> dict:
    """Raw OpenVINO on preloaded frames: LATENCY (sync) or THROUGHPUT (async queue)."""
    import openvino as ov
    from bench._perf.measure import _CPU, _pct, _timed_loop
    frames = np.load(spec["frames"], mmap_mode="r")
    frames = np.ascontiguousarray(frames[: spec.get("limit", len(frames))])
    hint = spec.get("hint", "LATENCY")
    core = ov.Core()
    t = time.perf_counter()
    model = core.read_model(Path(spec["model"]).read_bytes())
    if spec.get("rewrite", True):          # the graph the flow compiles (operators.backends.ov)
        import sys
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from operators.backends.ov_graph import argmax_innermost
        argmax_innermost(model)
    # the flow's pinned precision (operators/backends/precision.py): the CPU plugin's own
    # default is bf16 where the CPU has native bf16
    cfg = {"PERFORMANCE_HINT": hint, "CACHE_DIR": "", "INFERENCE_NUM_THREADS": int(spec.get("threads", 2)),
           "INFERENCE_PRECISION_HINT": spec.get("precision", "f32")}
    compiled = core.compile_model(model, "CPU", cfg)
    compile_ms = (time.perf_counter() - t) * 1e3
    nreq = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    info = {"hint": hint, "streams": int(compiled.get_property("NUM_STREAMS")), "requests": nreq,
            "compile_ms": round(compile_ms, 1), "openvino": ov.get_version().split("-")[0]}
    seconds, min_frames = spec.get("seconds", 6.0), spec.get("min_frames", 20)
    if hint == "LATENCY":
        req = compiled.create_infer_request()
        fps, lat = _timed_loop(lambda x: req.infer({0: x}), frames, 1, seconds, min_frames)
        return dict(info, fps=round(fps, 2), p50_ms=_pct(lat, 50), p99_ms=_pct(lat, 99), batch=1,
                    cpu_ms_per_frame=_CPU.get("ms_per_frame"))
    q = ov.AsyncInferQueue(compiled, nreq)
    lat: list = []
    q.set_callback(lambda r, t0: lat.append((time.perf_counter() - t0) * 1e3))
    for i in range(2 * nreq):                                      # warm-up
        q.start_async({0: frames[i % len(frames)][None]}, time.perf_counter())
    q.wait_all()
    lat.clear()
    done, i = 0, 0
    c0, t0 = time.process_time(), time.perf_counter()
    while True:
        q.start_async({0: frames[i % len(frames)][None]}, time.perf_counter())
        i += 1
        el = time.perf_counter() - t0
        if (el >= seconds and i >= min_frames) or el > 4 * seconds + 60:
            break
    q.wait_all()
    el = time.perf_counter() - t0
    done = i
    return dict(info, fps=round(done / el, 2), p50_ms=_pct(lat, 50), p99_ms=_pct(lat, 99), batch=1,
                cpu_ms_per_frame=round((time.process_time() - c0) * 1e3 / done, 2))


def child_agree(spec: dict) -> dict:
    """Share of pixels where each model's class map equals the reference's (ONNX Runtime
    on the first model), on the benchmark frames."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from model_store.blob_key import unpacked_key
    from operators.backends import compile_verified
    frames = np.load(spec["frames"], mmap_mode="r")[: spec.get("limit", 16)]
    ref_bytes = Path(spec["reference"]).read_bytes()
    ref_r, _ = compile_verified(ref_bytes, key=unpacked_key(ref_bytes), backend="onnxruntime", providers="cpu")
    ref = np.concatenate([ref_r.run(np.ascontiguousarray(f[None])) for f in frames])
    out = {}
    for label, (path, backend) in spec["models"].items():
        onnx_bytes = Path(path).read_bytes()
        r, _ = compile_verified(onnx_bytes, key=unpacked_key(onnx_bytes), backend=backend, providers="cpu")
        got = np.concatenate([r.run(np.ascontiguousarray(f[None])) for f in frames])
        out[label] = round(float((got == ref).mean()), 5)
    return {"agreement_with_ort_fp32": out, "frames": len(frames)}


# =========================================================================== parent side
def _ov_available() -> bool:
    try:
        import openvino  # noqa: F401
        return True
    except ImportError:
        return False


def _int8_model(s, model: dict, work: Path, size: int, calib_n: int) -> Optional[dict]:
    """The bench model quantised by NNCF on CARLA training-part frames, as its own blob."""
    from bench._perf.inputs import carla_dir, register, variant_blob
    if getattr(s.a, "int8_blob", None):     # the shipped int8 blob, as `trainer quantize` wrote it
        import model_store
        key = model_store.verify(s.a.int8_blob)
        card, q = model_store.load(s.a.int8_blob, expected_key=key)
        register(work / "home", Path(s.a.int8_blob), key)
        path = work / "model-int8.onnx"
        path.write_bytes(q)
        cal = (card.training_params.get("quantization") or {}).get("calibration") or {}
        return dict(model, onnx=path, blob=Path(s.a.int8_blob), key=key, card=card,
                    what=f"{s.a.int8_blob} ({card.algorithm})", quantise_s=None,
                    calibration_frames=cal.get("frames"))
    d = carla_dir()
    if d is None:
        s.log("  int8: no CARLA frames: skipped")
        return None
    try:
        from trainer.data import find_pairs
        from trainer.quantize import _frames, calibration_indices, quantize_onnx
        pairs = find_pairs(d)
        cal, _ = calibration_indices(len(pairs), calib_n)
        t = time.perf_counter()
        q = quantize_onnx(model["onnx"].read_bytes(), _frames(pairs, cal, (size, size)))
        qs = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 - report, keep the suite going
        s.log(f"  int8: quantisation failed: {type(e).__name__}: {e}")
        return None
    s.log(f"  int8: NNCF on {len(cal)} training-part frames in {qs:.0f} s, {len(q)} bytes")
    m = variant_blob(work, model, "int8", q, model["what"] + ", int8 (NNCF, QDQ)")
    m["quantise_s"] = round(qs, 1)
    m["calibration_frames"] = len(cal)
    return m


def run_section(s, a, base: dict, model: dict, clip: Path, fpath: Path, work: Path, frames: np.ndarray) -> dict:
    """Every backend row; ``s`` is bench.perf's Suite, ``base`` its raw ORT child spec."""
    from bench._perf.suite import run_flow
    R: dict = {}
    if not _ov_available():
        s.log("  OpenVINO is not installed: backend rows skipped (pip install openvino)")
        return {"skipped": "openvino not installed"}
    ov_base = {"kind": "ov", "model": base["model"], "frames": base["frames"], "seconds": a.seconds,
               "min_frames": base["min_frames"], "threads": a.threads}
    size = a.size
    raw = {"ort": s.child(base, f"raw ORT {size}² (flow settings)"),
           "ov_latency": s.child(dict(ov_base, hint="LATENCY"), f"raw OpenVINO {size}² LATENCY"),
           "ov_throughput": s.child(dict(ov_base, hint="THROUGHPUT"), f"raw OpenVINO {size}² THROUGHPUT"),
           # the same without operators.backends.ov_graph's exact rewrite: what the rewrite gains
           "ov_throughput_as_read": s.child(dict(ov_base, hint="THROUGHPUT", rewrite=False),
                                            f"raw OpenVINO {size}² THROUGHPUT, graph as read (no arg-max rewrite)")}
    flows = {}

    def flow(m, b, label, hint="throughput"):
        """The flow on backend ``b``, its start-up (a 1-frame run, same backend: OpenVINO
        compiles at start) taken off its CPU and wall time."""
        saved = s.startup_cpu, s.startup_wall
        s.startup_cpu = s.startup_wall = None
        env = {"VERISEG_BACKEND": b, "VERISEG_OPENVINO_HINT": hint}
        if not a.quick:
            up = run_flow(s, m, clip, label=f"{label}: start-up only (1 frame)", frames=1, extra=env)
            s.startup_cpu, s.startup_wall = up.get("cpu_s"), up.get("wall_s")
        r = run_flow(s, m, clip, label=label, frames=a.frames, extra=env)
        s.startup_cpu, s.startup_wall = saved
        return r
    for b in ("onnxruntime", "openvino"):
        flows[b] = flow(model, b, f"flow on {b}")
    # one stream on both cores, two frames in flight: on 2 cores the flow's own threads
    # (decode, sinks) compete with THROUGHPUT's two single-thread streams
    flows["openvino_latency"] = flow(model, "openvino", "flow on openvino, LATENCY hint", "latency")
    q = None if a.quick else _int8_model(s, model, work, size, a.calib)
    if q is not None:
        qb = dict(base, model=str(q["onnx"]))
        raw["int8_ort"] = s.child(qb, f"raw ORT {size}² int8")
        raw["int8_ov_latency"] = s.child(dict(ov_base, model=str(q["onnx"]), hint="LATENCY"),
                                         f"raw OpenVINO {size}² int8 LATENCY")
        raw["int8_ov_throughput"] = s.child(dict(ov_base, model=str(q["onnx"]), hint="THROUGHPUT"),
                                            f"raw OpenVINO {size}² int8 THROUGHPUT")
        flows["openvino_int8"] = flow(q, "openvino", "flow on openvino, int8 blob")
        flows["openvino_int8_latency"] = flow(q, "openvino", "flow on openvino, int8 blob, LATENCY hint", "latency")
        R["int8"] = {"quantise_s": q["quantise_s"], "calibration_frames": q["calibration_frames"],
                     "bytes": q["onnx"].stat().st_size, "key": q["key"]}
    agree_models = {"openvino_fp32": (str(model["onnx"]), "openvino")}
    if q is not None:
        agree_models.update(int8_openvino=(str(q["onnx"]), "openvino"), int8_onnxruntime=(str(q["onnx"]), "onnxruntime"))
    R["agreement"] = s.child({"kind": "agree", "frames": str(fpath), "reference": str(model["onnx"]),
                              "models": agree_models, "limit": 8 if a.quick else 24}, "class maps vs ORT fp32")
    best = max((r.get("fps") or 0) for k, r in raw.items() if not k.startswith("int8"))
    for r in flows.values():
        if r.get("fps") and best:
            r["ratio_vs_best_raw_fp32"] = round(r["fps"] / best, 3)
    R["raw"], R["flow"] = raw, flows
    if not (a.quick or a.skip_curve):
        from trainer.export import export_random
        import cv2
        curve = []
        for sz in (256, 512, 1024):
            mp = work / f"random{sz}.onnx"
            if not mp.exists():
                mp.write_bytes(export_random("relu", sz))
            fr = work / f"frames{sz}.npy"
            if not fr.exists():
                np.save(fr, np.stack([cv2.resize(f, (sz, sz)) for f in frames[:40]]))
            mf = 20 if sz < 1024 else 8
            row = {"size": sz}
            for k, spec, label in (
                    ("ort", dict(base, model=str(mp), frames=str(fr), min_frames=mf), "ORT"),
                    ("ov_latency", dict(ov_base, model=str(mp), frames=str(fr), min_frames=mf, hint="LATENCY"),
                     "OpenVINO LATENCY"),
                    ("ov_throughput", dict(ov_base, model=str(mp), frames=str(fr), min_frames=mf, hint="THROUGHPUT"),
                     "OpenVINO THROUGHPUT")):
                row[k] = s.child(spec, f"raw {label} {sz}² (random relu)")
            curve.append(row)
        R["curve"] = curve
    return R


# ----------------------------------------------------------------------------- tables
def _row(name, r, extra="") -> list:
    if "error" in r:
        return [name, "failed", "", "", "", "", ""]
    return [name, _f(r.get("fps")), _f(r.get("p50_ms")), _f(r.get("p99_ms")), _f(r.get("cpu_ms_per_frame")),
            _f(r.get("peak_rss_mib"), 0), extra]


def tables(R: dict, size: int, main: dict) -> list[str]:
    """Markdown: backends, the cost curve per backend, the flow's per-stage CPU budget."""
    B = R.get("backends") or {}
    if not B.get("raw"):
        return []
    raw, flows = B["raw"], B["flow"]
    rows = []
    names = {"ort": "raw ONNX Runtime CPU", "ov_latency": "raw OpenVINO, LATENCY hint",
             "ov_throughput": "raw OpenVINO, THROUGHPUT hint",
             "ov_throughput_as_read": "raw OpenVINO, THROUGHPUT, graph as read (no arg-max rewrite)",
             "int8_ort": "raw ONNX Runtime, int8 blob",
             "int8_ov_latency": "raw OpenVINO, int8, LATENCY", "int8_ov_throughput": "raw OpenVINO, int8, THROUGHPUT"}
    for k, r in raw.items():
        note = ""
        if r.get("compile_ms") is not None:
            note = f"compile {r['compile_ms']:.0f} ms, {r.get('streams')} streams, {r.get('requests')} requests"
        rows.append(_row(names.get(k, k), r, note))
    for k, r in flows.items():
        note = f"{_f(r.get('ratio_vs_best_raw_fp32'), 2)} of the best raw fp32" if r.get("ratio_vs_best_raw_fp32") else ""
        if r.get("provider"):
            note += f"; {r['provider']}"
        rows.append(_row(f"**flow** (all default sinks), {k}", r, note))
    out = markdown([f"{size}² backend", "FPS", "p50 ms", "p99 ms", "CPU ms/frame", "peak RSS MiB", "notes"], rows)
    ag = (B.get("agreement") or {}).get("agreement_with_ort_fp32") or {}
    if ag:
        out += ["", "Class maps vs ONNX Runtime fp32 on the benchmark frames: "
                + ", ".join(f"{k} {100 * v:.2f} %" for k, v in ag.items()) + "."]
    if B.get("int8"):
        i8 = B["int8"]
        out += [f"int8: NNCF on {i8['calibration_frames']} training-part frames"
                + (f" in {i8['quantise_s']} s" if i8.get("quantise_s") else " (the shipped int8 blob)") + ", "
                f"{i8['bytes']} bytes of ONNX (accuracy on the validation frames: the int8 blob's card, "
                "`python -m trainer quantize`)."]
    if B.get("curve"):
        rows = []
        for c in B["curve"]:
            o, ll, tt = c["ort"], c["ov_latency"], c["ov_throughput"]
            rows.append([f"{c['size']}²", _f(o.get("fps")), _f(ll.get("fps")), _f(tt.get("fps")),
                         f"{_f(o.get('cpu_ms_per_frame'))} / {_f(ll.get('cpu_ms_per_frame'))} / "
                         f"{_f(tt.get('cpu_ms_per_frame'))}"])
        out += ["", *markdown(["input (random-weight ENet ReLU)", "ORT FPS", "OpenVINO LATENCY FPS",
                               "OpenVINO THROUGHPUT FPS", "CPU ms/frame ORT / OV-L / OV-T"], rows)]
    out += ["", *stage_budget(R, flows)]
    return out


def stage_budget(R: dict, flows: dict) -> list[str]:
    """The flow's CPU a frame, stage by stage (each measured alone, one thread) against the
    45 FPS budget on this machine's cores (cores x 1000 / 45 ms of CPU a frame)."""
    from bench.machine import info
    cores = info()["cores"] or 1
    dec = (R.get("main") or {}).get("decode") or {}
    sc = (R.get("sink_costs") or {}).get("ms") or {}
    raw = (R.get("backends") or {}).get("raw") or {}
    infer = raw.get("ov_throughput", {}).get("cpu_ms_per_frame")
    rows = [("decode + resize + colour (decoder thread)", dec.get("cpu_ms_per_frame")),
            ("inference, OpenVINO THROUGHPUT (all its threads)", infer)]
    for k, v in sc.items():
        if "(sinks now)" in k or k.startswith("anchor") or (k.startswith("overlay") and "JPEG" not in k):
            rows.append((f"sink: {k}", v))
    total = sum(v for _, v in rows if isinstance(v, (int, float)))
    fl = flows.get("openvino", {})
    cells = [[k, _f(v, 2), ""] for k, v in rows]
    cells.append(["sum of the stages", _f(total, 2), f"{100 * total / (1000 * cores / 45):.0f} % of the budget"])
    if fl.get("cpu_ms_per_frame"):
        cells.append(["the flow on openvino, measured whole (start-up taken off)", _f(fl["cpu_ms_per_frame"], 2), ""])
    return markdown(["stage (CPU ms a frame)", "ms", f"budget at 45 FPS on {cores} cores: {1000 * cores / 45:.1f} ms"],
                    cells)
