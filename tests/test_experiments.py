"""DVC experiments, queued parallel sweeps and remote storage, end to end on committed tiny copies of the project."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run

pytestmark = pytest.mark.slow

EXPERIMENT = "cnn-2-epochs"
LOSS_PLOT = "Loss (train and validation) per epoch"  # its title in dvc.yaml
SWEEP_TIMEOUT_S = 900  # two full runs of the tiny pipeline take ~1.5 min on 2 busy cores
POLL_S = 5


def _without_dvc_tmp(folder: str, names: list[str]) -> list[str]:
    # .dvc/tmp holds locks and queue state tied to the repository it came from
    return ["tmp"] if Path(folder).name == ".dvc" else []


@pytest.fixture(scope="module")
def committed(reproduced: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reproduced tiny project with everything committed (code, params, dvc.lock, git-tracked outputs).

    Experiments need a commit to branch from, and queued ones only see what git or DVC tracks.
    Reusing the session's `reproduced` saves a full `dvc repro` when the pipeline tests run too.
    """
    dest = tmp_path_factory.mktemp("committed") / "project"
    shutil.copytree(reproduced, dest, ignore=_without_dvc_tmp)
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "-qm", "Tiny project, reproduced")
    assert run(dest, "git", "status", "--porcelain").stdout == ""
    return dest


@pytest.fixture
def workspace(committed: Path, tmp_path: Path) -> Path:
    """A private copy of the committed project: experiments change the workspace and the git refs."""
    dest = tmp_path / "project"
    shutil.copytree(committed, dest, ignore=_without_dvc_tmp)
    return dest


def experiments(show_json: str) -> dict[str, dict]:
    """`dvc exp show --json` by name: "HEAD" for the baseline, then each experiment derived from it."""
    rows = json.loads(show_json)
    baseline = next(row for row in rows if row["rev"] != "workspace")
    found = {"HEAD": {**baseline["data"], "state": "success"}}
    for exp in baseline.get("experiments") or []:
        # Experiments run in the workspace have no executor; only finished ones have a git ref to show.
        state = (exp.get("executor") or {}).get("state", "success")
        found[exp["name"]] = {**(exp["revs"][0].get("data") or {}), "state": state}
    return found


