"""What README promises that a file can check: its test command is the line CI runs, and
every link in it (docs, results files behind the figures) names a file in the repository."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme() -> str:
    return (REPO / "README.md").read_text()


def test_the_test_command_is_the_line_ci_runs():
    (line,) = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines() if "-m pytest" in ln]
    assert line in _readme().splitlines(), (
        f"README.md must show .ci/run's test command byte for byte: {line}")


def test_every_link_names_a_file_in_the_repository():
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)", _readme())
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    missing = [t for t in local if not (REPO / t).is_file()]
    assert local and not missing, f"README.md links to files that do not exist: {missing}"
