"""The embedded chain's journal: replay, torn writes, corruption, sharing, speed."""

from __future__ import annotations

import json
import time

import pytest

from chain import connect, errors
from chain._revert import ErrorDecoder, revert_data
from chain.artifact import load_artifact
from chain.embedded import EmbeddedChain, registry_address


def test_registry_at_fixed_address_and_dev_account_warning(tmp_path, caplog):
    reg = connect("embedded", home=tmp_path / "h1")
    reg2 = connect("embedded", home=tmp_path / "h2")
    assert reg.address == reg2.address == registry_address()
    assert reg.owner() == reg.sender
    assert any("deterministic dev accounts" in r.message for r in caplog.records)


def test_replay_gives_identical_state(tmp_path):
    home = tmp_path / "h"
    reg = connect("embedded", home=home)
    hashes = [reg.register(f"{i:064x}", f"m{i}") for i in range(1, 6)]
    st = [reg.status(f"{i:064x}") for i in range(1, 6)]
    reg2 = connect("embedded", home=home)
    assert reg2.embedded.replayed == 6  # registry deployment + 5 registrations
    assert [reg2.status(f"{i:064x}") for i in range(1, 6)] == st
    evs, _ = reg2.events(0, kinds=("Registered",))
    assert [("0x" + e.tx_hash) for e in evs] == hashes


def test_torn_last_line_is_dropped(tmp_path):
    home = tmp_path / "h"
    reg = connect("embedded", home=home)
    reg.register("11" * 32, "m")
    journal = home / "chain" / "journal.jsonl"
    with open(journal, "ab") as f:
        f.write(b'{"ts": 1, "raw": "0x02f8')  # crashed mid-write: never acknowledged
    reg2 = connect("embedded", home=home)
    assert reg2.status("11" * 32).active
    reg2.register("22" * 32, "m")
    assert connect("embedded", home=home).status("22" * 32).active


def test_corrupt_journal_is_refused_with_advice(tmp_path):
    home = tmp_path / "h"
    connect("embedded", home=home).register("11" * 32, "m")
    journal = home / "chain" / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + b"garbage\n" + b"".join(lines[1:]))
    with pytest.raises(errors.JournalError, match="corrupt.*move it away"):
        connect("embedded", home=home)
    entry = json.loads(lines[2])
    entry["hash"] = "0x" + "00" * 32
    journal.write_bytes(lines[0] + lines[1] + (json.dumps(entry) + "\n").encode())
    with pytest.raises(errors.JournalError, match="does not replay"):
        connect("embedded", home=home)
    journal.write_bytes(b'{"format": "something-else"}\n')
    with pytest.raises(errors.JournalError, match="not a version-1"):
        connect("embedded", home=home)


def test_two_clients_share_one_home(tmp_path):
    """Two processes on one VERISEG_HOME: each sees the other's writes (flock + catch-up)."""
    home = tmp_path / "h"
    a = connect("embedded", home=home)
    b = connect("embedded", home=home)
    a.register("11" * 32, "a")
    assert b.status("11" * 32).active          # b replays a's entry before reading
    b.register("22" * 32, "b")                 # b's nonce accounts for a's transaction
    a.deploy("d", "22" * 32)
    assert b.current("d") == ("22" * 32, 1)
    evs, _ = b.events(0)
    assert [e.kind for e in evs] == ["Deployed"]
    assert connect("embedded", home=home).embedded.replayed == 4


def test_unwritable_home_is_one_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(errors.JournalError, match="VERISEG_HOME"):
        EmbeddedChain(f / "sub")


@pytest.mark.slow
def test_replay_speed(tmp_path, monkeypatch):
    """Startup replays the journal: report the cost per transaction (no snapshot)."""
    import chain.embedded as emb
    monkeypatch.setattr(emb, "SNAPSHOT_EVERY", 10**9)
    home = tmp_path / "h"
    reg = connect("embedded", home=home)
    n = 150
    for i in range(n):
        reg.register(f"{i + 1:064x}", "m")
    t0 = time.perf_counter()
    reg2 = connect("embedded", home=home)
    dt = time.perf_counter() - t0
    assert reg2.embedded.replayed == n + 1
    per_tx = dt / (n + 1)
    print(f"replayed {n + 1} transactions in {dt:.2f}s ({per_tx * 1000:.1f} ms/tx)")
    assert per_tx < 0.05


def test_error_decoder_knows_every_custom_error():
    from eth_abi import encode
    from eth_utils import keccak
    abi = load_artifact()["abi"]
    dec = ErrorDecoder(abi)
    names = {i["name"] for i in abi if i["type"] == "error"}
    assert names == set(errors.CONTRACT_ERRORS)
    data = keccak(text="UnknownKey(bytes32)")[:4] + encode(["bytes32"], [b"\x01" * 32])
    assert dec.decode(data) == ("UnknownKey", {"key": b"\x01" * 32})
    assert dec.decode(b"\xde\xad\xbe\xef") is None
    from eth_tester.exceptions import TransactionFailed
    assert revert_data(TransactionFailed(f"execution reverted: {data!r}")) == data
    from web3.exceptions import ContractCustomError
    assert revert_data(ContractCustomError("0x" + data.hex(), data="0x" + data.hex())) == data


