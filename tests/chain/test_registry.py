"""The registry on both chains: the embedded one and a real anvil node."""

from __future__ import annotations

import itertools
import signal
import socket
import threading
import time

import numpy as np
import pytest

from chain import errors
from chain.anchoring import AnchorBatch, verify_frame
from tests.chain_fixtures import *  # noqa: F401,F403 - fixtures (chain_env, anvil_node, ...)

K1, K2, K3 = "a1" * 32, "b2" * 32, "c3" * 32


def test_lifecycle_register_deploy_revoke(chain_env):
    reg = chain_env.reg()
    st = reg.status(K1)
    assert not st.registered and st.state == "unregistered" and st.publisher is None
    reg.register(K1, "enet-v1", "file:///models/v1.vsb")
    st = reg.status(K1)
    assert st.active and st.publisher == reg.sender and st.registered_at > 0
    assert reg.info(K1) == ("enet-v1", "file:///models/v1.vsb")
    assert reg.deploy("carla-enet", K1) == 1
    assert reg.current("carla-enet") == (K1, 1)
    reg.register(K2, "enet-v2")
    assert reg.deploy("carla-enet", K2) == 2
    assert reg.current("carla-enet") == (K2, 2)
    reg.revoke(K2, "mislabelled training data")
    st = reg.status(K2)
    assert st.registered and st.revoked and st.reason == "mislabelled training data"
    assert st.state == "revoked"
    with pytest.raises(errors.KeyRevoked, match="revoked"):
        reg.deploy("other", K2)
    with pytest.raises(errors.KeyRevoked):
        reg.revoke(K2, "again")


def test_register_once(chain_env):
    reg = chain_env.reg()
    reg.register(K1, "m")
    with pytest.raises(errors.KeyAlreadyRegistered) as ei:
        reg.register(K1, "m")
    msg = str(ei.value)
    assert K1 in msg and "\n" not in msg and ei.value.error == "KeyAlreadyRegistered"


def test_rollback_refused_versions_only_increase(chain_env):
    reg = chain_env.reg()
    for k in (K1, K2, K3):
        reg.register(k, "m")
    assert reg.deploy("d", K1) == 1
    assert reg.deploy("d", K2) == 2
    with pytest.raises(errors.RollbackRefused, match="rollback is refused"):
        reg.deploy("d", K1)
    assert errors.StaleVersion is errors.RollbackRefused
    with pytest.raises(errors.AlreadyCurrent):
        reg.deploy("d", K2)
    assert reg.deploy("d", K3) == 3
    assert reg.current("d") == (K3, 3)
    # another deployment name has its own history: K1 may go there
    assert reg.deploy("e", K1) == 1


def test_unknown_key_and_deployment(chain_env):
    reg = chain_env.reg()
    with pytest.raises(errors.UnknownKey, match="register the blob first"):
        reg.deploy("d", K1)
    with pytest.raises(errors.UnknownKey):
        reg.revoke(K1, "x")
    with pytest.raises(errors.UnknownDeployment, match="'nope'"):
        reg.current("nope")
    with pytest.raises(errors.InvalidArgument):
        reg.register("00" * 32, "m")
    with pytest.raises(errors.InvalidArgument):
        reg.register(K1, "")
    with pytest.raises(errors.InvalidKey):
        reg.status("xyz")


def test_unauthorised_account_refused(chain_env):
    owner, other = chain_env.reg(0), chain_env.reg(1)
    addr1 = chain_env.address(1)
    owner.register(K1, "m")
    for call in (lambda: other.register(K2, "m"), lambda: other.deploy("d", K1),
                 lambda: other.revoke(K1, "r"), lambda: other.anchor(b"\x01" * 32, K1, 0, 9, stream="cam0")):
        with pytest.raises(errors.Unauthorized, match="lacks the (PUBLISHER|ANCHORER) role"):
            call()
    with pytest.raises(errors.Unauthorized, match="not the owner"):
        other.grant_role("publisher", addr1)
    owner.grant_role("publisher", addr1)
    assert owner.has_role("publisher", addr1) and not owner.has_role("anchorer", addr1)
    other.register(K2, "by publisher 1")
    assert owner.status(K2).publisher == addr1
    owner.revoke_role("publisher", addr1)
    with pytest.raises(errors.Unauthorized):
        other.register(K3, "m")
    with pytest.raises(errors.UnknownRole):
        owner.grant_role("admin", addr1)
    assert chain_env.reg(1).status(K1).active  # reading needs no role


