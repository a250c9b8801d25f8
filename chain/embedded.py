"""The embedded chain: eth-tester on py-evm, in-process, persisted by a journal.

Every signed raw transaction that reaches the embedded chain is appended (with the block
timestamp it was mined at) to ``$VERISEG_HOME/chain/journal.jsonl``. On start the journal
is replayed into a fresh py-evm chain with a fixed genesis, so addresses, nonces,
transaction hashes and timestamps come out the same, and registrations survive restarts
with no server to run. Several processes may share one home: writes take an exclusive
``flock`` and first replay what other processes appended.

The accounts are eth-tester's deterministic dev accounts (private keys 1..10). They are
public knowledge: the embedded chain is for local use only, never a trust anchor between
parties. A real deployment uses ``--chain http://...`` with a key file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import struct
import threading
import time
from pathlib import Path

from eth_account import Account
from eth_tester import EthereumTester, PyEVMBackend
from eth_utils import to_checksum_address
from web3 import Web3
from web3.providers.eth_tester import EthereumTesterProvider

from model_store.canonical import canonical_json
from model_store.util import atomic_writer

from . import errors
from .artifact import load_artifact
from .config import default_home

log = logging.getLogger("chain.embedded")

JOURNAL_FORMAT = "veriseg-embedded-chain-journal"
JOURNAL_VERSION = 1
GENESIS_TIMESTAMP = 1_700_000_000
DEV_KEYS = tuple(i.to_bytes(32, "big") for i in range(1, 11))
DEPLOY_GAS = 3_000_000
MAX_FEE = 10**10  # 10 gwei; dev accounts hold 1e6 ether
PRIORITY_FEE = 1
SNAPSHOT_MAGIC = b"VSEGSNAP2"
SNAPSHOT_AFTER = 50  # write a snapshot when a start had to replay this many entries
SNAPSHOT_EVERY = 100  # ... and after this many transactions written by one process (~ms each)

_warned: set[str] = set()


def dev_account(index: int = 0):
    """The embedded chain's deterministic dev account ``index`` (0 = registry owner)."""
    return Account.from_key(DEV_KEYS[index])


def registry_address() -> str:
    """Deterministic address of the registry on the embedded chain (dev account 0, nonce 0)."""
    from eth_utils import keccak
    import rlp
    sender = bytes.fromhex(dev_account(0).address[2:])
    return to_checksum_address(keccak(rlp.encode([sender, 0]))[12:])


