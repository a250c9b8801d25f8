"""The tests mirror the packages: each test module sits in the folder of the package it
mainly tests (``tests/e2e/`` for runs across packages), each folder is a Python package so
two modules may share a name, and no module grows past what a reader takes in at once."""
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
#: folders of tests/ that are not a package of the repository
OTHER_FOLDERS = {"e2e", "data"}
#: tests of the repository as a whole, at the top of tests/
WHOLE_REPOSITORY = {"test_layout.py", "test_import_layers.py", "test_environment_reads.py", "test_readme.py"}
MAX_LINES = 500


def _packages() -> set:
    return {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}


def test_every_test_module_sits_in_the_folder_of_a_package():
    top = sorted(p.name for p in TESTS.glob("test_*.py") if p.name not in WHOLE_REPOSITORY)
    assert not top, f"move these into the tests/ folder of the package they test: {top}"
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    strangers = sorted(folders - _packages() - OTHER_FOLDERS)
    assert not strangers, f"tests/ folders named after no package: {strangers}"


def test_every_test_folder_is_a_package():
    folders = [p for p in TESTS.rglob("*") if p.is_dir() and any(p.glob("*.py"))]
    bare = sorted(str(p.relative_to(REPO)) for p in [TESTS, *folders] if not (p / "__init__.py").is_file())
    assert not bare, f"add an empty __init__.py (same-named test modules would clash): {bare}"


def test_no_test_module_is_over_the_line_limit():
    long = sorted(f"{p.relative_to(REPO)} ({n} lines)" for p in TESTS.rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > MAX_LINES)
    assert not long, f"split these by topic (shared fixtures to the folder's conftest.py): {long}"
