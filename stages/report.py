"""report: metrics/report.md and the PNG figures in plots/, the MLP-vs-CNN comparison a person reads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from stages.data import CLASS_NAMES, confusion, load_split
from stages.errors import UserError, entry_point
from stages.files import atomic_path, save_png, write_text
from stages.params import MODELS, NUM_CLASSES, TEST_IMAGES, read_yaml

LABELS = {"mlp": "MLP", "cnn": "CNN"}
DIFFERENCE = f"{LABELS['cnn']} − {LABELS['mlp']}"  # the row and column that compare the two models
# Accuracy, loss and F1 on the same images compare the models; epochs, the kept epoch and the untrained accuracy
# describe each run and subtract to nothing.
DIFFERENCES = ("val accuracy", "test accuracy", "test loss", "test macro-F1")
COUNTS = ("parameters", "epochs", "kept epoch")  # whole numbers in the comparison table
COLOURS = {"mlp": "#4c78a8", "cnn": "#f58518"}  # the plots page's colours (Vega's first two), so both agree
SPLITS = {"train": "--", "val": "-"}
GALLERY = 16
# DVCLive's per-epoch files (written by train): one TSV per metric, columns `step` (the epoch, from 1) and the
# metric's last name.
CURVES = (("train", "loss"), ("train", "acc"), ("val", "loss"), ("val", "acc"))


def history_path(name: str, split: str, metric: str) -> Path:
    return Path("dvclive") / name / "plots" / "metrics" / name / split / f"{metric}.tsv"


def _read_table(path: Path, sep: str = ",", columns: tuple[str, ...] = ()) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep=sep)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"cannot read {path} ({exc}); run `dvc repro` to regenerate it") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserError(f"{path} lacks the column {missing[0]}; run `dvc repro` to regenerate it")
    return table


def read_predictions(name: str, test_labels: np.ndarray) -> pd.DataFrame:
    """evaluate's predictions, one row per test image in order: the mistakes gallery shows image i for row i."""
    path = Path("plots") / name / "predictions.csv"
    table = _read_table(path, columns=("actual", "predicted", "probability"))
    fix = "run `dvc repro` to regenerate it"
    actual = table["actual"].to_numpy()
    if len(table) != len(test_labels) or not (actual == np.array(CLASS_NAMES)[test_labels]).all():
        raise UserError(f"{path} does not list the {len(test_labels)} test images in order; {fix}")
    probability = pd.to_numeric(table["probability"], errors="coerce")
    if not probability.between(0, 1).all():  # NaN, from a value that is not a number, is not between either
        raise UserError(f"{path} has a probability that is not a number from 0 to 1; {fix}")
    return table.assign(probability=probability)


def read_per_class(name: str) -> pd.Series:
    """evaluate's test accuracy per class, in class order."""
    path = Path("plots") / name / "per_class.csv"
    table = _read_table(path, columns=("class", "accuracy"))
    accuracy = pd.to_numeric(table["accuracy"], errors="coerce")
    if table["class"].tolist() != list(CLASS_NAMES) or not accuracy.between(0, 1).all():
        raise UserError(
            f"{path} does not give an accuracy from 0 to 1 for each of the {len(CLASS_NAMES)} classes in order; "
            "run `dvc repro` to regenerate it"
        )
    return pd.Series(accuracy.to_numpy(), index=pd.Index(CLASS_NAMES, name="class"), name="accuracy")


def read_history(name: str) -> pd.DataFrame:
    """One row per epoch: epoch, train_loss, train_acc, val_loss, val_acc, checked to be what train writes."""
    history = pd.DataFrame()
    for split, metric in CURVES:
        path = history_path(name, split, metric)
        table = _read_table(path, sep="\t", columns=("step", metric))
        fix = f"run `dvc repro train_{name}`"
        steps, values = (pd.to_numeric(table[c], errors="coerce") for c in ("step", metric))
        if table.empty or steps.isna().any() or values.isna().any() or not np.isfinite(values).all():
            raise UserError(f"{path} has no rows, or a step or {metric} that is not a finite number; {fix}")
        if list(steps) != list(range(1, len(steps) + 1)):
            raise UserError(f"{path} does not list the epochs 1, 2, 3, ... once each; {fix}")
        if history.shape[0] not in (0, len(steps)):
            raise UserError(f"{path} has {len(steps)} epochs, the other curves of {name} {len(history)}; {fix}")
        history[f"{split}_{metric}"] = values.to_numpy()
    history.insert(0, "epoch", range(1, len(history) + 1))
    return history


