"""The ``VERISEG_*`` reference tables, generated from the fields of
:class:`operators.config.Config` so that the docs have one source.

    python -m operators.config --markdown     # print docs/dataflow.md's full table
    python -m operators.config --write        # refresh the tables in README.md and docs/dataflow.md

``tests/operators/test_config_docs.py`` fails when a committed table differs from the declarations.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from chain.config import expected

from .config import REPO_ROOT, Config

__all__ = ["markdown", "TABLES", "refreshed", "main"]

#: file -> which variables its table lists (README: the main ones)
TABLES = {"docs/dataflow.md": False, "README.md": True}
_BEGIN, _END = "<!-- config-table: begin (python -m operators.config --write) -->", "<!-- config-table: end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(main_only: bool = False) -> str:
    rows = ["| variable | default | accepts | meaning |", "|---|---|---|---|"]
    for name, f in Config.variables().items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if main_only and not extra.get("main"):
            continue
        shown = extra.get("shown")
        if shown is None:
            d = f.get_default(call_default_factory=True)
            shown = {True: "1", False: "0"}.get(d, d) if isinstance(d, bool) else d
        accepts = expected(f, "bound")
        accepts = "text" if accepts.startswith("a ") and " " not in accepts[2:] else accepts
        shown = f"`{shown}`" if " " not in str(shown) and shown != "—" else shown
        rows.append(f"| `{name}` | {shown} | {_cell(accepts)} | {_cell(f.description or '')} |")
    return "\n".join(rows) + "\n"


def refreshed(text: str, main_only: bool) -> str:
    """``text`` with the table between the markers replaced by the generated one."""
    pat = re.compile(re.escape(_BEGIN) + r".*?" + re.escape(_END), re.S)
    if not pat.search(text):
        raise ValueError(f"no {_BEGIN!r} ... {_END!r} markers")
    return pat.sub(lambda _: f"{_BEGIN}\n{markdown(main_only)}{_END}", text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m operators.config", description=__doc__.split("\n")[0])
    ap.add_argument("--markdown", action="store_true", help="print the full reference table")
    ap.add_argument("--main", action="store_true", help="only the variables README lists")
    ap.add_argument("--write", action="store_true", help="refresh README.md and docs/dataflow.md")
    a = ap.parse_args(argv)
    if a.write:
        for rel, main_only in TABLES.items():
            p = Path(REPO_ROOT) / rel
            p.write_text(refreshed(p.read_text(), main_only))
            print(f"wrote {rel}")
        return 0
    print(markdown(a.main), end="")
    return 0
