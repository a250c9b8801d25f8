"""Soak test: the real flow for N minutes with hot swaps, one revocation and RSS over time.

    python -m bench soak [--minutes 10] [--swap-every 60] [--anvil] [--out PATH]

Loopback only, bounded in time.  The script owns a fresh chain (the embedded chain in a
temporary ``VERISEG_HOME``, or an anvil node on 127.0.0.1 with ``--anvil``), packs the
trained model (``models/carla-enet.vsb``) again with a different card description for each
deploy (same ONNX, different key), registers and deploys it under the deployment the flow
follows (``VERISEG_MODEL=<name>``), and runs the flow in a child process::

    python -m bytewax.run "bench.soak:soak_flow()"

which is ``dataflows.segment``'s own build (``build_flow`` from the ``VERISEG_*``
environment, every sink on, anchoring every 100 frames) on the looped sample clip
(``VERISEG_LOOP=1``); the only addition is that the source ends, like a file that ends,
when the script creates a stop file, so the flow drains and writes its summary.

Timeline (t = 0 when the flow scored its first frame): a new key is deployed every
``--swap-every`` s; in the middle the key in use is revoked and, ``--revoke-gap`` s later,
a fresh key is deployed.  RSS (``VmRSS`` of the child and its descendants) and the frame
counters (``metrics.prom``) are sampled every ``--sample`` s.  At ``--minutes`` the stop
file ends the input; then the outputs are checked (see :func:`check_run`) and the report
goes to ``bench/results/soak.json``.  Exit status 1 when any check fails.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
STOP_ENV = "SOAK_STOP_FILE"
STREAM = "soak"

# anvil's well-known dev keys (mnemonic "test test ... junk"): public, loopback test use only
ANVIL_KEYS = ("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
              "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")


# =========================================================================== child side
class _StopAware:
    """A frame reader that ends (returns None, as at the end of a file) once the stop file
    exists; everything else is the wrapped reader's."""

    def __init__(self, inner, stop_file: str):
        self.inner, self.stop_file = inner, stop_file

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def read(self, *a):
        if os.path.exists(self.stop_file):
            return None
        return self.inner.read(*a)


def soak_flow():
    """The flow ``dataflows.segment`` builds, whose sources end when the stop file exists."""
    from operators.pipeline import build_flow, flow_from_env
    from operators.sources import open_reader
    stop_file = os.environ.get(STOP_ENV) or ""

    def factory(spec, **kw):
        r = open_reader(spec, **kw)
        return _StopAware(r, stop_file) if stop_file else r
    return flow_from_env(lambda: build_flow(reader_factory=factory))


# =========================================================================== the checks
def score_start(row: dict) -> float:
    """Wall-clock time the model run of this frame started: ``ts`` is taken right after
    decoding, then come preprocessing and the wait (until ``session.run``)."""
    lat = row.get("latency_ms") or {}
    return float(row["ts"]) + (float(lat.get("preprocess", 0.0)) + float(lat.get("wait", 0.0))) / 1e3


def entry_time(row: dict) -> float:
    """Wall-clock time the frame entered the dataflow (decoded and preprocessed)."""
    lat = row.get("latency_ms") or {}
    return float(row["ts"]) + float(lat.get("preprocess", 0.0)) / 1e3


def _check(checks: list, name: str, ok: bool, detail: str) -> bool:
    checks.append({"name": name, "ok": bool(ok), "detail": detail})
    return bool(ok)


