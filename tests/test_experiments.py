"""DVC experiments, queued parallel sweeps and remote storage, end to end on committed tiny copies of the project."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, run, set_params

EXPERIMENT = "cnn-2-epochs"
LOSS_PLOT = "curves"  # its id in dvc.yaml: loss and accuracy per epoch
SWEEP_TIMEOUT_S = 900  # two full runs of the tiny pipeline take ~1.5 min on 2 busy cores
POLL_S = 5


def _without_dvc_tmp(folder: str, names: list[str]) -> list[str]:
    # .dvc/tmp holds locks and queue state tied to the repository it came from
    return ["tmp"] if Path(folder).name == ".dvc" else []


@pytest.fixture(scope="module")
def committed(reproduced: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reproduced tiny project with everything committed (code, params, dvc.lock, git-tracked outputs),
    and a team's remotes configured: `origin`, a bare git repository, and `team`, a folder as DVC remote.

    Experiments need a commit to branch from, and queued ones only see what git or DVC tracks.
    Reusing the session's `reproduced` saves a full `dvc repro` when the pipeline tests run too.
    """
    remotes = tmp_path_factory.mktemp("remotes")
    run(remotes, "git", "init", "-q", "--bare", "origin.git")
    run(remotes / "origin.git", "git", "symbolic-ref", "HEAD", "refs/heads/main")  # what a forge's default is
    dest = tmp_path_factory.mktemp("committed") / "project"
    shutil.copytree(reproduced, dest, ignore=_without_dvc_tmp)
    run(dest, "git", "remote", "add", "origin", str(remotes / "origin.git"))
    run(dest, "dvc", "remote", "add", "-d", "team", str(remotes / "store"))  # absolute: every clone finds it
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
    return exp["metrics"][f"metrics/{model}.json"]["data"][model]["test_acc"]


