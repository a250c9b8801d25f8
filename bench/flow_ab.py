"""The main job's FPS in two checkouts, alternated in one run: did a change slow the flow?

    python -m bench flow_ab --before /path/to/old/checkout [--after .] [--rounds 3] [--frames 600]

Each round runs ``python -m bytewax.run dataflows.segment`` once in each checkout on the
sample clip looped to ``--frames`` frames, every default sink on (masks, overlay video, JSON
lines, anchors every 100 frames on the embedded chain), and reads the FPS from the run's
``summary.json``. Alternating the two (ABAB...) spreads any drift of a shared machine over
both. ``--env K=V`` applies to both (e.g. ``VERISEG_BACKEND=onnxruntime``; a
``VERISEG_MODEL=path.vsb``, relative to each checkout, is registered on each run's fresh
embedded chain first). Writes
bench/results/flow_ab.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._environment import child_environment
from .machine import save


def _run(root: Path, frames: int, env_extra: dict, work: Path) -> dict:
    out = work / "out"
    blob = env_extra.get("VERISEG_MODEL", "")
    if blob.endswith(".vsb"):        # another blob than the demo's: registered on this run's chain
        import model_store
        from bench._perf.inputs import register
        path = (root / blob).resolve()
        register(work / "home", path, model_store.verify(str(path)))
    env = child_environment({"VERISEG_LOOP": "1", "VERISEG_MAX_FRAMES": str(frames), "VERISEG_OUT": str(out),
                             "VERISEG_HOME": str(work / "home"), "VERISEG_PROGRESS": "0", **env_extra})
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflows.segment"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"flow_ab: {root}: the main job failed (exit {p.returncode}): "
                         f"{(p.stderr.strip().splitlines() or ['?'])[-1]}")
    s = json.loads((out / "summary.json").read_text())
    return {"fps": s.get("fps"), "scored": s.get("scored"), "dropped": s.get("dropped"),
            "bad": s.get("bad"), "wall_s": round(wall, 2)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench flow_ab", description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="checkout of the code before the change")
    ap.add_argument("--after", default=".", help="checkout with the change (default: here)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--env", action="append", default=[], metavar="K=V")
    ap.add_argument("--out", default="flow_ab")
    a = ap.parse_args(argv)
    extra = dict(kv.split("=", 1) for kv in a.env)
    roots = {"before": Path(a.before).resolve(), "after": Path(a.after).resolve()}
    runs: dict = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for name, root in roots.items():
                work = Path(tmp) / f"{name}-{r}"
                runs[name].append(_run(root, a.frames, extra, work))
                print(f"round {r + 1} {name}: {runs[name][-1]['fps']} FPS", flush=True)
    med = {k: statistics.median(x["fps"] for x in v) for k, v in runs.items()}
    result = {"load_before": os.getloadavg(), "frames": a.frames, "env": extra,
              "checkouts": {k: str(v) for k, v in roots.items()}, "runs": runs,
              "median_fps": med, "after_over_before": round(med["after"] / med["before"], 4)}
    path = save(a.out, result)
    print(f"median FPS before {med['before']:.2f}, after {med['after']:.2f} "
          f"(ratio {result['after_over_before']}); {path}")
    return 0
