"""The parent side of ``python -m bench perf``: a child process per measurement (through a small
launcher, so its peak RSS is its own), the flow run under ``bytewax.run`` and read back from its
outputs, one printed line per row."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from bench._environment import child_environment

from .measure import _pct

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


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
        self.env = child_environment({"OMP_NUM_THREADS": str(a.threads)}, path_first=REPO)

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