def show(project: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run(project, "dvc", "exp", "show", "--no-pager", "--json", check=check)


def param(exp: dict, dotted: str) -> object:
    node = exp["params"]["params.yaml"]["data"]
    for key in dotted.split("."):
        node = node[key]
    return node


def accuracy(exp: dict, model: str) -> float:
    return exp["metrics"][f"metrics/{model}.json"]["data"]["test"]["accuracy"]


def test_experiment_reruns_only_the_cnn_and_reports_the_change(workspace: Path) -> None:
    result = run(workspace, "dvc", "exp", "run", "-n", EXPERIMENT, "-S", "cnn.epochs=2")
    output = result.stdout + result.stderr
    for unchanged in ("prepare", "train_mlp"):
        assert f"Stage '{unchanged}' didn't change, skipping" in output
    for changed in ("train_cnn", "evaluate", "report"):
        assert f"Running stage '{changed}'" in output

    diff = json.loads(run(workspace, "dvc", "metrics", "diff", "HEAD", EXPERIMENT, "--json").stdout)
    assert diff["metrics/cnn.json"]["train.epochs"] == {"old": 1, "new": 2, "diff": 1}
    assert "test.accuracy" in diff["metrics/cnn.json"]
    # evaluate reran, but the MLP's training record (time, speed) can only change if train_mlp did
    assert not [key for key in diff.get("metrics/mlp.json", {}) if key.startswith("train.")]

    shown = experiments(show(workspace).stdout)
    assert param(shown["HEAD"], "cnn.epochs") == 1 and param(shown[EXPERIMENT], "cnn.epochs") == 2
    assert param(shown[EXPERIMENT], "cnn.lr") == param(shown["HEAD"], "cnn.lr")
    for rev in ("HEAD", EXPERIMENT):
        for model in ("mlp", "cnn"):
            assert 0 < accuracy(shown[rev], model) <= 1

    plots = json.loads(run(workspace, "dvc", "plots", "diff", "HEAD", EXPERIMENT, "--json").stdout)["data"]
    (loss,) = plots[LOSS_PLOT]
    assert set(loss["revisions"]) == {"HEAD", EXPERIMENT}
    rows = loss["content"]["data"]["values"]

    def epochs(rev: str, model: str) -> set[str]:
        return {row["epoch"] for row in rows if row["rev"] == rev and f"{model}/history.csv" in row["filename::field"]}

    assert epochs("HEAD", "cnn") == {"1"} and epochs(EXPERIMENT, "cnn") == {"1", "2"}
    assert epochs("HEAD", "mlp") == epochs(EXPERIMENT, "mlp") == {"1"}
    assert all(float(row["val_loss"]) > 0 for row in rows)


def wait_for(project: Path, names: list[str]) -> dict[str, dict]:
    """Poll `dvc exp show` until every named experiment has finished; fail with the queue's state after a timeout."""
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    while time.monotonic() < deadline:
        # A poll may fail while a worker writes its results into the repository: try again at the next one.
        polled = show(project, check=False)
        if polled.returncode == 0:
            shown = experiments(polled.stdout)
            # A task that just finished can be missing for one poll, between DVC's "running" and "done" lists.
            if all(shown.get(name, {}).get("state") in ("success", "failed") for name in names):
                return shown
        time.sleep(POLL_S)
    status = run(project, "dvc", "queue", "status", check=False).stdout
    raise AssertionError(f"queued experiments {names} still unfinished after {SWEEP_TIMEOUT_S} s:\n{status}")


@pytest.mark.sweep
def test_queued_sweep_runs_in_parallel_workers(workspace: Path) -> None:
    queued = run(workspace, "dvc", "exp", "run", "--queue", "-S", "cnn.lr=0.001,0.003").stdout
    names = re.findall(r"Queued experiment '([^']+)'", queued)
    assert len(names) == 2, queued
    try:
        # Workers inherit this environment. Torch's default of one thread per core, in each of two workers,
        # oversubscribes the cores: 75 against 840 training images/s on a busy 2-core machine.
        # The workers outlive `dvc queue start`: through a file, so they don't hold our output pipe open.
        start_log = workspace.parent / "queue-start.log"
        start = f"dvc queue start -j 2 > '{start_log}' 2>&1; status=$?; cat '{start_log}'; exit $status"
        started = run(workspace, "sh", "-c", start, env={"OMP_NUM_THREADS": "1"}).stdout
        assert "Started '2' new experiments task queue workers" in started
        shown = wait_for(workspace, names)
    finally:
        # No worker may outlive the test, whether it is idle, stuck or still running.
        run(workspace, "dvc", "queue", "stop", "--kill", check=False)

    for name in names:
        log = run(workspace, "dvc", "queue", "logs", name, check=False)
        assert shown[name]["state"] == "success", f"{name}:\n{log.stdout}{log.stderr}"
        # The queue's temporary copy took the prepared data and the MLP from the cache instead of rebuilding them.
        for unchanged in ("prepare", "train_mlp"):
            assert f"Stage '{unchanged}' didn't change, skipping" in log.stdout
    assert {param(shown[name], "cnn.lr") for name in names} == {0.001, 0.003}
    for name in names:
        assert param(shown[name], "cnn.epochs") == param(shown["HEAD"], "cnn.epochs")
        for model in ("mlp", "cnn"):
            assert 0 < accuracy(shown[name], model) <= 1


def test_pushed_data_lets_a_fresh_clone_pull_without_rerunning(workspace: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    run(workspace, "dvc", "remote", "add", "-d", "local", str(store))  # absolute: any clone finds it wherever it lives
    run(workspace, "git", "add", ".dvc/config")
    run(workspace, "git", "commit", "-qm", "Default DVC remote: a local folder")
    cloud_status = lambda project: json.loads(run(project, "dvc", "status", "--cloud", "--json").stdout)  # noqa: E731
    assert cloud_status(workspace), "the remote should start out missing the cached outputs"
    assert re.search(r"\d+ files? pushed", run(workspace, "dvc", "push").stdout)
    assert cloud_status(workspace) == {}

    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(workspace), str(clone))
    assert run(clone, "dvc", "remote", "default").stdout.strip() == "local"
    assert json.loads(run(clone, "dvc", "status", "--json").stdout), "a clone should lack the DVC-cached outputs"
    pulled = run(clone, "dvc", "pull").stdout
    assert re.search(r"\d+ files? fetched", pulled) and "models/cnn.pt" in pulled

    assert json.loads(run(clone, "dvc", "status", "--json").stdout) == {}
    repro = run(clone, "dvc", "repro").stdout
    assert "Running stage" not in repro and "Data and pipelines are up to date." in repro
