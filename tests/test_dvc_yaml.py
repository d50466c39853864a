"""dvc.yaml against the code: each stage declares exactly the code it runs, so DVC reruns it when that changes."""

from __future__ import annotations

import ast

import pytest

from stages.params import read_yaml
from tests.helpers import ROOT

STAGES = read_yaml(ROOT / "dvc.yaml")["stages"]


def imported_files(module: str) -> set[str]:
    """The files of the `stages` package that importing `module` runs: its own, the package's __init__ and every
    stages module it imports, directly or through another (imports inside functions included)."""
    seen: set[str] = set()
    todo = ["stages", module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = ROOT / (name.replace(".", "/") + ("/__init__.py" if name == "stages" else ".py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names if alias.name.split(".")[0] == "stages"]
            elif isinstance(node, ast.ImportFrom) and node.module == "stages":  # from stages import errors
                todo += [f"stages.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages."):
                todo.append(node.module)
    return {name.replace(".", "/") + ("/__init__.py" if name == "stages" else ".py") for name in seen}


def test_the_import_graph_is_read_through_every_import_form() -> None:
    assert imported_files("stages.report") >= {
        "stages/__init__.py",  # the package
        "stages/report.py",
        "stages/errors.py",  # `from stages.errors import ...`, and the package's own import
        "stages/data.py",
        "stages/params.py",  # through data as well as directly
    }
    assert "stages/engine.py" not in imported_files("stages.report")


@pytest.mark.parametrize("name", list(STAGES))
def test_each_stage_depends_on_exactly_the_code_it_imports(name: str) -> None:
    stage = STAGES[name]
    python, dash_m, module, *_ = stage["cmd"].split()
    assert (python, dash_m) == ("python", "-m"), stage["cmd"]
    declared = {dep for dep in stage["deps"] if dep.startswith("stages/")}
    imported = imported_files(module)
    missing, extra = sorted(imported - declared), sorted(declared - imported)
    assert not missing and not extra, f"dvc.yaml stage {name}: add {missing} to its deps, remove {extra}"