@pytest.fixture(scope="module")
def experimented(committed: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the committed project after `dvc exp run -n cnn-2-epochs -S cnn.epochs=2`, and its output."""
    dest = tmp_path_factory.mktemp("experimented") / "project"
    shutil.copytree(committed, dest, ignore=_without_dvc_tmp)
    result = run(dest, "dvc", "exp", "run", "-n", EXPERIMENT, "-S", "cnn.epochs=2")
    return dest, result.stdout + result.stderr


@pytest.mark.long
def test_experiment_reruns_only_the_cnn_and_reports_the_change(experimented: tuple[Path, str]) -> None:
    workspace, output = experimented
    for unchanged in ("prepare", "train_mlp"):
        assert f"Stage '{unchanged}' didn't change, skipping" in output
    for changed in ("train_cnn", "evaluate", "report"):
        assert f"Running stage '{changed}'" in output

    diff = json.loads(run(workspace, "dvc", "metrics", "diff", "HEAD", EXPERIMENT, "--json").stdout)
    assert diff["metrics/cnn.json"]["cnn.epochs"] == {"old": 1, "new": 2, "diff": 1}
    assert "cnn.test_acc" in diff["metrics/cnn.json"]
    # evaluate reran the MLP too, and gave the same bytes: nothing of the MLP moved
    assert "metrics/mlp.json" not in diff and "dvclive/mlp/metrics.json" not in diff
    # the README's way to see what an experiment changed, right after running it
    exp_diff = json.loads(run(workspace, "dvc", "exp", "diff", "HEAD", EXPERIMENT, "--json").stdout)
    assert exp_diff["params"]["params.yaml"]["cnn.epochs"] == {"old": 1, "new": 2, "diff": 1}
    assert "cnn.test_acc" in exp_diff["metrics"]["metrics/cnn.json"]

    shown = experiments(show(workspace).stdout)
    assert set(shown) == {"HEAD", EXPERIMENT}  # DVCLive saved no experiment of its own
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
        return {str(row["step"]) for row in rows if row["rev"] == rev and row["filename"].startswith(f"{model}/")}

    assert epochs("HEAD", "cnn") == {"1"} and epochs(EXPERIMENT, "cnn") == {"1", "2"}
    assert epochs("HEAD", "mlp") == epochs(EXPERIMENT, "mlp") == {"1"}
    assert all(float(row["dvc_inferred_y_value"]) > 0 for row in rows)


@pytest.mark.long
def test_compare_shows_the_experiment_next_to_its_baseline(experimented: tuple[Path, str]) -> None:
    workspace, _ = experimented
    text = run(workspace, sys.executable, "-m", "stages.compare").stdout
    lines = text.splitlines()
    assert max(map(len, lines)) <= 120
    shown = experiments(show(workspace).stdout)
    row = next(line for line in lines if line.startswith(EXPERIMENT))
    cells = row.split()
    assert cells[1:3] == [f"{accuracy(shown[EXPERIMENT], m):.4f}" for m in ("mlp", "cnn")]
    assert row.endswith("cnn.epochs=2")  # the one param that differs, and nothing else
    assert any(line.startswith("workspace") for line in lines)
    markdown = run(workspace, sys.executable, "-m", "stages.compare", "--md").stdout
    assert markdown.startswith("| experiment") and f"| {EXPERIMENT}" in markdown


@pytest.mark.long
def test_a_team_shares_experiments_models_and_the_run_cache(experimented: tuple[Path, str], tmp_path: Path) -> None:
    first = tmp_path / "first"
    shutil.copytree(experimented[0], first, ignore=_without_dvc_tmp)
    git_remote = run(first, "git", "remote", "get-url", "origin").stdout.strip()
    # The first clone: the baseline pushed to both remotes, then the experiment and the run-cache.
    run(first, "git", "push", "-q", "origin", "HEAD:main")
    cloud_status = lambda project: json.loads(run(project, "dvc", "status", "--cloud", "--json").stdout)  # noqa: E731
    assert cloud_status(first), "the DVC remote should start out missing the cached outputs"
    assert re.search(r"\d+ files? pushed", run(first, "dvc", "push", "--all-commits").stdout)  # HEAD and the workspace
    assert cloud_status(first) == {}
    run(first, "dvc", "exp", "push", "origin", EXPERIMENT)
    run(first, "dvc", "push", "--run-cache")
    run(first, "dvc", "exp", "apply", EXPERIMENT)
    their_model = (first / "models" / "cnn.pt").read_bytes()

    second = tmp_path / "second"
    run(tmp_path, "git", "clone", "-q", "-b", "main", git_remote, str(second))
    assert run(second, "dvc", "remote", "default").stdout.strip() == "team"
    run(second, "dvc", "exp", "pull", "origin", EXPERIMENT)
    assert EXPERIMENT in experiments(show(second).stdout)
    run(second, "dvc", "exp", "apply", EXPERIMENT)
    run(second, "dvc", "pull")
    assert (second / "models" / "cnn.pt").read_bytes() == their_model

    # Back to the baseline: its outputs come from the remote and nothing needs to run.
    run(second, "git", "reset", "-q", "--hard")
    run(second, "dvc", "pull")
    assert json.loads(run(second, "dvc", "status", "--json").stdout) == {}
    assert "Running stage" not in run(second, "dvc", "repro").stdout
    # The model registry's way: a version registered with GTO, then the model by name from the two remotes.
    run(first, "gto", "register", "cnn", "--version", "v1.0.0")
    run(first, "git", "push", "-q", "origin", "cnn@v1.0.0")
    run(tmp_path, "dvc", "artifacts", "get", git_remote, "cnn", "-o", str(tmp_path / "cnn.pt"))
    run(tmp_path, "dvc", "artifacts", "get", git_remote, "cnn", "--rev", "v1.0.0", "-o", str(tmp_path / "v1.pt"))
    assert (tmp_path / "cnn.pt").read_bytes() == (second / "models" / "cnn.pt").read_bytes()
    assert (tmp_path / "v1.pt").read_bytes() == (second / "models" / "cnn.pt").read_bytes()
    # The same params the first clone ran: restored from the shared run-cache, not trained again.
    run(second, "dvc", "pull", "--run-cache")
    set_params(second, {"cnn.epochs": 2})
    repro = run(second, "dvc", "repro")
    output = repro.stdout + repro.stderr
    assert "Stage 'train_cnn' is cached - skipping run, checking out outputs" in output
    assert "Running stage 'train_cnn'" not in output and "cnn epoch" not in output  # no training ran
    assert (second / "models" / "cnn.pt").read_bytes() == their_model


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


@pytest.mark.long
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


def readme_block(section: str) -> list[str]:
    """The commands of the first bash block under a README heading, comments dropped."""
    text = (ROOT / "README.md").read_text()
    body = text[text.index(f"\n## {section}\n") :]
    block = body[body.index("```bash\n") + 8 : body.index("\n```", body.index("```bash\n"))]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.long
def test_the_readme_experiment_section_runs_in_order_and_leaves_main_as_it_was(workspace: Path) -> None:
    commands = readme_block("Experiment")
    assert commands[0].startswith("dvc exp run") and "make compare" in commands
    tracked = {p: (workspace / p).read_bytes() for p in ("params.yaml", "dvc.lock", "metrics/cnn.json")}
    model = (workspace / "models" / "cnn.pt").read_bytes()
    for command in commands:
        if command.startswith("make plots"):
            continue  # needs the vendored Vega; test_plots_offline renders that page
        result = run(workspace, "bash", "-c", command.replace("make compare", f"{sys.executable} -m stages.compare"))
        if command.startswith("make compare"):
            rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
            assert {"cnn-3-epochs", "narrow-mlp"} <= rows.keys()
    assert {p: (workspace / p).read_bytes() for p in tracked} == tracked
    assert (workspace / "models" / "cnn.pt").read_bytes() == model
    assert run(workspace, "git", "status", "--porcelain").stdout == ""
    assert json.loads(run(workspace, "dvc", "status", "--json").stdout) == {}
