"""Signing and sending registry transactions: pre-flight, fees, nonce, receipt, a mined
revert explained, and the write calls (a mixin of ``chain.registry.Registry``)."""

from __future__ import annotations

import contextlib

from . import errors
from ._revert import is_revert, to_chain_error
from .retries import is_node_error, is_transient, node_failed, retry
from .values import parse_key, root_bytes, stream_hash

EMBEDDED_GAS = 1_500_000  # gas limit of embedded-chain transactions (x1.25 below)


def is_funds_error(exc: BaseException) -> bool:
    """The node's words for a sender that cannot pay (they differ by node)."""
    msg = str(exc).lower()
    return "cannot afford" in msg or "insufficient funds" in msg


def _DISCARD():
    from web3.logs import DISCARD
    return DISCARD


class RegistryTransactions:
    """The signing side of a Registry: needs its ``account``; without one, NoAccount."""

    @contextlib.contextmanager
    def _write_lock(self):
        with self._lock:
            if self.embedded is not None:
                with self.embedded.locked():
                    yield
            else:
                yield

    def _fees(self) -> dict:
        if self.embedded is not None:
            from .embedded import MAX_FEE, PRIORITY_FEE
            return {"maxFeePerGas": MAX_FEE, "maxPriorityFeePerGas": PRIORITY_FEE}
        block = self.w3.eth.get_block("latest")
        base = int(block.get("baseFeePerGas") or 0)
        tip = 10**9 if base else 0
        if not base:
            return {"gasPrice": int(self.w3.eth.gas_price)}
        return {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}

    def _transact(self, name: str, *args) -> dict:
        """Pre-flight (eth_call, decoded refusals), sign, send, wait for the receipt."""
        if self.account is None:
            raise errors.NoAccount(
                f"{name} needs a signing account; set VERISEG_KEYFILE (an encrypted JSON "
                "keystore) and VERISEG_KEYFILE_PASSWORD")
        fn = getattr(self.contract.functions, name)(*args)
        ctx = self._ctx(name)
        frm = self.account.address
        down = self._unavailable(f"sending {name}")
        try:
            return self._transact_inner(name, fn, ctx, frm, down)
        except errors.ChainError:
            raise
        except Exception as exc:  # noqa: BLE001
            if is_funds_error(exc):
                raise errors.InsufficientFunds(
                    f"account {frm} cannot pay for gas on {self.endpoint}; fund it, or sign with "
                    "another account (VERISEG_KEYFILE; the embedded chain funds only its dev "
                    "accounts)") from exc
            if is_node_error(exc):
                raise node_failed(self.endpoint, f"sending {name}", exc) from exc
            raise

    def _transact_inner(self, name, fn, ctx, frm, down) -> dict:
        with self._write_lock():
            def prepare():
                try:
                    fn.call({"from": frm})  # eth_call first: its revert data is reliable
                    # eth-tester estimates gas by bisection (many EVM runs): on the embedded
                    # chain a fixed limit is enough, gas costs nothing there
                    gas = EMBEDDED_GAS if self.embedded is not None else fn.estimate_gas({"from": frm})
                except Exception as exc:  # noqa: BLE001
                    if is_revert(exc):
                        raise to_chain_error(exc, self.decoder, ctx) from exc
                    raise
                nonce = self.w3.eth.get_transaction_count(frm, "pending")
                return gas, nonce, self._fees(), self.w3.eth.chain_id
            gas, nonce, fees, chain_id = retry(prepare, attempts=3, deadline=10.0,
                                               on_error=down)
            # every field given: build_transaction encodes the call and asks the node nothing
            tx = fn.build_transaction({"from": frm, "value": 0, "gas": int(gas * 1.25) + 10_000,
                                       "nonce": nonce, "chainId": chain_id, **fees})
            signed = self.account.sign_transaction(tx)
            raw = bytes(signed.raw_transaction)
            if self.embedded is not None:
                tx_hash = self.embedded.send_raw(raw)
            else:
                try:
                    tx_hash = self.w3.eth.send_raw_transaction(raw).to_0x_hex()
                except Exception as exc:  # noqa: BLE001
                    if is_transient(exc):
                        raise down(exc) from exc
                    if is_revert(exc):
                        raise to_chain_error(exc, self.decoder, ctx) from exc
                    raise
        receipt = self._wait(tx_hash, name)
        if int(receipt["status"]) != 1:
            # mined but reverted (state changed between pre-flight and mining): find out why
            try:
                fn.call({"from": frm}, block_identifier=receipt["blockNumber"] - 1)
            except Exception as exc:  # noqa: BLE001
                if is_revert(exc):
                    raise to_chain_error(exc, self.decoder, ctx) from exc
            raise errors.UnknownRevert(
                f"transaction {tx_hash} ({name}) reverted on {self.endpoint}; see the node's trace",
                error="Unknown")
        return receipt

    def _wait(self, tx_hash: str, name: str) -> dict:
        if self.embedded is not None:
            with self.embedded.mutex:
                return dict(self.w3.eth.get_transaction_receipt(tx_hash))
        from web3.exceptions import TimeExhausted
        try:
            return dict(self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self.receipt_timeout, poll_latency=self.poll_latency))
        except TimeExhausted as exc:
            raise errors.ChainUnavailable(
                f"transaction {tx_hash} ({name}) was sent but not mined within "
                f"{self.receipt_timeout:.0f}s on {self.endpoint}; check the node, then "
                "`status` before retrying") from exc
        except Exception as exc:  # noqa: BLE001
            if is_transient(exc):
                raise self._unavailable(f"waiting for {name} ({tx_hash})")(exc) from exc
            if is_node_error(exc):
                raise node_failed(self.endpoint, f"waiting for {name} ({tx_hash})", exc) from exc
            raise

    # ------------------------------------------------------------------ writes
    def register(self, key: str, name: str, uri: str = "") -> str:
        """Register a model key; returns the transaction hash."""
        r = self._transact("register", parse_key(key).bytes, name, uri)
        return r["transactionHash"].to_0x_hex()

    def deploy(self, name: str, key: str) -> int:
        """Point deployment ``name`` at ``key``; returns the new version."""
        r = self._transact("deploy", name, parse_key(key).bytes)
        for ev in self.contract.events.Deployed().process_receipt(r, errors=_DISCARD()):
            return int(ev["args"]["version"])
        raise errors.ChainError(f"deploy of '{name}' produced no Deployed event")

    def revoke(self, key: str, reason: str) -> str:
        r = self._transact("revoke", parse_key(key).bytes, reason)
        return r["transactionHash"].to_0x_hex()

    def anchor(self, root: bytes | str, model_key: str, first_seq: int, last_seq: int, *,
               stream: str) -> str:
        """Commit the Merkle root of ``stream``'s results ``first_seq..last_seq``; the
        signing account is recorded as the anchoring device. Returns the transaction hash."""
        root_b = root_bytes(root)
        r = self._transact("anchor", root_b, stream_hash(stream), int(first_seq), int(last_seq),
                           parse_key(model_key).bytes)
        return r["transactionHash"].to_0x_hex()

    def grant_role(self, role: str, account: str) -> str:
        r = self._transact("grantRole", self._role(role), self._address(account))
        return r["transactionHash"].to_0x_hex()

    def revoke_role(self, role: str, account: str) -> str:
        r = self._transact("revokeRole", self._role(role), self._address(account))
        return r["transactionHash"].to_0x_hex()

    def transfer_ownership(self, new_owner: str) -> str:
        """Step one: name the next owner; nothing changes until it accepts."""
        r = self._transact("transferOwnership", self._address(new_owner))
        return r["transactionHash"].to_0x_hex()

    def accept_ownership(self) -> str:
        """Step two, signed by the pending owner: it takes over and the previous owner
        loses its publisher and anchorer roles."""
        r = self._transact("acceptOwnership")
        return r["transactionHash"].to_0x_hex()
