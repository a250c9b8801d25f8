"""A perf.json document as Markdown (docs/performance.md): every section, or one."""
from __future__ import annotations

from typing import Optional

from .._table import cell as _f, markdown


def tables(doc: dict, part: Optional[str] = None) -> str:
    """Markdown (docs/performance.md) from a perf.json document: every section, or
    one of main | curve | experiments | int8 | profile | sinks."""
    R, m = doc["results"], doc["machine"]
    M = R["main"]
    size = R["inputs"]["size"]
    sec: dict[str, list[str]] = {}
    from .. import _backends
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
