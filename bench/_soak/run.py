"""One soak: the flow started in a child process, the chain actions on their timeline (hot swaps,
a revocation, a fresh key), RSS and counters sampled, then the outputs read and checked into
the report."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model_store.blob_key import BlobKey

from ..machine import busy
from .chain_control import ChainControl, Models
from .checks import _check, check_run
from bench._environment import SOAK_STOP, child_environment

from .flow import STREAM
from .samples import _slope, read_counters, tree_rss_mib

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def schedule(duration: float, swap_every: float, revoke_gap: float) -> list[tuple[float, str]]:
    """(t, action) after the flow is ready: 'swap' every swap_every s (none in the last
    stretch, so the last key scores a while), 'revoke' in the middle of a swap interval near
    duration/2 followed by 'fresh' revoke_gap s later."""
    acts = []
    k = int((duration / 2) // swap_every)
    t_rev = (k + 0.5) * swap_every
    if t_rev + revoke_gap >= duration - 5:
        t_rev = duration / 2
    acts += [(t_rev, "revoke"), (t_rev + revoke_gap, "fresh")]
    guard = min(swap_every / 2, 15.0)
    i = 1
    while i * swap_every < duration - guard:
        t = i * swap_every
        if not (t_rev - 1 <= t <= t_rev + revoke_gap + 1):
            acts.append((t, "swap"))
        i += 1
    return sorted(acts)


def _busy() -> list[str]:
    try:
        return busy()
    except Exception:  # noqa: BLE001 - informative only
        return []


def run(a) -> dict:
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="veriseg-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    stop_file = work / "STOP"
    stop_file.unlink(missing_ok=True)
    duration = a.minutes * 60.0
    say = (lambda m: print(m, flush=True)) if not a.quiet else (lambda m: None)
    say(f"soak: work folder {work}; {a.minutes:g} min, swap every {a.swap_every:g}s, "
        f"{'anvil' if a.anvil else 'embedded'} chain, poll {a.poll:g}s")
    load0 = os.getloadavg()[0]
    busy0 = _busy()
    ctl = ChainControl(work, a.anvil)
    proc = None
    timeline: list = []
    rss: list = []
    counters: list = []
    t_launch = time.time()
    t_ready = None
    flow_rc = None
    err = None
    models = None
    try:
        models = Models(work, Path(a.blob))

        def act(action: str, key: str, reason: str = "", version=None, blob=None):
            t_sent = time.time()
            if action == "deploy":
                version = ctl.reg.deploy(a.deployment, key)
            else:
                ctl.reg.revoke(key, reason)
            t_mined = time.time()
            ev = {"action": action, "key": key, "version": version, "t_sent": t_sent,
                  "t_mined": t_mined, "tx_s": round(t_mined - t_sent, 3)}
            if blob is not None:
                ev["blob"] = str(blob)
            if reason:
                ev["reason"] = reason
            timeline.append(ev)
            return ev

        def new_key():
            path, key = models.next()
            ctl.reg.register(key, a.deployment, path.resolve().as_uri())
            return path, key

        path, key = new_key()
        act("deploy", key, blob=path)
        current = key
        env = child_environment(ctl.env, path_first=REPO)
        env.update({"VERISEG_SOURCE": f"{STREAM}@{Path(a.clip).resolve()}", "VERISEG_LOOP": "1",
                    "VERISEG_MODEL": a.deployment, "VERISEG_OUT": str(out), "VERISEG_PROGRESS": "0",
                    "VERISEG_POLL": str(a.poll), "VERISEG_MODEL_DIRS": str(models.dir),
                    "VERISEG_PROVIDERS": a.providers, SOAK_STOP: str(stop_file)})
        if a.threads:
            env["VERISEG_THREADS"] = str(a.threads)
        for kv in a.env or []:
            k, _, v = kv.partition("=")
            env[k] = v
        log = open(work / "flow.log", "wb")
        t_launch = time.time()
        proc = subprocess.Popen([PY, "-m", "bytewax.run", "bench.soak:soak_flow()"], cwd=str(work),
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        metrics = out / "metrics.prom"
        say(f"soak: flow pid {proc.pid} started; waiting for its first result")
        plan = None
        t_stop = None
        next_sample = time.time()
        while True:
            now = time.time()
            if proc.poll() is not None:
                flow_rc = proc.returncode
                break
            if now >= next_sample:
                c = read_counters(metrics)
                if t_ready is None and c["scored"] > 0:
                    t_ready = now
                    plan = [(t_ready + t, what) for t, what in schedule(duration, a.swap_every, a.revoke_gap)]
                    t_stop = t_ready + duration
                    say(f"soak: first result after {now - t_launch:.1f}s; {len(plan)} chain actions planned")
                rss.append([round(now - t_launch, 2), tree_rss_mib(proc.pid)])
                counters.append([round(now - t_launch, 2), c["decoded"], c["scored"], c["dropped"],
                                 round(c["fps"], 2)])
                next_sample = now + a.sample
                if not a.quiet and len(rss) % max(1, int(30 / a.sample)) == 0:
                    say(f"soak: t={now - t_launch:6.1f}s RSS {rss[-1][1]:.1f} MiB, read {c['decoded']}, "
                        f"scored {c['scored']}, dropped {c['dropped']}, {c['fps']:.1f} FPS")
            if t_ready is None and now - t_launch > a.startup_timeout:
                err = f"the flow scored nothing within {a.startup_timeout:g}s"
                break
            while plan and plan[0][0] <= now:
                _, what = plan.pop(0)
                if what == "revoke":
                    ev = act("revoke", current, reason="soak: revoked mid-run")
                    say(f"soak: t={now - t_launch:6.1f}s revoked {BlobKey(current).short}")
                else:
                    path, key = new_key()
                    ev = act("deploy", key, blob=path)
                    current = key
                    say(f"soak: t={now - t_launch:6.1f}s deployed {BlobKey(key).short} v{ev['version']} ({what})")
            if t_stop is not None and now >= t_stop:
                stop_file.touch()
                say(f"soak: t={now - t_launch:6.1f}s stop: the source ends, the flow drains")
                try:
                    flow_rc = proc.wait(a.drain_timeout)
                except subprocess.TimeoutExpired:
                    err = f"the flow did not end within {a.drain_timeout:g}s of the stop"
                break
            time.sleep(min(0.1, max(0.0, min(next_sample, plan[0][0] if plan else next_sample) - time.time())))
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            flow_rc = proc.returncode if flow_rc is None else flow_rc
        ctl.close()
    t_end = time.time()

    # -- read the outputs ------------------------------------------------------------------
    def rel(t):
        return None if t is None else round(t - t_launch, 3)
    rows = []
    res_file = out / STREAM / "results.jsonl"
    if res_file.exists():
        for line in res_file.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    err = err or f"{res_file}: a line is not JSON"
    summary = {}
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        err = err or "the flow wrote no summary.json"
    anchors = []
    for f in sorted((out / "anchors" / STREAM).glob("*.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        anchors.append({"file": f.name, "model_key": d.get("model_key"), "first_seq": d.get("first_seq"),
                        "last_seq": d.get("last_seq"), "anchored": bool(d.get("chain"))})
    res = check_run(rows, summary, timeline, poll=a.poll, handover=a.handover,
                    revoke_slack=a.revoke_slack, load_budget=a.load_budget, anchors=anchors)
    checks = res["checks"]
    _check(checks, "flow_ran_and_ended_cleanly", flow_rc == 0 and err is None and not summary.get("error"),
           f"exit status {flow_rc}; {err or summary.get('error') or 'drained and wrote its summary'}")

    # -- RSS ----------------------------------------------------------------------------------
    warm_t = (t_ready - t_launch + a.warmup) if t_ready else None
    good = [s for s in rss if s[1] > 0]
    swaps = [e["t_sent"] - t_launch for e in timeline[1:] if e["action"] == "deploy"]
    start_s = None
    if warm_t is not None:
        if swaps and swaps[0] <= warm_t + a.sample:   # the start RSS is one model's RSS
            before = [s for s in good if t_ready - t_launch <= s[0] <= swaps[0]]
            start_s = before[-1] if before else None
        if start_s is None:
            start_s = next((s for s in good if s[0] >= warm_t), None)
    rss_doc = {"samples_t_s_mib": rss, "warmup_s": a.warmup, "sample_s": a.sample,
               "note": "VmRSS of the flow process and its descendants (MiB, t from the launch); start = "
                       "first sample after the warm-up (counted from the first result), or the last one "
                       "before the first hot swap if that comes first; end = last sample before the stop. "
                       "cache_full: from 10 s after the flow loaded its third key (two hot swaps behind; the "
                       "score keeps only the newest ONNX Runtime session; start = median of the first three samples) "
                       "to the end; steady: the same from 10 s after the first key loaded after the revocation "
                       "(the frames held while no model was valid are then behind too): the leak indicator"}
    for d in res["keys"]:
        b = [s for s in good if s[0] <= d["t_deploy_sent"] - t_launch]
        d["rss_mib_before_deploy"] = b[-1][1] if b else None
    if start_s is not None and good:
        start, end = start_s[1], good[-1][1]
        post = [s for s in good if s[0] >= start_s[0]]
        rss_doc.update({"start_mib": start, "start_t_s": start_s[0], "end_mib": end, "end_t_s": good[-1][0],
                        "growth_mib": round(end - start, 1),
                        "growth_pct": round(100 * (end - start) / start, 2) if start else None,
                        "peak_mib": max(v for _, v in good),
                        "slope_mib_per_min_after_start": _slope(post)})
        def stretch(t_from):
            part = [s for s in good if s[0] >= t_from]
            if len(part) < 2:
                return None
            # the median of its first three samples: a swap builds a session before the
            # cache drops the oldest, so one sample can be a transient peak
            s0 = sorted(v for _, v in part[:3])[len(part[:3]) // 2]
            return {"start_mib": s0, "start_t_s": part[0][0], "growth_mib": round(end - s0, 1),
                    "growth_pct": round(100 * (end - s0) / s0, 2), "slope_mib_per_min": _slope(part)}
        loads = sorted(m["at"] for m in summary.get("models_loaded", []))
        if len(loads) >= 3:
            rss_doc["cache_full"] = stretch(loads[2] - t_launch + 10)
            # and once the frames held during the revocation gap are behind too
            after_rev = [d["t_loaded"] for d in res["keys"] if d["t_loaded"] and any(
                d["t_deploy_sent"] > v["t_mined"] for v in res["revocations"])]
            t_st = max([loads[2]] + after_rev[:1]) - t_launch + 10
            rss_doc["steady"] = stretch(t_st)
        if a.max_rss_growth is not None:
            _check(checks, "rss_growth_bounded", end - start <= a.max_rss_growth,
                   f"RSS {start:.1f} -> {end:.1f} MiB after the warm-up (+{end - start:.1f} MiB, "
                   f"limit {a.max_rss_growth:g} MiB)")
    res["passed"] = all(c["ok"] for c in checks)

    # -- FPS ----------------------------------------------------------------------------------
    fps = {"flow_summary": summary.get("fps"),
           "note": "flow_summary: the flow's own rate, results over first-to-last result time "
                   "(includes the revocation gap); after_warmup: scored frames per second from the RSS start "
                   "sample to the last sample (the revocation gap included)"}
    pc = [c for c in counters if start_s is not None and c[0] >= start_s[0]]
    if len(pc) >= 2 and pc[-1][0] > pc[0][0]:
        fps["after_warmup"] = round((pc[-1][2] - pc[0][2]) / (pc[-1][0] - pc[0][0]), 2)

    for d in res["keys"]:
        for k in ("t_deploy_sent", "t_deploy_mined", "t_loaded", "first_score_t", "last_score_t"):
            d[k] = rel(d[k])
    for d in res["revocations"]:
        for k in ("t_sent", "t_mined", "t_seen", "last_score_t"):
            d[k] = rel(d[k])
    tl = [dict(e, t_sent=rel(e["t_sent"]), t_mined=rel(e["t_mined"])) for e in timeline]
    doc = {
        "passed": res["passed"],
        "config": {"minutes": a.minutes, "swap_every_s": a.swap_every, "revoke_gap_s": a.revoke_gap,
                   "poll_s": a.poll, "chain": ctl.kind, "clip": str(a.clip), "base_blob": str(a.blob),
                   "base_key": models.base_key if models else None,
                   "deployment": a.deployment, "providers": a.providers, "threads": a.threads or "default",
                   "handover_s": a.handover, "revoke_slack_s": a.revoke_slack, "load_budget_s": a.load_budget,
                   "flow": "python -m bytewax.run 'bench.soak:soak_flow()' (dataflows.segment's build; "
                           "VERISEG_LOOP=1, every sink on, anchors every 100)",
                   "extra_env": a.env or []},
        "times": {"note": "seconds from the flow's launch", "ready_s": rel(t_ready),
                  "soak_s": round(duration, 1), "end_s": rel(t_end), "flow_exit_status": flow_rc},
        "checks": checks,
        "timeline": tl,
        "frames": res["frames"],
        "keys": res["keys"],
        "revocations": res["revocations"],
        "fps": fps,
        "rss": rss_doc,
        "counters_t_read_scored_dropped_fps": counters,
        "anchors": {"batches": len(anchors), "anchored": sum(1 for b in anchors if b["anchored"]),
                    "sent_by_flow": summary.get("anchors_sent"), "failures": summary.get("anchor_failures")},
        "provider": summary.get("provider"),
        "load_1min": {"before": round(load0, 2), "after": round(os.getloadavg()[0], 2)},
        "busy_before": busy0, "busy_after": _busy(),
        "work": str(work),
    }
    if not res["passed"]:
        try:
            doc["flow_log_tail"] = (work / "flow.log").read_text(errors="replace")[-3000:]
        except OSError:
            pass
    if not a.keep and not a.work:
        shutil.rmtree(work, ignore_errors=True)
        doc["work"] = None
    return doc
