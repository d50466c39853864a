"""The report's tables and figures, from made-up inputs (issue 15, point 2): no pipeline run needed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages import report
from stages.data import CLASS_NAMES
from stages.errors import UserError
from stages.files import save_png

METRICS = {
    "mlp": {"test_acc": 0.9018, "test_loss": 0.3473, "test_f1": 0.9014, "untrained_acc": 0.1018, "params": 535818,
            "epochs": 25, "best_epoch": 24, "precision": "float32", "device": "cpu"},
    "cnn": {"test_acc": 0.9394, "test_loss": 0.2540, "test_f1": 0.9393, "untrained_acc": 0.0125, "params": 241770,
            "epochs": 20, "best_epoch": 18, "precision": "bfloat16", "device": "cpu"},
}  # fmt: skip


def history(epochs: int, best: int) -> pd.DataFrame:
    val_acc = np.linspace(0.8, 0.9, epochs)
    val_acc[best - 1 :] = 0.9 + epochs / 1000  # a tie after the best epoch: the first one is kept
    return pd.DataFrame({
        "epoch": np.arange(1, epochs + 1), "train_loss": np.linspace(1, 0.3, epochs), "train_acc": val_acc - 0.02,
        "val_loss": np.linspace(0.8, 0.35, epochs), "val_acc": val_acc,
    })  # fmt: skip


HISTORIES = {"mlp": history(25, 24), "cnn": history(20, 18)}


def test_difference_row_only_where_a_difference_means_something() -> None:
    table = report.comparison(METRICS, HISTORIES)
    diff = table.loc["CNN − MLP"]
    assert diff["test accuracy"] == pytest.approx(0.0376) and diff["test loss"] == pytest.approx(-0.0933)
    assert diff["val accuracy"] == pytest.approx(0.920 - 0.925)  # at each model's kept epoch
    for meaningless in ("epochs", "kept epoch", "untrained accuracy", "parameters", "precision"):
        assert pd.isna(diff[meaningless]), meaningless
    formatted = report._format(table)
    assert formatted.loc["CNN − MLP", "epochs"] == "" and formatted.loc["CNN", "precision"] == "bfloat16"


def test_report_says_which_epoch_each_model_kept_and_what_untrained_means() -> None:
    classes = pd.DataFrame({"class": CLASS_NAMES, "MLP accuracy": 0.9, "CNN accuracy": 0.93, "CNN − MLP": 0.03})
    labels = np.repeat(np.arange(10), 1000)
    text = report.markdown(report.comparison(METRICS, HISTORIES), classes, METRICS, labels, {"data": {}})
    assert "MLP: epoch 24 of 25 (validation accuracy 0.9250)" in text and "CNN: epoch 18 of 20" in text
    assert "guessing, or always answering the commonest class, gets 0.1000" in text
    assert "the same network with the weights training started from (MLP 0.1018, CNN 0.0125)" in text
    assert "random guessing" not in text
    for png in ("per_class.png", "mistakes_mlp.png", "mistakes_cnn.png", "loss.png", "accuracy.png"):
        assert f"(../plots/{png})" in text


@pytest.mark.parametrize("metric", ["loss", "acc"])
def test_curves_mark_the_kept_epoch_of_each_model(metric) -> None:
    histories = HISTORIES
    fig = report.curves_figure(histories, {"mlp": 24, "cnn": 18}, metric)
    ax = fig.axes[0]
    diamonds = [line for line in ax.get_lines() if line.get_marker() == "D" and len(line.get_xdata())]
    marked = {(line.get_color(), float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in diamonds}
    assert marked == {
        (report.COLOURS["mlp"], 24.0, float(histories["mlp"][f"val_{metric}"].iloc[23])),
        (report.COLOURS["cnn"], 18.0, float(histories["cnn"][f"val_{metric}"].iloc[17])),
    }
    # One colour per model, the split told by the dash: four curves, two colours, two styles.
    curves = [line for line in ax.get_lines() if line.get_marker() in ("None", "") and len(line.get_xdata()) > 2]
    assert {(line.get_color(), line.get_linestyle()) for line in curves} == {
        (report.COLOURS[m], style) for m in ("mlp", "cnn") for style in ("--", "-")
    }
    low, high = ax.get_ylim()
    tallest = max(float(h[[f"train_{metric}", f"val_{metric}"]].max().max()) for h in histories.values())
    assert high > tallest  # nothing clipped at the top


def test_confusion_counts_are_every_pair_in_class_order() -> None:
    rng = np.random.default_rng(0)
    predictions = pd.DataFrame({
        "actual": rng.choice(CLASS_NAMES, 500), "predicted": rng.choice(CLASS_NAMES[:5], 500)
    })  # fmt: skip
    counts = report.confusion_counts(predictions)
    assert list(counts.columns) == ["actual", "predicted", "count"] and len(counts) == 100
    assert list(counts["actual"].iloc[::10]) == list(CLASS_NAMES)
    assert list(counts["predicted"].iloc[:10]) == list(CLASS_NAMES)
    assert counts["count"].sum() == 500 and (counts.loc[counts["predicted"] == "Bag", "count"] == 0).all()
    assert counts.loc[(counts["actual"] == "Bag") & (counts["predicted"] == "Coat"), "count"].item() == (
        ((predictions["actual"] == "Bag") & (predictions["predicted"] == "Coat")).sum()
    )
    unknown = predictions.assign(predicted=predictions["predicted"].replace("Coat", "Hat"))
    with pytest.raises(UserError, match="^predicted names an unknown class in evaluate's predictions"):
        report.confusion_counts(unknown)


def test_figures_are_byte_identical_and_carry_no_version(tmp_path) -> None:
    per_class = {m: pd.Series(np.linspace(0.7, 0.99, 10), index=CLASS_NAMES) for m in ("mlp", "cnn")}
    for name in ("a", "b"):
        save_png(report.per_class_figure(per_class), tmp_path / f"{name}.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert "Software" not in Image.open(tmp_path / "a.png").info


def test_mistakes_gallery_has_no_blank_strip(tmp_path) -> None:
    rng = np.random.default_rng(0)
    predictions = pd.DataFrame({
        "actual": rng.choice(CLASS_NAMES, 200), "predicted": rng.choice(CLASS_NAMES, 200),
        "probability": rng.uniform(0.3, 1, 200),
    })  # fmt: skip
    images = rng.integers(1, 256, (200, 28, 28)).astype(np.uint8)
    path = tmp_path / "mistakes.png"
    save_png(report.mistakes_figure(predictions, images, "mlp"), path)
    pixels = np.asarray(Image.open(path).convert("L"))
    blank_rows = np.flatnonzero((pixels > 250).all(1))
    # The bottom row of pictures ends within a few pixels of the figure's edge.
    assert pixels.shape[0] - 1 - max(set(range(pixels.shape[0])) - set(blank_rows)) < 12


def test_history_comes_from_dvclive_files(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for split in ("train", "val"):
        for metric, values in (("loss", [0.9, 0.5]), ("acc", [0.7, 0.8])):
            path = report.history_path("cnn", split, metric)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("step\t" + metric + "\n" + "".join(f"{i + 1}\t{v}\n" for i, v in enumerate(values)))
    h = report.read_history("cnn")
    assert list(h.columns) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
    assert list(h["epoch"]) == [1, 2] and list(h["val_acc"]) == [0.7, 0.8]
    Path("metrics").mkdir()
    Path("metrics/cnn.json").write_text(json.dumps({"cnn": METRICS["cnn"]}))
    assert report.read_metrics("cnn")["best_epoch"] == 18
    report.history_path("mlp", "train", "loss").parent.mkdir(parents=True)
    with pytest.raises(UserError, match=r"^cannot read dvclive/mlp/plots/metrics/mlp/train/loss.tsv .*`dvc repro`"):
        report.read_history("mlp")


def write_curves(name: str, rows: dict[tuple[str, str], str]) -> None:
    """DVCLive's four TSVs of `name`, with `rows` replacing the text of some of them."""
    for split in ("train", "val"):
        for metric in ("loss", "acc"):
            path = report.history_path(name, split, metric)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rows.get((split, metric), f"step\t{metric}\n1\t0.5\n2\t0.6\n"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("step\tacc\n", "has no rows"),  # what once printed "validation accuracy nan" and exited 0
        ("step\tacc\n1\t0.5\n2\tabc\n", "not a finite number"),
        ("step\tacc\n1\t0.5\n2\tinf\n", "not a finite number"),
        ("step\tacc\n1\t0.5\n1\t0.6\n", "does not list the epochs 1, 2, 3, ... once each"),
        ("step\tacc\n1\t0.5\n", "has 1 epochs, the other curves of cnn 2"),
        ("epoch\tacc\n1\t0.5\n2\t0.6\n", "lacks the column step"),
    ],
)
def test_damaged_curves_name_the_file_and_the_stage_to_rerun(tmp_path, monkeypatch, text, problem) -> None:
    monkeypatch.chdir(tmp_path)
    write_curves("cnn", {("val", "acc"): text})
    with pytest.raises(UserError, match=r"dvclive/cnn/plots/metrics/cnn/val/acc\.tsv ") as err:
        report.read_history("cnn")
    assert problem in str(err.value) and ("train_cnn" in str(err.value) or "`dvc repro`" in str(err.value))


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        ({"test_acc": "0.9"}, "cnn.test_acc is '0.9', not a finite number"),
        ({"best_epoch": None}, "cnn.best_epoch is None, not a int"),
        ({"best_epoch": 18.5}, "cnn.best_epoch is 18.5, not a int"),
        ({"precision": 16}, "cnn.precision is 16, not a str"),
        ({"test_loss": True}, "cnn.test_loss is True, not a finite number"),
    ],
)
def test_damaged_metrics_name_the_key_and_the_stage_to_rerun(tmp_path, monkeypatch, change, shown) -> None:
    monkeypatch.chdir(tmp_path)
    Path("metrics").mkdir()
    Path("metrics/cnn.json").write_text(json.dumps({"cnn": {**METRICS["cnn"], **change}}))
    with pytest.raises(UserError, match=rf"^metrics/cnn\.json: {re.escape(shown)}; run `dvc repro evaluate`$"):
        report.read_metrics("cnn")
    Path("metrics/cnn.json").write_text(json.dumps({"cnn": {k: v for k, v in METRICS["cnn"].items() if k != "params"}}))
    with pytest.raises(UserError, match=r"cnn\.params is None"):
        report.read_metrics("cnn")


