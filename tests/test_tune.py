"""make tune: tune.yaml's checks, sampling the space, the train stage's pruning hook and the study's summary."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from stages.errors import UserError
from stages.params import read_yaml
from stages.trial import ENV, Pruned, make_pruner, open_storage, reporting
from stages.tune import summary
from stages.tune_config import Param, cli_value, load_config
from tests.helpers import BIN, ROOT, run

PARAMS = read_yaml(ROOT / "params.yaml")
GOOD = """study: s
objective: mlp
trials: 4
pruner: {startup_trials: 1, warmup_epochs: 0}
space:
  mlp.lr: {low: 0.001, high: 0.01, log: true}
  mlp.epochs: {low: 2, high: 6, step: 2}
  mlp.hidden: {choices: [[64], [128, 64]]}
"""


def config(tmp_path: Path, text: str):
    path = tmp_path / "tune.yaml"
    path.write_text(text)
    return load_config(path, PARAMS)


def test_the_committed_tune_yaml_is_valid() -> None:
    cfg = load_config(ROOT / "tune.yaml", PARAMS)
    assert cfg.objective == "mlp" and [p.key for p in cfg.space][:2] == ["mlp.epochs", "mlp.lr"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("mlp.lr: {low", "mlp.learning_rate: {low"), "space.mlp.learning_rate is not a params.yaml key"),
        (("low: 0.001, high: 0.01", "low: 0.01, high: 0.01"), "space.mlp.lr is an empty range"),
        (("choices: [[64], [128, 64]]", "choices: []"), "space.mlp.hidden.choices must be a non-empty list"),
        (("[[64], [128, 64]]", "[[64], [0]]"), "space.mlp.hidden reaches [0], which params.yaml: mlp.hidden must be"),
        (("low: 2, high: 6", "low: 2.5, high: 6"), "space.mlp.epochs reaches 2.5"),  # epochs are integers
        (("objective: mlp", "objective: test_acc"), "objective must be one of mlp, cnn"),
        (("study: s", "study: 'a b'"), "study must be a name"),
        (("trials: 4\n", ""), "must be a mapping with exactly the keys"),
        (("{low: 2, high: 6, step: 2}", "{low: 2, high: 6, step: 2"), "is not valid YAML at line"),
        (("step: 2}", "step: 0.5}"), "space.mlp.epochs holds whole numbers: its step must be one, got 0.5"),
    ],
)
def test_a_mistake_in_tune_yaml_is_one_line_naming_it(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    assert change[0] in GOOD
    with pytest.raises(UserError) as caught:
        config(tmp_path, GOOD.replace(*change))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_sampling_gives_values_of_each_params_type(tmp_path: Path) -> None:
    cfg = config(tmp_path, GOOD)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(20):
        trial = study.ask()
        seen.append({p.key: p.sample(trial) for p in cfg.space})
        study.tell(trial, 0.5)
    assert all(0.001 <= s["mlp.lr"] <= 0.01 and isinstance(s["mlp.lr"], float) for s in seen)
    assert {s["mlp.epochs"] for s in seen} == {2, 4, 6} and all(type(s["mlp.epochs"]) is int for s in seen)
    assert {json.dumps(s["mlp.hidden"]) for s in seen} == {"[64]", "[128, 64]"}  # lists, as params.yaml has them
    assert [cli_value(s["mlp.hidden"]) for s in seen[:1]] in (["[64]"], ["[128, 64]"])
    assert cli_value("gelu") == "gelu" and cli_value(0.5) == "0.5" and cli_value(True) == "true"


def test_a_decimal_key_with_whole_number_bounds_samples_decimals(tmp_path: Path) -> None:
    cfg = config(tmp_path, GOOD.replace("mlp.lr: {low: 0.001, high: 0.01, log: true}", "mlp.lr: {low: 1, high: 2}"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = {cfg.space[0].sample(study.ask()) for _ in range(5)}
    assert len(values) == 5 and all(type(v) is float and 1 <= v <= 2 for v in values)


def test_a_float_range_with_a_step_samples_on_the_grid() -> None:
    trial = optuna.create_study().ask()
    assert Param("mlp.dropout", 0.0, 0.5, step=0.25).sample(trial) in (0.0, 0.25, 0.5)


def _study(tmp_path: Path) -> tuple[str, optuna.Study]:
    url = str(tmp_path / "s.journal")
    settings = {"startup_trials": 1, "warmup_epochs": 1}
    study = optuna.create_study(
        study_name="s", storage=open_storage(url), pruner=make_pruner(settings), direction="maximize"
    )
    return url, study


def test_the_train_stage_reports_to_its_trial_and_stops_when_it_falls_behind(tmp_path, monkeypatch) -> None:
    url, study = _study(tmp_path)
    done = study.ask()
    for epoch, acc in ((1, 0.80), (2, 0.85), (3, 0.88)):
        done.report(acc, epoch)
    study.tell(done, 0.88)
    trial = study.ask()
    spec = {
        "storage": url,
        "study": "s",
        "trial_id": trial._trial_id,
        "model": "mlp",
        "pruner": {"startup_trials": 1, "warmup_epochs": 1},
    }
    monkeypatch.setenv(ENV, json.dumps(spec))
    logged = []
    on_epoch = reporting("mlp", logged.append)
    on_epoch({"epoch": 1, "val_acc": 0.5})  # the warm-up epoch: never pruned
    with pytest.raises(Pruned, match="train_mlp: pruned at epoch 2 "):
        on_epoch({"epoch": 2, "val_acc": 0.6})
    assert len(logged) == 2  # DVCLive still logged the epoch it stopped at
    assert optuna.load_study(study_name="s", storage=open_storage(url)).trials[1].intermediate_values == {
        1: 0.5,
        2: 0.6,
    }
    assert reporting("cnn", print) is print  # the other model's stage trains as always


def test_without_the_environment_training_is_unchanged(monkeypatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    log = print
    assert reporting("mlp", log) is log


def test_the_summary_counts_states_and_the_epochs_pruning_saved(tmp_path: Path) -> None:
    _, study = _study(tmp_path)
    for number, (state, reached) in enumerate(
        ((optuna.trial.TrialState.COMPLETE, 8), (optuna.trial.TrialState.PRUNED, 3), (optuna.trial.TrialState.FAIL, 0))
    ):
        trial = study.ask({"mlp.lr": optuna.distributions.FloatDistribution(0.001, 0.01)})
        trial.set_user_attr("experiment", f"s-{number}")
        trial.set_user_attr("epochs", 8)
        for epoch in range(1, reached + 1):
            trial.report(0.8 + epoch / 100, epoch)
        study.tell(trial, 0.9 if state == optuna.trial.TrialState.COMPLETE else None, state)
    text = summary(study, "mlp")
    assert "3 trials, 1 complete, 1 pruned, 1 failed; 11 of 16 mlp epochs trained" in text
    assert "best: s-0, mlp val acc 0.9000 with mlp.lr=" in text and text.endswith("dvc exp apply s-0")


def _tune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.tune", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--storage", "/nonexistent/folder/s.journal"],
            "error: cannot open the study storage /nonexistent/folder/s.journal",
        ),
        (["--config", "no-such.yaml"], "error: cannot read no-such.yaml"),
        (["--workers", "0"], "error: --trials and --workers must be positive integers"),
        (["--workers", "two"], "error: argument --workers: invalid int value: 'two' (see `python -m stages.tune"),
    ],
)
def test_bad_input_is_one_line_before_any_trial(args: list[str], message: str) -> None:
    result = _tune(*args)
    assert result.returncode == 1 and result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


TINY_STUDY = """study: tiny
objective: mlp
trials: 4
pruner: {startup_trials: 10, warmup_epochs: 0}  # no pruning: which trial runs where must not change the count
space:
  mlp.lr: {low: 0.001, high: 0.01, log: true}
  mlp.hidden: {choices: [[32], [64]]}
