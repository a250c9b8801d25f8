"""Typed web3 client of the ``ModelRegistry`` contract.

    from chain import connect
    reg = connect()                                  # embedded chain under VERISEG_HOME
    reg = connect("http://127.0.0.1:8545", registry="0x...", keyfile="key.json")
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from eth_account import Account
from eth_utils import is_address, keccak, to_checksum_address
from web3 import Web3

import model_store
from model_store.util import atomic_write, first_line

from . import errors
from ._revert import ErrorDecoder, is_revert, to_chain_error
from .artifact import load_artifact
from .retries import is_transient, retry, unavailable  # noqa: F401 - re-exported

log = logging.getLogger("chain")
T = TypeVar("T")

PUBLISHER = keccak(text="PUBLISHER")
ANCHORER = keccak(text="ANCHORER")
ROLES = {"publisher": PUBLISHER, "anchorer": ANCHORER}
ROLE_NAMES = {PUBLISHER: "PUBLISHER", ANCHORER: "ANCHORER"}
EVENT_KINDS = ("Registered", "Deployed", "Revoked", "Anchored", "RoleGranted", "RoleRevoked",
               "OwnershipTransferStarted", "OwnershipTransferred")
LOG_CHUNK = 5_000  # blocks per eth_getLogs request
EMBEDDED_GAS = 1_500_000  # gas limit of embedded-chain transactions (x1.25 below)

# --------------------------------------------------------------------------- helpers


def normalize_key(key: str | bytes) -> str:
    """A model key as 64 lowercase hex chars (accepts bytes32 and an optional 0x):
    model_store's rule, refused as the chain's InvalidKey."""
    try:
        return model_store.normalize_key(key)
    except ValueError as exc:
        raise errors.InvalidKey(str(exc)) from None


def key_bytes(key: str | bytes) -> bytes:
    return bytes.fromhex(normalize_key(key))


def stream_hash(stream: str) -> bytes:
    """The on-chain id of a stream: keccak256 of its id in UTF-8 (as Deployed's nameHash)."""
    return keccak(str(stream).encode("utf-8"))


def _is_funds_error(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return "cannot afford" in msg or "insufficient funds" in msg


@dataclass(frozen=True)
class KeyStatus:
    registered: bool
    revoked: bool
    reason: str
    publisher: str | None
    registered_at: int  # unix seconds (block timestamp), 0 when unregistered

    @property
    def active(self) -> bool:
        return self.registered and not self.revoked

    @property
    def state(self) -> str:
        return "revoked" if self.revoked else "active" if self.registered else "unregistered"


@dataclass(frozen=True)
class ChainEvent:
    kind: str                 # Registered | Deployed | Revoked | Anchored | RoleGranted | ...
    block: int
    log_index: int
    tx_hash: str
    key: str | None = None    # model key (hex) for Registered / Deployed / Revoked / Anchored
    deployment: str | None = None
    version: int | None = None
    reason: str | None = None
    args: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class KeyDeployment:
    """A deployment name that once pointed at ``key`` and where it points now."""
    name: str
    version: int              # the (last) version at which the name pointed at the key
    block: int                # the block of that Deployed event
    key: str
    current_key: str
    current_version: int

    @property
    def superseded(self) -> bool:
        return self.current_key != self.key


@dataclass(frozen=True)
class AnchorRecord:
    """What the registry recorded for an anchored Merkle root."""
    root: str
    model_key: str
    stream_id: str            # keccak256 of the stream id (hex)
    anchorer: str             # the device (address) that anchored it
    first_seq: int
    last_seq: int
    block: int


def _jsonable(v):
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    return v


# --------------------------------------------------------------------------- registry


class Registry:
    """One registry contract on one chain, optionally with an account that signs."""

    def __init__(self, w3: Web3, address: str, account=None, *, embedded=None,
                 endpoint: str = "embedded", receipt_timeout: float = 30.0,
                 poll_latency: float = 0.1, check_code: bool = True):
        self.w3 = w3
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
                        poll_latency=self.poll_latency, check_code=False)

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
            raise

    def _call(self, name: str, *args):
        fn = getattr(self.contract.functions, name)(*args)
        return self._read(lambda: fn.call(), f"calling {name}", call=name)

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
            if _is_funds_error(exc):
                raise errors.InsufficientFunds(
                    f"account {frm} cannot pay for gas on {self.endpoint}; fund it, or sign with "
                    "another account (VERISEG_KEYFILE; the embedded chain funds only its dev "
                    "accounts)") from exc
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
            raise

    # ------------------------------------------------------------------ writes
    def register(self, key: str, name: str, uri: str = "") -> str:
        """Register a model key; returns the transaction hash."""
        r = self._transact("register", key_bytes(key), name, uri)
        return r["transactionHash"].to_0x_hex()

    def deploy(self, name: str, key: str) -> int:
        """Point deployment ``name`` at ``key``; returns the new version."""
        r = self._transact("deploy", name, key_bytes(key))
        for ev in self.contract.events.Deployed().process_receipt(r, errors=_DISCARD()):
            return int(ev["args"]["version"])
        raise errors.ChainError(f"deploy of '{name}' produced no Deployed event")

    def revoke(self, key: str, reason: str) -> str:
        r = self._transact("revoke", key_bytes(key), reason)
        return r["transactionHash"].to_0x_hex()

    def anchor(self, root: bytes | str, model_key: str, first_seq: int, last_seq: int, *,
               stream: str) -> str:
        """Commit the Merkle root of ``stream``'s results ``first_seq..last_seq``; the
        signing account is recorded as the anchoring device. Returns the transaction hash."""
        root_b = _root_bytes(root)
        r = self._transact("anchor", root_b, stream_hash(stream), int(first_seq), int(last_seq),
                           key_bytes(model_key))
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
        registered, revoked, reason, publisher, at = self._call("status", key_bytes(key))
        return KeyStatus(bool(registered), bool(revoked), reason,
                         publisher if registered else None, int(at))

    def info(self, key: str) -> tuple[str, str]:
        """(name, uri) the key was registered with."""
        name, uri = self._call("info", key_bytes(key))
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
        root_b = _root_bytes(root)
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

    # ------------------------------------------------------------------ events
    def events(self, from_block: int = 0, kinds: tuple[str, ...] | None = ("Deployed", "Revoked"),
               to_block: int | None = None) -> tuple[list[ChainEvent], int]:
        """Registry events from ``from_block`` on, in chain order, and the block to ask
        from next time. ``kinds=None`` returns every event kind."""
        latest = self.block_number() if to_block is None else to_block
        if from_block > latest:
            return [], from_block
        wanted = set(EVENT_KINDS if kinds is None else kinds)
        topics = [t for t, n in self._topic_to_event.items() if n in wanted]
        out = [ev for ev in self._logs([topics], from_block, latest) if ev.kind in wanted]
        return out, latest + 1

    def _logs(self, topics: list, from_block: int, to_block: int) -> list[ChainEvent]:
        """Decoded registry logs matching ``topics`` (eth_getLogs positions), in chain order,
        read in LOG_CHUNK-block requests.  One request per chunk for all the wanted event
        kinds (web3's ``contract.events.X.get_logs`` asks once per kind), decoded by web3's
        ``process_log``."""
        def read(start: int, end: int) -> list:
            flt = {"fromBlock": start, "toBlock": end, "address": self.address, "topics": topics}
            logs = self._read(lambda: self.w3.eth.get_logs(flt), "reading events")
            return [self._decode_log(lg) for lg in logs]
        return self._chunked(read, from_block, to_block)

    def _filtered(self, kind: str, filters: dict, from_block: int, to_block: int) -> list[ChainEvent]:
        """``kind`` events whose indexed arguments match ``filters``: web3's
        ``contract.events.X.get_logs(argument_filters=...)``, in LOG_CHUNK-block requests."""
        event = getattr(self.contract.events, kind)

        def read(start: int, end: int) -> list:
            got = self._read(lambda: event.get_logs(argument_filters=filters, from_block=start,
                                                    to_block=end), "reading events")
            return [self._event(ev) for ev in got]
        return self._chunked(read, from_block, to_block)

    @staticmethod
    def _chunked(read: Callable[[int, int], list], from_block: int, to_block: int) -> list[ChainEvent]:
        out: list[ChainEvent] = []
        for start in range(from_block, to_block + 1, LOG_CHUNK):
            out += [ev for ev in read(start, min(to_block, start + LOG_CHUNK - 1)) if ev is not None]
        out.sort(key=lambda e: (e.block, e.log_index))
        return out

    def deployments_of(self, key: str, from_block: int = 0) -> list[KeyDeployment]:
        """Every deployment name that ever pointed at ``key``, found by the key (the
        ``Deployed`` event's indexed key topic), never by the name the key was registered
        under, each with its current key and version; in the order they first pointed at it.
        A rollback check refuses a key that any of them has moved on from (``superseded``)."""
        k = normalize_key(key)
        latest = self.block_number()
        evs = self._filtered("Deployed", {"key": bytes.fromhex(k)}, from_block, latest)
        last: dict[str, ChainEvent] = {}
        for ev in evs:
            if ev.deployment is not None and (ev.key or "").lower() == k:
                last[ev.deployment] = ev   # keeps first-seen order, the latest event
        out = []
        for name, ev in last.items():
            cur, version = self.current(name)
            out.append(KeyDeployment(name, int(ev.version or 0), ev.block, k, cur, version))
        return out

    def _decode_log(self, lg) -> ChainEvent | None:
        topic0 = bytes(lg["topics"][0]) if lg["topics"] else b""
        name = self._topic_to_event.get(topic0)
        if name is None:
            return None
        return self._event(getattr(self.contract.events, name)().process_log(lg))

    @staticmethod
    def _event(ev) -> ChainEvent:
        """A ChainEvent from web3's decoded event data."""
        a = {k: _jsonable(v) for k, v in dict(ev["args"]).items()}
        key = a.get("key") or a.get("modelKey")
        return ChainEvent(kind=ev["event"], block=int(ev["blockNumber"]), log_index=int(ev["logIndex"]),
                          tx_hash=bytes(ev["transactionHash"]).hex(), key=key,
                          deployment=a.get("deployment"),
                          version=int(a["version"]) if "version" in a else None,
                          reason=a.get("reason"), args=a)

    def follow(self, deployment: str, from_block: int = 0, *, poll_interval: float = 1.0,
               stop: threading.Event | None = None, max_outage: float = 60.0
               ) -> Iterator[ChainEvent]:
        """Yield ``Deployed`` events of ``deployment`` and every ``Revoked`` event from
        ``from_block`` on, in order, polling the chain; ends when ``stop`` is set. Node
        outages are retried with backoff; longer than ``max_outage`` s raises
        ChainUnavailable. (``chain.follower.EventFollower`` gives every round.)"""
        from .follower import EventFollower
        follower = EventFollower(self, from_block, poll_interval=poll_interval, stop=stop,
                                 max_outage=max_outage)
        for ev in follower.events():
            if ev.kind == "Revoked" or ev.deployment == deployment:
                yield ev


def _root_bytes(root: bytes | str) -> bytes:
    root_b = bytes.fromhex(root.removeprefix("0x")) if isinstance(root, str) else bytes(root)
    if len(root_b) != 32:
        raise errors.InvalidKey(f"a Merkle root is 32 bytes, got {len(root_b)}")
    return root_b


def _DISCARD():
    from web3.logs import DISCARD
    return DISCARD


# --------------------------------------------------------------------------- connect


def load_keyfile(path: str | os.PathLike, password: str | None = None):
    """An account from an encrypted JSON keystore (password: VERISEG_KEYFILE_PASSWORD)."""
    p = Path(path).expanduser()
    if password is None:
        password = os.environ.get("VERISEG_KEYFILE_PASSWORD")
    if password is None:
        raise errors.KeyfileError(
            f"key file {p} needs a password; set VERISEG_KEYFILE_PASSWORD")
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise errors.KeyfileError(f"key file {p} does not exist; check VERISEG_KEYFILE") from None
    except (OSError, ValueError) as exc:
        raise errors.KeyfileError(f"key file {p} is not a JSON keystore ({exc}); "
                                  "create one with eth_account Account.encrypt") from None
    try:
        return Account.from_key(Account.decrypt(data, password))
    except ValueError as exc:
        raise errors.KeyfileError(f"cannot decrypt key file {p}: {exc}; check "
                                  "VERISEG_KEYFILE_PASSWORD") from None


def http_web3(url: str, timeout: float = 10.0) -> Web3:
    from web3 import HTTPProvider
    provider = HTTPProvider(url, request_kwargs={"timeout": (min(3.0, timeout), timeout)},
                            exception_retry_configuration=None)
    return Web3(provider)


PINS_FILE = "pins.json"   # under <home>/chain: registry address -> chain id


def _pins_path(home) -> Path:
    from .embedded import default_home
    return (Path(home).expanduser() if home is not None else default_home()) / "chain" / PINS_FILE


def read_pin(home, registry: str) -> int | None:
    """The chain id pinned for ``registry`` (recorded at deploy-registry or first connect)."""
    try:
        pins = json.loads(_pins_path(home).read_text())
        return int(pins[to_checksum_address(registry)]["chain_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_pin(home, registry: str, chain_id: int, endpoint: str, how: str) -> None:
    p = _pins_path(home)
    try:
        pins = json.loads(p.read_text()) if p.exists() else {}
        pins[to_checksum_address(registry)] = {"chain_id": int(chain_id), "endpoint": endpoint,
                                               "recorded": how}
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, json.dumps(pins, indent=1, sort_keys=True) + "\n")
    except (OSError, ValueError) as exc:   # a read-only home: the pin is a safeguard, not state
        log.warning("could not record the chain id pin in %s: %s", p, exc)


def _check_chain_id(w3: Web3, url: str, registry: str, home, pinned: int | None) -> int:
    got = int(retry(lambda: w3.eth.chain_id, attempts=3, deadline=10.0,
                    on_error=unavailable(url, "reading the chain id")))
    if pinned is None:
        pinned = read_pin(home, registry)
    if pinned is not None and got != pinned:
        raise errors.ChainIdMismatch(
            f"{url} says chain id {got} but registry {registry} is pinned to chain id {pinned}; "
            "that node is on another chain or is not telling the truth: use your own node "
            "over https (or fix VERISEG_CHAIN_ID / --chain-id)")
    return got


def connect(chain: str | None = None, home: str | os.PathLike | None = None,
            registry: str | None = None, keyfile: str | os.PathLike | None = None, *,
            private_key: str | bytes | None = None, account_index: int | None = None,
            timeout: float = 10.0, receipt_timeout: float = 30.0,
            chain_id: int | None = None) -> Registry:
    """Connect to the registry.

    ``chain``: ``"embedded"`` (default; ``VERISEG_CHAIN``) or an ``http(s)://`` JSON-RPC URL.
    ``home``: the embedded chain's state folder (``VERISEG_HOME``, default ``~/.veriseg``).
    ``registry``: contract address on a real node (``VERISEG_REGISTRY``).
    ``keyfile``: encrypted JSON keystore that signs on a real node (``VERISEG_KEYFILE``,
    password ``VERISEG_KEYFILE_PASSWORD``). ``private_key``: sign with this key instead
    (tests with anvil's public dev keys). ``account_index``: on the embedded chain, which
    deterministic dev account signs (default 0, the owner).

    On a node the registry must be pinned to a chain id (``chain_id``, ``VERISEG_CHAIN_ID``,
    else the pin recorded in ``home`` by ``deploy-registry`` or the first connect) and its
    code must be the committed runtime bytecode; otherwise ChainIdMismatch /
    RegistryCodeMismatch. That catches a wrong node or registry, not a node that lies
    consistently: only an authenticated endpoint (your own node over https) does.
    """
    chain = chain or os.environ.get("VERISEG_CHAIN") or "embedded"
    registry = registry or os.environ.get("VERISEG_REGISTRY") or None
    if keyfile is None and private_key is None:
        keyfile = os.environ.get("VERISEG_KEYFILE") or None
    account = None
    if private_key is not None:
        account = Account.from_key(private_key)
    elif keyfile is not None:
        account = load_keyfile(keyfile)
    if chain == "embedded":
        from .embedded import EmbeddedChain, dev_account
        emb = EmbeddedChain(home)
        if account is None:
            account = dev_account(account_index or 0)
        return Registry(emb.w3, registry or emb.registry, account, embedded=emb,
                        endpoint=f"embedded:{emb.dir}")
    if chain.startswith(("http://", "https://")):
        if not registry:
            raise errors.RegistryNotConfigured(
                f"no registry address for {chain}; pass --registry 0x... or set "
                "VERISEG_REGISTRY (deploy one with `python -m chain deploy-registry`)")
        if chain_id is None and os.environ.get("VERISEG_CHAIN_ID"):
            try:
                chain_id = int(os.environ["VERISEG_CHAIN_ID"], 0)
            except ValueError:
                raise errors.ChainError(f"VERISEG_CHAIN_ID={os.environ['VERISEG_CHAIN_ID']!r} "
                                        "is not a chain id (an integer)") from None
        if not is_address(registry):
            raise errors.RegistryNotConfigured(
                f"'{registry}' is not a contract address; pass --registry 0x... (40 hex characters)")
        w3 = http_web3(chain, timeout)
        got = _check_chain_id(w3, chain, registry, home, chain_id)
        reg = Registry(w3, registry, account, endpoint=chain, receipt_timeout=receipt_timeout)
        reg._chain_id = got
        if read_pin(home, registry) is None:
            log.warning("registry %s: chain id %d pinned on first use (in %s); pin it "
                        "explicitly with VERISEG_CHAIN_ID", reg.address, got, _pins_path(home))
            record_pin(home, registry, got, chain, "first connect")
        return reg
    raise errors.ChainError(
        f"unknown chain '{chain}'; use 'embedded' or an http:// JSON-RPC URL")


def deploy_registry(chain: str | None = None, home=None, keyfile=None, *,
                    private_key=None, timeout: float = 10.0,
                    receipt_timeout: float = 60.0) -> str:
    """Deploy a new ModelRegistry (the signer becomes its owner); returns its address.
    On the embedded chain the registry already exists at a fixed address: returns it."""
    chain = chain or os.environ.get("VERISEG_CHAIN") or "embedded"
    if chain == "embedded":
        from .embedded import EmbeddedChain
        return EmbeddedChain(home).registry
    if keyfile is None and private_key is None:
        keyfile = os.environ.get("VERISEG_KEYFILE") or None
    if private_key is not None:
        account = Account.from_key(private_key)
    elif keyfile is not None:
        account = load_keyfile(keyfile)
    else:
        raise errors.NoAccount("deploying a registry needs a signing account; set "
                               "VERISEG_KEYFILE and VERISEG_KEYFILE_PASSWORD")
    if not chain.startswith(("http://", "https://")):
        raise errors.ChainError(f"unknown chain '{chain}'; use 'embedded' or an http:// URL")
    w3 = http_web3(chain, timeout)
    art = load_artifact()
    down = unavailable(chain, "deploying the registry")

    def send():
        nonce = w3.eth.get_transaction_count(account.address, "pending")
        block = w3.eth.get_block("latest")
        base = int(block.get("baseFeePerGas") or 0)
        fees = ({"maxFeePerGas": 2 * base + 10**9, "maxPriorityFeePerGas": 10**9} if base
                else {"gasPrice": int(w3.eth.gas_price)})
        gas = w3.eth.estimate_gas({"from": account.address, "data": art["bytecode"]})
        tx = {"data": art["bytecode"], "value": 0, "nonce": nonce, "gas": int(gas * 1.2),
              "chainId": w3.eth.chain_id, **fees}
        return w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    tx_hash = retry(send, attempts=3, deadline=timeout, on_error=down)
    from web3.exceptions import TimeExhausted
    try:
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=receipt_timeout,
                                                      poll_latency=0.1)
    except TimeExhausted as exc:
        raise errors.ChainUnavailable(
            f"registry deployment {tx_hash.to_0x_hex()} not mined within {receipt_timeout:.0f}s "
            f"on {chain}; check the node") from exc
    except Exception as exc:  # noqa: BLE001
        if is_transient(exc):
            raise down(exc) from exc
        raise
    if receipt["status"] != 1 or not receipt["contractAddress"]:
        raise errors.ChainError(f"registry deployment {tx_hash.to_0x_hex()} failed on {chain}")
    addr = to_checksum_address(receipt["contractAddress"])
    record_pin(home, addr, int(w3.eth.chain_id), chain, "deploy-registry")
    return addr
