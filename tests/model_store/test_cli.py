"""``python -m model_store``: verify, pack, inspect, unpack, keygen, one-line refusals."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import blake3
import pytest

from tests.conftest import REPO, tiny_onnx

from tests.model_store.blob_cases import (DATA, GOLDEN_KEY, HOSTILE_HEADERS, body_span, hostile, reseal,
                                          with_header)


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "model_store", *map(str, args)], capture_output=True, text=True, cwd=cwd or REPO)


def test_cli_verify_intact_and_flipped(tmp_path):
    path = tmp_path / "g.vsb"
    path.write_bytes((DATA / "golden.vsb").read_bytes())
    ok = cli("verify", path)
    assert ok.returncode == 0 and ok.stdout.strip() == GOLDEN_KEY
    inspected = cli("inspect", path)
    assert inspected.returncode == 0 and GOLDEN_KEY in inspected.stdout
    data = bytearray(path.read_bytes())
    span = body_span(data)
    data[span[len(span) // 2]] ^= 4  # a body byte: only the hash can notice it (the card is intact)
    path.write_bytes(bytes(data))
    for args in ((), ("--key", GOLDEN_KEY)):
        bad = cli("verify", path, *args)
        assert bad.returncode == 1
        assert bad.stdout == ""
        assert len(bad.stderr.strip().splitlines()) == 1 and str(path) in bad.stderr
        assert "corrupt or was modified" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_pack_inspect_unpack(tmp_path):
    (tmp_path / "m.onnx").write_bytes(tiny_onnx())
    (tmp_path / "params.json").write_text(json.dumps({"epochs": 3}))
    packed = cli("pack", tmp_path / "m.onnx", "--name", "tiny", "--description", "d", "--params", tmp_path / "params.json",
                 "--created", "2026-11-25T12:00:00Z", "-o", tmp_path / "m.vsb")
    assert packed.returncode == 0, packed.stderr
    key = packed.stdout.strip().splitlines()[-1]
    info = json.loads(cli("inspect", tmp_path / "m.vsb", "--json").stdout)
    assert info["key"] == key
    assert info["card"]["inputs"][0] == {"name": "image", "dtype": "uint8", "shape": ["N", 8, 8, 3], "layout": "NHWC", "color_order": "RGB"}
    assert info["card"]["onnx_opset"] == 17 and info["card"]["training_params"] == {"epochs": 3}
    assert cli("unpack", tmp_path / "m.vsb", "--key", key, "-o", tmp_path / "out.onnx").returncode == 0
    assert (tmp_path / "out.onnx").read_bytes() == tiny_onnx()
    wrong = cli("unpack", tmp_path / "m.vsb", "--key", "0" * 64, "-o", tmp_path / "x.onnx")
    assert wrong.returncode == 1 and "not the trusted model" in wrong.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_cli_encrypted_pack_and_unpack(tmp_path):
    (tmp_path / "m.onnx").write_bytes(tiny_onnx())
    assert cli("keygen", "-o", tmp_path / "dev.key").returncode == 0
    packed = cli("pack", tmp_path / "m.onnx", "--name", "t", "--description", "d", "--encrypt-key", tmp_path / "dev.key", "-o", tmp_path / "m.vsb")
    key = packed.stdout.strip().splitlines()[-1]
    assert cli("verify", tmp_path / "m.vsb").stdout.strip() == key
    locked = cli("unpack", tmp_path / "m.vsb", "--key", key, "-o", tmp_path / "o.onnx")
    assert locked.returncode == 1 and "no decryption secret" in locked.stderr
    opened = cli("unpack", tmp_path / "m.vsb", "--key", key, "--decrypt-key", tmp_path / "dev.key", "-o", tmp_path / "o.onnx")
    assert opened.returncode == 0 and (tmp_path / "o.onnx").read_bytes() == tiny_onnx()


def test_cli_refusals_are_one_line(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    for args in (
        ("verify", tmp_path / "missing.vsb"),
        ("inspect", tmp_path / "junk.onnx"),
        ("pack", tmp_path / "junk.onnx", "--name", "n", "--description", "d", "-o", tmp_path / "o.vsb"),
        ("verify", DATA / "golden.vsb", "--key", "xyz"),
    ):
        result = cli(*args)
        assert result.returncode == 1, args
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr


def test_inspect_never_decompresses(blob, tmp_path):
    """A body that cannot decompress still inspects: inspect reads only header and key."""
    garbage = b"\xff" * 64
    forged = with_header(blob, lambda h: h["body"].update(stored_size=len(garbage)))
    (header_len,) = struct.unpack(">I", forged[10:14])
    forged = reseal(forged[: 14 + header_len] + garbage + b"\0" * 32)
    (tmp_path / "f.vsb").write_bytes(forged)
    assert cli("inspect", tmp_path / "f.vsb").returncode == 0


def test_cli_keygen_writes_mode_600_and_never_overwrites(tmp_path):
    from model_store.cli import main

    path = tmp_path / "dev.key"
    old_umask = os.umask(0o022)  # the usual umask: it would leave a 0o644 request group/world-readable
    try:
        assert main(["keygen", "-o", str(path)]) == 0
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o600
    secret = path.read_bytes()
    again = cli("keygen", "-o", path)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    assert path.read_bytes() == secret


@pytest.mark.parametrize("name", ["5000-digit integer", "200000-deep arrays", "200000-deep objects"])
def test_cli_on_hostile_headers_is_one_clean_line(name, tmp_path):
    """Also under the recursion limit py-evm raises, where recursing into the nesting crashes in C."""
    path = tmp_path / "h.vsb"
    path.write_bytes(hostile(HOSTILE_HEADERS[name]))
    own_key = blake3.blake3(path.read_bytes()[:-32]).hexdigest()
    high_limit = ("import sys; sys.setrecursionlimit(1_000_000); from model_store.cli import main; "
                  "sys.exit(main(sys.argv[1:]))")
    for args in (("verify", path), ("verify", path, "--key", own_key), ("verify", path, "--key", GOLDEN_KEY),
                 ("inspect", path), ("inspect", path, "--json")):
        for result in (cli(*args), subprocess.run([sys.executable, "-c", high_limit, *map(str, args)],
                                                  capture_output=True, text=True, cwd=REPO)):
            assert result.returncode == 1, (args, result.returncode, result.stderr[-300:])
            assert result.stdout == ""
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and "Traceback" not in result.stderr
            expect = "not the trusted model" if GOLDEN_KEY in args else "header"
            assert expect in lines[0]
