"""``python -m chain keystore new|import``: the encrypted JSON keystore that signs on a node.

    python -m chain keystore new key.json                  # a fresh account; prints its address
    python -m chain keystore import key.json < secret.txt  # an existing private key (stdin or --key-file)

The password comes from ``--password-file``, else ``VERISEG_KEYFILE_PASSWORD`` (the
configuration ``python -m chain`` hands in), else a prompt (twice for ``new``). The private
key is never an argument: argv is visible to every user of the machine (``ps``). The file
is created with mode 600 and never overwritten.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path

from eth_account import Account

from . import errors

__all__ = ["write_keystore", "add_commands"]


class KeystoreError(errors.KeyfileError):
    """The keystore cannot be written, or its password or key cannot be read."""


def write_keystore(path: str | os.PathLike, private_key: bytes | str, password: str) -> str:
    """Encrypt ``private_key`` with ``password`` into a new file at ``path`` (mode 600,
    refused if it exists); returns the account's address."""
    if not password:
        raise KeystoreError("the keystore password must not be empty")
    try:
        account = Account.from_key(private_key)
    except (ValueError, TypeError):
        raise KeystoreError("that is not a private key (64 hex characters); nothing was "
                            "written") from None
    data = (json.dumps(Account.encrypt(account.key, password)) + "\n").encode()
    p = Path(path).expanduser()
    try:
        # O_EXCL: never replace a key (it may be the only copy); 0o600 from the first byte
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeystoreError(f"{p} already exists; a keystore is never overwritten: choose "
                            "another path") from None
    except OSError as exc:
        raise KeystoreError(f"cannot create {p}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)   # the umask may only have removed bits; make it exact
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        p.unlink(missing_ok=True)
        raise KeystoreError(f"cannot write {p}: {exc.strerror}") from None
    return account.address


def _read_secret_file(path: str, what: str) -> str:
    try:
        text = Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeystoreError(f"cannot read the {what} file {path}: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
    return text.strip("\r\n")


def _terminal() -> bool:
    """Whether getpass can ask on the controlling terminal (it would otherwise read the
    password from stdin, echoed)."""
    try:
        with open("/dev/tty"):
            return True
    except OSError:
        return False


def _password(args, confirm: bool) -> str:
    if args.password_file:
        return _read_secret_file(args.password_file, "password")
    configured = args.config.password
    if configured:
        return configured
    if not _terminal():
        raise KeystoreError("no password: pass --password-file FILE or set "
                            "VERISEG_KEYFILE_PASSWORD (no terminal to ask on)")
    try:
        password = getpass.getpass("keystore password: ")
        if confirm and getpass.getpass("again: ") != password:
            raise KeystoreError("the two passwords differ; nothing was written")
    except EOFError:
        raise KeystoreError("no password: pass --password-file FILE or set "
                            "VERISEG_KEYFILE_PASSWORD") from None
    return password


def _private_key(args) -> str:
    if args.key_file:
        text = _read_secret_file(args.key_file, "private key")
    elif sys.stdin.isatty():
        text = getpass.getpass("private key (hex): ")
    else:
        text = sys.stdin.readline()
    text = text.strip()
    if not text:
        raise KeystoreError("no private key: pass --key-file FILE or give it on stdin")
    return text


def _refuse_existing(path: str) -> None:
    """Before any prompt; write_keystore's O_EXCL still decides."""
    if Path(path).expanduser().exists():
        raise KeystoreError(f"{path} already exists; a keystore is never overwritten: choose "
                            "another path")


def cmd_new(args) -> int:
    _refuse_existing(args.path)
    password = _password(args, confirm=True)
    address = write_keystore(args.path, Account.create().key, password)
    print(address)
    print(f"wrote {args.path}: fund {address} on the chain, then set VERISEG_KEYFILE={args.path}",
          file=sys.stderr)
    return 0


def cmd_import(args) -> int:
    _refuse_existing(args.path)
    key = _private_key(args)
    password = _password(args, confirm=True)
    print(write_keystore(args.path, key, password))
    return 0


def add_commands(sub) -> None:
    """Register ``keystore new|import`` on the ``python -m chain`` subparsers."""
    p = sub.add_parser("keystore", help="make the encrypted key file that signs on a node")
    ks = p.add_subparsers(dest="keystore_cmd", required=True, metavar="new|import",
                          parser_class=type(p))
    common = dict(help="read the password from FILE (else VERISEG_KEYFILE_PASSWORD, else a "
                       "prompt)")
    n = ks.add_parser("new", help="a fresh account; prints its address")
    n.add_argument("path", metavar="KEYFILE")
    n.add_argument("--password-file", metavar="FILE", **common)
    n.set_defaults(fn=cmd_new)
    i = ks.add_parser("import", help="an existing private key, from --key-file or stdin")
    i.add_argument("path", metavar="KEYFILE")
    i.add_argument("--key-file", metavar="FILE", help="read the private key (hex) from FILE")
    i.add_argument("--password-file", metavar="FILE", **common)
    i.set_defaults(fn=cmd_import)
