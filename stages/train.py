"""train_mlp / train_cnn: `python -m stages.train mlp|cnn` trains one model from its params section."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from stages.checkpoint import make_checkpoint, save_checkpoint
from stages.data import load_split
from stages.engine import MODEL_PATH, fit, resolve_device
from stages.errors import UserError, entry_point
from stages.models import check_size
from stages.params import MODELS, check_batches, load_params
from stages.trial import reporting

LIVE_DIR = "dvclive/{name}"


def live_logger(name: str, folder: Path) -> Callable[[dict], None]:
    """A DVCLive logger for one model: per-epoch TSVs and a summary, written into `folder` as each epoch ends.

    It never writes dvc.yaml (ours declares its files) and never saves experiments of its own (`dvc exp run`
    does). Metric names start with the model, so `dvc exp show` columns are unambiguous: `cnn.val.acc`.
    """
    from dvclive import Live  # imports DVC: only the train stage pays for it
    from scmrepo.exceptions import SCMError

    try:
        live = Live(str(folder), save_dvc_exp=False, dvcyaml=None)
    except SCMError as exc:  # DVCLive 3.49 cannot start in a git repository without commits
        raise UserError(f"DVCLive cannot log here ({exc}); commit first: git add -A && git commit") from None

    def log(row: dict) -> None:
        live.step = row["epoch"]
        for key, value in row.items():
            # Not the learning rate: the summary DVC diffs as metrics would show the last epoch's, a schedule's
            # value rather than a result. It is in the progress lines.
            if key not in ("epoch", "lr"):
                live.log_metric(f"{name}/{key.replace('_', '/')}", value)  # cnn/val/acc
        live.make_summary()

    return log


@entry_point
def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in MODELS:
        raise UserError(f"usage: python -m stages.train {{{'|'.join(MODELS)}}}")
    name = sys.argv[1]
    cfg = load_params(name)
    check_size(cfg)
    device = resolve_device(cfg)
    # Before the images are loaded: the labels file alone says how many there are.
    check_batches(cfg, len(load_split("train", mmap=True).labels))
    train, val = load_split("train"), load_split("val")
    # DVCLive writes its log in place as each epoch ends, so that `dvc exp show` and `dvc plots` follow the run.
    model_path = MODEL_PATH.format(name=name)
    result = fit(cfg, train, val, device, on_epoch=reporting(name, live_logger(name, Path(LIVE_DIR.format(name=name)))))
    save_checkpoint(model_path, make_checkpoint(result, cfg))
    best = result.history[result.best_epoch - 1]
    print(
        f"train_{name}: kept epoch {result.best_epoch} of {cfg.epochs} (val acc {best['val_acc']:.4f}) in "
        f"{model_path}; trained in {result.seconds:.0f} s ({result.precision} on {result.device})"
    )


if __name__ == "__main__":
    main()
