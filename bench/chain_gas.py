"""Gas of every ModelRegistry call, anchoring cost per frame, on-chain bytes per model,
and the embedded chain's startup time.

    python -m bench chain_gas [--no-anvil] [--replay 1000]

Gas is measured from receipts on the embedded chain (eth-tester/py-evm) and, when the
anvil binary is around, on anvil too. Results: bench/results/chain_gas.json; the
markdown table printed at the end goes into docs/chain.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ._anvil import ANVIL_KEYS, Anvil, tool
from ._table import markdown
from .machine import save

REPO = Path(__file__).resolve().parent.parent
FRAME_COUNTS = (1, 100, 10_000)
NAME = "enet-carla-512"                              # 14 bytes
URI = "https://models.example.org/enet/v1.vsb"       # 38 bytes
REASON = "mislabelled training data"


def _anvil_bin() -> str | None:
    return tool("anvil") or shutil.which("anvil")


def _gas(reg, tx_hash) -> int:
    return int(reg.w3.eth.get_transaction_receipt(tx_hash)["gasUsed"])


def _input_len(reg, tx_hash) -> int:
    return len(bytes(reg.w3.eth.get_transaction(tx_hash)["input"]))


def measure(reg, deploy_gas: int) -> dict:
    from chain.anchoring import AnchorBatch
    k1, k2 = "a1" * 32, "b2" * 32
    out = {"deploy_registry": deploy_gas}
    h = reg.register(k1, NAME, URI)
    out["register"] = _gas(reg, h)
    out["register_calldata_bytes"] = _input_len(reg, h)
    reg.register(k2, NAME, "")
    reg.deploy("carla-enet", k1)
    evs, _ = reg.events(0)
    out["deploy_first"] = _gas(reg, "0x" + evs[-1].tx_hash)
    reg.deploy("carla-enet", k2)
    evs, _ = reg.events(0)
    out["deploy_update"] = _gas(reg, "0x" + evs[-1].tx_hash)
    out["revoke"] = _gas(reg, reg.revoke(k1, REASON))
    out["grant_role"] = _gas(reg, reg.grant_role("anchorer", "0x" + "12" * 20))
    anchors = {}
    for n in FRAME_COUNTS:
        rng = np.random.default_rng(n)
        recs = [("cam0", 10**6 * n + i, rng.integers(0, 13, size=(32, 32), dtype=np.uint8))
                for i in range(n)]
        t0 = time.perf_counter()
        batch = AnchorBatch.build(k2, recs)
        _ = batch.root
        build_s = time.perf_counter() - t0
        h = batch.anchor(reg)
        gas = _gas(reg, h)
        with tempfile.TemporaryDirectory() as d:
            size = batch.write(Path(d) / "b.json").stat().st_size
        anchors[str(n)] = {"gas": gas, "gas_per_frame": gas / n,
                           "proof_bytes": 32 * len(batch.tree.proof(0)),
                           "batch_file_bytes_per_frame": size / n,
                           "tree_build_s_32x32_maps": round(build_s, 4)}
    out["anchor"] = anchors
    return out


def embedded_run(home: Path) -> dict:
    from chain import connect
    reg = connect("embedded", home=home)
    r = reg.w3.eth.get_transaction_receipt(reg.w3.eth.get_block(1)["transactions"][0])
    return measure(reg, int(r["gasUsed"]))


def anvil_run(binary: str) -> dict:
    from chain import connect, deploy_registry
    node = Anvil(binary).start()
    home = tempfile.mkdtemp()   # the chain-id pin goes to a scratch home, not ~/.veriseg
    try:
        addr = deploy_registry(node.url, home=home, private_key=ANVIL_KEYS[0])
        reg = connect(node.url, home=home, registry=addr, private_key=ANVIL_KEYS[0])
        dep = reg.w3.eth.get_block(1)["transactions"][0]
        return measure(reg, _gas(reg, dep))
    finally:
        node.stop()
        shutil.rmtree(home, ignore_errors=True)


def leaf_throughput() -> dict:
    from chain.anchoring import leaf_digest
    cm = np.random.default_rng(0).integers(0, 13, size=(512, 512), dtype=np.uint8)
    n = 200
    t0 = time.perf_counter()
    for i in range(n):
        leaf_digest("cam0", i, "ab" * 32, cm)
    dt = (time.perf_counter() - t0) / n
    return {"leaf_digest_ms_512x512": round(dt * 1000, 3)}


def onchain_bytes(blobs: list[Path], register_calldata: int) -> list[dict]:
    # storage written by register(): slot 0 (publisher, registeredAt, revoked) + name + uri
    # strings (one slot each when < 32 bytes, else 1 + ceil(len/32)); revoke adds the reason
    def slots(s: str) -> int:
        b = len(s.encode())
        return 1 if b < 32 else 1 + (b + 31) // 32
    storage = 32 * (1 + slots(NAME) + slots(URI))
    rows = []
    for p in blobs:
        size = p.stat().st_size
        rows.append({"blob": str(p.relative_to(REPO)) if p.is_relative_to(REPO) else p.name,
                     "blob_bytes": size, "storage_bytes": storage,
                     "calldata_bytes": register_calldata,
                     "onchain_fraction": (storage + register_calldata) / size})
    return rows


def replay_timing(n: int) -> dict:
    import chain.embedded as emb
    from chain import connect
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        reg = connect("embedded", home=home)
        t0 = time.perf_counter()
        for i in range(n):
            reg.register(f"{i + 1:064x}", "m")
        write_s = time.perf_counter() - t0
        (home / "chain" / "snapshot.bin").unlink(missing_ok=True)  # the writer made one
        t0 = time.perf_counter()
        r2 = connect("embedded", home=home)       # full replay (then writes a snapshot)
        replay_s = time.perf_counter() - t0
        assert r2.embedded.replayed == n + 1
        t0 = time.perf_counter()
        r3 = connect("embedded", home=home)       # snapshot restore
        snap_s = time.perf_counter() - t0
        assert r3.embedded.replayed == 0 and r3.status(f"{n:064x}").active
        return {"transactions": n + 1, "write_ms_per_tx": round(1000 * write_s / n, 2),
                "full_replay_s": round(replay_s, 2), "snapshot_start_s": round(snap_s, 2),
                "snapshot_bytes": (home / "chain" / "snapshot.bin").stat().st_size,
                "journal_bytes": (home / "chain" / "journal.jsonl").stat().st_size,
                "snapshot_after": emb.SNAPSHOT_AFTER}


def table(res: dict) -> str:
    cols = [c for c in ("embedded", "anvil") if c in res["gas"]]
    calls = [("deploy_registry", "deploy ModelRegistry"), ("register", "register (name 14 B, uri 38 B)"),
             ("deploy_first", "deploy (new deployment name)"), ("deploy_update", "deploy (hot swap, version 2)"),
             ("revoke", "revoke (reason 25 B)"), ("grant_role", "grantRole")]
    lines = markdown(["call", *(f"gas ({c})" for c in cols)],
                     [[label, *(f"{res['gas'][c][k]:,}" for c in cols)] for k, label in calls], "l" + "r" * len(cols))
    first = res["gas"][cols[0]]["anchor"]
    lines += ["", *markdown(["frames per anchor N", "anchor gas", "gas per frame", "proof size", "batch file per frame"],
                            [[f"{int(n):,}", f"{first[n]['gas']:,}", f"{first[n]['gas_per_frame']:,.1f}",
                              f"{first[n]['proof_bytes']} B", f"{first[n]['batch_file_bytes_per_frame']:.0f} B"]
                             for n in map(str, FRAME_COUNTS)], "rrrrr")]
    lines += ["", *markdown(["blob", "blob size", "on-chain storage", "register calldata", "on chain / blob"],
                            [[r["blob"], f"{r['blob_bytes']:,} B", f"{r['storage_bytes']} B", f"{r['calldata_bytes']} B",
                              f"{100 * r['onchain_fraction']:.3f} %"] for r in res["onchain_bytes"]], "lrrrr")]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench chain_gas")
    ap.add_argument("--no-anvil", action="store_true")
    ap.add_argument("--replay", type=int, default=1000, help="journal length for the startup timing (0: skip)")
    ap.add_argument("--blob", action="append", default=[], help="blob files for on-chain bytes")
    args = ap.parse_args(argv)
    res: dict = {"gas": {}}
    with tempfile.TemporaryDirectory() as d:
        res["gas"]["embedded"] = embedded_run(Path(d))
    binary = None if args.no_anvil else _anvil_bin()
    if binary:
        res["gas"]["anvil"] = anvil_run(binary)
    blobs = [Path(b) for b in args.blob] or [REPO / "tests" / "data" / "golden.vsb",
                                            *sorted((REPO / "runs").glob("*/model.vsb"))[:1]]
    res["onchain_bytes"] = onchain_bytes([b for b in blobs if b.exists()],
                                         res["gas"]["embedded"]["register_calldata_bytes"])
    res["leaf"] = leaf_throughput()
    if args.replay:
        res["embedded_startup"] = replay_timing(args.replay)
    res["table_md"] = table(res)
    path = save("chain_gas", res)
    print(res["table_md"])
    print(json.dumps({k: v for k, v in res.items() if k in ("leaf", "embedded_startup")}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
