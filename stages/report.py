"""report: metrics/report.md and the PNG figures in plots/, the MLP-vs-CNN comparison a person reads."""

from __future__ import annotations

if not __package__:  # started as a file path, where `import stages` would end in a traceback
    raise SystemExit("error: run the stages from the repository root as `python -m stages.report`")

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml

from stages.data import CLASS_NAMES, load_split
from stages.errors import UserError, entry_point
from stages.files import all_or_nothing
from stages.params import MODELS, read_yaml

LABELS = {"mlp": "MLP", "cnn": "CNN"}
WORDS = {"loss": "loss", "acc": "accuracy"}
GALLERY = 16


def _read_csv(path: str, sep: str = ",") -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=sep)
    except (OSError, pd.errors.ParserError) as exc:
        raise UserError(f"cannot read {path} ({exc}); run `dvc repro` to regenerate it") from None


def _read_metrics(name: str) -> dict:
    path = f"metrics/{name}.json"
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path} ({exc}); run `dvc repro evaluate`") from None


def _save(fig: plt.Figure, path: Path) -> None:
    try:
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)


def comparison(metrics: dict[str, dict], histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = {
        LABELS[name]: {
            "parameters": m[name]["params"],
            "epochs": m[name]["epochs"],
            "kept epoch": m[name]["best_epoch"],
            "precision": m[name]["precision"],
            "val accuracy": histories[name].loc[m[name]["best_epoch"] - 1, "val_acc"],
            "test accuracy": m[name]["test_acc"],
            "test loss": m[name]["test_loss"],
            "macro-F1": m[name]["test_f1"],
            "untrained accuracy": m[name]["untrained_acc"],
        }
        for name, m in metrics.items()
    }
    table = pd.DataFrame(rows).T.rename_axis("model")
    return table


def read_history(name: str) -> pd.DataFrame:
    """The per-epoch curves train logged with DVCLive, one TSV per metric, as one table by epoch."""
    columns = {}
    for split in ("train", "val"):
        for metric in ("loss", "acc"):
            tsv = _read_csv(f"dvclive/{name}/plots/metrics/{name}/{split}/{metric}.tsv", sep="\t")
            columns[f"{split}_{metric}"] = tsv.set_index("step")[metric]
    return pd.DataFrame(columns).rename_axis("epoch").reset_index()


def plot_curves(histories: dict[str, pd.DataFrame], metric: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, history in histories.items():
        for split, style in (("train", "--"), ("val", "-")):
            ax.plot(history["epoch"], history[f"{split}_{metric}"], style, marker=".", label=f"{LABELS[name]} {split}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(WORDS[metric])
    ax.set_title(f"{WORDS[metric].capitalize()} per epoch (train: augmented batches, label-smoothed loss)")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_confusion(predictions: pd.DataFrame, name: str, path: Path) -> None:
    counts = pd.crosstab(
        pd.Categorical(predictions["actual"], CLASS_NAMES),
        pd.Categorical(predictions["predicted"], CLASS_NAMES),
        dropna=False,
    ).to_numpy()
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(CLASS_NAMES)):
        for j in range(len(CLASS_NAMES)):
            ax.text(
                j,
                i,
                counts[i, j],
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"{LABELS[name]} confusion matrix, official test set (counts; colour: share of the row)")
    _save(fig, path)


def plot_mistakes(predictions: pd.DataFrame, images: np.ndarray, name: str, path: Path) -> None:
    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    worst = wrong.sort_values("probability", ascending=False, kind="stable").head(GALLERY)
    fig, axes = plt.subplots(2, GALLERY // 2, figsize=(GALLERY // 2 * 1.6, 2 * 2.6))
    for ax in axes.flat:
        ax.axis("off")
    for ax, (i, row) in zip(axes.flat, worst.iterrows(), strict=False):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"true {row.actual}\npred {row.predicted}\n{row.probability:.0%}", fontsize=7)
    fig.suptitle(f"{LABELS[name]}: most confident mistakes on the test set")
    _save(fig, path)


def markdown(table: pd.DataFrame, classes: pd.DataFrame, params: dict) -> str:
    fmt = table.copy().astype(object)
    for col in ("parameters", "epochs", "kept epoch"):
        fmt[col] = [f"{v:,.0f}" for v in table[col]]
    for col in ("val accuracy", "test accuracy", "test loss", "macro-F1", "untrained accuracy"):
        fmt[col] = [f"{v:.4f}" for v in table[col]]
    figures = "\n\n".join(
        f"![{alt}](../plots/{png})"
        for alt, png in (
            ("Loss curves", "loss.png"),
            ("Accuracy curves", "accuracy.png"),
            ("MLP confusion matrix", "confusion_mlp.png"),
            ("CNN confusion matrix", "confusion_cnn.png"),
            ("CNN's most confident mistakes", "mistakes_cnn.png"),
            ("Training samples", "samples.png"),
        )
    )
    return f"""# Fashion-MNIST: MLP vs CNN

Generated by the `report` stage from `metrics/*.json` and `plots/*/*.csv`; do not edit by hand.
Test: the official 10,000 test images, never used for training or model selection.

## Comparison

{fmt.to_markdown(colalign=("left",) + ("right",) * len(fmt.columns), disable_numparse=True)}

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
    metrics = {name: _read_metrics(name) for name in MODELS}
    histories = {name: read_history(name) for name in MODELS}
    predictions = {name: _read_csv(f"plots/{name}/predictions.csv") for name in MODELS}
    per_class = {name: _read_csv(f"plots/{name}/per_class.csv").set_index("class")["accuracy"] for name in MODELS}
    classes = pd.DataFrame({f"{LABELS[n]} accuracy": per_class[n] for n in MODELS}).reset_index()
    classes["CNN − MLP"] = per_class["cnn"].to_numpy() - per_class["mlp"].to_numpy()

    test_images = load_split("test").images
    # The report and its figures appear together or not at all.
    with all_or_nothing() as outputs:
        plot_curves(histories, "loss", outputs.path("plots/loss.png"))
        plot_curves(histories, "acc", outputs.path("plots/accuracy.png"))
        for name in MODELS:
            plot_confusion(predictions[name], name, outputs.path(f"plots/confusion_{name}.png"))
        plot_mistakes(predictions["cnn"], test_images, "cnn", outputs.path("plots/mistakes_cnn.png"))
        outputs.write_text("metrics/report.md", markdown(comparison(metrics, histories), classes, params))
    print("report: metrics/report.md and plots/*.png written")


if __name__ == "__main__":
    main()