"""


def _clone_with_remotes(reproduced: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Two clones of the tiny project sharing a bare git remote and a folder DVC remote, as a team's would."""
    run(tmp_path, "git", "init", "-q", "--bare", "origin.git")
    first = tmp_path / "first"
    shutil.copytree(reproduced, first, ignore=lambda folder, _: ["tmp"] if Path(folder).name == ".dvc" else [])
    (first / "tune.yaml").write_text(TINY_STUDY)
    run(first, "git", "remote", "add", "origin", str(tmp_path / "origin.git"))
    run(first, "dvc", "remote", "add", "-d", "team", str(tmp_path / "store"))
    run(first, "git", "add", "-A")
    run(first, "git", "commit", "-qm", "Tiny project, reproduced, with a study")
    run(first, "git", "push", "-q", "origin", "HEAD:main")
    run(first, "dvc", "push")
    second = tmp_path / "second"
    run(tmp_path, "git", "clone", "-q", "-b", "main", str(tmp_path / "origin.git"), str(second))
    run(second, "dvc", "pull")
    return first, second


def _ran(project: Path) -> set[str]:
    return {log.stem for log in (project / "tuning" / "logs").glob("*.log")}


@pytest.mark.long
def test_two_clones_share_one_study_and_see_each_others_trials(reproduced: Path, tmp_path: Path) -> None:
    first, second = _clone_with_remotes(reproduced, tmp_path)
    journal = tmp_path / "shared" / "tiny.journal"
    journal.parent.mkdir()
    args = ["--storage", str(journal), "--push", "origin"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "stages.tune", *args, *extra],
            cwd=clone,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for clone, extra in ((first, ["--workers", "2"]), (second, []))
    ]
    outputs = [worker.communicate(timeout=1200)[0] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outputs)
    # No trial ran twice: each number once, in one clone or the other, and both clones took part.
    assert _ran(first) | _ran(second) == {f"tiny-{n}" for n in range(4)} and not _ran(first) & _ran(second)
    assert _ran(first) and _ran(second), outputs
    study = optuna.load_study(study_name="tiny", storage=open_storage(str(journal)))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    best = f"tiny-{study.best_trial.number}"
    assert any(f"dvc exp apply {best}" in out for out in outputs) and (first / "tuning" / "tiny.png").is_file()
    for clone in (first, second):
        run(clone, "dvc", "exp", "pull", "origin")
        table = run(clone, sys.executable, "-m", "stages.compare").stdout
        assert all(f"tiny-{n} " in table for n in range(4)), table
    # The trial's params are the experiment's: apply the best one and its params.yaml has them.
    run(second, "dvc", "exp", "apply", best)
    applied = read_yaml(second / "params.yaml")["mlp"]
    assert applied["lr"] == pytest.approx(study.best_trial.params["mlp.lr"])
    assert json.dumps(applied["hidden"]) == study.best_trial.params["mlp.hidden"]


