"""Packages depend one way. Every import of every module is checked, those inside functions
included, against the layering below (docs/design.md draws it): a package imports only the
packages it lists, so there is no cycle between packages and no arrow pointing up; only a
command line imports another package's command line; and the modules of a package import
each other without a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())

#: package -> the packages it may import (its own modules always)
MAY_IMPORT: dict[str, frozenset[str]] = {
    "model_store": frozenset(),
    "chain": frozenset({"model_store"}),
    "operators": frozenset({"model_store", "chain"}),
    "trainer": frozenset({"model_store", "chain"}),
    "dataflows": frozenset({"model_store", "chain", "operators"}),
    "web": frozenset({"model_store", "chain", "operators", "dataflows"}),
    "bench": frozenset({"model_store", "chain", "operators", "trainer", "dataflows", "web"}),
}
OURS = set(MAY_IMPORT) | {"tests"}


def _nodes(tree: ast.AST, *, at_run_time: bool = False):
    """Every node of ``tree``; ``at_run_time``: not those under ``if TYPE_CHECKING:`` nor
    ``if __name__ == "__main__":`` (never imported when the module is)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if at_run_time and isinstance(node, ast.If) and ("TYPE_CHECKING" in ast.unparse(node.test)
                                                         or "__main__" in ast.unparse(node.test)):
            todo += node.orelse
            continue
        todo += ast.iter_child_nodes(node)


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, at any depth, and of every
    ``importlib.import_module`` / ``__import__`` given a literal name."""
    found = []
    for node in _nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (isinstance(node.func, ast.Name) and node.func.id == "__import__"
                   or isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")):
            found.append((node.lineno, node.args[0].value))
    return found


def _is_cli(module: str) -> bool:
    return module.rsplit(".", 1)[-1] in ("cli", "__main__")


def arrows_against_the_layers(root: Path = REPO) -> list[str]:
    """``file:line: package imports module`` for each import the layering forbids, and for
    each import of another package's command line from a module that is not one itself
    (what two commands share is library code, below both)."""
    wrong = []
    for package, allowed in MAY_IMPORT.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, module in imported_modules(path.read_text()):
                target = module.split(".")[0]
                if target in OURS and target != package and target not in allowed:
                    wrong.append(f"{path.relative_to(root)}:{line}: {package} imports {module}")
                elif target != package and _is_cli(module) and not _is_cli(path.stem):
                    wrong.append(f"{path.relative_to(root)}:{line}: {package} imports the command "
                                 f"line {module}")
    return wrong


def _modules(root: Path, package: str) -> dict[str, Path]:
    found = {}
    for path in (root / package).rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def module_cycles(root: Path, package: str) -> list[list[str]]:
    """The cycles of imports between the modules of ``package`` (run-time imports at any
    depth; a module's import of its own package's ``__init__`` does not count: it runs first)."""
    modules = _modules(root, package)

    def known(name: str):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None
    edges: dict[str, set] = {m: set() for m in modules}
    for m, path in modules.items():
        here = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in _nodes(ast.parse(path.read_text()), at_run_time=True):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[:len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for target in filter(None, map(known, names)):
                if target != m and not m.startswith(target + "."):
                    edges[m].add(target)
    cycles, state = [], {}

    def visit(m, trail):
        state[m] = "open"
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                cycles.append(trail[trail.index(t):] + [t])
            elif t not in state:
                visit(t, trail + [t])
        state[m] = "done"
    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    return cycles


def test_every_package_depends_only_on_the_packages_below_it():
    wrong = arrows_against_the_layers()
    assert not wrong, ("imports against the layering (tests/test_import_layers.py MAY_IMPORT; "
                       "move the code down or hand it in from above):\n" + "\n".join(wrong))


def test_the_layering_names_every_package_and_has_no_cycle():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages == set(MAY_IMPORT), "place a new package in MAY_IMPORT"
    done: set[str] = set()
    while len(done) < len(MAY_IMPORT):
        ready = {p for p, below in MAY_IMPORT.items() if p not in done and below <= done}
        assert ready, f"a cycle among {sorted(set(MAY_IMPORT) - done)}"
        done |= ready


@pytest.mark.parametrize("package", [p for p in MAY_IMPORT if p != "bench"])
def test_no_import_cycle_between_the_modules_of_a_package(package):
    cycles = module_cycles(REPO, package)
    assert not cycles, "import cycles (move what both need into a module of its own):\n" + "\n".join(
        " -> ".join(c) for c in cycles)


@pytest.mark.parametrize("source", [
    "def f():\n    from web.live import start_live_view\n",
    "class C:\n    def m(self):\n        import web.audit\n",
    "import importlib\nimportlib.import_module('web.live')\n",
    "try:\n    from dataflows.segment import build_flow\nexcept ImportError:\n    pass\n",
])
def test_an_import_anywhere_in_a_module_is_seen(tmp_path, source):
    for package in MAY_IMPORT:
        (tmp_path / package).mkdir()
    (tmp_path / "operators" / "sneaky.py").write_text(source)
    wrong = arrows_against_the_layers(tmp_path)
    assert len(wrong) == 1 and wrong[0].startswith("operators/sneaky.py:"), wrong


def test_a_cycle_through_a_function_level_import_is_seen(tmp_path):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "export.py").write_text("from .optimize import rewrite\n")
    (tmp_path / "trainer" / "optimize.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .data import D\n"
        "def rewrite():\n    from trainer.export import export_onnx\n")
    (tmp_path / "trainer" / "data.py").write_text("from .optimize import rewrite\n")
    assert [set(c) for c in module_cycles(tmp_path, "trainer")] == [{"trainer.export", "trainer.optimize"}]


def test_a_library_module_importing_another_packages_command_line_is_seen(tmp_path):
    for package in MAY_IMPORT:
        (tmp_path / package).mkdir()
    (tmp_path / "web" / "verify.py").write_text("from chain.cli import prove_frame\n")
    (tmp_path / "web" / "cli.py").write_text("from chain.cli import add_registry_options\n")
    assert arrows_against_the_layers(tmp_path) == [
        "web/verify.py:1: web imports the command line chain.cli"]
