"""The segment flow's model reader at start: which blobs it refuses (unregistered, tampered,
revoked, missing, lying, superseded, encrypted without the secret) and which it trusts."""

from __future__ import annotations

import struct

import pytest
from bytewax.testing import run_main

from dataflows.segment import build_flow
from tests.flow_fixtures import FakeRegistry, env_for, make_blob, make_clip, make_folder, read_jsonl
from operators.config import load_config
from operators.model_reader import ModelRefused

from tests.dataflows.segment_runs import registered_model, slow_readers, two_models, when_scored


def test_unregistered_blob_refuses_to_start_with_one_line(tmp_path):
    reg = FakeRegistry()
    blob = tmp_path / "m.vsb"
    key = make_blob(blob)
    clip = make_clip(tmp_path / "c.avi", n=2)
    with pytest.raises(ModelRefused) as ei:
        build_flow(load_config(env_for(tmp_path, clip, blob)), registry=reg)
    msg = str(ei.value)
    assert "\n" not in msg and key in msg and "not registered" in msg


def test_tampered_blob_refuses_to_start(tmp_path):
    reg, blob, key = registered_model(tmp_path)
    data = bytearray(blob.read_bytes())
    (header_len,) = struct.unpack(">I", data[10:14])
    data[(14 + header_len + len(data) - 32) // 2] ^= 0x01  # a body byte: the card stays valid, only the key can tell
    blob.write_bytes(bytes(data))
    clip = make_clip(tmp_path / "c.avi", n=2)
    with pytest.raises(ModelRefused) as ei:
        build_flow(load_config(env_for(tmp_path, clip, blob)), registry=reg)
    assert "\n" not in str(ei.value) and "VERISEG_MODEL" in str(ei.value)
    assert "corrupt or was modified" in str(ei.value)


def test_revoked_blob_and_unknown_deployment_refuse(tmp_path):
    reg, blob, key = registered_model(tmp_path)
    reg.revoke(key, "leaked")
    clip = make_clip(tmp_path / "c.avi", n=2)
    with pytest.raises(ModelRefused, match="revoked.*leaked"):
        build_flow(load_config(env_for(tmp_path, clip, blob)), registry=reg)
    with pytest.raises(ModelRefused, match="deployment 'nope' is unknown"):
        build_flow(load_config(env_for(tmp_path, clip, "nope")), registry=reg)


def test_deployment_whose_blob_is_missing_refuses(tmp_path):
    reg = FakeRegistry()
    reg.register("ab" * 32, "ghost", "")
    reg.deploy("ghost", "ab" * 32)
    clip = make_clip(tmp_path / "c.avi", n=2)
    with pytest.raises(ModelRefused, match="no blob with that key"):
        build_flow(load_config(env_for(tmp_path, clip, "ghost")), registry=reg)


def test_default_run_trusts_the_committed_blob_on_first_use_only(tmp_path, monkeypatch, caplog, capsys):
    """No VERISEG_MODEL / VERISEG_SOURCE: the blob and clip in models/ (patched to a tmp
    folder here) are used; on a fresh embedded chain the blob is registered and deployed
    (trust on first use, said in one line). A blob swapped into models/ later (a pull, or
    anyone who can write that folder) is refused with one line giving the two commands that
    would trust it, and scores nothing; the edge never registers or deploys it itself."""
    import chain
    import chain.cli
    import operators.config as config
    import operators.model_reader.resolver as resolver
    models = tmp_path / "models"
    blob = models / "carla-enet.vsb"
    key = make_blob(blob)
    make_clip(models / "sample.avi", n=6)
    monkeypatch.setattr(config, "MODELS_DIR", models)
    monkeypatch.setattr(config, "DEFAULT_MODEL", blob)
    monkeypatch.setattr(resolver, "MODELS_DIR", models)
    env = env_for(tmp_path, "", "", VERISEG_ANCHOR_EVERY=3)
    del env["VERISEG_SOURCE"], env["VERISEG_MODEL"]
    for run in (1, 2):
        caplog.clear()
        cfg = load_config(env)
        assert cfg.model_is_default and cfg.source[0].stream_id == "sample"
        run_main(build_flow(cfg))
        said = [r.getMessage() for r in caplog.records if "registered the committed blob" in r.getMessage()]
        assert len(said) == (run == 1)
        if said:
            assert "trust on first use" in said[0] and "deployed it as 'tiny'" in said[0]
        rows = read_jsonl(cfg.out / "sample" / "results.jsonl")
        assert len(rows) == 6 and {r["model_key"] for r in rows} == {key}
    # another blob swapped into models/: refused, nothing registered or deployed, nothing scored
    new_key = make_blob(blob, shift=1)
    (cfg.out / "sample" / "results.jsonl").unlink()
    with pytest.raises(ModelRefused) as ei:
        build_flow(load_config(env))
    msg = str(ei.value)
    home = tmp_path / "home"
    assert "\n" not in msg and "not registered" in msg and "not trusted on your behalf" in msg
    cmds = msg.split("if you trust it: ")[1].split(" && ")
    assert cmds == [f"python -m chain --home {home} register {blob}",
                    f"python -m chain --home {home} deploy tiny {blob}"]
    reg = chain.connect(chain="embedded", home=home)
    assert not reg.status(new_key).registered and reg.current("tiny")[0] == key
    assert not (cfg.out / "sample" / "results.jsonl").exists()
    # the two commands it names are what trusts it
    for c in cmds:
        assert chain.cli.main(c.split()[3:]) == 0, capsys.readouterr().err
    run_main(build_flow(load_config(env)))
    rows = read_jsonl(cfg.out / "sample" / "results.jsonl")
    assert len(rows) == 6 and {r["model_key"] for r in rows} == {new_key}


def test_require_gpu_without_a_gpu_refuses_with_one_line(tmp_path):
    from operators.sessions import gpu_driver
    if gpu_driver():
        pytest.skip("this machine has an NVIDIA driver")
    reg, blob, key = registered_model(tmp_path)
    clip = make_clip(tmp_path / "c.avi", n=2)
    cfg = load_config(env_for(tmp_path, clip, blob, VERISEG_REQUIRE_GPU=1, VERISEG_PROVIDERS="auto"))
    with pytest.raises(ModelRefused) as ei:
        build_flow(cfg, registry=reg)
    assert "\n" not in str(ei.value) and "VERISEG_REQUIRE_GPU=1" in str(ei.value)
    assert "CPUExecutionProvider" in str(ei.value)


def test_a_card_that_lies_about_its_input_is_refused(tmp_path):
    import model_store
    from tests.flow_fixtures import tiny_card, tiny_onnx
    reg = FakeRegistry()
    blob = tmp_path / "liar.vsb"
    # graph takes 32x32, the card claims 64x64
    key = model_store.write(str(blob), tiny_onnx(0, (32, 32)), tiny_card((64, 64)))
    reg.register(key, "liar", blob.as_uri())
    clip = make_clip(tmp_path / "c.avi", n=2)
    with pytest.raises(ModelRefused) as ei:
        build_flow(load_config(env_for(tmp_path, clip, blob)), registry=reg)
    msg = str(ei.value)
    assert "\n" not in msg and "card does not describe its graph" in msg and "64" in msg


def test_chain_down_at_start_refuses_unless_a_recent_verified_status_is_cached(tmp_path):
    reg, blob, key = registered_model(tmp_path)
    clip = make_clip(tmp_path / "c.avi", n=6)
    reg.down = True
    with pytest.raises(ModelRefused, match="unreachable.*VERISEG_STATUS_MAX_AGE"):
        build_flow(load_config(env_for(tmp_path, clip, blob)), registry=reg)
    with pytest.raises(ModelRefused, match="no verified status"):
        build_flow(load_config(env_for(tmp_path, clip, blob, VERISEG_STATUS_MAX_AGE=600, VERISEG_ANCHOR_EVERY=0)),
                   registry=reg)
    reg.down = False   # one online start caches the verified status
    run_main(build_flow(load_config(env_for(tmp_path, clip, blob, VERISEG_STATUS_MAX_AGE=600, VERISEG_ANCHOR_EVERY=0)),
                        registry=reg))
    reg.down = True
    cfg = load_config(env_for(tmp_path, clip, blob, VERISEG_STATUS_MAX_AGE=600, VERISEG_ANCHOR_EVERY=0))
    run_main(build_flow(cfg, registry=reg))
    rows = read_jsonl(cfg.out / "c" / "results.jsonl")
    assert len(rows) == 6 and {r["model_key"] for r in rows} == {key}
    # too old
    import json as _json
    cache = tmp_path / "home" / "status-cache.json"
    d = _json.loads(cache.read_text())
    for v in d.values():
        v["checked_at"] -= 3600
    cache.write_text(_json.dumps(d))
    with pytest.raises(ModelRefused, match="s old"):
        build_flow(load_config(env_for(tmp_path, clip, blob, VERISEG_STATUS_MAX_AGE=600, VERISEG_ANCHOR_EVERY=0)),
                   registry=reg)


def test_encrypted_blob_scores_with_the_device_secret_and_is_refused_without(tmp_path):
    import model_store
    from tests.flow_fixtures import tiny_card, tiny_onnx
    secret = model_store.generate_secret()
    (tmp_path / "device.key").write_text(secret.hex())
    (tmp_path / "other.key").write_text(model_store.generate_secret().hex())
    reg = FakeRegistry()
    blob = tmp_path / "enc.vsb"
    key = model_store.write(str(blob), tiny_onnx(), tiny_card(), encrypt_key=secret)
    reg.register(key, "tiny", blob.as_uri())
    clip = make_clip(tmp_path / "c.avi", n=4)
    cfg = load_config(env_for(tmp_path, clip, blob, VERISEG_ANCHOR_EVERY=0,
                              VERISEG_DECRYPT_KEY=tmp_path / "device.key"))
    run_main(build_flow(cfg, registry=reg))
    rows = read_jsonl(cfg.out / "c" / "results.jsonl")
    assert len(rows) == 4 and {r["model_key"] for r in rows} == {key}
    for extra in ({}, {"VERISEG_DECRYPT_KEY": tmp_path / "other.key"}):
        with pytest.raises(ModelRefused) as ei:
            build_flow(load_config(env_for(tmp_path, clip, blob, **extra)), registry=reg)
        assert "\n" not in str(ei.value) and "model blob refused" in str(ei.value)


def test_a_superseded_blob_is_refused_and_a_pinned_blob_follows_newer_deploys(tmp_path):
    reg, blob_a, key_a, blob_b, key_b = two_models(tmp_path)
    folder = make_folder(tmp_path / "f", n=40)
    # pinned to blob A while A is current: a deploy of B mid-stream swaps to B
    cfg = load_config(env_for(tmp_path, f"dir:{folder}", blob_a, VERISEG_ANCHOR_EVERY=0))
    flow = build_flow(cfg, registry=reg, reader_factory=slow_readers(0.02))
    th = when_scored(flow, 10, lambda: reg.deploy("tiny", key_b))
    run_main(flow)
    th.join()
    keys = [r["model_key"] for r in read_jsonl(cfg.out / "f" / "results.jsonl")]
    n_a = keys.count(key_a)
    assert 10 <= n_a < 40 and keys == [key_a] * n_a + [key_b] * (40 - n_a)
    # now A is superseded: starting from its file is a rollback, refused
    with pytest.raises(ModelRefused, match="superseded.*no rollback"):
        build_flow(load_config(env_for(tmp_path, f"dir:{folder}", blob_a)), registry=reg)
    # a registered candidate that was never deployed under its name may still run
    blob_c = tmp_path / "models" / "c.vsb"
    key_c = make_blob(blob_c, shift=2)
    reg.register(key_c, "tiny", blob_c.as_uri())
    build_flow(load_config(env_for(tmp_path, f"dir:{folder}", blob_c)), registry=reg)
