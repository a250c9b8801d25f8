"""`python -m bench NAME [args]`: run one benchmark; results go to bench/results/NAME.json.

    python -m bench chain_gas | model_store | perf | soak | web_view   (python -m bench NAME --help)
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path


def _benchmarks() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_") and m.name != "machine")


def _about(name: str) -> str:
    """First sentence of a benchmark's docstring, read without importing it."""
    try:
        doc = ast.get_docstring(ast.parse((Path(__file__).parent / f"{name}.py").read_text())) or ""
    except (OSError, SyntaxError):
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def main(argv: list[str]) -> int:
    names = _benchmarks()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in names:
        print(f"usage: python -m bench {{{','.join(names)}}} [args]", file=sys.stderr)
        for n in names:
            print(f"  {n:<12} {_about(n)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