def test_events_in_order_and_follow(chain_env):
    reg = chain_env.reg()
    start = reg.block_number()
    reg.register(K1, "m1")
    reg.register(K2, "m2")
    reg.register(K3, "m3")
    reg.deploy("d", K1)
    reg.deploy("x", K3)
    reg.deploy("d", K2)
    reg.revoke(K1, "old")
    evs, nxt = reg.events(start)
    assert [(e.kind, e.key, e.deployment, e.version) for e in evs] == [
        ("Deployed", K1, "d", 1), ("Deployed", K3, "x", 1), ("Deployed", K2, "d", 2),
        ("Revoked", K1, None, None)]
    assert evs[-1].reason == "old"
    assert [(e.block, e.log_index) for e in evs] == sorted((e.block, e.log_index) for e in evs)
    assert reg.events(nxt) == ([], nxt)
    all_evs, _ = reg.events(start, kinds=None)
    assert [e.kind for e in all_evs].count("Registered") == 3

    stop = threading.Event()
    got = list(itertools.islice(reg.follow("d", start, poll_interval=0.05, stop=stop), 3))
    assert [(e.kind, e.key) for e in got] == [("Deployed", K1), ("Deployed", K2), ("Revoked", K1)]

    # a new deploy shows up while following
    seen = []

    def consume():
        for ev in reg.follow("d", nxt, poll_interval=0.05, stop=stop):
            seen.append(ev)
            stop.set()
    stop.clear()
    t = threading.Thread(target=consume)
    t.start()
    reg.register("d4" * 32, "m4")
    reg.deploy("d", "d4" * 32)
    t.join(20)
    stop.set()
    assert not t.is_alive()
    assert seen and seen[0].kind == "Deployed" and seen[0].version == 3


def test_deployments_are_looked_up_by_key_not_by_registered_name(chain_env):
    """Finding 6: a key registered under one name and deployed under another. Its
    deployments are found by the key, with where each name points now."""
    reg = chain_env.reg()
    reg.register(K1, "registered-as-A")
    reg.register(K2, "registered-as-A")
    assert reg.deployments_of(K1) == []
    reg.deploy("B", K1)
    reg.deploy("C", K1)
    (b, c) = reg.deployments_of(K1)
    assert (b.name, b.version, b.current_key, b.superseded) == ("B", 1, K1, False)
    assert (c.name, c.superseded) == ("C", False)
    reg.deploy("B", K2)
    b, c = reg.deployments_of(K1)
    assert b.superseded and (b.current_key, b.current_version) == (K2, 2) and not c.superseded
    assert [(d.name, d.superseded) for d in reg.deployments_of(K2)] == [("B", False)]


def _frames(n, seed=0):
    rng = np.random.default_rng(seed)
    return [("cam0", i, rng.integers(0, 13, size=(6, 8), dtype=np.uint8)) for i in range(n)]