class EmbeddedChain:
    """An in-process chain whose state lives in ``home/chain/journal.jsonl``."""

    def __init__(self, home: str | os.PathLike | None = None):
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.dir = self.home / "chain"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.JournalError(
                f"cannot create the embedded chain folder {self.dir}: {exc.strerror}; "
                "set VERISEG_HOME to a writable folder") from exc
        self.journal = self.dir / "journal.jsonl"
        self.lockfile = self.dir / "journal.lock"
        genesis = PyEVMBackend.generate_genesis_params({"timestamp": GENESIS_TIMESTAMP})
        self.backend = PyEVMBackend(genesis_parameters=genesis)
        self.tester = EthereumTester(self.backend)
        self.w3 = Web3(EthereumTesterProvider(self.tester))
        self.chain_id = self.w3.eth.chain_id
        self._offset = 0
        self.replayed = 0        # journal entries executed by this process
        self.restored = 0        # journal bytes covered by the snapshot we loaded
        self._since_snapshot = 0
        self._broken: str | None = None
        self.mutex = threading.RLock()  # py-evm is not thread-safe: one caller at a time
        self.snapshot = self.dir / "snapshot.bin"
        self.registry = registry_address()
        if str(self.home) not in _warned:
            _warned.add(str(self.home))
            log.warning("embedded chain in %s uses deterministic dev accounts (publicly known "
                        "keys, local use only); use --chain http://... with a key file for a "
                        "real node", self.dir)
        t0 = time.perf_counter()
        with open(self.lockfile, "a+") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            try:
                self._load_snapshot()
                self._sync()
                if self._offset == 0 and not self._has_entries():
                    self._write_header()
                    self._deploy_registry()
                if self.replayed >= SNAPSHOT_AFTER:
                    self._write_snapshot()
            finally:
                fcntl.flock(lf, fcntl.LOCK_UN)
        self.startup_s = time.perf_counter() - t0
        log.info("embedded chain: replayed %d transactions in %.2fs", self.replayed, self.startup_s)

    # ---------------------------------------------------------------- journal
    def _has_entries(self) -> bool:
        return self.journal.exists() and self.journal.stat().st_size > 0

    def _write_header(self) -> None:
        head = {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "chain_id": self.chain_id,
                "genesis_timestamp": GENESIS_TIMESTAMP}
        self._append(head)

    def _append(self, obj: dict) -> None:
        line = canonical_json(obj) + b"\n"
        with open(self.journal, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._offset += len(line)

    @contextlib.contextmanager
    def locked(self):
        """Exclusive lock over the journal; replays entries other processes appended."""
        with self.mutex, open(self.lockfile, "a+") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            try:
                self._sync()
                yield self
            finally:
                fcntl.flock(lf, fcntl.LOCK_UN)

    def sync(self) -> None:
        """Replay whatever other processes appended since we last looked."""
        if self.journal.exists() and self.journal.stat().st_size != self._offset:
            with self.locked():
                pass

    def _sync(self) -> None:
        if not self.journal.exists():
            return
        size = self.journal.stat().st_size
        if size == self._offset:
            return
        if size < self._offset:
            raise errors.JournalError(
                f"journal {self.journal} shrank while in use; restart the process")
        with open(self.journal, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                # torn write from a crashed process (never acknowledged): drop it
                log.warning("journal %s: dropping an incomplete last entry (%d bytes)",
                            self.journal, len(data) - pos)
                with open(self.journal, "r+b") as f:
                    f.truncate(self._offset)
                return
            raw_line = data[pos:nl]
            try:
                entry = json.loads(raw_line)
            except ValueError as exc:
                raise errors.JournalError(
                    f"journal {self.journal} is corrupt at byte {self._offset}: {exc}; move it "
                    "away to start a fresh embedded chain") from exc
            if self._offset == 0:
                self._check_header(entry)
            else:
                self._replay(entry)
            self._offset += nl + 1 - pos
            pos = nl + 1

    def _check_header(self, entry: dict) -> None:
        if entry.get("format") != JOURNAL_FORMAT or entry.get("version") != JOURNAL_VERSION:
            raise errors.JournalError(
                f"{self.journal} is not a version-{JOURNAL_VERSION} VeriSeg journal "
                f"(found {entry.get('format')!r} v{entry.get('version')}); move it away")
        if entry.get("chain_id") != self.chain_id:
            raise errors.JournalError(
                f"journal {self.journal} is for chain id {entry.get('chain_id')}, this "
                f"eth-tester gives {self.chain_id}; move it away")

    def _replay(self, entry: dict) -> None:
        try:
            ts, raw, want_hash, want_status = entry["ts"], entry["raw"], entry["hash"], entry["status"]
        except (KeyError, TypeError) as exc:
            raise errors.JournalError(
                f"journal {self.journal} entry at byte {self._offset} lacks {exc}; move it away") from exc
        got_hash, got_status = self._execute(bytes.fromhex(raw[2:]), ts)
        if got_hash != want_hash or got_status != want_status:
            raise errors.JournalError(
                f"journal {self.journal} does not replay: tx {want_hash} gave {got_hash} "
                f"status {got_status} (journal says {want_status}); the eth-tester/py-evm "
                "version changed? move the journal away to start fresh")
        self.replayed += 1

    # ---------------------------------------------------------------- snapshot
    # A cache of the py-evm database at a journal offset, so a start replays only the
    # tail. The journal stays the source of truth: a snapshot that does not match the
    # journal's prefix (by SHA-256) is ignored.
    def _base_db(self):
        return self.backend.chain.chaindb.db

    def _journal_digest(self, offset: int) -> bytes:
        h = hashlib.sha256()
        with open(self.journal, "rb") as f:
            remaining = offset
            while remaining:
                chunk = f.read(min(1 << 20, remaining))
                if not chunk:
                    break
                h.update(chunk)
                remaining -= len(chunk)
        return h.digest()

    def _write_snapshot(self) -> None:
        kv = self._base_db().wrapped_db.kv_store
        parts = [struct.pack(">Q", len(kv))]
        for k, v in kv.items():
            parts.append(struct.pack(">II", len(k), len(v)))
            parts.append(k)
            parts.append(v)
        body = b"".join(parts)
        head = self.backend.chain.get_canonical_head().block_number
        with atomic_writer(self.snapshot) as f:
            f.write(SNAPSHOT_MAGIC + struct.pack(">QQ", self._offset, head)
                    + self._journal_digest(self._offset) + hashlib.sha256(body).digest())
            f.write(body)
        self._since_snapshot = 0
        log.info("embedded chain: snapshot at journal byte %d (%d db entries)", self._offset, len(kv))

    def _load_snapshot(self) -> None:
        if not self.snapshot.exists() or not self.journal.exists():
            return
        try:
            data = self.snapshot.read_bytes()
            if not data.startswith(SNAPSHOT_MAGIC):
                raise ValueError("bad magic")
            pos = len(SNAPSHOT_MAGIC)
            offset, head = struct.unpack_from(">QQ", data, pos)
            digest = data[pos + 16:pos + 48]
            body_digest = data[pos + 48:pos + 80]
            pos += 80
            if hashlib.sha256(memoryview(data)[pos:]).digest() != body_digest:
                raise ValueError("its checksum is wrong")
            if offset > self.journal.stat().st_size or self._journal_digest(offset) != digest:
                raise ValueError("it does not match the journal")
            with open(self.journal, "rb") as jf:
                entries = jf.read(offset).count(b"\n") - 1  # minus the header line
            if head != entries:  # one block per journaled transaction
                raise ValueError(f"its head block {head} is not the journal's {entries}")
            (n,) = struct.unpack_from(">Q", data, pos)
            pos += 8
            kv = {}
            for _ in range(n):
                kl, vl = struct.unpack_from(">II", data, pos)
                pos += 8
                kv[data[pos:pos + kl]] = data[pos + kl:pos + kl + vl]
                pos += kl + vl
            if pos != len(data):
                raise ValueError("trailing bytes")
        except (OSError, ValueError, struct.error) as exc:
            log.warning("embedded chain: ignoring snapshot %s (%s); replaying the journal",
                        self.snapshot, exc)
            return
        from eth.db.atomic import AtomicDB
        from eth.db.backends.memory import MemoryDB
        chain_class = type(self.backend.chain)
        chain = chain_class(AtomicDB(MemoryDB(kv)))
        if chain.get_canonical_head().block_number != head:
            log.warning("embedded chain: ignoring snapshot %s (its database does not hold block "
                        "%d); replaying the journal", self.snapshot, head)
            return
        self.backend.chain = chain
        self._offset = offset
        self.restored = offset

    # ---------------------------------------------------------------- execution
    def _execute(self, raw: bytes, ts: int) -> tuple[str, int]:
        parent_ts = self.backend.chain.get_canonical_head().timestamp
        if ts <= parent_ts:
            raise errors.JournalError(
                f"journal {self.journal}: timestamp {ts} not after the previous block's {parent_ts}")
        self.backend.chain.header = self.backend.chain.header.copy(timestamp=ts)
        tx_hash = self.tester.send_raw_transaction("0x" + raw.hex())
        receipt = self.tester.get_transaction_receipt(tx_hash)
        return tx_hash, int(receipt["status"])

    def send_raw(self, raw: bytes) -> str:
        """Execute a signed transaction and journal it. Caller must hold :meth:`locked`."""
        parent_ts = self.backend.chain.get_canonical_head().timestamp
        ts = max(int(time.time()), parent_ts + 1)
        if self._broken:
            raise errors.JournalError(self._broken)
        tx_hash, status = self._execute(raw, ts)
        try:
            self._append({"ts": ts, "raw": "0x" + raw.hex(), "hash": tx_hash, "status": status})
        except OSError as exc:
            # executed in memory but not journaled: this process's chain is now ahead of
            # the journal, so it must not write anything else
            self._broken = (f"could not journal transaction {tx_hash} to {self.journal} "
                            f"({exc.strerror or exc}); it is lost; restart the process")
            raise errors.JournalError(self._broken) from exc
        self._since_snapshot += 1
        if self._since_snapshot >= SNAPSHOT_EVERY:
            self._write_snapshot()
        return tx_hash

    def _deploy_registry(self) -> None:
        art = load_artifact()
        acct = dev_account(0)
        tx = {"data": art["bytecode"], "nonce": 0, "gas": DEPLOY_GAS, "maxFeePerGas": MAX_FEE,
              "maxPriorityFeePerGas": PRIORITY_FEE, "chainId": self.chain_id, "value": 0}
        signed = acct.sign_transaction(tx)
        self.send_raw(bytes(signed.raw_transaction))
        code = self.w3.eth.get_code(self.registry)
        if not code:
            raise errors.JournalError("deploying the registry on the embedded chain failed")
        log.info("embedded chain: registry deployed at %s", self.registry)

    @property
    def transactions(self) -> int:
        return self.w3.eth.get_transaction_count(dev_account(0).address)
