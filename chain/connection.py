"""Reaching a registry: the embedded chain or a node over http(s), the account that signs
(key file or key), the chain id pin checked; and deploying a new registry on a node."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from eth_account import Account
from eth_utils import is_address, to_checksum_address
from web3 import Web3

from . import errors
from .artifact import load_artifact
from .config import ChainConfig
from .pins import check_chain_id, pins_path, read_pin, record_pin
from .registry import Registry
from .retries import is_node_error, is_transient, node_failed, retry, unavailable
from .transactions import is_funds_error

log = logging.getLogger("chain")


def load_keyfile(path: str | os.PathLike, password: str | None = None):
    """An account from an encrypted JSON keystore (``password``: VERISEG_KEYFILE_PASSWORD)."""
    p = Path(path).expanduser()
    if password is None:
        raise errors.KeyfileError(
            f"key file {p} needs a password; set VERISEG_KEYFILE_PASSWORD")
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise errors.KeyfileError(f"key file {p} does not exist; check VERISEG_KEYFILE") from None
    except (OSError, ValueError) as exc:
        raise errors.KeyfileError(f"key file {p} is not a JSON keystore ({exc}); "
                                  "create one with `python -m chain keystore new`") from None
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


def connect(chain: str | None = None, home: str | os.PathLike | None = None,
            registry: str | None = None, keyfile: str | os.PathLike | None = None, *,
            private_key: str | bytes | None = None, account_index: int | None = None,
            timeout: float = 10.0, receipt_timeout: float = 30.0,
            chain_id: int | None = None, config: ChainConfig | None = None) -> Registry:
    """Connect to the registry.

    ``config``: the registry's configuration (``chain.config.ChainConfig``; default: its
    defaults, the environment is not read here); each argument below given here overrides
    its field.  ``chain``: ``"embedded"`` or an ``http(s)://`` JSON-RPC URL.  ``home``: the
    embedded chain's state folder and where the chain id pins are kept.  ``registry``:
    contract address on a real node.  ``keyfile``: encrypted JSON keystore that signs on a
    real node (its password: the configuration's). ``private_key``: sign with this key instead
    (tests with anvil's public dev keys). ``account_index``: on the embedded chain, which
    deterministic dev account signs (default 0, the owner).

    On a node the registry must be pinned to a chain id (``chain_id``, else the pin recorded in ``home`` by ``deploy-registry`` or the first connect) and its
    code must be the committed runtime bytecode; otherwise ChainIdMismatch /
    RegistryCodeMismatch. That catches a wrong node or registry, not a node that lies
    consistently: only an authenticated endpoint (your own node over https) does.
    """
    config = (config or ChainConfig()).overridden(chain=chain, home=home, registry=registry,
                                                  keyfile=keyfile, chain_id=chain_id)
    chain, home, registry, chain_id = config.chain, config.home, config.registry, config.chain_id
    account = None
    if private_key is not None:
        account = Account.from_key(private_key)
    elif config.keyfile is not None:
        account = load_keyfile(config.keyfile, config.password)
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
        if not is_address(registry):
            raise errors.RegistryNotConfigured(
                f"'{registry}' is not a contract address; pass --registry 0x... (40 hex characters)")
        w3 = http_web3(chain, timeout)
        got = check_chain_id(w3, chain, registry, home, chain_id)
        reg = Registry(w3, registry, account, endpoint=chain, receipt_timeout=receipt_timeout,
                       home=home)
        reg._chain_id = got
        if read_pin(home, registry) is None:
            log.warning("registry %s: chain id %d pinned on first use (in %s); pin it "
                        "explicitly with VERISEG_CHAIN_ID", reg.address, got, pins_path(home))
            record_pin(home, registry, got, chain, "first connect")
        return reg
    raise errors.ChainError(
        f"unknown chain '{chain}'; use 'embedded' or an http:// JSON-RPC URL")


def deploy_registry(chain: str | None = None, home=None, keyfile=None, *,
                    private_key=None, timeout: float = 10.0,
                    receipt_timeout: float = 60.0, config: ChainConfig | None = None) -> str:
    """Deploy a new ModelRegistry (the signer becomes its owner); returns its address.
    On the embedded chain the registry already exists at a fixed address: returns it.
    ``config`` and the arguments as for :func:`connect`."""
    config = (config or ChainConfig()).overridden(chain=chain, home=home, keyfile=keyfile)
    chain, home = config.chain, config.home
    if chain == "embedded":
        from .embedded import EmbeddedChain
        return EmbeddedChain(home).registry
    if private_key is not None:
        account = Account.from_key(private_key)
    elif config.keyfile is not None:
        account = load_keyfile(config.keyfile, config.password)
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
    try:
        tx_hash = retry(send, attempts=3, deadline=timeout, on_error=down)
    except errors.ChainError:
        raise
    except Exception as exc:  # noqa: BLE001 - the node's refusals become one line
        if is_funds_error(exc):
            raise errors.InsufficientFunds(
                f"account {account.address} cannot pay for deploying the registry on {chain}; "
                "fund it first") from exc
        if is_node_error(exc):
            raise node_failed(chain, "deploying the registry", exc) from exc
        raise
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
        if is_node_error(exc):
            raise node_failed(chain, "waiting for the registry deployment", exc) from exc
        raise
    if receipt["status"] != 1 or not receipt["contractAddress"]:
        raise errors.ChainError(f"registry deployment {tx_hash.to_0x_hex()} failed on {chain}; "
                                "the node's EVM must be at Paris or later")
    addr = to_checksum_address(receipt["contractAddress"])
    Registry(w3, addr, endpoint=chain)   # its code is there and the node runs it
    record_pin(home, addr, int(w3.eth.chain_id), chain, "deploy-registry")
    return addr