def test_anchor_and_verify_frames(chain_env, tmp_path):
    reg = chain_env.reg()
    reg.register(K1, "m")
    frames = _frames(10)
    batch = AnchorBatch.build(K1, frames)
    batch.anchor(reg)
    path = batch.write(tmp_path / "b.json")
    assert reg.anchor_of(batch.root)[:3] == (K1, 0, 9)
    for stream, seq, cm in frames:
        v = verify_frame(path, stream, seq, cm, registry=reg)
        assert v.model_key == K1 and v.key_state == "active"

    def fails(check, p=path, seq=3, cm=None):
        with pytest.raises(errors.AnchorVerificationFailed) as ei:
            verify_frame(p, "cam0", seq, frames[seq][2] if cm is None else cm, registry=reg)
        assert ei.value.check == check, str(ei.value)
        return str(ei.value)

    tampered = frames[3][2].copy()
    tampered[0, 0] = (tampered[0, 0] + 1) % 13
    assert fails("leaf_mismatch", cm=tampered).startswith("leaf mismatch")
    with pytest.raises(errors.AnchorVerificationFailed) as ei:
        verify_frame(path, "cam0", 99, frames[0][2], registry=reg)
    assert ei.value.check == "leaf_missing"
    # forged proof in the file
    p2 = batch.write(tmp_path / "proofs.json", include_proofs=True)
    verify_frame(p2, "cam0", 3, frames[3][2], registry=reg)
    import json
    d = json.loads(p2.read_text())
    d["proofs"][3][0] = d["proofs"][3][0][:2] + "00" * 32
    p3 = tmp_path / "forged.json"
    p3.write_text(json.dumps(d))
    fails("proof_invalid", p=p3)
    # a leaf replaced to match a tampered mask: the proof no longer reaches the root
    d = json.loads(path.read_text())
    from chain.anchoring import leaf_digest
    d["leaves"][3]["digest"] = leaf_digest("cam0", 3, K1, tampered).hex()
    p4 = tmp_path / "leaf.json"
    p4.write_text(json.dumps(d))
    fails("proof_invalid", p=p4, cm=tampered)
    # a batch whose root never went on chain
    other = AnchorBatch.build(K1, _frames(5, seed=1))
    p5 = other.write(tmp_path / "unanchored.json")
    fails("root_not_anchored", p=p5, cm=_frames(5, seed=1)[3][2])
    # root anchored for another model than the batch claims
    reg.register(K2, "m2")
    b6 = AnchorBatch.build(K2, _frames(5, seed=2))
    reg.anchor(b6.root, K1, 0, 4, stream="cam0")
    p6 = b6.write(tmp_path / "wrongkey.json")
    fails("model_key_mismatch", p=p6, cm=_frames(5, seed=2)[3][2])
    with pytest.raises(errors.RootAlreadyAnchored):
        batch.anchor(reg)


def test_anchor_records_device_and_stream_and_conflicting_anchors_are_refused(chain_env, tmp_path):
    """Finding 8: each anchor records the sending device and the stream; a second anchor by
    another device that covers the same frame with another result makes anchor-verify
    refuse, naming both anchors, while frames only one anchor covers still verify."""
    reg, rogue = chain_env.reg(0), chain_env.reg(1)
    reg.register(K1, "m")
    reg.grant_role("anchorer", chain_env.address(1))
    frames = _frames(6)
    (tmp_path / "genuine").mkdir()
    batch = AnchorBatch.build(K1, frames)
    batch.anchor(reg)
    path = batch.write(tmp_path / "genuine" / "b.json")
    rec = reg.anchor_record(batch.root)
    assert (rec.anchorer, rec.first_seq, rec.last_seq) == (reg.sender, 0, 5)
    v = verify_frame(path, "cam0", 3, frames[3][2], registry=reg)
    assert v.anchorer == reg.sender and f"by device {reg.sender}" in v.line()
    # another device anchors a forged result for frames 2..3 of the same stream
    forged = [("cam0", s, (cm + 1) % 13) for _, s, cm in frames[2:4]]
    fb = AnchorBatch.build(K1, forged)
    fb.anchor(rogue)
    fpath = fb.write(tmp_path / "forged.json")
    for p, cm in ((path, frames[3][2]), (fpath, forged[1][2])):
        with pytest.raises(errors.AnchorVerificationFailed) as ei:
            verify_frame(p, "cam0", 3, cm, registry=reg)
        msg = str(ei.value)
        assert ei.value.check == "conflicting_anchor", msg
        assert batch.root.hex()[:16] in msg and fb.root.hex()[:16] in msg
        assert reg.sender in msg and rogue.sender in msg
    verify_frame(path, "cam0", 5, frames[5][2], registry=reg)      # not covered twice
    # the same leaf re-batched (recovery) beside the batch is no conflict
    again = AnchorBatch.build(K1, frames[4:5])
    again.anchor(reg)
    again.write(tmp_path / "genuine" / "again.json")
    verify_frame(path, "cam0", 4, frames[4][2], registry=reg)
    # a root anchored for another stream than the batch's
    other = AnchorBatch.build(K1, [("cam1", 0, frames[0][2])])
    reg.anchor(other.root, K1, 0, 0, stream="cam9")
    with pytest.raises(errors.AnchorVerificationFailed) as ei:
        verify_frame(other.write(tmp_path / "o.json"), "cam1", 0, frames[0][2], registry=reg)
    assert ei.value.check == "stream_mismatch"


