"""`make setup` installs the project into .venv in editable mode: `stages` imports from anywhere."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

from tests.helpers import ROOT, run


def test_stages_import_from_any_directory(tmp_path: Path) -> None:
    result = run(tmp_path, sys.executable, "-c", "import stages.engine; print(stages.engine.__file__)")
    assert Path(result.stdout.strip()) == ROOT / "stages" / "engine.py"


def test_an_entry_point_started_as_a_file_runs(tmp_path: Path) -> None:
    result = run(ROOT, sys.executable, "stages/predict.py", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: no pictures given")


def test_every_third_party_module_the_stages_import_is_pinned() -> None:
    """requirements.txt pins (==) the distribution of every module `stages/` imports that is not the standard
    library's, so a fresh install trains with the versions the results came from."""
    pinned = {
        re.split(r"[=\[ ]", line)[0].lower().replace("_", "-")
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for path in (ROOT / "stages").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"stages", "__future__"}
    unpinned = {
        module: distributions.get(module)
        for module in third_party
        if not {d.lower().replace("_", "-") for d in distributions.get(module, [module])} & pinned
    }
    assert not unpinned, f"pin these in requirements.txt: {unpinned}"
