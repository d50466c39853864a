"""What several test modules use: temporary copies of the project, tiny params, the default params, and running the
project's commands. Fixtures built on these live in conftest.py."""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks.notebook import notebook_params
from stages.checkpoint import make_checkpoint, save_checkpoint
from stages.engine import FitResult
from stages.params import MODELS, CNNParams, MLPParams, parse_section, read_yaml, set_dotted

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PROJECT_FILES = [
    "stages",
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvc/plots",
    ".gitignore",
]
TINY = {
    "data.train_limit": 1000,
    "data.val_size": 200,
    **{f"{model}.{key}": value for model in MODELS for key, value in (("epochs", 1), ("batch_size", 64))},
}


def set_params(project: Path, changes: dict[str, object]) -> None:
    """Set dotted keys (`cnn.epochs`) in a project's params.yaml."""
    path = project / "params.yaml"
    params = read_yaml(path)
    for dotted, value in changes.items():
        set_dotted(params, dotted, value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def run(
    project: Path, *args: str, check: bool = True, env: dict | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Run a command in the project with the venv first on PATH, as `make` does."""
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    full_env.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {}))
    # Tiny runs in parallel processes (DVC's queue) oversubscribe 2 cores badly with torch's default threads.
    full_env.setdefault("OMP_NUM_THREADS", "1")
    result = subprocess.run(args, cwd=project, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def stage(
    project: Path, name: str, *args: str, check: bool = True, env: dict | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    return run(project, sys.executable, "-m", f"stages.{name}", *args, check=check, env=env, timeout=timeout)


def make_project(dest: Path) -> Path:
    """Copy the project's code, params and DVC config into a fresh git repository, with tiny params."""
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / name)
    set_params(dest, TINY)
    run(dest, "git", "init", "-q")
    run(dest, "git", "config", "user.email", "test@example.com")
    run(dest, "git", "config", "user.name", "test")
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "-qm", "Tiny project")
    return dest


DEFAULTS = read_yaml(ROOT / "params.yaml")


def with_change(section: str, dotted: str, value: object) -> dict:
    """The default params of one section with one dotted key changed, as a raw mapping."""
    raw = copy.deepcopy(DEFAULTS[section])
    set_dotted(raw, dotted, value)
    return raw


def tiny_cfg(name: str, **changes) -> MLPParams | CNNParams:
    """A model's default params for one quick epoch on the CPU, with `changes` applied."""
    cfg = parse_section(name, DEFAULTS[name])
    # float32, as the oracles the tests compare with: `auto` would train in bfloat16 on CPUs with native bf16.
    return dataclasses.replace(cfg, **{"device": "cpu", "epochs": 1, "batch_size": 64, "precision": "fp32", **changes})


def notebook(name: str) -> MLPParams | CNNParams:
    """The original notebook's configuration of one model (benchmarks/notebook.yaml over params.yaml)."""
    return notebook_params(name, ROOT / "params.yaml")


def save_model(path: Path, result: FitResult, cfg: MLPParams | CNNParams) -> None:
    """A trained model's file, written as the train stage writes it."""
    save_checkpoint(path, make_checkpoint(result, cfg))
