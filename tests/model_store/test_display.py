"""Untrusted text (a card's name, description and classes; a revocation reason; a
deployment name) never reaches a terminal or a log with its control characters, and every
command a message suggests is quoted for the shell."""
from __future__ import annotations

import dataclasses
import logging
import shlex
import subprocess
import sys
import types

import pytest

from tests.flow_fixtures import make_blob
from model_store.display import PrintableLogs, printable, shell_command
from model_store.util import first_line, one_line
from tests.web_fixtures import REPO

EVIL = "evil\x1b[2J\x1b]0;owned\x07\r\nforged: line\u202etxt.exe"


def test_printable_escapes_every_control_character_and_bidi_override():
    got = printable(EVIL)
    assert got == "evil\\x1b[2J\\x1b]0;owned\\x07\\x0d\\x0aforged: line\\u202etxt.exe"
    assert printable("Straße café ✓ 12:00") == "Straße café ✓ 12:00"
    assert all(ord(c) >= 32 and c not in "\x7f\u202e" for c in one_line(EVIL) + first_line(EVIL))


def test_log_lines_are_escaped_by_the_handler_filter():
    record = logging.LogRecord("veriseg.flow", logging.WARNING, __file__, 1, "model %r: %s", ("x", EVIL), None)
    assert PrintableLogs().filter(record) and "\x1b" not in record.getMessage()
    assert "\\x1b[2J" in record.getMessage() and "\n" not in record.getMessage()
    from operators.telemetry import log
    assert any(isinstance(f, PrintableLogs) for h in log.handlers for f in h.filters)


def test_shell_command_quotes_each_word():
    cmd = shell_command("python", "-m", "chain", "deploy", "x; touch pwned", "/m/a b.vsb")
    assert cmd == "python -m chain deploy 'x; touch pwned' '/m/a b.vsb'"
    assert shlex.split(cmd)[4:] == ["x; touch pwned", "/m/a b.vsb"]


def test_model_store_inspect_prints_a_card_with_escape_sequences_escaped(tmp_path):
    import model_store
    from tests.flow_fixtures import tiny_card, tiny_onnx
    card = tiny_card((32, 32), "tiny", True)
    classes = tuple(dataclasses.replace(c, name=c.name + "\x1b[31m") for c in card.classes)
    card = card.replace(name="evil\x1b[2J", description="desc\x1b]0;owned\x07\nforged", classes=classes)
    path = tmp_path / "evil.vsb"
    model_store.write(str(path), tiny_onnx(0, (32, 32), True, 0), card)
    r = subprocess.run([sys.executable, "-m", "model_store", "inspect", str(path)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "evil\\x1b[2J" in r.stdout and "desc\\x1b]0;owned\\x07\\x0aforged" in r.stdout
    assert "\\x1b[31m" in r.stdout
    assert not any(line.startswith("forged") for line in r.stdout.splitlines())


def test_the_trust_on_first_use_refusal_quotes_the_commands(tmp_path):
    """A card named ``x; touch pwned`` in models/: the suggested deploy command, pasted,
    runs one command with that name as one argument."""
    from operators.model_reader.errors import ModelRefused
    from operators.model_reader.resolver import ModelResolver
    blob = tmp_path / "my models" / "carla-enet.vsb"
    key = make_blob(blob, name="x; touch pwned")
    fake = types.SimpleNamespace(
        cfg=types.SimpleNamespace(home=tmp_path / "home"),
        reg=types.SimpleNamespace(events=lambda *a, **k: (["Registered"], 1)),
        _chain_call=lambda what, fn: fn())
    with pytest.raises(ModelRefused) as ei:
        ModelResolver._trust_on_first_use(fake, key, blob)
    cmds = str(ei.value).split("if you trust it: ")[1].split(" && ")
    assert [shlex.split(c) for c in cmds] == [
        ["python", "-m", "chain", "--home", str(tmp_path / "home"), "register", str(blob)],
        ["python", "-m", "chain", "--home", str(tmp_path / "home"), "deploy", "x; touch pwned",
         str(blob)]]
