"""The checks of a soak run, from its outputs alone: every frame accounted for, keys in deploy
order and in force only in their time, revocations seen within one poll, anchors on chain."""
from __future__ import annotations

from typing import Optional

from model_store.blob_key import BlobKey

from .flow import STREAM


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
    "frames"}``.  What each check means is in its ``detail`` and in docs/security.md ("Soak").
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
            lag_fail.append(f"{BlobKey(k).short} {'never loaded' if ld is None else 'scored no frame'}")
        elif i > 0 and ld["at"] - d["t_mined"] > poll + load_budget:
            lag_fail.append(f"{BlobKey(k).short} loaded {ld['at'] - d['t_mined']:.2f}s after its deploy")
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
            _check(checks, "revocation_seen", False, f"the flow never saw the revocation of {BlobKey(k).short}")
            continue
        _check(checks, "revocation_seen_within_one_poll", s["at"] - a["t_mined"] <= poll + revoke_slack,
               f"revocation of {BlobKey(k).short} seen {s['at'] - a['t_mined']:.3f}s after it was mined "
               f"(allowed: one poll {poll:g}s + {revoke_slack:g}s to read the events)")
        after_seen = [t for t in t0s if t > s["at"] + race_eps]
        _check(checks, "no_frame_scored_by_revoked_key_after_seen", not after_seen,
               f"{len(after_seen)} frames scored by {BlobKey(k).short} after the flow saw its revocation "
               f"(+{race_eps * 1e3:.0f} ms for a run that passed the check as the key was added)")
        after_chain = [t for t in t0s if t > a["t_mined"] + poll + revoke_slack]
        _check(checks, "no_frame_scored_by_revoked_key_after_one_poll", not after_chain,
               f"{len(after_chain)} frames scored by {BlobKey(k).short} later than its revocation was mined "
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
