"""End to end: the whole pipeline through `dvc repro` on a tiny copy of the project."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.data import CLASS_NAMES
from stages.engine import HISTORY_COLUMNS
from tests.conftest import run, set_params

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_metrics_have_every_key_in_range(reproduced, name) -> None:
    metrics = json.loads((reproduced / "metrics" / f"{name}.json").read_text())
    for split in ("test", "val"):
        assert 0.3 < metrics[split]["accuracy"] <= 1
    assert 0 < metrics["test"]["loss"] < 3 and 0 < metrics["test"]["macro_f1"] <= 1
    assert 0 <= metrics["untrained"]["accuracy"] < 0.3
    assert metrics["parameters"] > 1000
    assert metrics["train"]["epochs"] == 1
    assert metrics["train"]["seconds"] > 0 and metrics["train"]["images_per_second"] > 0


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_plot_data_files(reproduced, name) -> None:
    predictions = pd.read_csv(reproduced / "plots" / name / "predictions.csv")
    assert len(predictions) == 10000
    assert set(predictions["actual"]) == set(CLASS_NAMES) and set(predictions["predicted"]) <= set(CLASS_NAMES)
    per_class = pd.read_csv(reproduced / "plots" / name / "per_class.csv")
    assert list(per_class["class"]) == list(CLASS_NAMES) and per_class["support"].sum() == 10000
    history = pd.read_csv(reproduced / "plots" / name / "history.csv")
    assert tuple(history.columns) == HISTORY_COLUMNS and len(history) == 1


def test_report_names_both_models_and_links_real_images(reproduced) -> None:
    report = (reproduced / "metrics" / "report.md").read_text()
    assert "| MLP" in report and "| CNN" in report and "CNN − MLP" in report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) >= 5
    for link in links:
        image = (reproduced / "metrics" / link).resolve()
        assert image.is_file() and image.stat().st_size > 1000, link


def test_second_repro_runs_nothing(reproduced) -> None:
    result = run(reproduced, "dvc", "repro")
    assert "Running stage" not in result.stdout
    assert "up to date" in result.stdout


def test_changing_one_model_touches_only_its_stages(reproduced, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(reproduced, copy)
    changed = lambda: set(yaml.safe_load(run(copy, "dvc", "status", "--json").stdout))  # noqa: E731
    set_params(copy, {"cnn.epochs": 2})
    assert "train_cnn" in changed() and not changed() & {"prepare", "train_mlp"}
    set_params(copy, {"cnn.epochs": 1, "mlp.lr": 0.01})
    assert "train_mlp" in changed() and not changed() & {"prepare", "train_cnn"}
    set_params(copy, {"mlp.lr": 0.002, "data.seed": 1})
    assert {"prepare"} <= changed()


def stage_in_process(reproduced: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the reproduced project to run a stage's main() in, with a fresh journal of its outputs."""
    from stages import errors

    copy = tmp_path / "copy"
    shutil.copytree(reproduced, copy, ignore=shutil.ignore_patterns("cache"))
    monkeypatch.chdir(copy)
    monkeypatch.setattr(errors, "PLANNED", [])
    monkeypatch.setattr(errors, "WRITTEN", [])
    return copy


def test_report_failing_between_its_figures_leaves_every_output_as_it_was(reproduced, tmp_path, monkeypatch) -> None:
    from stages import errors, report

    copy = stage_in_process(reproduced, tmp_path, monkeypatch)
    outputs = ["metrics/report.md", "plots/loss.png", "plots/accuracy.png", "plots/mistakes_cnn.png"]
    before = {name: (copy / name).read_bytes() for name in outputs}

    def interrupted(*args) -> None:
        raise errors.Interrupted(15)  # SIGTERM after the curves and confusion matrices were drawn

    monkeypatch.setattr(report, "plot_mistakes", interrupted)
    with pytest.raises(errors.Interrupted):
        report.main.__wrapped__()
    assert {name: (copy / name).read_bytes() for name in outputs} == before
    assert not list(copy.rglob("*.tmp"))
    assert errors.outputs_note().startswith("nothing was written (plots/loss.png, plots/accuracy.png, ")


def test_evaluate_failing_between_its_writes_leaves_every_output_as_it_was(reproduced, tmp_path, monkeypatch) -> None:
    from stages import errors, evaluate

    copy = stage_in_process(reproduced, tmp_path, monkeypatch)
    outputs = [f"metrics/{m}.json" for m in ("mlp", "cnn")]
    outputs += [f"plots/{m}/{f}.csv" for m in ("mlp", "cnn") for f in ("per_class", "predictions")]
    before = {name: (copy / name).read_bytes() for name in outputs}
    real = evaluate.evaluate_model

    def nan_for_the_cnn(name: str):
        result = real(name)
        if name == "cnn":  # the MLP's three files are written by then
            result.metrics["broken"] = float("nan")
        return result

    monkeypatch.setattr(evaluate, "evaluate_model", nan_for_the_cnn)
    with pytest.raises(errors.UserError, match=r"metrics/cnn\.json would hold NaN .*: broken is nan"):
        evaluate.main.__wrapped__()
    assert {name: (copy / name).read_bytes() for name in outputs} == before
    assert not list(copy.rglob("*.tmp"))
    assert errors.WRITTEN == [] and len(errors.PLANNED) == 5  # the cnn's metrics failed before being planned
