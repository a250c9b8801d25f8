"""``python -m chain keystore new|import``: an encrypted key file, mode 600, never
overwritten, the private key never on the command line, refusals in one line."""
from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys

import pytest
from eth_account import Account

import chain.keystore as ks
from chain.connection import load_keyfile
from chain.cli import main
from tests.chain_fixtures import ANVIL_KEYS, REPO

ADDRESS0 = Account.from_key(ANVIL_KEYS[0]).address


@pytest.fixture
def password_file(tmp_path):
    p = tmp_path / "pw.txt"
    p.write_text("correct horse\n")
    return p


@pytest.fixture(autouse=True)
def no_env_password(monkeypatch):
    monkeypatch.delenv("VERISEG_KEYFILE_PASSWORD", raising=False)


def run(capsys, *argv) -> tuple[int, str, list[str]]:
    rc = main(["keystore", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err.splitlines()


def test_new_writes_an_encrypted_mode_600_keystore_and_prints_its_address(
        tmp_path, password_file, capsys, monkeypatch):
    monkeypatch.setattr(os, "umask", os.umask)   # restored after the test
    old = os.umask(0o002)                          # a permissive umask does not widen the mode
    try:
        rc, out, _ = run(capsys, "new", tmp_path / "key.json", "--password-file", password_file)
    finally:
        os.umask(old)
    assert rc == 0
    kf = tmp_path / "key.json"
    assert stat.S_IMODE(kf.stat().st_mode) == 0o600
    address = out.strip()
    assert load_keyfile(kf, "correct horse").address == address   # the newline is not the password
    assert "crypto" in json.loads(kf.read_text())


def test_an_existing_keystore_is_never_overwritten(tmp_path, password_file, capsys):
    kf = tmp_path / "key.json"
    kf.write_text("the only copy")
    secret = tmp_path / "secret.txt"
    secret.write_text(ANVIL_KEYS[0])
    for cmd in (["new", kf], ["import", kf, "--key-file", secret]):
        rc, out, err = run(capsys, *cmd, "--password-file", password_file)
        assert rc == 1 and out == "" and len(err) == 1 and "already exists" in err[0], err
    assert kf.read_text() == "the only copy"


def test_import_reads_the_key_from_a_file_or_stdin_never_argv(tmp_path, password_file, capsys,
                                                              monkeypatch):
    keyfile = tmp_path / "secret.txt"
    keyfile.write_text(ANVIL_KEYS[0] + "\n")
    rc, out, _ = run(capsys, "import", tmp_path / "a.json", "--key-file", keyfile,
                     "--password-file", password_file)
    assert rc == 0 and out.strip() == ADDRESS0
    assert load_keyfile(tmp_path / "a.json", "correct horse").key.hex() == ANVIL_KEYS[0][2:]
    # stdin, with the password from the environment (VERISEG_KEYFILE_PASSWORD)
    monkeypatch.setenv("VERISEG_KEYFILE_PASSWORD", "env pw")
    monkeypatch.setattr(sys, "stdin", io.StringIO(ANVIL_KEYS[0] + "\n"))
    rc, out, _ = run(capsys, "import", tmp_path / "b.json")
    assert rc == 0 and out.strip() == ADDRESS0
    assert load_keyfile(tmp_path / "b.json", "env pw").address == ADDRESS0
    # there is no way to give the key as an argument
    with pytest.raises(SystemExit) as ei:
        run(capsys, "import", tmp_path / "c.json", ANVIL_KEYS[0])
    err = capsys.readouterr().err.splitlines()
    assert ei.value.code == 1 and len(err) == 1 and "unrecognized arguments" in err[0]
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("case", ["not hex", "empty stdin", "empty password",
                                  "no terminal", "prompts differ", "missing folder"])
def test_refusals_are_one_line_and_write_nothing(tmp_path, password_file, capsys, monkeypatch,
                                                 case):
    target = tmp_path / "k.json"
    argv = ["new", target, "--password-file", password_file]
    if case in ("not hex", "empty stdin"):
        monkeypatch.setattr(sys, "stdin", io.StringIO("nothex\n" if case == "not hex" else ""))
        argv = ["import", target, "--password-file", password_file]
    elif case == "empty password":
        password_file.write_text("\n")
    elif case == "no terminal":
        monkeypatch.setattr(ks, "_terminal", lambda: False)
        argv = ["new", target]
    elif case == "prompts differ":
        answers = iter(["one", "two"])
        monkeypatch.setattr(ks, "_terminal", lambda: True)
        monkeypatch.setattr(ks.getpass, "getpass", lambda prompt="": next(answers))
        argv = ["new", target]
    elif case == "missing folder":
        target = tmp_path / "nope" / "k.json"
        argv = ["new", target, "--password-file", password_file]
    rc, out, err = run(capsys, *argv)
    assert rc == 1 and out == "" and len(err) == 1 and err[0].startswith("error: "), err
    assert not target.exists()


def test_new_asks_the_password_twice_on_the_terminal(tmp_path, capsys, monkeypatch):
    prompts = []
    monkeypatch.setattr(ks, "_terminal", lambda: True)
    monkeypatch.setattr(ks.getpass, "getpass", lambda prompt="": prompts.append(prompt) or "pw")
    rc, out, _ = run(capsys, "new", tmp_path / "k.json")
    assert rc == 0 and len(prompts) == 2
    assert load_keyfile(tmp_path / "k.json", "pw").address == out.strip()


def test_the_cli_subprocess_takes_the_key_on_stdin(tmp_path, password_file):
    p = subprocess.run([sys.executable, "-m", "chain", "keystore", "import", str(tmp_path / "k.json"),
                        "--password-file", str(password_file)], input=ANVIL_KEYS[1] + "\n",
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == Account.from_key(ANVIL_KEYS[1]).address