# What evaluate writes in metrics/<name>.json, and the type each value must have.
METRIC_TYPES = {
    "test_acc": float, "test_loss": float, "test_f1": float, "untrained_acc": float,
    "params": int, "epochs": int, "best_epoch": int, "precision": str, "device": str,
}  # fmt: skip


def read_metrics(name: str) -> dict:
    """metrics/<name>.json's flat keys (test_acc, untrained_acc, best_epoch, ...), each of the type evaluate writes."""
    path = Path("metrics") / f"{name}.json"
    fix = "run `dvc repro evaluate`"
    try:
        with open(path, encoding="utf-8") as f:
            metrics = json.load(f)[name]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read {path} ({type(exc).__name__}: {exc}); {fix}") from None
    for key, kind in METRIC_TYPES.items():
        value = metrics.get(key) if isinstance(metrics, dict) else None
        # JSON has one kind of number: a whole-valued float reads back as an int, never the reverse.
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if not ok or isinstance(value, bool) or (kind is float and not math.isfinite(value)):
            wanted = "finite number" if kind is float else kind.__name__
            raise UserError(f"{path}: {name}.{key} is {value!r}, not a {wanted}; {fix}")
    return metrics


# --- tables ---


def comparison(metrics: dict[str, dict], histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per model, then the CNN − MLP row, filled only for the measures where a difference means something."""
    table = pd.DataFrame(
        {
            LABELS[name]: {
                "parameters": m["params"],
                "epochs": m["epochs"],
                "kept epoch": m["best_epoch"],
                "precision": m["precision"],
                "untrained accuracy": m["untrained_acc"],
                "val accuracy": kept_val_acc(histories[name], m["best_epoch"]),
                "test accuracy": m["test_acc"],
                "test loss": m["test_loss"],
                "test macro-F1": m["test_f1"],
            }
            for name, m in metrics.items()
        }
    ).T.rename_axis("model")
    table.loc[DIFFERENCE] = np.nan
    for col in DIFFERENCES:
        table.loc[DIFFERENCE, col] = table.loc[LABELS["cnn"], col] - table.loc[LABELS["mlp"], col]
    return table


def kept_val_acc(history: pd.DataFrame, epoch: int) -> float:
    if not 1 <= epoch <= len(history):
        raise UserError(f"the kept epoch is {epoch}, but the curves have {len(history)} epochs; run `dvc repro`")
    return float(history.loc[history["epoch"] == epoch, "val_acc"].iloc[0])


def _format(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy().astype(object)
    for col in table.columns:
        whole = col in COUNTS
        for label, v in table[col].items():
            diff = label == DIFFERENCE
            if isinstance(v, str):
                out.loc[label, col] = v
            elif pd.isna(v):
                out.loc[label, col] = ""
            elif whole:
                out.loc[label, col] = f"{v:,.0f}"
            else:
                out.loc[label, col] = f"{v:+.4f}" if diff else f"{v:.4f}"
    return out


def confusion_matrix(predictions: pd.DataFrame) -> pd.DataFrame:
    """evaluate's predictions (class names) as counts, actual classes as rows, predicted as columns."""
    label_of = {name: label for label, name in enumerate(CLASS_NAMES)}
    labels = {}
    for column in ("actual", "predicted"):
        labels[column] = predictions[column].map(label_of)  # NaN: not a class name
        if labels[column].isna().any():
            raise UserError(f"{column} names an unknown class in evaluate's predictions; run `dvc repro evaluate`")
    counts = confusion(labels["actual"].to_numpy(np.int64), labels["predicted"].to_numpy(np.int64))
    return pd.DataFrame(counts, index=CLASS_NAMES, columns=CLASS_NAMES)


def confusion_counts(predictions: pd.DataFrame) -> pd.DataFrame:
    """Every (actual, predicted) pair in class order with its count, zeros included: 100 rows for the plots page
    instead of 10,000 predictions."""
    counts = confusion_matrix(predictions).rename_axis(index="actual", columns="predicted")
    return counts.stack().rename("count").reset_index()


# --- figures ---


def curves_figure(histories: dict[str, pd.DataFrame], kept: dict[str, int], metric: str) -> Figure:
    """Train and validation curves of both models, colour per model and dash per split; a diamond and a dotted line
    mark the epoch each model kept."""
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for name, history in histories.items():
        for split, style in SPLITS.items():
            label = f"{LABELS[name]} {'validation' if split == 'val' else split}"
            ax.plot(history["epoch"], history[f"{split}_{metric}"], style, color=COLOURS[name], label=label)
        best = history.loc[history["epoch"] == kept[name], f"val_{metric}"]
        ax.axvline(kept[name], color=COLOURS[name], linestyle=":", linewidth=1)
        ax.plot([kept[name]] * len(best), best, "D", color=COLOURS[name], markeredgecolor="black", markersize=7)
    ax.plot([], [], "D", color="grey", markeredgecolor="black", label="kept epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy" if metric == "acc" else "cross-entropy loss")
    ax.set_title(
        f"{'Accuracy' if metric == 'acc' else 'Loss'} per epoch "
        f"(train: augmented batches{', label-smoothed' if metric == 'loss' else ''})"
    )
    ax.margins(y=0.08)  # room above the highest curve, so no line or marker touches the frame
    ax.grid(alpha=0.3)
    ax.legend(ncols=2, fontsize=8)
    return fig


def confusion_figure(predictions: pd.DataFrame, name: str) -> Figure:
    counts = confusion_matrix(predictions).to_numpy()
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(CLASS_NAMES)):
        for j in range(len(CLASS_NAMES)):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"{LABELS[name]} confusion matrix, official test set (counts; colour: share of the row)")
    return fig


