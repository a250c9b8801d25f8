"""The configuration tables in README.md and docs/dataflow.md are generated from the
fields of operators.config.Config: a table that drifted fails here, and
``python -m operators.config --write`` refreshes it."""
import subprocess
import sys
from pathlib import Path

import pytest

from operators.config import ENV_DOC, Config
from operators.config_doc import TABLES, markdown, refreshed

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("rel", sorted(TABLES))
def test_the_committed_table_is_the_generated_one(rel):
    text = (REPO / rel).read_text()
    assert refreshed(text, TABLES[rel]) == text, (
        f"{rel}: the VERISEG_* table differs from operators.config.Config; "
        "run `python -m operators.config --write`")


def test_every_declared_variable_has_a_row_and_a_description():
    full = markdown()
    for var, doc in ENV_DOC.items():
        assert f"| `{var}` |" in full and doc, var
    main = markdown(main_only=True)
    assert "`VERISEG_SOURCE`" in main and "`VERISEG_ORT_SPIN`" not in main


def test_a_drifted_table_is_noticed(tmp_path):
    text = (REPO / "docs/dataflow.md").read_text()
    drifted = text.replace("seconds between registry event polls", "seconds between polls")
    assert drifted != text and refreshed(drifted, False) == text


def test_the_module_prints_the_table():
    p = subprocess.run([sys.executable, "-m", "operators.config", "--markdown"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == markdown()
    assert len(Config.variables()) == len(ENV_DOC) == p.stdout.count("| `VERISEG_")
