"""Compile ``ModelRegistry.sol`` with npm ``solc`` (solcjs) into the committed artifact.

    python -m chain.compile            # rewrite chain/artifacts/ModelRegistry.json
    python -m chain.compile --check    # exit 1 when the committed artifact is stale

solcjs is found in ``$VERISEG_SOLCJS``, then ``<repo>/.tools/node_modules/.bin/solcjs``
(``npm install --prefix .tools solc@0.8.30``), then ``solcjs`` on ``PATH``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from .config import ChainConfig, ConfigError
from .evm_code import post_paris_opcodes

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
SOURCE = PACKAGE_DIR / "contracts" / "src" / "ModelRegistry.sol"
ARTIFACT = PACKAGE_DIR / "artifacts" / "ModelRegistry.json"
CONTRACT = "ModelRegistry"
SOLC_VERSION = "0.8.30"  # the npm solc version the artifact is built with
SETTINGS = {
    "optimizer": {"enabled": True, "runs": 200},
    # Paris (the Merge): no PUSH0 (Shanghai) or MCOPY (Cancun), so nodes and chains that
    # have not taken those forks run it too; the build refuses code with newer opcodes
    "evmVersion": "paris",
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


class CompileError(RuntimeError):
    pass


def find_solcjs(configured: str | None = None) -> str | None:
    """``configured`` (VERISEG_SOLCJS), else the repository's npm install, else the PATH's."""
    if configured:
        return configured
    local = REPO_ROOT / ".tools" / "node_modules" / ".bin" / "solcjs"
    if local.exists():
        return str(local)
    return shutil.which("solcjs")


def solcjs_version(solcjs: str) -> str:
    out = subprocess.run([solcjs, "--version"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise CompileError(f"{solcjs} --version failed: {out.stderr.strip()}")
    return out.stdout.strip().splitlines()[-1]


def source_sha256(text: str | None = None) -> str:
    data = SOURCE.read_bytes() if text is None else text.encode()
    return hashlib.sha256(data).hexdigest()


def _parse_solcjs_json(stdout: str) -> dict:
    # solcjs may print banners (">>> Cannot retry compilation with SMT ...") before the JSON
    start = stdout.find("{")
    if start < 0:
        raise CompileError(f"solcjs printed no JSON: {stdout[:200]!r}")
    return json.loads(stdout[start:])


def compile_source(solcjs: str | None = None) -> dict:
    """Compile the contract and return the artifact dict (not written)."""
    solcjs = solcjs or find_solcjs()
    if not solcjs:
        raise CompileError(
            "solcjs not found: run `npm install --prefix .tools solc@%s` or set VERISEG_SOLCJS"
            % SOLC_VERSION
        )
    version = solcjs_version(solcjs)
    text = SOURCE.read_text()
    std_in = {
        "language": "Solidity",
        "sources": {"ModelRegistry.sol": {"content": text}},
        "settings": SETTINGS,
    }
    # solcjs exits right after writing; through a pipe node may cut its output at 64 KiB,
    # so it writes to a file
    import tempfile
    with tempfile.TemporaryFile(mode="w+") as out_f:
        proc = subprocess.run([solcjs, "--standard-json"], input=json.dumps(std_in),
                              stdout=out_f, stderr=subprocess.PIPE, text=True, timeout=300)
        out_f.seek(0)
        stdout = out_f.read()
    if proc.returncode != 0:
        raise CompileError(f"solcjs failed: {proc.stderr.strip() or stdout[:500]}")
    out = _parse_solcjs_json(stdout)
    errors = [e for e in out.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompileError("\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors))
    c = out["contracts"]["ModelRegistry.sol"][CONTRACT]
    newer = post_paris_opcodes(bytes.fromhex(c["evm"]["deployedBytecode"]["object"]),
                               bytes.fromhex(c["evm"]["bytecode"]["object"]))
    if newer:
        raise CompileError(f"the compiled code uses opcodes newer than Paris ({newer}); "
                           "older nodes cannot run it: keep evmVersion 'paris'")
    return {
        "contractName": CONTRACT,
        "source": "chain/contracts/src/ModelRegistry.sol",
        "sourceSha256": source_sha256(text),
        "compiler": {"name": "solcjs", "version": version},
        "settings": {k: v for k, v in SETTINGS.items() if k != "outputSelection"},
        "abi": c["abi"],
        "bytecode": "0x" + c["evm"]["bytecode"]["object"],
        "deployedBytecode": "0x" + c["evm"]["deployedBytecode"]["object"],
    }


def write_artifact(artifact: dict, path: Path = ARTIFACT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(artifact, indent=1, sort_keys=True) + "\n")


def load_artifact(path: Path = ARTIFACT) -> dict:
    return json.loads(path.read_text())


def stale_reasons(fresh: dict, committed: dict) -> list[str]:
    reasons = []
    for field in ("sourceSha256", "abi", "bytecode", "deployedBytecode", "compiler", "settings"):
        if fresh.get(field) != committed.get(field):
            reasons.append(field)
    return reasons


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chain.compile", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    args = ap.parse_args(argv)
    try:
        fresh = compile_source(find_solcjs(ChainConfig.from_env().solcjs))
    except (CompileError, ConfigError) as exc:
        print(f"chain.compile: {exc}", file=sys.stderr)
        return 1
    if args.check:
        reasons = stale_reasons(fresh, load_artifact()) if ARTIFACT.exists() else ["missing"]
        if reasons:
            print(f"chain.compile: {ARTIFACT} is stale ({', '.join(reasons)}); "
                  "run `python -m chain.compile`", file=sys.stderr)
            return 1
        print(f"{ARTIFACT} is up to date")
        return 0
    write_artifact(fresh)
    print(f"wrote {ARTIFACT} ({len(fresh['deployedBytecode']) // 2 - 1} bytes runtime, "
          f"{fresh['compiler']['version']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
