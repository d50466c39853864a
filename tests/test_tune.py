"""make tune: tune.yaml's checks, sampling the space, the train stage's pruning hook and the study's summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from stages.errors import UserError
from stages.params import read_yaml
from stages.trial import ENV, Pruned, make_pruner, open_storage, reporting
from stages.tune import Param, cli_value, load_config, summary
from tests.helpers import ROOT

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
    ],
)
def test_bad_input_is_one_line_before_any_trial(args: list[str], message: str) -> None:
    result = _tune(*args)
    assert result.returncode == 1 and result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
