"""The committed contract artifact is fresh, and forge's unit + fuzz tests pass."""

from __future__ import annotations

import subprocess

import pytest

from chain import compile as cc
from tests.chain_fixtures import REPO, need, tool


def test_artifact_matches_the_source_text():
    """Cheap check that needs no compiler: the artifact was built from this source."""
    art = cc.load_artifact()
    assert art["sourceSha256"] == cc.source_sha256(), (
        "chain/contracts/src/ModelRegistry.sol changed after the artifact was built; "
        "run `python -m chain.compile`")
    assert art["abi"] and art["bytecode"].startswith("0x60")


def test_artifact_is_not_stale():
    solcjs = cc.find_solcjs()
    need(solcjs is not None, f"solcjs (npm solc@{cc.SOLC_VERSION})")
    version = cc.solcjs_version(solcjs)
    need(version.startswith(cc.SOLC_VERSION + "+"),
         f"solcjs {cc.SOLC_VERSION} (found {version})")
    fresh = cc.compile_source(solcjs)
    stale = cc.stale_reasons(fresh, cc.load_artifact())
    assert not stale, f"chain/artifacts/ModelRegistry.json is stale ({stale}); run `python -m chain.compile`"


@pytest.mark.forge
def test_forge_unit_and_fuzz_tests(tmp_path):
    forge = tool("forge")
    need(forge is not None, "forge (npm @foundry-rs/forge)")
    need(cc.find_solcjs() is not None, "solcjs (npm solc)")
    proj = REPO / "chain" / "contracts"
    r = subprocess.run(
        [forge, "test", "--offline", "--use", str(REPO / "chain" / "tools" / "solc"),
         "--out", str(tmp_path / "out"), "--cache-path", str(tmp_path / "cache")],
        cwd=proj, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "[FAIL" not in out and "passed; 0 failed" in out
    assert out.count("[PASS] testFuzz_") >= 8, out[-2000:]


def test_committed_code_runs_on_pre_shanghai_nodes():
    """The registry is built for the Paris EVM: no PUSH0 (Shanghai) or MCOPY (Cancun)
    instruction in its runtime or constructor, found by walking the opcodes (PUSH data
    and the metadata trailer are data, not instructions)."""
    from chain.evm_code import post_paris_opcodes
    art = cc.load_artifact()
    assert art["settings"]["evmVersion"] == "paris"
    runtime = bytes.fromhex(art["deployedBytecode"].removeprefix("0x"))
    creation = bytes.fromhex(art["bytecode"].removeprefix("0x"))
    assert creation.endswith(runtime)
    assert post_paris_opcodes(runtime, creation) == {}


def test_the_opcode_walk_finds_push0_and_mcopy_and_skips_push_data():
    from chain.evm_code import opcodes, post_paris_opcodes, strip_metadata
    import json
    old = json.loads((REPO / "tests" / "data" / "ModelRegistry.cancun.json").read_text())
    runtime = bytes.fromhex(old["deployedBytecode"].removeprefix("0x"))
    assert post_paris_opcodes(runtime) == {"PUSH0": 181, "MCOPY": 1}
    # 0x5f and 0x5e as PUSH data are not instructions; PUSH0 and MCOPY as code are
    assert post_paris_opcodes(bytes.fromhex("615f5e00")) == {}
    assert post_paris_opcodes(bytes.fromhex("5f5e00")) == {"PUSH0": 1, "MCOPY": 1}
    assert [op for _, op in opcodes(bytes.fromhex("7f" + "5f" * 32 + "00"))] == [0x7F, 0x00]
    # the metadata trailer (a CBOR map and its length) is stripped before the walk
    assert strip_metadata(bytes.fromhex("00" + "a1615f5f" + "0004")) == b"\x00"