def check_run(rows: list, summary: dict, timeline: list, *, poll: float, stream: str = STREAM,
              handover: float = 1.0, revoke_slack: float = 1.0, load_budget: float = 15.0,
              race_eps: float = 0.05, anchors: Optional[list] = None) -> dict:
    """Check a soak run from its outputs.

    ``rows``: the stream's ``results.jsonl`` records; ``summary``: the flow's
    ``summary.json``; ``timeline``: the script's chain actions, in order, each
    ``{"action": "deploy"|"revoke", "key", "t_sent", "t_mined"}`` (wall clock);
    ``anchors``: ``[{"model_key", "first_seq", "last_seq", "anchored"}]`` of the batch files.
    Returns ``{"passed", "checks": [{"name", "ok", "detail"}], "keys", "revocations",
    "frames"}``.  What each check means is in its ``detail`` and in docs (README, security).
    """
    checks: list = []
    deploys = [a for a in timeline if a["action"] == "deploy"]
    revokes = [a for a in timeline if a["action"] == "revoke"]
    order = {a["key"]: i for i, a in enumerate(deploys)}
    revoked = {a["key"]: a for a in revokes}
    loaded = {}
    for m in summary.get("models_loaded", []):
        loaded.setdefault(m["key"], m)            # the first time the flow took each key
    seen_rev = {}
    for r in summary.get("revoked", []):
        seen_rev.setdefault(r["key"], r)

    # -- accounting: every frame read is scored once or counted as dropped with a reason ----
    decoded = int(summary.get("frames_decoded", {}).get(stream, 0))
    written = int(summary.get("frames_written", {}).get(stream, 0))
    scored = int(summary.get("frames_scored", {}).get(stream, 0))
    drops = dict(summary.get("frames_dropped", {}).get(stream, {}))
    dropped = sum(drops.values())
    bad = int(summary.get("bad_frames", {}).get(stream, 0))
    seqs = [int(r["seq"]) for r in rows if r.get("stream", stream) == stream]
    pairs = [(r.get("stream", stream), int(r["seq"])) for r in rows]
    dups = len(pairs) - len(set(pairs))
    n = len(seqs)
    _check(checks, "no_duplicates", dups == 0,
           f"{dups} duplicated (stream, seq) pairs in {n} results")
    lost = decoded - n - dropped
    _check(checks, "no_frame_lost", lost == 0 and n == written == scored and decoded > 0,
           f"frames read {decoded} = with a result {n} + dropped with a reason {dropped} "
           f"({drops or 'none'}) + unaccounted {lost}; written {written}, scored {scored}")
    other = {k: v for k, v in drops.items() if k != "no_model" and v}
    _check(checks, "drops_only_while_no_valid_model", not other,
           "every drop has reason no_model (frames beyond VERISEG_PENDING while no valid model "
           f"was deployed){'; other reasons: ' + str(other) if other else ''}")
    # the missing sequence numbers are exactly the dropped (+ undecodable) frames, and all of
    # them fall between the last result of a revoked key and the first result after it
    total = decoded + bad
    have = set(seqs)
    missing = [s for s in range(total) if s not in have]
    windows = []
    by_seq = sorted(rows, key=lambda r: int(r["seq"]))
    for k in revoked:
        before = [int(r["seq"]) for r in by_seq if r["model_key"] == k]
        lo = max(before) if before else -1
        after = [int(r["seq"]) for r in by_seq if r["model_key"] != k and order.get(r["model_key"], -1) > order.get(k, -1)]
        hi = min(after) if after else total
        windows.append((lo, hi))
    outside = [s for s in missing if not any(lo < s < hi for lo, hi in windows)]
    extra = [s for s in seqs if s >= total]
    _check(checks, "missing_seqs_are_the_counted_drops",
           len(missing) == dropped + bad and not outside and not extra,
           f"{len(missing)} of seq 0..{total - 1} have no result (dropped {dropped} + undecodable "
           f"{bad}); outside a no-model window {len(outside)}{' e.g. ' + str(outside[:5]) if outside else ''}; "
           f"seq beyond the frames read {len(extra)}")

    # -- keys -------------------------------------------------------------------------------
    unknown = sorted({r["model_key"] for r in rows} - set(order))
    _check(checks, "known_keys", not unknown,
           f"every result names a key this run deployed{'; unknown: ' + str(unknown) if unknown else ''}")
    back = 0
    last = -1
    for r in by_seq:
        i = order.get(r["model_key"], -1)
        if i < last:
            back += 1
        last = max(last, i)
    _check(checks, "keys_follow_deploy_order", back == 0,
           f"along seq the key only moves to later deploys (no rollback, no flapping); {back} "
           "results go back")

    keys = []
    early, late = [], []
    lag_fail = []
    for i, d in enumerate(deploys):
        k = d["key"]
        mine = [r for r in rows if r["model_key"] == k]
        t0s = [score_start(r) for r in mine]
        nxt = deploys[i + 1] if i + 1 < len(deploys) else None
        ld = loaded.get(k)
        info = {"key": k, "version": d.get("version"), "t_deploy_sent": d["t_sent"],
                "t_deploy_mined": d["t_mined"], "t_loaded": ld["at"] if ld else None,
                "load_lag_s": round(ld["at"] - d["t_mined"], 3) if ld else None,
                "frames": len(mine), "first_seq": min((int(r["seq"]) for r in mine), default=None),
                "last_seq": max((int(r["seq"]) for r in mine), default=None),
                "first_score_t": min(t0s, default=None), "last_score_t": max(t0s, default=None),
                "revoked": k in revoked}
        keys.append(info)
        if ld is None or not mine:
            lag_fail.append(f"{k[:12]} {'never loaded' if ld is None else 'scored no frame'}")
        elif i > 0 and ld["at"] - d["t_mined"] > poll + load_budget:
            lag_fail.append(f"{k[:12]} loaded {ld['at'] - d['t_mined']:.2f}s after its deploy")
        # in force from its deploy ...
        early += [(k, t) for t in t0s if t < d["t_sent"]]
        # ... until the next key is in the flow's hands (its deploy mined + one poll + the
        # flow's own verify and session build, measured by the flow): a frame that entered
        # the dataflow later than that plus the hand-over must not get the old key. Frames
        # already queued in the dataflow keep their order and may still be scored by the old
        # (valid, not revoked) key after the swap: that queueing delay is reported.
        if nxt is not None and k not in revoked:
            nld = loaded.get(nxt["key"])
            t_next = nld["at"] if nld else nxt["t_mined"] + poll + load_budget
            late += [(k, entry_time(r) - t_next - handover) for r in mine
                     if entry_time(r) > t_next + handover]
            if t0s:
                info["scored_after_next_loaded_s"] = round(max(t0s) - t_next, 3)
    _check(checks, "every_deploy_hot_swapped", not lag_fail,
           f"each of the {len(deploys)} deployed keys was loaded by the flow within one poll "
           f"({poll:g}s) + {load_budget:g}s of verify/session build after its deploy was mined, and "
           f"scored frames{'; ' + '; '.join(lag_fail) if lag_fail else ''}")
    _check(checks, "no_key_before_its_deploy", not early,
           f"no frame scored by a key before its deploy transaction was sent; {len(early)} early")
    _check(checks, "superseded_key_stops_after_the_swap", not late,
           "no frame that entered the dataflow after the next key was loaded by the flow (published "
           f"after one poll + verify + session build) + {handover:g}s hand-over was scored by the "
           f"superseded key; {len(late)} late"
           + (f", worst {max(x for _, x in late):.3f}s" if late else ""))

    revs = []
    for k, a in revoked.items():
        s = seen_rev.get(k)
        t0s = [score_start(r) for r in rows if r["model_key"] == k]
        info = {"key": k, "t_sent": a["t_sent"], "t_mined": a["t_mined"],
                "t_seen": s["at"] if s else None,
                "seen_lag_s": round(s["at"] - a["t_mined"], 3) if s else None,
                "last_score_t": max(t0s, default=None),
                "last_score_minus_seen_s": round(max(t0s) - s["at"], 3) if (s and t0s) else None}
        revs.append(info)
        if s is None:
            _check(checks, "revocation_seen", False, f"the flow never saw the revocation of {k[:12]}")
            continue
        _check(checks, "revocation_seen_within_one_poll", s["at"] - a["t_mined"] <= poll + revoke_slack,
               f"revocation of {k[:12]} seen {s['at'] - a['t_mined']:.3f}s after it was mined "
               f"(allowed: one poll {poll:g}s + {revoke_slack:g}s to read the events)")
        after_seen = [t for t in t0s if t > s["at"] + race_eps]
        _check(checks, "no_frame_scored_by_revoked_key_after_seen", not after_seen,
               f"{len(after_seen)} frames scored by {k[:12]} after the flow saw its revocation "
               f"(+{race_eps * 1e3:.0f} ms for a run that passed the check as the key was added)")
        after_chain = [t for t in t0s if t > a["t_mined"] + poll + revoke_slack]
        _check(checks, "no_frame_scored_by_revoked_key_after_one_poll", not after_chain,
               f"{len(after_chain)} frames scored by {k[:12]} later than its revocation was mined "
               f"+ one poll {poll:g}s + {revoke_slack:g}s")

    if anchors is not None:
        unsent = [b for b in anchors if not b.get("anchored") and b.get("model_key") not in revoked]
        _check(checks, "anchors_of_valid_keys_on_chain", not unsent,
               f"{len(anchors)} batch files; every batch of a key not revoked is anchored on chain "
               f"({len(unsent)} not); batches of a revoked key the chain refuses: "
               f"{sum(1 for b in anchors if not b.get('anchored') and b.get('model_key') in revoked)}")

    frames = {"read": decoded, "with_result": n, "written": written, "scored": scored,
              "dropped": drops, "dropped_total": dropped, "bad": bad, "lost": lost,
              "duplicated": dups, "missing_seqs": len(missing)}
    return {"passed": all(c["ok"] for c in checks), "checks": checks, "keys": keys,
            "revocations": revs, "frames": frames}


