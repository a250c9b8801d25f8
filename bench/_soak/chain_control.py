"""The chain a soak owns (embedded in its work folder, or an anvil node on loopback) and the
new keys it deploys: the base blob's ONNX packed again with another card description."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]

# anvil's well-known dev keys (mnemonic "test test ... junk"): public, loopback test use only
ANVIL_KEYS = ("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
              "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")


def _anvil_binary() -> Optional[str]:
    for cand in sorted((REPO / ".tools" / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil")):
        if os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which("anvil")
    return str(Path(found).resolve()) if found else None


class ChainControl:
    """The chain the script owns: embedded in ``work/home`` or an anvil node on loopback."""

    def __init__(self, work: Path, anvil: bool):
        import chain
        self.work, self.kind = work, ("anvil" if anvil else "embedded")
        self.home = work / "home"
        self.proc = None
        self.env = {"VERISEG_CHAIN": "embedded", "VERISEG_HOME": str(self.home)}
        if not anvil:
            self.reg = chain.connect(chain="embedded", home=self.home)
            return
        binary = _anvil_binary()
        if binary is None:
            raise SystemExit("error: --anvil: no anvil binary in .tools/ (bash .ci/run installs it) "
                             "or on PATH")
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(port), "--silent"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        import urllib.request
        deadline = time.monotonic() + 30
        while True:
            try:
                req = urllib.request.Request(self.url, data=json.dumps(
                    {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode(),
                    headers={"Content-Type": "application/json"})
                urllib.request.urlopen(req, timeout=1).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise SystemExit(f"error: anvil did not start on {self.url}")
                time.sleep(0.2)
        # the chain-id pin is recorded in the flow's home (not ~/.veriseg)
        addr = chain.deploy_registry(self.url, home=self.home, private_key=ANVIL_KEYS[0])
        self.reg = chain.connect(chain=self.url, home=self.home, registry=addr,
                                 private_key=ANVIL_KEYS[0])
        # the flow signs its anchors with its own account (no nonce race with the script)
        from eth_account import Account
        flow_acct = Account.from_key(ANVIL_KEYS[1])
        self.reg.grant_role("anchorer", flow_acct.address)
        kf = work / "flow-key.json"
        kf.write_text(json.dumps(Account.encrypt(ANVIL_KEYS[1], "soak", kdf="pbkdf2", iterations=1024)))
        self.env = {"VERISEG_CHAIN": self.url, "VERISEG_REGISTRY": addr, "VERISEG_HOME": str(self.home),
                    "VERISEG_KEYFILE": str(kf), "VERISEG_KEYFILE_PASSWORD": "soak"}

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc = None


class Models:
    """New keys on demand: the base blob's ONNX packed with another card description."""

    def __init__(self, work: Path, blob: Path):
        import model_store
        self.dir = work / "models"
        self.dir.mkdir(parents=True, exist_ok=True)
        key = model_store.verify(str(blob))
        self.card, self.onnx = model_store.load(str(blob), expected_key=key)
        self.base_key = key
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.n = 0

    def next(self) -> tuple[Path, str]:
        import model_store
        self.n += 1
        card = self.card.replace(description=f"{self.card.description} [soak {self.run_id} #{self.n}]")
        path = self.dir / f"soak-{self.n:03d}.vsb"
        return path, model_store.write(str(path), self.onnx, card)
