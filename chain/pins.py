"""The chain id each registry address is pinned to, kept in ``<home>/chain/pins.json``:
recorded at deploy-registry or the first connect, checked at every connect to a node."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from eth_utils import to_checksum_address
from web3 import Web3

from model_store.util import atomic_write

from . import errors
from .config import default_home
from .retries import is_node_error, node_failed, retry, unavailable

log = logging.getLogger("chain")

PINS_FILE = "pins.json"   # under <home>/chain: registry address -> chain id


def pins_path(home) -> Path:
    return (Path(home).expanduser() if home is not None else default_home()) / "chain" / PINS_FILE


def read_pin(home, registry: str) -> int | None:
    """The chain id pinned for ``registry`` (recorded at deploy-registry or first connect)."""
    try:
        pins = json.loads(pins_path(home).read_text())
        return int(pins[to_checksum_address(registry)]["chain_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_pin(home, registry: str, chain_id: int, endpoint: str, how: str) -> None:
    p = pins_path(home)
    try:
        pins = json.loads(p.read_text()) if p.exists() else {}
        pins[to_checksum_address(registry)] = {"chain_id": int(chain_id), "endpoint": endpoint,
                                               "recorded": how}
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, json.dumps(pins, indent=1, sort_keys=True) + "\n")
    except (OSError, ValueError) as exc:   # a read-only home: the pin is a safeguard, not state
        log.warning("could not record the chain id pin in %s: %s", p, exc)


def check_chain_id(w3: Web3, url: str, registry: str, home, pinned: int | None) -> int:
    try:
        got = int(retry(lambda: w3.eth.chain_id, attempts=3, deadline=10.0,
                        on_error=unavailable(url, "reading the chain id")))
    except Exception as exc:  # noqa: BLE001 - only the node's own errors are converted
        if is_node_error(exc):
            raise node_failed(url, "reading the chain id", exc) from exc
        raise
    if pinned is None:
        pinned = read_pin(home, registry)
    if pinned is not None and got != pinned:
        raise errors.ChainIdMismatch(
            f"{url} says chain id {got} but registry {registry} is pinned to chain id {pinned}; "
            "that node is on another chain or is not telling the truth: use your own node "
            "over https (or fix VERISEG_CHAIN_ID / --chain-id)")
    return got