def test_snapshot_restores_the_same_state_and_is_checked_against_the_journal(tmp_path, monkeypatch):
    import chain.embedded as emb
    monkeypatch.setattr(emb, "SNAPSHOT_AFTER", 10)
    monkeypatch.setattr(emb, "SNAPSHOT_EVERY", 10**9)
    home = tmp_path / "h"
    reg = connect("embedded", home=home)
    keys = [f"{i + 1:064x}" for i in range(12)]
    for k in keys:
        reg.register(k, "m")
    reg.deploy("d", keys[0])
    r2 = connect("embedded", home=home)           # full replay, writes the snapshot
    assert r2.embedded.replayed == 14 and (home / "chain" / "snapshot.bin").exists()
    r2.register("ff" * 32, "after snapshot")       # journal tail beyond the snapshot
    r3 = connect("embedded", home=home)
    assert r3.embedded.restored > 0 and r3.embedded.replayed == 1
    assert [r3.status(k) for k in keys] == [reg.status(k) for k in keys]
    assert r3.status("ff" * 32).active and r3.current("d") == (keys[0], 1)
    assert [e.kind for e in r3.events(0)[0]] == ["Deployed"]
    r3.deploy("d", keys[1])
    # a snapshot that no longer matches the journal is ignored, not trusted
    j = home / "chain" / "journal.jsonl"
    lines = j.read_bytes().splitlines(keepends=True)
    j.write_bytes(b"".join(lines[:5]))
    r4 = connect("embedded", home=home)
    assert r4.embedded.restored == 0 and r4.embedded.replayed == 4
    assert not r4.status(keys[-1]).registered


def test_threads_share_one_embedded_chain(tmp_path):
    """The scoring flow reads (follow/status) while a sink anchors: py-evm is guarded."""
    import threading
    reg = connect("embedded", home=tmp_path / "h")
    reg.register("11" * 32, "m")
    errs = []

    def reader():
        try:
            for _ in range(40):
                assert reg.status("11" * 32).active
                reg.events(0)
        except Exception as exc:  # noqa: BLE001
            errs.append(exc)

    ts = [threading.Thread(target=reader) for _ in range(2)]
    for t in ts:
        t.start()
    for i in range(15):
        reg.anchor(bytes([i + 1]) * 32, "11" * 32, i, i, stream="s")
    for t in ts:
        t.join()
    assert not errs
    assert len(reg.events(0, kinds=("Anchored",))[0]) == 15


def test_writer_snapshots_periodically(tmp_path, monkeypatch):
    import chain.embedded as emb
    monkeypatch.setattr(emb, "SNAPSHOT_EVERY", 5)
    home = tmp_path / "h"
    reg = connect("embedded", home=home)
    for i in range(12):
        reg.register(f"{i + 1:064x}", "m")
    r2 = connect("embedded", home=home)
    assert r2.embedded.restored > 0 and r2.embedded.replayed <= 5
    assert r2.status(f"{12:064x}").active


def test_damaged_snapshot_is_ignored(tmp_path, monkeypatch, caplog):
    import chain.embedded as emb
    monkeypatch.setattr(emb, "SNAPSHOT_EVERY", 3)
    home = tmp_path / "h"
    reg = connect("embedded", home=home)
    for i in range(4):
        reg.register(f"{i + 1:064x}", "m")
    snap = home / "chain" / "snapshot.bin"
    data = bytearray(snap.read_bytes())
    data[-5] ^= 0xFF
    snap.write_bytes(bytes(data))
    r2 = connect("embedded", home=home)
    assert r2.embedded.restored == 0 and r2.embedded.replayed == 5
    assert "checksum" in caplog.text
    assert r2.status(f"{4:064x}").active


def test_unfunded_account_is_one_clear_error(tmp_path):
    reg = connect("embedded", home=tmp_path / "h", private_key="0x" + "77" * 32)
    with pytest.raises(errors.InsufficientFunds, match="cannot pay for gas"):
        reg.register("ab" * 32, "m")


def test_failed_journal_write_stops_further_writes(tmp_path, monkeypatch):
    reg = connect("embedded", home=tmp_path / "h")
    emb = reg.embedded

    def full(obj):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(emb, "_append", full)
    with pytest.raises(errors.JournalError, match="No space left.*restart"):
        reg.register("11" * 32, "m")
    monkeypatch.undo()
    with pytest.raises(errors.JournalError, match="restart the process"):
        reg.register("22" * 32, "m")
    assert not connect("embedded", home=tmp_path / "h").status("11" * 32).registered


def test_concurrent_processes_on_one_home(tmp_path):
    """Two processes write at the same time; the journal stays consistent (flock)."""
    import subprocess
    import sys
    home = tmp_path / "h"
    connect("embedded", home=home)  # create the chain first
    code = ("import sys; from chain import connect; r = connect('embedded', home=sys.argv[1]); "
            "[r.register(f'{int(sys.argv[2]) + i:064x}', 'm') for i in range(15)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home), str(base)],
                              stderr=subprocess.PIPE, text=True) for base in (1, 1001)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    reg = connect("embedded", home=home)
    assert all(reg.status(f"{b + i:064x}").active for b in (1, 1001) for i in range(15))
    assert reg.embedded.replayed + reg.embedded.restored >= 1