@pytest.mark.long
def test_failed_trials_are_recorded_and_ctrl_c_leaves_the_study_to_go_on(reproduced: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(reproduced, project, ignore=lambda folder, _: ["tmp"] if Path(folder).name == ".dvc" else [])
    # One warm-up step of 1000 / 64 batches: the one-cycle schedule refuses it when training starts.
    (project / "tune.yaml").write_text(
        TINY_STUDY.replace("trials: 4", "trials: 2") + "  mlp.warmup: {choices: [0.01]}\n"
    )
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "A study whose every trial fails")
    result = run(project, sys.executable, "-m", "stages.tune")
    assert result.stdout.count("failed (error: params.yaml: mlp.warmup") == 2
    assert "2 trials, 0 complete, 0 pruned, 2 failed" in result.stdout
    # Ctrl-C during the next trial: one line, exit 130, and the study goes on from where it was.
    (project / "tune.yaml").write_text(TINY_STUDY)
    tune = subprocess.Popen(
        [sys.executable, "-m", "stages.tune", "--trials", "3"],
        cwd=project,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
    )
    log = project / "tuning" / "logs" / "tiny-2.log"
    deadline = time.monotonic() + 300
    while "Running stage 'train_mlp'" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.5)
    tune.send_signal(signal.SIGINT)
    stdout, stderr = tune.communicate(timeout=300)
    assert tune.returncode == 130 and stderr.startswith("error: interrupted by SIGINT; the study is intact in "), stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stdout + stderr
    study = optuna.load_study(study_name="tiny", storage=open_storage(str(project / "tuning" / "tiny.journal")))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 3
    assert study.trials[2].user_attrs["interrupted"]  # not counted: the next call runs a third trial
    again = run(project, sys.executable, "-m", "stages.tune", "--trials", "3")
    assert (
        "tiny-3: val acc" in again.stdout
        and "3 trials, 1 complete, 0 pruned, 2 failed; 1 of 1 mlp epochs trained" in again.stdout
    )
    assert "; 1 interrupted, not counted" in again.stdout
