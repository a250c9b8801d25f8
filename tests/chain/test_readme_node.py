"""README's steps on a real node, as a user types them (each command a subprocess), on an
anvil at the Paris hardfork (a node before Shanghai and Cancun): a new keystore, a
registry deployed, a blob registered, a short folder run scored and anchored, one frame's
results line proven with ``anchor-verify --result``, the key revoked, the next run
refused in one line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.chain_fixtures import REPO, Anvil
from tests.chain_fixtures import *  # noqa: F401,F403
from tests.flow_fixtures import make_blob, make_folder

pytestmark = pytest.mark.anvil


def test_readme_real_node_steps_work_as_written(anvil_bin, tmp_path):
    node = Anvil(anvil_bin, hardfork="paris").start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VERISEG_")}
        env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
                   VERISEG_HOME=str(tmp_path / "home"), VERISEG_PROVIDERS="cpu",
                   VERISEG_THREADS="1", VERISEG_PROGRESS="0", VERISEG_VIDEO="0")

        def sh(*argv, module="chain", ok=True):
            p = subprocess.run([sys.executable, "-m", module, *map(str, argv)], cwd=tmp_path,
                               env=env, capture_output=True, text=True, timeout=300)
            if ok:
                assert p.returncode == 0, (argv, p.stderr[-3000:])
            return p

        # python -m chain keystore new key.json   (prints the address: fund it)
        (tmp_path / "pw.txt").write_text("a long passphrase\n")
        address = sh("keystore", "new", "key.json", "--password-file", "pw.txt").stdout.strip()
        requests.post(node.url, json={"jsonrpc": "2.0", "id": 1, "method": "anvil_setBalance",
                                      "params": [address, hex(10**20)]}, timeout=5).raise_for_status()
        env.update(VERISEG_CHAIN=node.url, VERISEG_KEYFILE="key.json",
                   VERISEG_KEYFILE_PASSWORD="a long passphrase")
        # export VERISEG_REGISTRY=$(python -m chain deploy-registry)
        env["VERISEG_REGISTRY"] = sh("deploy-registry").stdout.strip()
        # python -m chain register models/my.vsb
        blob = tmp_path / "models" / "tiny.vsb"
        key = make_blob(blob)
        assert key in sh("register", blob).stdout
        # VERISEG_MODEL=models/my.vsb VERISEG_SOURCE=dir:sample python -m bytewax.run dataflows.segment
        make_folder(tmp_path / "sample", n=4)
        env.update(VERISEG_MODEL=str(blob), VERISEG_SOURCE="dir:sample", VERISEG_ANCHOR_EVERY="2")
        sh("dataflows.segment", module="bytewax.run")
        batches = sorted((tmp_path / "out" / "anchors" / "sample").glob("*.json"))
        assert len(batches) == 2, batches
        # python -m chain anchor-verify out/anchors/sample/... --stream sample --seq 1 --result ...
        p = sh("anchor-verify", batches[0].relative_to(tmp_path), "--stream", "sample", "--seq", 1,
               "--result", "out/sample/results.jsonl")
        assert p.stdout.startswith("verified:") and "its line in" in p.stdout
        # python -m chain revoke models/my.vsb --reason ...; the next run is refused
        sh("revoke", blob, "--reason", "recalled")
        p = sh("dataflows.segment", module="bytewax.run", ok=False)
        errs = [line for line in p.stderr.splitlines() if line.startswith("veriseg: error:")]
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
        assert len(errs) == 1 and "revoked" in errs[0] and "recalled" in errs[0], p.stderr
    finally:
        node.stop()
