"""The registry's values in Python: model keys, stream ids, roles, and what a read returns
(a key's status, an event, a deployment of a key, an anchor record)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from eth_utils import keccak

from model_store.blob_key import BlobKey, InvalidBlobKey

from . import errors

PUBLISHER = keccak(text="PUBLISHER")
ANCHORER = keccak(text="ANCHORER")
ROLES = {"publisher": PUBLISHER, "anchorer": ANCHORER}
ROLE_NAMES = {PUBLISHER: "PUBLISHER", ANCHORER: "ANCHORER"}


def parse_key(key: str | bytes) -> BlobKey:
    """``key`` as a BlobKey; one that is not a key is the chain's InvalidKey (a ChainError,
    so a chain caller catches one family)."""
    try:
        return BlobKey(key)
    except InvalidBlobKey as exc:
        raise errors.InvalidKey(str(exc)) from None


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
    key: BlobKey | None = None   # model key for Registered / Deployed / Revoked / Anchored
    deployment: str | None = None
    version: int | None = None
    reason: str | None = None
    args: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.key is not None:
            object.__setattr__(self, "key", parse_key(self.key))

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class KeyDeployment:
    """A deployment name that once pointed at ``key`` and where it points now."""
    name: str
    version: int              # the (last) version at which the name pointed at the key
    block: int                # the block of that Deployed event
    key: BlobKey
    current_key: BlobKey
    current_version: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", parse_key(self.key))
        object.__setattr__(self, "current_key", parse_key(self.current_key))

    @property
    def superseded(self) -> bool:
        return self.current_key != self.key


@dataclass(frozen=True)
class AnchorRecord:
    """What the registry recorded for an anchored Merkle root."""
    root: str
    model_key: BlobKey
    stream_id: str            # keccak256 of the stream id (hex)
    anchorer: str             # the device (address) that anchored it
    first_seq: int
    last_seq: int
    block: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_key", parse_key(self.model_key))