def test_a_kept_epoch_beyond_the_curves_is_an_error_not_an_index_error() -> None:
    with pytest.raises(UserError, match=r"the kept epoch is 30, but the curves have 25 epochs"):
        report.kept_val_acc(HISTORIES["mlp"], 30)


LABELS = np.array([0, 9, 6, 6])  # four test images: T-shirt/top, Ankle boot, Shirt, Shirt
PREDICTIONS = "actual,predicted,probability\nT-shirt/top,T-shirt/top,0.9\nAnkle boot,Sandal,0.6\nShirt,Shirt,0.7\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (PREDICTIONS, "does not list the 4 test images in order"),  # truncated: a wrong confusion matrix, exit 0
        (PREDICTIONS + "Shirt,Shirt,0.5\nShirt,Shirt,0.5\n", "does not list the 4 test images in order"),
        (PREDICTIONS.replace("T-shirt/top,T", "Shirt,T") + "T-shirt/top,Shirt,0.5\n", "in order"),  # reordered
        (PREDICTIONS + "Shirt,Shirt,high\n", "a probability that is not a number from 0 to 1"),
        (PREDICTIONS + "Shirt,Shirt,1.5\n", "a probability that is not a number from 0 to 1"),
    ],
)
def test_damaged_predictions_name_the_file_and_the_stage_to_rerun(tmp_path, monkeypatch, text, problem) -> None:
    monkeypatch.chdir(tmp_path)
    Path("plots/cnn").mkdir(parents=True)
    Path("plots/cnn/predictions.csv").write_text(text)
    with pytest.raises(UserError, match=r"^plots/cnn/predictions\.csv .*; run `dvc repro` to regenerate it$") as err:
        report.read_predictions("cnn", LABELS)
    assert problem in str(err.value)
    Path("plots/cnn/predictions.csv").write_text(PREDICTIONS + "Shirt,Dress,0.5\n")
    assert report.read_predictions("cnn", LABELS)["probability"].tolist() == [0.9, 0.6, 0.7, 0.5]


@pytest.mark.parametrize(
    "change",
    [
        lambda rows: rows[:-1],  # nine classes: once a broadcasting traceback
        lambda rows: rows[1:] + rows[:1],  # another order: each accuracy under the wrong class
        lambda rows: [rows[0].replace("0.5", "abc")] + rows[1:],
        lambda rows: [rows[0].replace("0.5", "2")] + rows[1:],
    ],
)
def test_damaged_per_class_accuracy_names_the_file_and_the_stage_to_rerun(tmp_path, monkeypatch, change) -> None:
    monkeypatch.chdir(tmp_path)
    Path("plots/cnn").mkdir(parents=True)
    rows = [f"{name},{0.5 + i / 100}" for i, name in enumerate(CLASS_NAMES)]
    Path("plots/cnn/per_class.csv").write_text("class,accuracy\n" + "\n".join(change(rows)) + "\n")
    with pytest.raises(UserError, match=r"^plots/cnn/per_class\.csv does not give an accuracy from 0 to 1 for each"):
        report.read_per_class("cnn")
    Path("plots/cnn/per_class.csv").write_text("class,accuracy\n" + "\n".join(rows) + "\n")
    assert report.read_per_class("cnn").loc["Shirt"] == 0.56
