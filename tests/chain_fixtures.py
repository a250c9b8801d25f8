"""Fixtures for the chain tests: a real anvil node on a free loopback port, and one
``ChainEnv`` interface over both the embedded chain and anvil so the same test body
runs on both. Imported by tests/chain/ (``from tests.chain_fixtures import *``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import chain.config
from tests.conftest import REPO, need

TOOLS_BIN = REPO / ".tools" / "node_modules" / ".bin"

# anvil's well-known dev keys (mnemonic "test test ... junk"): public, test use only
ANVIL_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
)


def tool(name: str) -> str | None:
    """The native foundry binary. npm's ``.bin/<name>`` is a node wrapper that spawns
    it; signals sent to the wrapper would not reach the node, so prefer the binary from
    the platform package (``@foundry-rs/<name>-<platform>/bin/<name>``)."""
    roots = [REPO / ".tools" / "node_modules"]
    found = shutil.which(name)
    if found:
        real = Path(found).resolve()
        if real.suffix in (".mjs", ".js"):
            roots.append(real.parent.parent.parent)  # node_modules/@foundry-rs/<name>/bin.mjs
        else:
            return str(real)
    for root in roots:
        for cand in sorted((root / "@foundry-rs").glob(f"{name}-*/bin/{name}")):
            if os.access(cand, os.X_OK):
                return str(cand)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Anvil:
    """An anvil process on 127.0.0.1:<port>; optional --state file with --state-interval 1,
    optional --hardfork (an older EVM: paris, shanghai, london, ...)."""

    def __init__(self, binary: str, port: int | None = None, state: Path | None = None,
                 hardfork: str | None = None):
        self.binary = binary
        self.port = port or free_port()
        self.state = state
        self.hardfork = hardfork
        self.proc: subprocess.Popen | None = None
        self.log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "Anvil":
        cmd = [self.binary, "--host", "127.0.0.1", "--port", str(self.port), "--silent"]
        if self.state is not None:
            cmd += ["--state", str(self.state), "--state-interval", "1"]
        if self.hardfork is not None:
            cmd += ["--hardfork", self.hardfork]
        # own process group: stop() signals the whole group (wrapper and node alike)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        import requests
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"anvil exited with {self.proc.returncode}: {err[-500:]}")
            try:
                r = requests.post(self.url, json={"jsonrpc": "2.0", "id": 1,
                                                  "method": "eth_chainId", "params": []}, timeout=1)
                if r.ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"anvil did not answer on {self.url} within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None


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
