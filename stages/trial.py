"""The train stage's side of `make tune`: report each epoch's validation accuracy to the study's trial, and stop
the run when the study's pruner says the trial falls behind.

`make tune` runs each trial as `dvc exp run`, whose stages are subprocesses; it names the trial through the
environment variables below. Without them (`dvc repro`, a plain `dvc exp run`) training is unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from stages.errors import UserError

ENV = "TUNE_TRIAL"  # JSON: storage, study, trial_id, model, pruner
PRUNED = "pruned at epoch"  # how `make tune` tells a pruned run from a failed one in its output


class Pruned(UserError):
    """The trial fell behind: the stage ends like any failed one (one line, its outputs as before)."""


def make_pruner(settings: dict[str, int]) -> Any:
    """The study's pruner, built the same way by `make tune` and by the train stage it starts."""
    import optuna

    # Epochs count from 1 and Optuna's warm-up from step 0: the first `warmup_epochs` epochs are never pruned.
    return optuna.pruners.MedianPruner(
        n_startup_trials=settings["startup_trials"], n_warmup_steps=settings["warmup_epochs"] + 1
    )


def open_storage(url: str) -> Any:
    """An Optuna storage: an RDB URL (sqlite:///..., postgresql://...) or else a journal file's path."""
    import optuna

    if "://" in url:
        return optuna.storages.RDBStorage(url)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))


def reporting(name: str, log: Callable[[dict], None]) -> Callable[[dict], None]:
    """`log`, and where this run is a trial of `make tune` for model `name`, each epoch reported to the trial."""
    spec = json.loads(os.environ.get(ENV) or "{}")
    if spec.get("model") != name:
        return log
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=spec["study"], storage=open_storage(spec["storage"]), pruner=make_pruner(spec["pruner"])
    )
    trial = optuna.trial.Trial(study, spec["trial_id"])

    def on_epoch(row: dict) -> None:
        log(row)
        trial.report(row["val_acc"], row["epoch"])
        if trial.should_prune():
            raise Pruned(f"train_{name}: {PRUNED} {row['epoch']} (val acc {row['val_acc']:.4f}, behind the study)")

    return on_epoch
