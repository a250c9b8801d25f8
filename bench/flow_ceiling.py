"""The main job's share of its model's raw speed, and the flow's own ceiling, side by side.

    python -m bench flow_ceiling [--rounds 2] [--frames 400] [--only fp32,int8,free] [--out NAME]

Every row is its own process on the sample clip, looped to ``--frames`` a stream, with every
default sink on (masks, overlay video, JSON lines, anchors every 100 frames on a fresh
embedded chain). Rounds alternate the rows, so a drift of the machine spreads over all.

- **raw**: the blob compiled exactly as the flow compiles it (``operators.sessions``: same
  backend, threads, precision) on the clip's frames preloaded at the model's size: one run
  at a time (``sync``) and with the runner's own runs in flight (``pipelined``, as the
  flow submits). The raw speed a flow is compared with is the better of the two.
- **flow**: ``python -m bytewax.run dataflows.segment``: the fp32 blob, the int8 blob and a
  *near-free* model (the same input and output, class = R // 32), whose
  FPS is the flow's own ceiling; 1, 4 and (the blobs) 8 streams, 1 and 2 workers (``-w``), two processes
  (``-i/-a``), and the cross-stream batcher (``VERISEG_BATCH`` 1 against 4, 4 streams).

Steady state only: FPS and CPU are read between the first results line and the last look
before the process ends, so start-up (imports, compile, chain) is not counted. CPU a frame
is split by thread (``/proc/<pid>/task``, by the names ``operators.telemetry.name_os_thread``
gives): decode (``veriseg-src-*``), sinks (``veriseg-sink-*``), Bytewax's thread (the score
stage and the operators), other helpers (anchors, metrics, the model reader, the runners'
submitters), inference (the threads the runtime starts itself).
``--gpu``: the rows a GPU box needs (the fp32 blob alone at batch 1 and 8, the main job with
1, 4 and 8 streams, each with its provider, latency p50/p99 and the GPU's utilisation from
``nvidia-smi``), one command for a lent GPU machine.
Results: ``bench/results/flow_ceiling.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ._environment import child_environment
from .machine import free_port, save

REPO = Path(__file__).resolve().parents[1]
BLOBS = {"fp32": REPO / "models" / "carla-enet.vsb", "int8": REPO / "models" / "carla-enet-int8.vsb"}
_TICK = os.sysconf("SC_CLK_TCK")


# -- the near-free model ----------------------------------------------------------------

def near_free_blob(path: Path, like: Path) -> tuple[Path, str]:
    """A blob with ``like``'s card and input and output (uint8 NHWC in, uint8 class map out)
    whose graph costs almost nothing: class = R // 32 (ids 0..7)."""
    import onnx
    from onnx import TensorProto, helper

    import model_store
    card, _ = model_store.load(str(like), model_store.verify(str(like)))
    inp, out = card.inputs[0], card.outputs[0]
    assert len(card.classes) >= 8, "R // 32 gives class ids 0..7"
    dims = lambda shape: [d if isinstance(d, int) else "N" for d in shape]   # noqa: E731
    x = helper.make_tensor_value_info(inp.name, TensorProto.UINT8, dims(inp.shape))
    y = helper.make_tensor_value_info(out.name, TensorProto.UINT8, dims(out.shape))
    inits = [helper.make_tensor("s0", TensorProto.INT64, [1], [0]),
             helper.make_tensor("s1", TensorProto.INT64, [1], [1]),
             helper.make_tensor("ax", TensorProto.INT64, [1], [3]),
             helper.make_tensor("k", TensorProto.FLOAT, [], [1 / 32])]
    # in float: OpenVINO's CPU rounds where ONNX floors a uint8 Div or BitShift
    nodes = [helper.make_node("Slice", [inp.name, "s0", "s1", "ax"], ["r8"]),
             helper.make_node("Cast", ["r8"], ["r"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["r", "k"], ["q"]),
             helper.make_node("Floor", ["q"], ["fl"]),
             helper.make_node("Squeeze", ["fl", "ax"], ["sq"]),
             helper.make_node("Cast", ["sq"], [out.name], to=TensorProto.UINT8)]
    m = helper.make_model(helper.make_graph(nodes, "near_free", [x], [y], inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    free_card = dataclasses.replace(card, name="near-free", description="flow ceiling benchmark: "
                                    "the shipped card's input and output, class = R // 32")
    key = model_store.write(str(path), m.SerializeToString(), free_card)
    return path, key


# -- raw: the compiled model alone ---------------------------------------------------------

def _preloaded(entry, n: int) -> list[np.ndarray]:
    from operators.config import load_config
    from operators.frames import Frame
    from operators.sources import open_reader
    spec = load_config({}).source[0]        # the sample clip
    reader = open_reader(spec, colour=entry.pre.colour)
    reader.open(0)
    frames = []
    while len(frames) < n:
        got = reader.read()
        if got is None:
            break
        f = entry.pre(Frame(spec.stream_id, got.seq, 0.0, got.pos, got.image, colour=got.colour))
        frames.append(np.ascontiguousarray(f.image[None]))
    reader.close()
    return frames


def raw(blob: Path, frames: int, batch: int = 1) -> dict:
    """The blob's compiled model, as the flow compiles it, on preloaded frames, ``batch``
    frames a run."""
    import model_store
    from operators.config import load_config
    from operators.sessions import build_session
    cfg = load_config({})
    key = model_store.verify(str(blob))
    card, onnx = model_store.load(str(blob), key)
    entry = build_session(onnx, key=key, card=card, backend=cfg.backend, providers=cfg.providers,
                          threads=cfg.threads, hint=cfg.openvino_hint, ov_device=cfg.openvino_device,
                          precision=cfg.precision)
    clip = _preloaded(entry, 60)
    runs = max(1, frames // batch)
    xs = [np.concatenate([clip[(i * batch + j) % len(clip)] for j in range(batch)]) for i in range(runs)]
    frames = runs * batch
    runner = entry.runner
    out = {"profile": str(runner.profile), "how": runner.how, "depth": runner.depth, "batch": batch,
           "provider": entry.provider}
    for mode in ("sync", "pipelined"):
        for x in xs[:4]:
            runner.run(x)
        c0, t0 = time.process_time(), time.perf_counter()
        if mode == "sync":
            for x in xs:
                runner.run(x)
        else:
            inflight = []
            for x in xs:
                inflight.append(runner.submit(x))
                while len(inflight) >= runner.depth:
                    inflight.pop(0).result()
            for p in inflight:
                p.result()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[mode] = {"fps": round(frames / wall, 2), "cpu_ms_per_frame": round(cpu * 1e3 / frames, 2)}
    out["fps"] = max(out["sync"]["fps"], out["pipelined"]["fps"])
    runner.close()
    return out


def _raw_child(blob: Path, frames: int, batch: int = 1) -> dict:
    p = subprocess.run([sys.executable, "-m", "bench", "flow_ceiling", "--raw", str(blob),
                        "--frames", str(frames), "--raw-batch", str(batch)], cwd=REPO, env=child_environment(),
                       capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise SystemExit(f"flow_ceiling: raw {blob.name} failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# -- flow: the main job --------------------------------------------------------------------

def _stage(tid: int, pid: int, name: str) -> str:
    """The stage a thread works for, by the name it gives the OS (operators.telemetry)."""
    if tid == pid:
        return "bytewax"
    if name.startswith("veriseg-src"):
        return "decode"
    if name.startswith("veriseg-sink"):
        return "sinks"
    if name.startswith("veriseg-"):     # anchors, metrics, the model reader, the runners' submitters
        return "other"
    return "inference"                  # the runtime's own pool (OpenVINO's TBB, ORT's intra-op)


def _threads(pid: int) -> dict[int, tuple[str, float]]:
    """Every thread of ``pid``: (name, CPU seconds so far)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / _TICK)
    return found


def _gpu_busy() -> float | None:
    """The first NVIDIA GPU's utilisation now, in %, or None without nvidia-smi."""
    try:
        p = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=5)
        return float(p.stdout.split()[0]) if p.returncode == 0 and p.stdout.strip() else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def _lines(out: Path) -> int:
    n = 0
    for f in out.glob("*/results.jsonl"):
        try:
            with open(f, "rb") as fh:
                n += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 16), b""))
        except OSError:
            pass
    return n


def flow(blob: Path, *, streams: int, frames: int, work: Path, workers: int = 1,
         processes: int = 1, env: dict | None = None) -> dict:
    """One run of the main job; steady-state FPS and CPU a frame by stage."""
    from bench._perf.inputs import register
    import model_store
    register(work / "home", blob, model_store.verify(str(blob)))
    clip = REPO / "models" / "sample.avi"
    out = work / "out"
    child = child_environment({
        "VERISEG_SOURCE": ";".join(f"cam{i}@{clip}" for i in range(streams)),
        "VERISEG_MODEL": str(blob), "VERISEG_LOOP": "1", "VERISEG_MAX_FRAMES": str(frames),
        "VERISEG_OUT": str(out), "VERISEG_HOME": str(work / "home"), "VERISEG_PROGRESS": "0",
        "VERISEG_METRICS_LINGER_S": "0", **(env or {})})
    cmd = [sys.executable, "-m", "bytewax.run", "dataflows.segment", "-w", str(workers)]
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    procs = []
    for i in range(processes):
        extra = ["-i", str(i), "-a", addresses] if processes > 1 else []
        log = open(work / f"p{i}.log", "wb")
        procs.append(subprocess.Popen(cmd + extra, cwd=REPO, env=child, stdout=subprocess.DEVNULL, stderr=log))
        log.close()
    first = last = None           # (time, frames, {tid: (stage, cpu)}) at the window's ends
    seen: dict[tuple[int, int], tuple[str, float]] = {}
    gpu: list[float] = []
    watch_gpu = _gpu_busy() is not None
    while any(p.poll() is None for p in procs):
        time.sleep(0.1)
        threads = {}
        for p in procs:
            for tid, (name, cpu) in _threads(p.pid).items():
                threads[(p.pid, tid)] = (_stage(tid, p.pid, name), cpu)
        if not all(p.poll() is None for p in procs):
            break
        n = _lines(out)
        seen.update(threads)
        if n and first is None:
            first = (time.perf_counter(), n, dict(threads))
        elif first is not None:
            last = (time.perf_counter(), n, dict(seen))
            busy = _gpu_busy() if watch_gpu else None
            if busy is not None:
                gpu.append(busy)
    for p in procs:
        p.wait(timeout=600)
    logs = [(work / f"p{i}.log").read_text(errors="replace") for i in range(processes)]
    if any(p.returncode for p in procs):
        raise SystemExit(f"flow_ceiling: the main job failed: {logs[0].strip().splitlines()[-1:]} ")
    if first is None or last is None or last[1] <= first[1]:
        raise SystemExit("flow_ceiling: the run was too short to see a steady state: raise --frames")
    frames_done = last[1] - first[1]
    stage_cpu: dict[str, float] = {}
    for tid, (stage, cpu) in last[2].items():
        before = first[2].get(tid, (stage, 0.0))[1]
        stage_cpu[stage] = stage_cpu.get(stage, 0.0) + cpu - before
    summaries = [json.loads(s.read_text()) for s in sorted(out.glob("summary*.json"))]
    lat = [r["latency_ms"]["total"] for f in out.glob("*/results.jsonl") for r in map(json.loads, f.open())
           if "total" in r.get("latency_ms", {})]
    dropped = sum(s.get("dropped") or 0 for s in summaries)
    return {"fps": round(frames_done / (last[0] - first[0]), 2),
            "fps_summary": round(sum(s.get("fps") or 0 for s in summaries), 2),
            "scored": sum(s.get("scored") or 0 for s in summaries), "dropped": dropped,
            "cpu_ms_per_frame": round(sum(stage_cpu.values()) * 1e3 / frames_done, 2),
            "cpu_ms_by_stage": {k: round(v * 1e3 / frames_done, 2) for k, v in sorted(stage_cpu.items())},
            "latency_ms_p50_p99": [round(float(np.percentile(lat, q)), 1) for q in (50, 99)] if lat else None,
            "provider": next((s.get("provider") for s in summaries if s.get("provider")), None),
            "gpu_busy_pct": round(statistics.mean(gpu), 1) if gpu else None}


# -- the table -----------------------------------------------------------------------------

def gpu_rows() -> list[dict]:
    """A GPU box: the fp32 blob's model alone at batch 1 and 8, and the main job with 1, 4 and
    8 streams (VERISEG_BATCH auto: 8 on an NVIDIA provider)."""
    r = [{"name": "fp32 raw, batch 1", "model": "fp32", "raw": True, "batch": 1},
         {"name": "fp32 raw, batch 8", "model": "fp32", "raw": True, "batch": 8}]
    r += [{"name": f"fp32 flow, {n} stream{'s' if n > 1 else ''}", "model": "fp32", "streams": n}
          for n in (1, 4, 8)]
    return r


def rows(only: set[str]) -> list[dict]:
    r = []
    for model in ("fp32", "int8", "free"):
        if model not in only:
            continue
        r.append({"name": f"{model} raw", "model": model, "raw": True})
        r += [{"name": f"{model} flow, {n} stream{'s' if n > 1 else ''}", "model": model, "streams": n}
              for n in ((1, 4) if model == "free" else (1, 4, 8))]
    if "free" in only:
        r += [{"name": "free flow, 1 stream, -w 2", "model": "free", "streams": 1, "workers": 2},
              {"name": "free flow, 4 streams, -w 2", "model": "free", "streams": 4, "workers": 2},
              {"name": "free flow, 4 streams, 2 processes (-i/-a)", "model": "free", "streams": 4,
               "processes": 2}]
    if "int8" in only:
        r.append({"name": "int8 flow, 4 streams, VERISEG_BATCH=4", "model": "int8", "streams": 4,
                  "env": {"VERISEG_BATCH": "4"}})
    return r


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench flow_ceiling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--frames", type=int, default=400, help="frames a stream (default 400)")
    ap.add_argument("--only", default="fp32,int8,free", help="models: fp32,int8,free")
    ap.add_argument("--gpu", action="store_true",
                    help="the GPU box's rows: raw at batch 1 and 8, the main job with 1, 4, 8 streams")
    ap.add_argument("--out", default="flow_ceiling")
    ap.add_argument("--raw", help=argparse.SUPPRESS)          # child mode: one raw measurement
    ap.add_argument("--raw-batch", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.raw:
        print(json.dumps(raw(Path(a.raw), a.frames, a.raw_batch)))
        return 0
    only = set(a.only.split(","))
    table = gpu_rows() if a.gpu else rows(only)
    results: dict[str, list] = {row["name"]: [] for row in table}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        blobs = dict(BLOBS)
        blobs["free"], _ = near_free_blob(Path(tmp) / "near-free.vsb", BLOBS["fp32"])
        for rnd in range(a.rounds):
            for i, row in enumerate(table):
                work = Path(tmp) / f"r{rnd}-{i}"
                work.mkdir()
                if row.get("raw"):
                    got = _raw_child(blobs[row["model"]], a.frames, row.get("batch", 1))
                else:
                    got = flow(blobs[row["model"]], streams=row["streams"], frames=a.frames, work=work,
                               workers=row.get("workers", 1), processes=row.get("processes", 1),
                               env=row.get("env"))
                results[row["name"]].append(got)
                print(f"round {rnd + 1} {row['name']}: {got['fps']} FPS, "
                      f"{got.get('cpu_ms_per_frame', got.get('pipelined', {}).get('cpu_ms_per_frame'))} ms CPU",
                      flush=True)
    summary = {}
    for row in table:
        runs = results[row["name"]]
        fps = statistics.median(r["fps"] for r in runs)
        s = {"fps": fps}
        if not row.get("raw"):
            s["cpu_ms_per_frame"] = statistics.median(r["cpu_ms_per_frame"] for r in runs)
            raw_fps = max((v["fps"] for k, v in summary.items() if k.startswith(f"{row['model']} raw")),
                          default=None)
            if raw_fps and row["model"] != "free":
                s["of_raw"] = round(fps / raw_fps, 3)
        summary[row["name"]] = s
    doc = {"frames_per_stream": a.frames, "rounds": a.rounds, "load_before": load_before,
           "load_after": os.getloadavg(), "rows": table, "runs": results, "median": summary}
    path = save(a.out, doc)
    for name, s in summary.items():
        print(f"{name:<48} {s['fps']:>8.1f} FPS" + (f"  {s['of_raw']:.2f} of raw" if "of_raw" in s else ""))
    print(path)
    return 0
