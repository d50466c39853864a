"""The picture of a study: each searched param against the objective, one small scatter per param."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna

from stages.files import save_png

PER_ROW = 4


def points(study: optuna.Study, key: str) -> tuple[list[tuple[Any, float]], list[tuple[Any, float]]]:
    """(value, val acc) of the complete trials, and of the pruned ones at the best epoch they reached."""
    complete, pruned = [], []
    for t in study.get_trials(deepcopy=False):
        if key not in t.params:
            continue
        if t.state == optuna.trial.TrialState.COMPLETE:
            complete.append((t.params[key], t.value))
        elif t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values:
            pruned.append((t.params[key], max(t.intermediate_values.values())))
    return complete, pruned


def draw(study: optuna.Study, space: tuple, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = math.ceil(len(space) / PER_ROW)
    cols = min(len(space), PER_ROW)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(space) :]:
        ax.set_visible(False)
    for ax, param in zip(axes.flat, space, strict=False):
        complete, pruned = points(study, param.key)
        # Choices go on an axis of their own positions, labelled with the values (lists among them).
        position = {c: i for i, c in enumerate(param.choices)}
        for found, style in (
            (complete, dict(c="tab:blue", label="complete")),
            (pruned, dict(c="0.6", marker="x", label="pruned (best epoch reached)")),
        ):
            if found:
                ax.scatter([position.get(v, v) for v, _ in found], [y for _, y in found], s=18, **style)
        if param.choices:
            ax.set_xticks(
                range(len(param.choices)), [str(json.loads(c)) for c in param.choices], fontsize=7, rotation=20
            )
        elif param.log:
            ax.set_xscale("log")
        ax.set_title(param.key, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("val acc (kept epoch)")
    if axes[0][0].get_legend_handles_labels()[0]:  # a study without a finished trial has nothing to label
        axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"study {study.study_name}: each param against the objective", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