def per_class_figure(per_class: dict[str, pd.Series]) -> Figure:
    """Test accuracy per class, both models side by side, classes in label order from the top."""
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.add_subplot()
    rows = np.arange(len(CLASS_NAMES))
    height = 0.38
    for k, name in enumerate(MODELS):
        values = per_class[name].reindex(CLASS_NAMES).to_numpy()
        bars = ax.barh(rows + (k - 0.5) * height, values, height, color=COLOURS[name], label=LABELS[name])
        ax.bar_label(bars, [f"{v:.3f}" for v in values], padding=2, fontsize=7)
    ax.set_yticks(rows, CLASS_NAMES)
    ax.invert_yaxis()
    low = float(min(s.min() for s in per_class.values()))
    ax.set_xlim(max(0.0, np.floor(low * 10) / 10 - 0.1), 1.04)
    ax.set_xlabel(f"test accuracy (share of the class's {TEST_IMAGES // NUM_CLASSES:,} test images recognised)")
    ax.set_title("Test accuracy per class (the axis starts above 0)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=len(MODELS))
    return fig


def mistakes_figure(predictions: pd.DataFrame, images: np.ndarray, name: str) -> Figure:
    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    worst = wrong.sort_values("probability", ascending=False, kind="stable").head(GALLERY)
    columns = GALLERY // 2
    fig = Figure(figsize=(columns * 1.3, 2 * 1.62 + 0.35), layout="constrained")
    axes = fig.subplots(2, columns)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (i, row) in zip(axes.flat, worst.iterrows(), strict=False):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"true {row.actual}\npred {row.predicted}\n{row.probability:.0%}", fontsize=7)
    fig.suptitle(f"{LABELS[name]}: most confident mistakes on the test set")
    return fig


# --- the report ---


