"""One registry contract on one chain: the checked connection to its code, the read
plumbing (retries, embedded-chain sync, decoded reverts) and the read calls; the writes and
the event log come from the mixins in ``chain.transactions`` and ``chain.events``."""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

from eth_utils import is_address, to_checksum_address
from web3 import Web3

from model_store.util import first_line

from . import errors
from ._revert import ErrorDecoder, is_revert, to_chain_error
from .artifact import load_artifact
from .events import RegistryEvents
from .retries import is_node_error, node_failed, retry, unavailable
from .transactions import RegistryTransactions
from .values import ROLE_NAMES, ROLES, AnchorRecord, KeyStatus, parse_key, root_bytes, stream_hash

T = TypeVar("T")


class Registry(RegistryTransactions, RegistryEvents):
    """One registry contract on one chain, optionally with an account that signs."""

    def __init__(self, w3: Web3, address: str, account=None, *, embedded=None,
                 endpoint: str = "embedded", receipt_timeout: float = 30.0,
                 poll_latency: float = 0.1, check_code: bool = True, home=None):
        self.w3 = w3
        self.home = embedded.home if embedded is not None else home   # None: VERISEG_HOME
        self.endpoint = endpoint
        self.embedded = embedded
        if not is_address(address):
            raise errors.RegistryNotConfigured(
                f"'{address}' is not a contract address; pass --registry 0x... "
                "(40 hex characters)")
        self.address = to_checksum_address(address)
        self.account = account
        self.receipt_timeout = receipt_timeout
        self.poll_latency = poll_latency
        art = load_artifact()
        self.abi = art["abi"]
        self._evm = art.get("settings", {}).get("evmVersion", "paris").capitalize()
        self.contract = w3.eth.contract(address=self.address, abi=self.abi)
        self.decoder = ErrorDecoder(self.abi)
        self._lock = threading.RLock()
        # topic0 of each event, as web3 computes it from the ABI
        self._topic_to_event = {bytes.fromhex(ev.topic.removeprefix("0x")): ev.event_name
                                for ev in self.contract.events}
        if check_code:
            code = self._read(lambda: self.w3.eth.get_code(self.address), "reading contract code")
            if not code:
                raise errors.RegistryNotFound(
                    f"no contract at {self.address} on {self.endpoint}; deploy one with "
                    "`python -m chain deploy-registry` and pass its address")
            # the node's word on every status rests on this being our contract
            if bytes(code) != bytes.fromhex(art["deployedBytecode"].removeprefix("0x")):
                raise errors.RegistryCodeMismatch(self._code_mismatch())
            self._check_node_runs_code()

    def _check_node_runs_code(self) -> None:
        """One read through the registry's code. A node whose EVM predates an opcode the
        code uses still stores and serves that code, then fails every call: found here,
        at connect, instead of at the first read of a run."""
        try:
            self._call("status", bytes(32))   # a view returning a string: dispatch, storage, ABI encoding
        except errors.ChainUnavailable:
            raise
        except errors.ChainError as exc:   # status(0) never reverts on a node that runs the code
            raise errors.NodeIncompatible(
                f"the node {self.endpoint} cannot run the registry's EVM code: a read of "
                f"{self.address} (status) failed ({first_line(exc.__cause__ or exc, 120)}); its "
                f"code is built for the {self._evm} EVM: use a node and chain at {self._evm} "
                "or later (check the node's hardfork setting)") from exc

    def _code_mismatch(self) -> str:
        if self.embedded is not None:
            return (f"the embedded chain in {self.embedded.dir} holds an older ModelRegistry "
                    "than this version's (chain/artifacts); move that folder away to start a "
                    "fresh chain (its registrations are lost: register and deploy again)")
        return (f"the code at {self.address} on {self.endpoint} is not the committed "
                "ModelRegistry (chain/artifacts): wrong --registry, an old registry, or a node "
                "that is not telling the truth; use your own node over https")

    # ------------------------------------------------------------------ plumbing
    @property
    def sender(self) -> str | None:
        return self.account.address if self.account is not None else None

    def with_account(self, account) -> "Registry":
        """The same registry and chain, signing with another account."""
        return Registry(self.w3, self.address, account, embedded=self.embedded,
                        endpoint=self.endpoint, receipt_timeout=self.receipt_timeout,
                        poll_latency=self.poll_latency, check_code=False, home=self.home)

    def _unavailable(self, what: str) -> Callable[[BaseException], errors.ChainError]:
        return unavailable(self.endpoint, what)

    def _ctx(self, call: str) -> dict:
        return {"registry": self.address, "account": self.sender, "call": call,
                "role_names": ROLE_NAMES}

    def _read(self, fn: Callable[[], T], what: str, *, call: str | None = None) -> T:
        if self.embedded is not None:
            self.embedded.sync()
            inner = fn

            def fn():
                with self.embedded.mutex:
                    return inner()
        try:
            return retry(fn, attempts=3, deadline=10.0, on_error=self._unavailable(what))
        except errors.ChainError:
            raise
        except Exception as exc:  # noqa: BLE001
            if is_revert(exc):
                raise to_chain_error(exc, self.decoder, self._ctx(call or what)) from exc
            if is_node_error(exc):
                raise node_failed(self.endpoint, what, exc) from exc
            raise

    def _call(self, name: str, *args):
        fn = getattr(self.contract.functions, name)(*args)
        return self._read(lambda: fn.call(), f"calling {name}", call=name)

    @staticmethod
    def _role(role: str) -> bytes:
        try:
            return ROLES[role.lower()]
        except KeyError:
            raise errors.UnknownRole(f"unknown role '{role}'; use publisher or anchorer",
                                     error="UnknownRole") from None

    @staticmethod
    def _address(a: str) -> str:
        if not is_address(a):
            raise errors.InvalidArgument(f"'{a}' is not an address (0x + 40 hex characters)",
                                         error="BadAddress")
        return to_checksum_address(a)

    # ------------------------------------------------------------------ reads
    def status(self, key: str) -> KeyStatus:
        registered, revoked, reason, publisher, at = self._call("status", parse_key(key).bytes)
        return KeyStatus(bool(registered), bool(revoked), reason,
                         publisher if registered else None, int(at))

    def info(self, key: str) -> tuple[str, str]:
        """(name, uri) the key was registered with."""
        name, uri = self._call("info", parse_key(key).bytes)
        return name, uri

    def current(self, name: str) -> tuple[str, int]:
        key, version = self._call("current", name)
        return bytes(key).hex(), int(version)

    def anchor_of(self, root: bytes | str) -> tuple[str, int, int, int] | None:
        """(model key, first seq, last seq, block) of an anchored root, None if never anchored."""
        rec = self.anchor_record(root)
        return None if rec is None else (rec.model_key, rec.first_seq, rec.last_seq, rec.block)

    def anchor_record(self, root: bytes | str) -> AnchorRecord | None:
        """Everything the registry recorded for an anchored root (with its stream and the
        device that anchored it), None if never anchored."""
        root_b = root_bytes(root)
        key, sid, by, first, last, block = self._call("anchorOf", root_b)
        if int(block) == 0:
            return None
        return AnchorRecord(root_b.hex(), bytes(key).hex(), bytes(sid).hex(),
                            to_checksum_address(by), int(first), int(last), int(block))

    def stream_anchors(self, stream: str, from_block: int = 0) -> list[AnchorRecord]:
        """Every anchor of ``stream`` (by any device), from its Anchored logs filtered by
        the indexed stream id. Raises AnchorVerificationFailed (check
        ``anchor_history_incomplete``) when the node returns fewer than the registry
        counted: a node that dropped logs could otherwise hide a conflicting anchor."""
        sid = stream_hash(stream)
        latest = self.block_number()
        evs = self._filtered("Anchored", {"streamId": sid}, from_block, latest)
        out = [AnchorRecord(str(e.args["merkleRoot"]), str(e.args["modelKey"]),
                            str(e.args["streamId"]), to_checksum_address(e.args["anchorer"]),
                            int(e.args["firstSeq"]), int(e.args["lastSeq"]), e.block)
               for e in evs if e.kind == "Anchored"]
        counted = int(self._call("streamAnchorCount", sid))
        if from_block == 0 and len(out) < counted:
            raise errors.AnchorVerificationFailed(
                f"anchor history incomplete: registry {self.address} counts {counted} anchors of "
                f"stream '{stream}' but {self.endpoint} returned {len(out)} Anchored logs; ask a "
                "node that keeps the registry's logs (an archive node)",
                check="anchor_history_incomplete")
        return out

    def pending_owner(self) -> str | None:
        a = self._call("pendingOwner")
        return None if int(a, 16) == 0 else to_checksum_address(a)

    def has_role(self, role: str, account: str) -> bool:
        return bool(self._call("hasRole", self._role(role), self._address(account)))

    def owner(self) -> str:
        return self._call("owner")

    @property
    def chain_id(self) -> int:
        if getattr(self, "_chain_id", None) is None:
            self._chain_id = int(self._read(lambda: self.w3.eth.chain_id, "reading the chain id"))
        return self._chain_id

    def block_number(self) -> int:
        return self._read(lambda: self.w3.eth.block_number, "reading the block number")