# =========================================================================== parent side
def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                try:
                    kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
                except OSError:
                    continue
                todo += [int(k) for k in kids if int(k) not in out]
        except OSError:
            pass
    return out


def tree_rss_mib(pid: int) -> float:
    """VmRSS of a process and all its descendants, MiB."""
    return round(sum(_rss_kib(p) for p in _descendants(pid)) / 1024, 1)


def read_counters(metrics: Path, stream: str = STREAM) -> dict:
    c = {"decoded": 0, "scored": 0, "written": 0, "dropped": 0, "fps": 0.0}
    try:
        text = metrics.read_text()
    except OSError:
        return c
    from prometheus_client.parser import text_string_to_metric_families
    try:
        samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    except ValueError:      # caught mid-write cannot happen (renamed into place); be safe
        return c
    for s in samples:
        if s.name == "veriseg_frames_total" and s.labels.get("stream") == stream:
            c[s.labels["stage"]] = int(s.value)
        elif s.name == "veriseg_frames_dropped_total" and s.labels.get("stream") == stream:
            c["dropped"] += int(s.value)
        elif s.name == "veriseg_fps":
            c["fps"] = float(s.value)
    return c


def _anvil_binary() -> Optional[str]:
    for cand in sorted((REPO / ".tools" / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil")):
        if os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("anvil")
    return str(Path(found).resolve()) if found else None


class ChainControl:
    """The chain the script owns: embedded in ``work/home`` or an anvil node on loopback."""

    def __init__(self, work: Path, anvil: bool):
        import chain
        self.work, self.kind = work, ("anvil" if anvil else "embedded")
        self.home = work / "home"
        self.proc = None
        self.env = {"VERISEG_CHAIN": "embedded", "VERISEG_HOME": str(self.home)}
        if not anvil:
            self.reg = chain.connect(chain="embedded", home=self.home)
            return
        binary = _anvil_binary()
        if binary is None:
            raise SystemExit("error: --anvil: no anvil binary in .tools/ (bash .ci/run installs it) "
                             "or on PATH")
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(port), "--silent"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        import urllib.request
        deadline = time.monotonic() + 30
        while True:
            try:
                req = urllib.request.Request(self.url, data=json.dumps(
                    {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode(),
                    headers={"Content-Type": "application/json"})
                urllib.request.urlopen(req, timeout=1).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise SystemExit(f"error: anvil did not start on {self.url}")
                time.sleep(0.2)
        # the chain-id pin is recorded in the flow's home (not ~/.veriseg)
        addr = chain.deploy_registry(self.url, home=self.home, private_key=ANVIL_KEYS[0])
        self.reg = chain.connect(chain=self.url, home=self.home, registry=addr,
                                 private_key=ANVIL_KEYS[0])
        # the flow signs its anchors with its own account (no nonce race with the script)
        from eth_account import Account
        flow_acct = Account.from_key(ANVIL_KEYS[1])
        self.reg.grant_role("anchorer", flow_acct.address)
        kf = work / "flow-key.json"
        kf.write_text(json.dumps(Account.encrypt(ANVIL_KEYS[1], "soak", kdf="pbkdf2", iterations=1024)))
        self.env = {"VERISEG_CHAIN": self.url, "VERISEG_REGISTRY": addr, "VERISEG_HOME": str(self.home),
                    "VERISEG_KEYFILE": str(kf), "VERISEG_KEYFILE_PASSWORD": "soak"}

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc = None


class Models:
    """New keys on demand: the base blob's ONNX packed with another card description."""

    def __init__(self, work: Path, blob: Path):
        import model_store
        self.dir = work / "models"
        self.dir.mkdir(parents=True, exist_ok=True)
        key = model_store.verify(str(blob))
        self.card, self.onnx = model_store.load(str(blob), expected_key=key)
        self.base_key = key
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.n = 0

    def next(self) -> tuple[Path, str]:
        import model_store
        self.n += 1
        card = self.card.replace(description=f"{self.card.description} [soak {self.run_id} #{self.n}]")
        path = self.dir / f"soak-{self.n:03d}.vsb"
        return path, model_store.write(str(path), self.onnx, card)


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
        from bench.perf import _busy as b
        return b()
    except Exception:  # noqa: BLE001 - informative only
        return []


def _slope(samples: list) -> Optional[float]:
    """Least-squares slope of (t s, MiB) samples, MiB per minute."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    den = sum((t - mt) ** 2 for t, _ in samples)
    if den <= 0:
        return None
    return round(60 * sum((t - mt) * (v - mv) for t, v in samples) / den, 3)


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
        env = {k: v for k, v in os.environ.items() if not k.startswith("VERISEG_")}
        env.update(ctl.env)
        env.update({"VERISEG_SOURCE": f"{STREAM}@{Path(a.clip).resolve()}", "VERISEG_LOOP": "1",
                    "VERISEG_MODEL": a.deployment, "VERISEG_OUT": str(out), "VERISEG_PROGRESS": "0",
                    "VERISEG_POLL": str(a.poll), "VERISEG_MODEL_DIRS": str(models.dir),
                    "VERISEG_PROVIDERS": a.providers, STOP_ENV: str(stop_file),
                    "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
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
                    say(f"soak: t={now - t_launch:6.1f}s revoked {current[:12]}")
                else:
                    path, key = new_key()
                    ev = act("deploy", key, blob=path)
                    current = key
                    say(f"soak: t={now - t_launch:6.1f}s deployed {key[:12]} v{ev['version']} ({what})")
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


def _print_summary(doc: dict) -> None:
    f, r = doc["frames"], doc["rss"]
    print(f"soak: {'PASSED' if doc['passed'] else 'FAILED'} ({doc['config']['minutes']:g} min, "
          f"{doc['config']['chain']} chain)")
    print(f"  frames read {f['read']}, with a result {f['with_result']}, dropped {f['dropped_total']} "
          f"{f['dropped'] or ''}, lost {f['lost']}, duplicated {f['duplicated']}")
    print(f"  keys deployed {len(doc['keys'])}: " + ", ".join(
        f"{k['key'][:8]} {k['frames']}{' (revoked)' if k['revoked'] else ''}" for k in doc["keys"]))
    for v in doc["revocations"]:
        print(f"  revocation of {v['key'][:8]}: seen {v['seen_lag_s']}s after it was mined; last frame "
              f"with it scored {v['last_score_minus_seen_s']}s from then")
    if "start_mib" in r:
        print(f"  RSS {r['start_mib']} MiB at t={r['start_t_s']:.0f}s -> {r['end_mib']} MiB at "
              f"t={r['end_t_s']:.0f}s ({r['growth_mib']:+} MiB, {r['growth_pct']:+}%), peak {r['peak_mib']}, "
              f"slope {r['slope_mib_per_min_after_start']} MiB/min")
        for what, name in (("cache_full", "after two hot swaps"), ("steady", "steady (after the revocation)")):
            cf = r.get(what)
            if cf:
                print(f"  RSS {name}: {cf['start_mib']} MiB at t={cf['start_t_s']:.0f}s -> {r['end_mib']} "
                      f"({cf['growth_mib']:+} MiB, {cf['growth_pct']:+}%), {cf['slope_mib_per_min']} MiB/min")
    print(f"  FPS {doc['fps'].get('after_warmup')} after the warm-up ({doc['fps'].get('flow_summary')} over "
          f"the whole run); load {doc['load_1min']}")
    for c in doc["checks"]:
        print(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail']}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="soak time after the first result (default 10)")
    p.add_argument("--swap-every", type=float, default=60.0, help="seconds between hot swaps (default 60)")
    p.add_argument("--revoke-gap", type=float, default=5.0,
                   help="seconds between the revocation and the next deploy (default 5)")
    p.add_argument("--warmup", type=float, default=60.0,
                   help="seconds after the first result before the start RSS is taken (default 60)")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between RSS/counter samples (default 5)")
    p.add_argument("--poll", type=float, default=1.0, help="VERISEG_POLL of the flow (default 1.0, its default)")
    p.add_argument("--anvil", action="store_true", help="an anvil node on loopback instead of the embedded chain")
    p.add_argument("--clip", default=str(REPO / "models" / "sample.avi"), help="clip to loop (default the sample)")
    p.add_argument("--blob", default=str(REPO / "models" / "carla-enet.vsb"),
                   help="model whose ONNX is re-packed for each key (default the trained blob)")
    p.add_argument("--deployment", default="soak", help="deployment name the flow follows (default soak)")
    p.add_argument("--providers", default="auto", help="VERISEG_PROVIDERS (default auto)")
    p.add_argument("--threads", type=int, default=0, help="VERISEG_THREADS (default: the flow's default)")
    p.add_argument("--env", action="append", metavar="VAR=VALUE", help="extra environment for the flow")
    p.add_argument("--handover", type=float, default=1.0,
                   help="s a superseded key may still score after the flow loaded the next (default 1)")
    p.add_argument("--revoke-slack", type=float, default=1.0,
                   help="s beyond one poll for the flow to see a revocation (default 1)")
    p.add_argument("--load-budget", type=float, default=15.0,
                   help="s beyond one poll to verify and load a deployed key (default 15)")
    p.add_argument("--max-rss-growth", type=float, default=None, metavar="MIB",
                   help="fail when RSS grows more than this after the warm-up (default: report only)")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "soak.json"),
                   help="report path (default bench/results/soak.json)")
    p.add_argument("--work", default=None, help="work folder (default a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    if a.minutes <= 0 or a.swap_every <= 0 or a.sample <= 0 or a.poll <= 0:
        print("error: --minutes, --swap-every, --sample and --poll must be > 0", file=sys.stderr)
        return 2
    for f in (a.clip, a.blob):
        if not Path(f).is_file():
            print(f"error: {f} does not exist", file=sys.stderr)
            return 2
    doc = run(a)
    from bench.machine import info
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info(), "results": doc}, indent=1) + "\n")
    _print_summary(doc)
    print(f"soak: report in {out}")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
