"""`make setup` installs the project into .venv in editable mode: `stages` imports from anywhere."""

from __future__ import annotations

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
