"""Fixtures for the chain tests: a real anvil node on a free loopback port, and one
``ChainEnv`` interface over both the embedded chain and anvil so the same test body
runs on both. Imported by tests/chain/ (``from tests.chain_fixtures import *``)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import chain.config
from bench._anvil import ANVIL_KEYS, TOOLS_BIN, Anvil, free_port, tool  # noqa: F401 - the chain tests' star import
from tests.conftest import REPO, need  # noqa: F401


@pytest.fixture(autouse=True)
def private_veriseg_home(tmp_path, monkeypatch):
    """deploy_registry and a first connect record chain-id pins in the home folder: in a
    test that is a temporary folder, never the user's ~/.veriseg (the default of a library
    call and the VERISEG_HOME of a command)."""
    home = tmp_path / "veriseg-home"
    monkeypatch.setattr(chain.config, "DEFAULT_HOME", str(home))
    monkeypatch.setenv("VERISEG_HOME", str(home))


@pytest.fixture(scope="session")
def anvil_bin() -> str:
    b = tool("anvil")
    need(b is not None, "anvil (npm @foundry-rs/anvil)")
    return b


@pytest.fixture(scope="module")
def anvil_node(anvil_bin):
    node = Anvil(anvil_bin).start()
    yield node
    node.stop()


def make_keyfile(path: Path, private_key: str, password: str = "pw") -> Path:
    from eth_account import Account
    ks = Account.encrypt(private_key, password, kdf="pbkdf2", iterations=1024)
    path.write_text(json.dumps(ks))
    return path


@dataclass
class ChainEnv:
    """What a test needs to talk to one chain: registries per account, restart, CLI args."""

    kind: str                  # "embedded" | "anvil"
    home: Path
    url: str | None = None
    registry: str | None = None
    keys: tuple = ()
    _cache: dict = field(default_factory=dict)

    def reg(self, account: int = 0):
        from chain import connect
        if account in self._cache:
            return self._cache[account]
        if self.kind == "embedded":
            r = connect("embedded", home=self.home, account_index=account)
        else:
            r = connect(self.url, registry=self.registry, private_key=self.keys[account],
                        timeout=5, receipt_timeout=20)
        self._cache[account] = r
        return r

    def restart(self):
        """A fresh client (for embedded: a fresh in-process chain replayed from disk)."""
        self._cache.clear()
        return self.reg(0)

    def address(self, account: int) -> str:
        from eth_account import Account
        if self.kind == "embedded":
            from chain.embedded import dev_account
            return dev_account(account).address
        return Account.from_key(self.keys[account]).address

    def cli_args(self) -> list[str]:
        if self.kind == "embedded":
            return ["--chain", "embedded", "--home", str(self.home)]
        return ["--chain", self.url, "--registry", self.registry]

    def cli_env(self, account: int = 0) -> dict:
        """Environment for the CLI (anvil: a key file for ``account``)."""
        env = {"VERISEG_HOME": str(self.home), "VERISEG_KEYFILE": "", "VERISEG_KEYFILE_PASSWORD": ""}
        if self.kind == "anvil" or account != 0:
            if self.kind == "anvil":
                key = self.keys[account]
            else:
                from chain.embedded import DEV_KEYS
                key = "0x" + DEV_KEYS[account].hex()
            self.home.mkdir(parents=True, exist_ok=True)
            kf = self.home / f"key{account}.json"
            if not kf.exists():
                make_keyfile(kf, key)
            env.update({"VERISEG_KEYFILE": str(kf), "VERISEG_KEYFILE_PASSWORD": "pw"})
        return env


@pytest.fixture(params=["embedded", pytest.param("anvil", marks=pytest.mark.anvil)])
def chain_env(request, tmp_path, monkeypatch):
    for var in ("VERISEG_CHAIN", "VERISEG_REGISTRY", "VERISEG_KEYFILE",
                "VERISEG_KEYFILE_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VERISEG_HOME", str(tmp_path / "home"))
    if request.param == "embedded":
        yield ChainEnv("embedded", tmp_path / "home")
        return
    node = request.getfixturevalue("anvil_node")
    from chain import deploy_registry
    addr = deploy_registry(node.url, private_key=ANVIL_KEYS[0])
    (tmp_path / "home").mkdir(exist_ok=True)
    yield ChainEnv("anvil", tmp_path / "home", url=node.url, registry=addr, keys=ANVIL_KEYS)


class JsonRpcStub:
    """A JSON-RPC server on 127.0.0.1 whose answers a test scripts: ``answer(method)`` gives
    the reply's body after ``jsonrpc`` and ``id`` (``{"result": ...}`` or ``{"error": ...}``),
    or ``{"http": status}`` for a bare HTTP error."""

    def __init__(self, answer):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                got = answer(req["method"])
                if "http" in got:
                    self.send_response(got["http"])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"jsonrpc": "2.0", "id": req["id"], **got}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()
