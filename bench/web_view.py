"""The live view's cost: the segment flow's FPS without the view, with it on and nobody
watching, and with one viewer, side by side in one run.

    python -m bench web_view                      # 300 frames of the sample clip, 3 rounds
    python -m bench web_view --frames 20 --rounds 1   # a quick check that it runs

Each round runs the three modes one after the other (off, idle, viewer), so a change in
the machine's load hits them alike; the figures are the medians over rounds. The viewer is
a separate process that does what the page does (the picture every 0.25 s once the last
arrived, the state every 0.5 s), so its own CPU is not the flow's. FPS is the flow's
(``Stats.fps``: frames scored over the time between the first and the last); CPU-ms per
frame is this process's CPU time over the run divided by the frames. Writes
``bench/results/web_view.json``.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .machine import free_port as _free_port, save

REPO = Path(__file__).resolve().parents[1]
MODES = ("off", "idle", "viewer")

VIEWER = r"""
import sys, time, urllib.request
base, stream = sys.argv[1], sys.argv[2]
last_state = 0.0
while True:
    try:
        urllib.request.urlopen(base + "api/frame.jpg?stream=" + stream, timeout=10).read()
    except Exception:
        pass
    if time.monotonic() - last_state >= 0.5:
        last_state = time.monotonic()
        try:
            urllib.request.urlopen(base + "api/state", timeout=10).read()
        except Exception:
            pass
    time.sleep(0.25)
"""


def _cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def trust(home: Path, model: str) -> None:
    """Register the blob on the embedded chain in ``home`` (once) so the flow accepts it."""
    import chain
    import model_store
    reg = chain.connect(chain="embedded", home=home)
    key = model_store.verify(model)
    if not reg.status(key).registered:
        reg.register(key, model_store.read_header(model).name or "bench", Path(model).resolve().as_uri())


def run_once(mode: str, tmp: Path, frames: int, source: str, model: str, threads: int,
             providers: str = "auto") -> dict:
    from bytewax.testing import run_main

    from dataflows.segment import build_flow
    from operators.config import load_config
    from web.flow import build_flow as build_flow_with_view
    out = tmp / f"out-{mode}-{time.monotonic_ns()}"
    env = {"VERISEG_SOURCE": source, "VERISEG_MODEL": model, "VERISEG_OUT": str(out),
           "VERISEG_HOME": str(tmp / "home"), "VERISEG_LOOP": "1",
           "VERISEG_MAX_FRAMES": str(frames), "VERISEG_PROGRESS": "0",
           "VERISEG_PROVIDERS": providers}
    if threads:
        env["VERISEG_THREADS"] = str(threads)
    port = _free_port()
    if mode != "off":
        env["VERISEG_WEB"] = f"127.0.0.1:{port}"
    flow = (build_flow if mode == "off" else build_flow_with_view)(load_config(env))
    ctx = flow.context
    viewer = None
    if mode == "viewer":
        viewer = subprocess.Popen([sys.executable, "-c", VIEWER, ctx.views[0].url, ctx.config.stream_ids[0]],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c0, t0 = _cpu(), time.perf_counter()
        run_main(flow)
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
    finally:
        if viewer is not None:
            viewer.terminate()
            viewer.wait(10)
    n = sum(ctx.stats.scored.values())
    return {"mode": mode, "frames": n, "fps": round(ctx.stats.fps(), 3), "wall_s": round(wall, 2),
            "cpu_ms_per_frame": round(cpu * 1e3 / max(1, n), 2),
            "jpegs_encoded": sum(v.encoded for v in ctx.views)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench web_view", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=300, help="frames per run (the clip loops)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--source", default=str(REPO / "models" / "sample.avi"))
    ap.add_argument("--model", default=str(REPO / "models" / "carla-enet.vsb"))
    ap.add_argument("--threads", type=int, default=0, help="ORT threads (0: the flow's default)")
    ap.add_argument("--providers", default="auto", help="VERISEG_PROVIDERS of the flow")
    ap.add_argument("--no-save", action="store_true", help="print only (a quick check)")
    a = ap.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        trust(Path(tmp) / "home", a.model)
        for r in range(a.rounds):
            for mode in MODES:
                res = run_once(mode, Path(tmp), a.frames, a.source, a.model, a.threads, a.providers)
                res["round"] = r
                runs.append(res)
                print(f"round {r} {mode:<6} {res['fps']:7.2f} FPS  {res['cpu_ms_per_frame']:7.2f} "
                      f"CPU-ms/frame  {res['jpegs_encoded']} JPEGs", flush=True)
    med = {m: {k: statistics.median(x[k] for x in runs if x["mode"] == m)
               for k in ("fps", "cpu_ms_per_frame")} for m in MODES}
    summary = {"median": med,
               "viewer_over_off_fps": round(med["viewer"]["fps"] / med["off"]["fps"], 4)
               if med["off"]["fps"] else None,
               "idle_over_off_fps": round(med["idle"]["fps"] / med["off"]["fps"], 4)
               if med["off"]["fps"] else None}
    print(f"FPS with one viewer / without the view: {summary['viewer_over_off_fps']} "
          f"(idle view: {summary['idle_over_off_fps']})")
    if not a.no_save:
        print(save("web_view", {"frames": a.frames, "rounds": a.rounds, "source": a.source,
                                "model": a.model, "summary": summary, "runs": runs}))
    return 0