def baseline(metrics: dict[str, dict], test_labels: np.ndarray) -> str:
    counts = np.bincount(test_labels, minlength=len(CLASS_NAMES))
    chance = counts.max() / counts.sum()
    per_class = f"{counts.min():,}" if counts.min() == counts.max() else f"{counts.min():,} to {counts.max():,}"
    untrained = ", ".join(f"{LABELS[n]} {m['untrained_acc']:.4f}" for n, m in metrics.items())
    return (
        f"Baselines: guessing, or always answering the commonest class, gets {chance:.4f} on this test set "
        f"({len(CLASS_NAMES)} classes, {per_class} images each). `untrained accuracy` is something else: the same "
        f"network with the weights training started from ({untrained}). That is no chance level: an untrained "
        "network's answers follow arbitrary features of the images, so it can land well below chance or above it."
    )


def markdown(
    table: pd.DataFrame, classes: pd.DataFrame, metrics: dict[str, dict], test_labels: np.ndarray, params: dict
) -> str:
    fmt = _format(table)
    kept = "; ".join(
        f"{LABELS[n]}: epoch {m['best_epoch']} of {m['epochs']} "
        f"(validation accuracy {table.loc[LABELS[n], 'val accuracy']:.4f})"
        for n, m in metrics.items()
    )
    figures = "\n\n".join(
        f"![{alt}](../plots/{png})"
        for alt, png in (
            ("Loss curves", "loss.png"),
            ("Accuracy curves", "accuracy.png"),
            ("Per-class test accuracy", "per_class.png"),
            ("MLP confusion matrix", "confusion_mlp.png"),
            ("CNN confusion matrix", "confusion_cnn.png"),
            ("MLP's most confident mistakes", "mistakes_mlp.png"),
            ("CNN's most confident mistakes", "mistakes_cnn.png"),
            ("Training samples", "samples.png"),
        )
    )
    return f"""# Fashion-MNIST: MLP vs CNN

Generated by the `report` stage from `metrics/*.json`, `dvclive/*/plots/` and `plots/*/*.csv`; do not edit by hand.
Test: the official {TEST_IMAGES:,} test images, never used for training or for choosing the kept epoch.

## Comparison

{fmt.to_markdown(colalign=("left",) + ("right",) * len(fmt.columns), disable_numparse=True)}

Each model keeps the weights of its epoch with the best validation accuracy (the diamonds on the curves): {kept}.
The `{DIFFERENCE}` row is filled only where both models were measured on the same images.

{baseline(metrics, test_labels)}

## Per-class test accuracy

{classes.to_markdown(index=False, floatfmt=("", ".4f", ".4f", "+.4f"))}

## Figures

{figures}

## Params that produced these results

```yaml
{yaml.safe_dump(params, sort_keys=False, default_flow_style=None).rstrip()}
```
"""


@entry_point
def main() -> None:
    raw = read_yaml()
    params = {section: raw.get(section) for section in ("data", *MODELS)}
    metrics = {name: read_metrics(name) for name in MODELS}
    histories = {name: read_history(name) for name in MODELS}
    test = load_split("test")
    predictions = {name: read_predictions(name, test.labels) for name in MODELS}
    per_class = {name: read_per_class(name) for name in MODELS}
    classes = pd.DataFrame({f"{LABELS[n]} accuracy": per_class[n] for n in MODELS}).reset_index()
    classes[DIFFERENCE] = per_class["cnn"].to_numpy() - per_class["mlp"].to_numpy()
    kept = {name: int(m["best_epoch"]) for name, m in metrics.items()}

    for metric, png in (("loss", "loss"), ("acc", "accuracy")):
        save_png(curves_figure(histories, kept, metric), f"plots/{png}.png")
    save_png(per_class_figure(per_class), "plots/per_class.png")
    for name in MODELS:
        save_png(confusion_figure(predictions[name], name), f"plots/confusion_{name}.png")
        save_png(mistakes_figure(predictions[name], test.images, name), f"plots/mistakes_{name}.png")
        with atomic_path(f"plots/{name}/confusion.csv") as tmp:
            confusion_counts(predictions[name]).to_csv(tmp, index=False)
    table = comparison(metrics, histories)
    write_text("metrics/report.md", markdown(table, classes, metrics, test.labels, params))
    print("report: metrics/report.md, plots/*.png and plots/*/confusion.csv written")


if __name__ == "__main__":
    main()
