"""End to end: the whole pipeline through `dvc repro` on a tiny copy of the project."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

from stages.data import CLASS_NAMES
from tests.helpers import ROOT, run, set_params


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_metrics_have_every_key_in_range(reproduced, name) -> None:
    (metrics,) = json.loads((reproduced / "metrics" / f"{name}.json").read_text()).values()
    assert list(json.loads((reproduced / "metrics" / f"{name}.json").read_text())) == [name]
    assert 0.3 < metrics["test_acc"] <= 1
    assert 0 < metrics["test_loss"] < 3 and 0 < metrics["test_f1"] <= 1
    assert 0 <= metrics["untrained_acc"] < 0.3
    assert metrics["params"] > 1000
    assert metrics["epochs"] == 1 and metrics["best_epoch"] == 1
    assert metrics["precision"] in ("bf16", "fp32") and metrics["device"] == "cpu"
    assert not {key for key in metrics if "second" in key or "per_s" in key}  # wall-clock figures churn


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_live_logs_hold_one_row_per_epoch(reproduced, name) -> None:
    live = reproduced / "dvclive" / name
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["step"] == 1 and set(summary[name]) == {"train", "val"}  # no lr: a schedule, not a result
    for split in ("train", "val"):
        for metric in ("loss", "acc"):
            tsv = pd.read_csv(live / "plots" / "metrics" / name / split / f"{metric}.tsv", sep="\t")
            assert list(tsv.columns) == ["step", metric] and list(tsv["step"]) == [1]
            assert tsv[metric].iloc[0] == summary[name][split][metric]
    # DVCLive neither rewrote our dvc.yaml nor wrote one of its own
    assert (reproduced / "dvc.yaml").read_text() == (ROOT / "dvc.yaml").read_text()
    assert not list(live.rglob("dvc.yaml"))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_plot_data_files(reproduced, name) -> None:
    predictions = pd.read_csv(reproduced / "plots" / name / "predictions.csv")
    assert len(predictions) == 10000
    assert set(predictions["actual"]) == set(CLASS_NAMES) and set(predictions["predicted"]) <= set(CLASS_NAMES)
    per_class = pd.read_csv(reproduced / "plots" / name / "per_class.csv")
    assert list(per_class["class"]) == list(CLASS_NAMES) and per_class["support"].sum() == 10000


def test_report_names_both_models_and_links_real_images(reproduced) -> None:
    report = (reproduced / "metrics" / "report.md").read_text()
    assert "| MLP" in report and "| CNN" in report and "CNN − MLP" in report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    for png in ("loss", "accuracy", "per_class", "mistakes_mlp", "mistakes_cnn", "confusion_mlp", "confusion_cnn"):
        assert f"../plots/{png}.png" in links, png
    for link in links:
        image = (reproduced / "metrics" / link).resolve()
        assert image.is_file() and image.stat().st_size > 1000, link


def test_second_repro_runs_nothing(reproduced) -> None:
    result = run(reproduced, "dvc", "repro")
    assert "Running stage" not in result.stdout
    assert "up to date" in result.stdout


@pytest.mark.long
def test_forced_rerun_gives_the_same_bytes(reproduced, tmp_path) -> None:
    """Same code, params and data: every output byte-identical, dvc.lock unchanged, no metrics diff."""
    copy = tmp_path / "copy"
    shutil.copytree(reproduced, copy)
    run(copy, "git", "add", "-A")
    run(copy, "git", "commit", "-qm", "first run")
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file() and _output(p, copy)}
    run(copy, "dvc", "repro", "-f")
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file() and _output(p, copy)}
    assert before.keys() == after.keys()
    assert [path for path in before if before[path] != after[path]] == []
    assert run(copy, "git", "status", "--porcelain").stdout == ""
    assert json.loads(run(copy, "dvc", "metrics", "diff", "HEAD", "--json").stdout) == {}


def _output(path, root) -> bool:
    top = path.relative_to(root).parts[0]
    return top in ("data", "models", "metrics", "plots", "dvclive", "dvc.lock")


def test_changing_one_model_touches_only_its_stages(reproduced, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(reproduced, copy)
    changed = lambda: set(json.loads(run(copy, "dvc", "status", "--json").stdout))  # noqa: E731
    set_params(copy, {"cnn.epochs": 2})
    assert "train_cnn" in changed() and not changed() & {"prepare", "train_mlp"}
    set_params(copy, {"cnn.epochs": 1, "mlp.lr": 0.01})
    assert "train_mlp" in changed() and not changed() & {"prepare", "train_cnn"}
    set_params(copy, {"mlp.lr": 0.002, "data.seed": 1})
    assert {"prepare"} <= changed()


def test_a_failed_stage_is_recorded_as_not_done_and_its_hint_brings_the_outputs_back(reproduced, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(reproduced, copy)
    lock = (copy / "dvc.lock").read_bytes()
    set_params(copy, {"cnn.tta": "yes"})  # refused by the train_cnn stage, after DVC removed its outputs
    result = run(copy, "dvc", "repro", check=False)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and ours[0].startswith("error: params.yaml: cnn.tta")
    assert ours[0].endswith("`git checkout params.yaml && dvc checkout` brings back the last committed ones")
    assert not (copy / "models" / "cnn.pt").exists() and (copy / "dvc.lock").read_bytes() == lock
    run(copy, "git", "checkout", "params.yaml")
    run(copy, "dvc", "checkout")
    assert json.loads(run(copy, "dvc", "status", "--json").stdout) == {}
