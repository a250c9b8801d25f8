"""Anchoring the result batches: the sender thread and the batches left unsent.

Every closed batch file is sealed (``operators.anchor_seal``) and sent in order by one
thread, which retries chain outages; a batch of a revoked key is never sent.  At the next
start the sealed batch files without a transaction are sent; one without this device's
seal (planted in the output folder) never is.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Optional

import chain
from chain import anchoring
from chain.retries import outage_policy
from model_store.util import first_line, one_line

from ..anchor_seal import is_sealed, write_sealed
from ..telemetry import log, lower_thread_priority, name_os_thread

__all__ = ["AnchorSender", "resend_unsent"]

# A batch waits seconds for its block anyway, so its sending never competes with scoring.
# On the embedded chain the EVM runs in this process: at nice 0 each anchor (every 100
# frames) made a 30 FPS camera drop a frame once the flow used ~90 % of two cores (int8).
ANCHOR_NICE = 10


class AnchorSender:
    """Sends Merkle roots of result batches to the registry, in order, retrying outages."""

    def __init__(self, registry, out: Path, secret: Optional[bytes] = None, *, stats, revoked):
        self.stats, self.revoked = stats, revoked
        self.reg = registry
        self.out = out
        self.secret = secret   # seals the batch file again once its tx is recorded
        self.q: "queue.Queue" = queue.Queue()
        self.give_up = threading.Event()   # set when close() stops waiting for the chain
        self.thread = threading.Thread(target=self._run, daemon=True, name="veriseg-anchor")
        self.thread.start()

    def submit(self, batch_file: Path, batch):
        self.q.put((batch_file, batch))

    def close(self, timeout: float = 30.0):
        self.q.put(None)
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.give_up.set()      # stop waiting out the outage: the files are resent next start
            log.warning("anchors still queued after %.0fs (chain down?); their batch files stay in "
                        "%s without a tx hash", timeout, self.out / "anchors")

    def _run(self):
        name_os_thread()
        lower_thread_priority(ANCHOR_NICE)
        while True:
            item = self.q.get()
            if item is None or self.give_up.is_set():
                return
            path, batch = item
            if batch.model_key in self.revoked:
                # the registry does not certify results of a revoked model; the flow never asks
                self.stats.anchor_failed()
                log.error("anchor %s not sent: model %s is revoked (%s)", path.name,
                          batch.model_key.short, self.revoked.reason(batch.model_key) or "no reason given")
                continue
            self._send(path, batch)

    def _send(self, path: Path, batch) -> None:
        """One batch: an outage is waited out (chain.retries.outage_policy), a refusal is
        final (logged, counted, the file kept)."""

        def outage(state) -> None:
            self.stats.anchor_failed()
            log.warning("anchor %s: chain unavailable (%s); retrying in %.1fs", path.name,
                        first_line(state.outcome.exception(), 120), state.upcoming_sleep)

        def send() -> None:
            batch.anchor(self.reg)
            write_sealed(path, batch, self.secret)

        try:
            outage_policy(self.give_up, before_sleep=outage)(send)
            self.stats.anchor_sent()
        except chain.errors.ChainUnavailable as e:     # given up at close
            self.stats.anchor_failed()
            log.warning("anchor %s left unsent (%s); it is sent at the next start", path.name,
                        first_line(e, 120))
        except chain.errors.RootAlreadyAnchored:
            # idempotent on replay (recovery, re-runs): the same root, key and range
            # already on chain counts as anchored
            try:
                got = self.reg.anchor_of(batch.root)
            except chain.errors.ChainError:
                got = None
            if got and got[0] == batch.model_key and got[1:3] == (batch.first_seq, batch.last_seq):
                batch.chain = {"tx_hash": None, "block": got[3], "note": "already anchored"}
                write_sealed(path, batch, self.secret)
                self.stats.anchor_sent()
            else:
                self.stats.anchor_failed()
                log.error("anchor %s refused: root already anchored for %s", path.name, got)
        except chain.errors.ChainError as e:
            self.stats.anchor_failed()
            log.error("anchor %s refused: %s", path.name, first_line(e))
        except Exception as e:  # noqa: BLE001 - keep the sender alive for later batches
            self.stats.anchor_failed()
            log.error("anchor %s failed: %s: %s (batch file kept; anchor it later with "
                      "python -m chain anchor)", path.name, type(e).__name__, e)


def resend_unsent(folder: Path, *, secret: Optional[bytes], registry, sender: "AnchorSender",
                  stats) -> None:
    """Batch files this flow wrote and sealed but never anchored (crash, node down at
    exit) are sent now, in order; the chain refuses nothing twice (an identical root
    counts as anchored).  A batch without this device's seal was not written by this
    flow (planted in the output folder): it is never sent."""
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        try:
            batch, raw = anchoring.AnchorBatch.read(path)
        except Exception as e:  # noqa: BLE001 - a damaged file is reported, not fatal
            log.warning("anchor batch %s unreadable: %s", path, one_line(e))
            continue
        if raw.get("chain"):
            continue
        if not is_sealed(secret, batch, raw):
            stats.anchor_refused()
            log.error("anchor batch %s not sent: it carries no valid seal of this device, so "
                      "this flow did not write it (planted or altered)", path)
            continue
        try:
            revoked = registry.status(batch.model_key).revoked
        except Exception:  # noqa: BLE001 - the chain decides when it is sent
            revoked = False
        if revoked:
            log.warning("anchor batch %s not sent: model %s is revoked", path.name,
                        batch.model_key.short)
            continue
        log.info("anchor batch %s was never sent: sending it now", path.name)
        sender.submit(path, batch)
