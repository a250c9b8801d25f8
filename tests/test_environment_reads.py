"""The environment is read in one place: ``chain/config.py`` (``ChainConfig``, which the
flow's ``operators.config.Config`` extends).  Every other module of every package, the
benchmarks included, is handed its configuration; this test walks the source tree for a
read of ``os.environ`` / ``os.getenv`` / ``environ.get`` / ``getenv`` anywhere else."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"chain/config.py"}
#: other modules that may read the environment, each with its reason
ALLOWED = {
    # the benchmarks' harness: the environment of a child flow (this one's without
    # VERISEG_*), the CARLA frames and the soak's stop file; the product never imports bench
    "bench/_environment.py",
}
READS = {"environ", "getenv", "environb", "getenvb", "putenv", "unsetenv"}


def _packages() -> list[Path]:
    return sorted(p.parent for p in REPO.glob("*/__init__.py") if p.parent.name != "tests")


def environment_reads(path: Path) -> list[int]:
    """Lines of ``path`` that name ``os.environ``, ``os.getenv`` and the like, or import them."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in READS:
            lines.append(node.lineno)
        elif isinstance(node, ast.Name) and node.id in READS:
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and any(a.name in READS for a in node.names):
            lines.append(node.lineno)
    return sorted(set(lines))


def test_the_walk_covers_every_package():
    names = {p.name for p in _packages()}
    assert {"model_store", "chain", "operators", "dataflows", "trainer", "web", "bench"} <= names


def test_only_the_settings_module_reads_the_environment():
    found = []
    for pkg in _packages():
        for path in sorted(pkg.rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in SETTINGS or rel in ALLOWED:
                continue
            found += [f"{rel}:{n}" for n in environment_reads(path)]
    assert not found, ("the environment is read outside chain/config.py (declare the "
                       "variable on ChainConfig or operators.config.Config and hand the "
                       "configuration in): " + ", ".join(found))


def test_the_walk_sees_each_form_of_read(tmp_path):
    forms = ["import os\nos.environ['X']", "import os\nos.getenv('X')",
             "from os import environ\nenviron.get('X')", "from os import getenv\ngetenv('X')",
             "import os\nos.environ.get('X', '')", "import os\ndict(os.environ)"]
    for i, src in enumerate(forms):
        p = tmp_path / f"m{i}.py"
        p.write_text(src)
        assert environment_reads(p), src
    clean = tmp_path / "clean.py"
    clean.write_text("env = {'environment': 1}\nprint(env['environment'])\n")
    assert environment_reads(clean) == []