def test_two_step_ownership_transfer_strips_the_old_owners_roles(chain_env):
    """Finding 11: after a transfer the old owner held the publisher and anchorer roles."""
    old, new = chain_env.reg(0), chain_env.reg(1)
    a0, a1 = chain_env.address(0), chain_env.address(1)
    old.transfer_ownership(a1)
    assert old.owner() == a0 and old.pending_owner() == a1
    with pytest.raises(errors.Unauthorized, match="not the pending owner"):
        chain_env.reg(2).accept_ownership()
    new.accept_ownership()
    assert old.owner() == a1 and old.pending_owner() is None
    assert not old.has_role("publisher", a0) and not old.has_role("anchorer", a0)
    with pytest.raises(errors.Unauthorized):
        old.register(K1, "m")
    with pytest.raises(errors.Unauthorized, match="not the owner"):
        old.grant_role("publisher", a0)
    new.grant_role("publisher", a1)
    new.register(K1, "m")


def test_anchor_refused_for_revoked_or_unknown_key(chain_env):
    reg = chain_env.reg()
    with pytest.raises(errors.UnknownKey):
        reg.anchor(b"\x02" * 32, K1, 0, 1, stream="cam0")
    reg.register(K1, "m")
    with pytest.raises(errors.InvalidArgument, match="reversed"):
        reg.anchor(b"\x02" * 32, K1, 5, 1, stream="cam0")
    reg.revoke(K1, "bad")
    with pytest.raises(errors.KeyRevoked):
        reg.anchor(b"\x02" * 32, K1, 0, 1, stream="cam0")


def test_embedded_state_survives_restart(tmp_path):
    """(anvil: test_anvil_state_survives_restart, with --state and a crash)"""
    chain_env = ChainEnv("embedded", tmp_path / "home")
    reg = chain_env.reg()
    reg.register(K1, "m")
    reg.deploy("d", K1)
    reg.register(K2, "m2")
    reg.revoke(K2, "gone")
    before = reg.status(K1)
    reg2 = chain_env.restart()
    assert reg2 is not reg and reg2.embedded is not reg.embedded
    assert reg2.embedded.replayed >= 4
    assert reg2.status(K1) == before
    assert reg2.status(K2).revoked and reg2.status(K2).reason == "gone"
    assert reg2.current("d") == (K1, 1)
    reg2.register(K3, "m3")
    assert reg2.deploy("d", K3) == 2
    with pytest.raises(errors.RollbackRefused):
        reg2.deploy("d", K1)
    assert chain_env.restart().current("d") == (K3, 2)


def test_tampered_blob_key_is_not_the_registered_one(chain_env, tmp_path):
    import blake3
    import model_store
    src = REPO / "tests" / "data" / "golden.vsb"
    data = bytearray(src.read_bytes())
    key = model_store.verify(bytes(data))
    reg = chain_env.reg()
    reg.register(key, "golden")
    assert reg.status(key).active
    # flip one body byte and re-seal the trailing key: a "valid" blob with another key
    data[-40] ^= 0x01
    resealed = bytes(data[:-32]) + blake3.blake3(bytes(data[:-32])).digest()
    k2 = model_store.verify(resealed)
    assert k2 != key and not reg.status(k2).registered
    # flip without re-sealing: model_store refuses the blob outright
    with pytest.raises(model_store.errors.BlobError):
        model_store.verify(bytes(data))


# ------------------------------------------------------------------ anvil-only


@pytest.mark.anvil
def test_anvil_state_survives_restart(anvil_bin, tmp_path):
    from chain import connect, deploy_registry
    state = tmp_path / "anvil-state.json"
    node = Anvil(anvil_bin, state=state).start()
    try:
        addr = deploy_registry(node.url, private_key=ANVIL_KEYS[0])
        reg = connect(node.url, registry=addr, private_key=ANVIL_KEYS[0], timeout=5)
        reg.register(K1, "m")
        reg.deploy("d", K1)
        done = time.time()
        deadline = time.monotonic() + 15  # --state-interval 1: a dump after the last write
        while time.monotonic() < deadline:
            if state.exists() and state.stat().st_mtime > done + 0.05:
                break
            time.sleep(0.1)
        time.sleep(0.3)  # let that dump finish writing
    finally:
        node.stop(signal.SIGKILL)  # a crash, not a clean shutdown
    assert state.exists()
    node = Anvil(anvil_bin, port=node.port, state=state).start()
    try:
        reg = connect(node.url, registry=addr, private_key=ANVIL_KEYS[0], timeout=5)
        assert reg.status(K1).active
        assert reg.current("d") == (K1, 1)
        with pytest.raises(errors.KeyAlreadyRegistered):
            reg.register(K1, "m")
    finally:
        node.stop()


