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
import sys
from pathlib import Path

from model_store.blob_key import BlobKey

from ._soak.checks import check_run, score_start  # noqa: F401 - the tests import them from here
from ._soak.flow import soak_flow  # noqa: F401 - the flow runs as bench.soak:soak_flow()
from ._soak.run import run, schedule  # noqa: F401 - schedule: as check_run

REPO = Path(__file__).resolve().parents[1]


def _print_summary(doc: dict) -> None:
    f, r = doc["frames"], doc["rss"]
    print(f"soak: {'PASSED' if doc['passed'] else 'FAILED'} ({doc['config']['minutes']:g} min, "
          f"{doc['config']['chain']} chain)")
    print(f"  frames read {f['read']}, with a result {f['with_result']}, dropped {f['dropped_total']} "
          f"{f['dropped'] or ''}, lost {f['lost']}, duplicated {f['duplicated']}")
    print(f"  keys deployed {len(doc['keys'])}: " + ", ".join(
        f"{BlobKey(k['key']).short} {k['frames']}{' (revoked)' if k['revoked'] else ''}" for k in doc["keys"]))
    for v in doc["revocations"]:
        print(f"  revocation of {BlobKey(v['key']).short}: seen {v['seen_lag_s']}s after it was mined; last frame "
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
