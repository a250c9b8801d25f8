"""Decode contract reverts (eth-tester and node flavours) into :mod:`chain.errors`."""

from __future__ import annotations

import ast
import re

from eth_abi import decode as abi_decode
from eth_utils import keccak

from model_store.display import shell_command

from . import errors

ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string)
PANIC = bytes.fromhex("4e487b71")  # Panic(uint256)


def _abi_type(inp: dict) -> str:
    t = inp["type"]
    if t.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in inp["components"])
        return f"({inner}){t[5:]}"
    return t


class ErrorDecoder:
    """Maps 4-byte selectors of the ABI's custom errors to (name, arg types, arg names)."""

    def __init__(self, abi: list[dict]):
        self.by_selector: dict[bytes, tuple[str, list[str], list[str]]] = {}
        for item in abi:
            if item.get("type") != "error":
                continue
            types = [_abi_type(i) for i in item["inputs"]]
            sig = f"{item['name']}({','.join(types)})"
            self.by_selector[keccak(text=sig)[:4]] = (
                item["name"], types, [i["name"] for i in item["inputs"]])

    def decode(self, data: bytes) -> tuple[str, dict] | None:
        if len(data) < 4:
            return None
        sel = data[:4]
        if sel == ERROR_STRING:
            try:
                return "Error", {"message": abi_decode(["string"], data[4:])[0]}
            except Exception:
                return "Error", {"message": data[4:].hex()}
        if sel == PANIC:
            try:
                return "Panic", {"code": abi_decode(["uint256"], data[4:])[0]}
            except Exception:
                return "Panic", {"code": None}
        if sel not in self.by_selector:
            return None
        name, types, names = self.by_selector[sel]
        try:
            values = list(abi_decode(types, data[4:]))
        except Exception:
            values = [None] * len(types)
        from eth_utils import to_checksum_address
        for i, t in enumerate(types):
            if t == "address" and isinstance(values[i], str):
                values[i] = to_checksum_address(values[i])
        return name, dict(zip(names, values))


_HEX = re.compile(r"0x[0-9a-fA-F]{8,}")


def revert_data(exc: BaseException) -> bytes | None:
    """Best-effort extraction of the raw revert data from a web3 / eth-tester exception."""
    data = getattr(exc, "data", None)
    if isinstance(data, (bytes, bytearray)) and data:
        return bytes(data)
    if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            pass
    if isinstance(data, dict):  # some nodes: {"message":..., "data": "0x..."}
        inner = data.get("data")
        if isinstance(inner, str) and inner.startswith("0x"):
            try:
                return bytes.fromhex(inner[2:])
            except ValueError:
                pass
    msg = str(exc.args[0]) if exc.args else str(exc)
    # eth-tester: "execution reverted: b'\xb0\"...'"
    m = re.search(r"execution reverted: (b(['\"]).*\2)\s*$", msg, re.S)
    if m:
        try:
            value = ast.literal_eval(m.group(1))
            if isinstance(value, bytes):
                return value
        except (ValueError, SyntaxError):
            pass
    m = _HEX.search(msg)
    if m:
        try:
            return bytes.fromhex(m.group(0)[2:])
        except ValueError:
            return None
    return None


def is_revert(exc: BaseException) -> bool:
    from eth_tester.exceptions import TransactionFailed
    from web3.exceptions import ContractLogicError
    return isinstance(exc, (TransactionFailed, ContractLogicError))


def _short(key) -> str:
    if isinstance(key, (bytes, bytearray)):
        return bytes(key).hex()
    return str(key)


def message_for(name: str, a: dict, ctx: dict) -> str:
    reg = ctx.get("registry", "the registry")
    acct = ctx.get("account", "this account")
    if name == "NotOwner":
        return (f"account {a.get('caller') or acct} is not the owner of registry {reg}; "
                "only the owner can grant or revoke roles")
    if name == "NotPendingOwner":
        return (f"account {a.get('caller') or acct} is not the pending owner of registry {reg}; "
                "the owner names one with `python -m chain transfer-ownership ADDRESS`")
    if name == "MissingRole":
        role = ctx.get("role_names", {}).get(a.get("role"), "required")
        return (f"account {a.get('account') or acct} lacks the {role} role on registry {reg}; "
                "ask the owner to run `"
                f"{shell_command('python', '-m', 'chain', 'grant', role.lower(), a.get('account') or acct)}`")
    if name == "UnknownRole":
        return f"unknown role 0x{_short(a.get('role'))}; use publisher or anchorer"
    if name == "ZeroAddress":
        return "the address must not be the zero address; pass a real account address"
    if name == "ZeroKey":
        return "the key (or Merkle root) must not be all zeros; pass the real 64-hex key"
    if name == "EmptyName":
        return "the name must not be empty; pass a model or deployment name"
    if name == "BadSeqRange":
        return (f"anchor range is reversed (firstSeq {a.get('firstSeq')} > lastSeq "
                f"{a.get('lastSeq')}); pass first <= last")
    if name == "KeyAlreadyRegistered":
        return (f"model key {_short(a.get('key'))} is already registered on registry {reg}; "
                "a key registers once (see `python -m chain status KEY`)")
    if name == "UnknownKey":
        return (f"model key {_short(a.get('key'))} is not registered on registry {reg}; "
                "register the blob first with `python -m chain register BLOB`")
    if name == "KeyRevoked":
        return (f"model key {_short(a.get('key'))} is revoked and can never be deployed or "
                "anchored again; pack, register and deploy a new model")
    if name == "AlreadyCurrent":
        return (f"deployment '{a.get('deployment')}' already points at key "
                f"{_short(a.get('key'))}; nothing to do")
    if name == "RollbackRefused":
        return (f"deployment '{a.get('deployment')}' used key {_short(a.get('key'))} before "
                f"(it is at version {a.get('currentVersion')}); rollback is refused: "
                "pack a new blob (new key), register it and deploy that")
    if name == "UnknownDeployment":
        return (f"deployment '{a.get('deployment')}' does not exist on registry {reg}; "
                "point it at a key with `python -m chain deploy NAME KEY`")
    if name == "RootAlreadyAnchored":
        return (f"Merkle root {_short(a.get('merkleRoot'))} is already anchored; "
                "each batch is anchored once")
    if name == "Error":
        return f"the registry {reg} refused the call: {a.get('message')}"
    if name == "Panic":
        return f"the registry {reg} panicked (code {a.get('code')}); this is a contract bug"
    return f"the registry {reg} refused the call ({name} {a}); check the arguments"


def to_chain_error(exc: BaseException, decoder: ErrorDecoder, ctx: dict) -> errors.ChainError:
    data = revert_data(exc)
    decoded = decoder.decode(data) if data else None
    if decoded is None:
        what = ctx.get("call", "the call")
        return errors.UnknownRevert(
            f"the registry {ctx.get('registry', '')} reverted {what} without a known error "
            f"({str(exc)[:120]}); is the address a ModelRegistry?", error="Unknown")
    name, args = decoded
    cls = errors.CONTRACT_ERRORS.get(name, errors.UnknownRevert)
    return cls(message_for(name, args, ctx), error=name, args=tuple(args.values()))
