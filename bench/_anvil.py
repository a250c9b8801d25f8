"""A real anvil node on a free loopback port, for the gas benchmark and the chain tests
(``tests/chain_fixtures.py`` uses it too)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
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
