"""Nodes other than the newest: the registry (built for the Paris EVM) deploys and is read
on anvil at older hardforks as on the default one; a node that cannot run the registry's
code is refused at connect in one line; an error a node answers that the client does not
know is one line naming the node and the call (CLI exit 1, flow exit 2), never a traceback."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_abi import encode

import chain.artifact
from chain import connect, deploy_registry, errors
from chain.artifact import load_artifact
from chain.cli import main as chain_main
from tests.chain_fixtures import ANVIL_KEYS, Anvil, JsonRpcStub  # noqa: F401 - fixtures below
from tests.chain_fixtures import *  # noqa: F401,F403
from tests.flow_fixtures import env_for, make_blob, make_folder
from operators.config import load_config
from operators.startup import flow_from_env, start_flow

K = "a1" * 32
REGISTRY = "0x" + "22" * 20
CANCUN_BUILD = Path(__file__).resolve().parents[1] / "data" / "ModelRegistry.cancun.json"
STATUS_ACTIVE = "0x" + encode(["bool", "bool", "string", "address", "uint64"],
                              [True, False, "", "0x" + "33" * 20, 1]).hex()
STATUS_NONE = "0x" + encode(["bool", "bool", "string", "address", "uint64"],
                            [False, False, "", "0x" + "00" * 20, 0]).hex()


class ScriptedNode(JsonRpcStub):
    """A node that serves the committed registry code and the pinned chain id; ``calls``
    answers the n-th eth_call (from 0): a result string, ``{"error": {...}}`` (a JSON-RPC
    error) or ``{"http": status}``."""

    def __init__(self, calls, logs=None):
        self.calls, self.logs, self.n_calls = calls, logs, 0
        super().__init__(self.answer)

    def answer(self, method: str) -> dict:
        if method == "eth_call":
            got = self.calls(self.n_calls)
            self.n_calls += 1
            return got if isinstance(got, dict) else {"result": got}
        if method == "eth_getLogs" and self.logs is not None:
            return self.logs
        return {"result": {"eth_chainId": hex(31337), "eth_blockNumber": "0x10",
                           "eth_getCode": load_artifact()["deployedBytecode"]}.get(method)}


@pytest.fixture
def scripted_node():
    nodes = []

    def make(calls, logs=None):
        nodes.append(ScriptedNode(calls, logs))
        return nodes[-1]
    yield make
    for n in nodes:
        n.close()


# geth's, anvil's and a generic answer to an instruction the node's EVM does not have
INVALID_OPCODE = [{"error": {"code": -32000, "message": "invalid opcode: PUSH0"}},
                  {"error": {"code": -32603, "message": "EVM error NotActivated"}},
                  {"error": {"code": -32015, "message": "VM execution error.",
                             "data": "Bad instruction 5f"}}]


def cli_lines(capsys, argv) -> tuple[int, str, list[str]]:
    rc = chain_main(argv)
    out, err = capsys.readouterr()
    return rc, out, err.splitlines()


def flow_start_lines(capsys, env) -> tuple[int, list[str]]:
    """What ``python -m bytewax.run dataflows.segment`` does before any step: the exit
    status and the stderr lines."""
    with pytest.raises(SystemExit) as ei:
        flow_from_env(lambda: start_flow(load_config(env)))
    return ei.value.code, capsys.readouterr().err.splitlines()


def node_flow_env(tmp_path, url, registry, **extra) -> dict:
    blob = tmp_path / "models" / "tiny.vsb"
    if not blob.exists():
        make_blob(blob)
    folder = make_folder(tmp_path / "s", n=3)
    return env_for(tmp_path, f"dir:{folder}", blob, VERISEG_CHAIN=url, VERISEG_REGISTRY=registry,
                   VERISEG_VIDEO=0, **extra)


# ------------------------------------------------------------------ a node that cannot run the code
@pytest.mark.parametrize("refusal", INVALID_OPCODE, ids=["geth", "anvil", "other"])
def test_a_node_that_cannot_run_the_code_is_refused_at_connect_in_one_line(
        scripted_node, tmp_path, capsys, refusal):
    node = scripted_node(lambda n: refusal)
    with pytest.raises(errors.NodeIncompatible) as ei:
        connect(node.url, home=tmp_path, registry=REGISTRY, timeout=2)
    msg = str(ei.value)
    assert "\n" not in msg and node.url in msg and "cannot run the registry's EVM code" in msg
    assert "Paris EVM" in msg and "hardfork" in msg
    rc, out, err = cli_lines(capsys, ["--chain", node.url, "--home", str(tmp_path / "h"),
                                      "--registry", REGISTRY, "status", K])
    assert rc == 1 and out == "" and len(err) == 1, err
    assert err[0].startswith(f"error: the node {node.url} cannot run the registry's EVM code")


def test_a_node_that_cannot_run_the_code_stops_the_flow_with_exit_2(scripted_node, tmp_path,
                                                                       capsys):
    node = scripted_node(lambda n: INVALID_OPCODE[0])
    code, err = flow_start_lines(capsys, node_flow_env(tmp_path, node.url, REGISTRY))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("veriseg: error:") and "cannot run the registry's EVM code" in err[0]


# ------------------------------------------------------------------ node errors the client does not know
UNKNOWN_ANSWERS = {"rpc": {"error": {"code": -32099, "message": "rate limited, try tomorrow"}},
                   "http": {"http": 502},
                   "garbage": "0x1234"}   # an eth_call answer that does not decode


@pytest.mark.parametrize("kind", list(UNKNOWN_ANSWERS))
def test_an_unknown_node_error_after_connect_is_one_cli_line_naming_node_and_call(
        scripted_node, tmp_path, capsys, kind):
    """The connect-time read passes; the next one gets an answer the client does not know."""
    node = scripted_node(lambda n: STATUS_NONE if n == 0 else UNKNOWN_ANSWERS[kind])
    rc, out, err = cli_lines(capsys, ["--chain", node.url, "--home", str(tmp_path),
                                      "--registry", REGISTRY, "status", K])
    assert rc == 1 and out == "" and len(err) == 1, err
    assert err[0].startswith(f"error: chain node {node.url} failed while calling status (")
    assert "Traceback" not in err[0] and "unexpected" not in err[0]


def test_an_unknown_node_error_reading_events_is_one_cli_line(scripted_node, tmp_path, capsys):
    node = scripted_node(lambda n: STATUS_NONE,
                         logs={"error": {"code": -32005, "message": "query returned more than "
                                                                   "10000 results"}})
    rc, out, err = cli_lines(capsys, ["--chain", node.url, "--home", str(tmp_path),
                                      "--registry", REGISTRY, "events"])
    assert rc == 1 and out == "" and len(err) == 1, err
    assert err[0].startswith(f"error: chain node {node.url} failed while reading events (")


def test_an_unknown_node_error_at_the_flows_first_read_is_exit_2_not_a_traceback(
        scripted_node, tmp_path, capsys):
    node = scripted_node(lambda n: STATUS_NONE if n == 0 else UNKNOWN_ANSWERS["rpc"])
    code, err = flow_start_lines(capsys, node_flow_env(tmp_path, node.url, REGISTRY))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("veriseg: error:") and f"chain node {node.url} failed while" in err[0]


# ------------------------------------------------------------------ anvil at older hardforks
@pytest.fixture(scope="module", params=["london", "paris", "shanghai", None],
                ids=["london", "paris", "shanghai", "latest"])
def anvil_fork(request, anvil_bin):
    node = Anvil(anvil_bin, hardfork=request.param).start()
    yield node
    node.stop()


@pytest.mark.anvil
def test_the_registry_deploys_and_is_read_and_written_on_older_hardforks(anvil_fork, tmp_path):
    addr = deploy_registry(anvil_fork.url, home=tmp_path, private_key=ANVIL_KEYS[0], timeout=5)
    reg = connect(anvil_fork.url, home=tmp_path, registry=addr, private_key=ANVIL_KEYS[0],
                  timeout=5, receipt_timeout=20)
    assert not reg.status(K).registered
    reg.register(K, "tiny", "")
    assert reg.info(K) == ("tiny", "")
    assert reg.deploy("tiny", K) == 1 and reg.current("tiny") == (K, 1)
    reg.anchor(b"\x01" * 32, K, 0, 9, stream="cam")
    assert reg.anchor_of(b"\x01" * 32)[:3] == (K, 0, 9)
    reg.revoke(K, "test")
    assert reg.status(K).revoked and [e.kind for e in reg.events(0)[0]] == ["Deployed", "Revoked"]


@pytest.fixture
def cancun_build(tmp_path, monkeypatch):
    """This checkout as if its committed artifact were the Cancun build (PUSH0, MCOPY)
    that came before the Paris one."""
    old = json.loads(CANCUN_BUILD.read_text())
    art = dict(load_artifact())
    art.update(bytecode=old["bytecode"], deployedBytecode=old["deployedBytecode"],
               settings=old["settings"])
    path = tmp_path / "ModelRegistry.cancun.json"
    path.write_text(json.dumps(art))
    monkeypatch.setattr(chain.artifact, "ARTIFACT", path)
    load_artifact.cache_clear()
    yield art
    load_artifact.cache_clear()


@pytest.mark.anvil
@pytest.mark.parametrize("hardfork", ["shanghai", "paris"])
def test_the_cancun_build_on_an_older_node_is_one_line_cli_exit_1_flow_exit_2(
        anvil_bin, tmp_path, capsys, cancun_build, hardfork):
    """The reported failure: code that needs Cancun on an older node deployed and passed
    the code check, then failed at the first read with a traceback. Now deploy-registry,
    the CLI and the flow each refuse it in one line."""
    from web3 import Web3
    node = Anvil(anvil_bin, hardfork=hardfork).start()
    try:
        if hardfork == "paris":   # its constructor already uses PUSH0: it cannot deploy
            with pytest.raises(errors.NodeError) as ei:
                deploy_registry(node.url, home=tmp_path, private_key=ANVIL_KEYS[1], timeout=5)
            assert str(ei.value).startswith(f"chain node {node.url} failed while deploying "
                                            "the registry")
            return
        w3 = Web3(Web3.HTTPProvider(node.url))
        tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "data": cancun_build["bytecode"]})
        addr = w3.eth.wait_for_transaction_receipt(tx, timeout=20)["contractAddress"]
        assert w3.eth.get_code(addr).hex() == cancun_build["deployedBytecode"][2:]
        with pytest.raises(errors.NodeIncompatible):
            deploy_registry(node.url, home=tmp_path, private_key=ANVIL_KEYS[1], timeout=5)
        rc, out, err = cli_lines(capsys, ["--chain", node.url, "--home", str(tmp_path / "h"),
                                          "--registry", addr, "status", K])
        assert rc == 1 and out == "" and len(err) == 1, err
        assert (f"the node {node.url} cannot run the registry's EVM code" in err[0]
                and "Cancun" in err[0])
        code, err = flow_start_lines(capsys, node_flow_env(tmp_path, node.url, addr))
        assert code == 2 and len(err) == 1, err
        assert "cannot run the registry's EVM code" in err[0]
    finally:
        node.stop()
