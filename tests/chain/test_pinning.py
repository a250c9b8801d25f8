"""Finding 4: the edge believed any JSON-RPC endpoint. A fake node (a tiny JSON-RPC server
on 127.0.0.1 answering eth_chainId, eth_getCode and eth_call with "registered") is refused
at connect time: its code is not the committed ModelRegistry, or its chain id is not the
pinned one. A stale embedded journal (an older contract) gives one clear line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_abi import encode

from chain import connect, errors
from chain.artifact import load_artifact
from chain.config import ChainConfig
from chain.pins import read_pin, record_pin
from tests.chain_fixtures import JsonRpcStub

K = "a1" * 32
REGISTRY = "0x" + "22" * 20


class FakeNode(JsonRpcStub):
    """Answers whatever makes a blob look registered and active."""

    def __init__(self, chain_id: int, code: str):
        self.chain_id, self.code = chain_id, code
        self.methods: list[str] = []
        super().__init__(self.answer)

    def answer(self, method: str) -> dict:
        self.methods.append(method)
        return {"result": {"eth_chainId": hex(self.chain_id), "eth_getCode": self.code,
                           "eth_blockNumber": "0x10",
                           # status(key): registered, not revoked, "", publisher, registeredAt
                           "eth_call": "0x" + encode(["bool", "bool", "string", "address", "uint64"],
                                                     [True, False, "", "0x" + "33" * 20, 1]).hex(),
                           }.get(method)}


@pytest.fixture
def fake_node():
    nodes = []

    def make(chain_id=31337, code="0x6080604052600080fd"):
        nodes.append(FakeNode(chain_id, code))
        return nodes[-1]
    yield make
    for n in nodes:
        n.close()


def test_a_fake_node_is_refused_before_any_status_is_believed(fake_node, tmp_path):
    node = fake_node()
    with pytest.raises(errors.RegistryCodeMismatch) as ei:
        connect(node.url, home=tmp_path, registry=REGISTRY, timeout=2)
    msg = str(ei.value)
    assert "\n" not in msg and "not the committed ModelRegistry" in msg and "https" in msg
    assert "eth_call" not in node.methods        # it never got to answer "registered"
    assert read_pin(tmp_path, REGISTRY) is None  # and nothing was pinned for it


def test_a_node_on_another_chain_than_the_pinned_one_is_refused(fake_node, tmp_path):
    """Even a node that serves the committed bytecode is refused on the wrong chain id:
    pinned by configuration, or recorded at deploy-registry / first use."""
    node = fake_node(chain_id=1, code=load_artifact()["deployedBytecode"])
    with pytest.raises(errors.ChainIdMismatch, match="pinned to chain id 31337"):
        connect(node.url, home=tmp_path, registry=REGISTRY, timeout=2, chain_id=31337)
    with pytest.raises(errors.ChainIdMismatch):   # VERISEG_CHAIN_ID, hex or decimal
        connect(node.url, home=tmp_path, registry=REGISTRY, timeout=2,
                config=ChainConfig.from_env({"VERISEG_CHAIN_ID": "0x7a69"}))
    record_pin(tmp_path, REGISTRY, 31337, "http://own-node", "deploy-registry")
    with pytest.raises(errors.ChainIdMismatch) as ei:
        connect(node.url, home=tmp_path, registry=REGISTRY, timeout=2)
    assert "\n" not in str(ei.value) and "chain id 1" in str(ei.value)
    assert "eth_call" not in node.methods
    # the limit, stated: a node that lies consistently (right id, right code) is believed;
    # only an authenticated endpoint stops it (docs/chain.md, "A real node")
    reg = connect(node.url, home=tmp_path / "other", registry=REGISTRY, timeout=2, chain_id=1)
    assert reg.status(K).active


def test_cli_refuses_a_fake_node_in_one_line(fake_node, tmp_path, monkeypatch, capsys):
    from chain.cli import main
    monkeypatch.delenv("VERISEG_CHAIN_ID", raising=False)
    node = fake_node()
    rc = main(["--chain", node.url, "--home", str(tmp_path), "--registry", REGISTRY, "status", K])
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("error: the code at ")


CANCUN_BUILD = Path(__file__).resolve().parents[1] / "data" / "ModelRegistry.cancun.json"


@pytest.mark.parametrize("older", ["stop", "cancun-build"])
def test_a_stale_embedded_journal_from_an_older_contract_is_one_clear_line(tmp_path, monkeypatch,
                                                                             older):
    """An embedded home journals the registry's deploy transaction, so a home made with
    an older build (a stand-in whose runtime is STOP, or the real Cancun build that came
    before the Paris one) replays the older code: refused in one line, move the home."""
    import chain.embedded as emb
    old = dict(load_artifact())
    old["bytecode"] = ("0x6001600c60003960016000f300" if older == "stop"
                       else json.loads(CANCUN_BUILD.read_text())["bytecode"])
    monkeypatch.setattr(emb, "load_artifact", lambda: old)
    emb.EmbeddedChain(tmp_path / "home")
    monkeypatch.undo()
    with pytest.raises(errors.RegistryCodeMismatch) as ei:
        connect("embedded", home=tmp_path / "home")
    msg = str(ei.value)
    assert "\n" not in msg and "older ModelRegistry" in msg and "move that folder away" in msg
    assert str(tmp_path / "home" / "chain") in msg