@pytest.mark.anvil
def test_node_down_mid_call_is_chain_unavailable(anvil_bin):
    from chain import connect, deploy_registry
    node = Anvil(anvil_bin).start()
    try:
        addr = deploy_registry(node.url, private_key=ANVIL_KEYS[0])
        reg = connect(node.url, registry=addr, private_key=ANVIL_KEYS[0], timeout=2)
        reg.register(K1, "m")
    finally:
        node.stop(signal.SIGKILL)
    for call in (lambda: reg.status(K1), lambda: reg.register(K2, "m"),
                 lambda: reg.events(0), lambda: reg.current("d")):
        t0 = time.monotonic()
        with pytest.raises(errors.ChainUnavailable) as ei:
            call()
        assert time.monotonic() - t0 < 10
        assert node.url in str(ei.value) and "\n" not in str(ei.value)


def test_unresponsive_node_times_out():
    """A server that accepts connections but never answers: bounded, no hang."""
    from chain import connect
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    url = f"http://127.0.0.1:{srv.getsockname()[1]}"
    try:
        t0 = time.monotonic()
        with pytest.raises(errors.ChainUnavailable, match="unavailable"):
            connect(url, registry="0x" + "11" * 20, timeout=0.5)
        assert time.monotonic() - t0 < 8
    finally:
        srv.close()


def test_nothing_listening_is_chain_unavailable():
    from chain import connect
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(errors.ChainUnavailable):
        connect(url, registry="0x" + "11" * 20, timeout=1)
    assert time.monotonic() - t0 < 8


def test_real_node_needs_a_registry_address(monkeypatch):
    from chain import connect
    monkeypatch.delenv("VERISEG_REGISTRY", raising=False)
    with pytest.raises(errors.RegistryNotConfigured, match="VERISEG_REGISTRY"):
        connect("http://127.0.0.1:1")
    with pytest.raises(errors.ChainError, match="unknown chain"):
        connect("ftp://x", registry="0x" + "11" * 20)


@pytest.mark.anvil
def test_registry_address_without_contract(anvil_node):
    from chain import connect
    with pytest.raises(errors.RegistryNotFound, match="deploy-registry"):
        connect(anvil_node.url, registry="0x" + "11" * 20)


@pytest.mark.anvil
def test_writes_need_an_account(anvil_node, monkeypatch):
    from chain import connect, deploy_registry
    monkeypatch.delenv("VERISEG_KEYFILE", raising=False)
    addr = deploy_registry(anvil_node.url, private_key=ANVIL_KEYS[0])
    reg = connect(anvil_node.url, registry=addr)
    assert not reg.status(K1).registered
    with pytest.raises(errors.NoAccount, match="VERISEG_KEYFILE"):
        reg.register(K1, "m")


@pytest.mark.anvil
def test_keyfile_signs_and_bad_password_is_refused(anvil_node, tmp_path):
    from chain import connect, deploy_registry
    from chain.config import ChainConfig
    kf = make_keyfile(tmp_path / "k.json", ANVIL_KEYS[0], "secret")
    right = ChainConfig.from_env({"VERISEG_KEYFILE_PASSWORD": "secret"})
    addr = deploy_registry(anvil_node.url, keyfile=kf, config=right)
    reg = connect(anvil_node.url, registry=addr, keyfile=kf, config=right)
    reg.register(K1, "m")
    assert reg.owner() == reg.sender
    with pytest.raises(errors.KeyfileError, match="cannot decrypt"):
        connect(anvil_node.url, registry=addr, keyfile=kf,
                config=ChainConfig.from_env({"VERISEG_KEYFILE_PASSWORD": "wrong"}))
    with pytest.raises(errors.KeyfileError, match="VERISEG_KEYFILE_PASSWORD"):
        connect(anvil_node.url, registry=addr, keyfile=kf)
    with pytest.raises(errors.KeyfileError, match="does not exist"):
        connect(anvil_node.url, registry=addr, keyfile=tmp_path / "none.json", config=right)
