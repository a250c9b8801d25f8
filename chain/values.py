"""The registry's values in Python: model keys, stream ids, roles, and what a read returns
(a key's status, an event, a deployment of a key, an anchor record)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from eth_utils import keccak

import model_store

from . import errors

PUBLISHER = keccak(text="PUBLISHER")
ANCHORER = keccak(text="ANCHORER")
ROLES = {"publisher": PUBLISHER, "anchorer": ANCHORER}
ROLE_NAMES = {PUBLISHER: "PUBLISHER", ANCHORER: "ANCHORER"}


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


def root_bytes(root: bytes | str) -> bytes:
    root_b = bytes.fromhex(root.removeprefix("0x")) if isinstance(root, str) else bytes(root)
    if len(root_b) != 32:
        raise errors.InvalidKey(f"a Merkle root is 32 bytes, got {len(root_b)}")
    return root_b


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

