"""train_mlp / train_cnn: `python -m stages.train mlp|cnn` trains one model from its params section."""

from __future__ import annotations

if not __package__:  # started as a file path, where `import stages` would end in a traceback
    raise SystemExit("error: run the stages from the repository root as `python -m stages.train mlp`")

import shutil
import sys

from stages.data import load_split
from stages.engine import fit, resolve_device, save_checkpoint
from stages.errors import UserError, entry_point
from stages.params import MODELS, load_params

LIVE_DIR = "dvclive/{name}"


def live_logger(name: str):
    """A DVCLive logger for one model: per-epoch TSVs and a summary, written as each epoch ends.

    It never writes dvc.yaml (ours declares its files) and never saves experiments of its own (`dvc exp run`
    does). Metric names start with the model, so `dvc exp show` columns are unambiguous: `cnn.val.acc`.
    """
    from dvclive import Live  # imports DVC: only the train stage pays for it
    from scmrepo.exceptions import SCMError

    try:
        live = Live(LIVE_DIR.format(name=name), save_dvc_exp=False, dvcyaml=None)
    except SCMError as exc:  # DVCLive 3.49 cannot start in a git repository without commits
        raise UserError(f"DVCLive cannot log here ({exc}); commit first: git add -A && git commit") from None

    def log(row: dict) -> None:
        live.step = row["epoch"]
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            split, metric = key.split("_")
            live.log_metric(f"{name}/{split}/{metric}", row[key])
        live.log_metric(f"{name}/lr", row["lr"])
        live.make_summary()

    return log


@entry_point
def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in MODELS:
        raise UserError(f"usage: python -m stages.train {{{'|'.join(MODELS)}}}")
    name = sys.argv[1]
    cfg = load_params(name)
    device = resolve_device(cfg)
    try:
        result = fit(cfg, load_split("train"), load_split("val"), device, on_epoch=live_logger(name))
    except BaseException:
        # The live log of an unfinished run would sit next to no model: leave neither.
        shutil.rmtree(LIVE_DIR.format(name=name), ignore_errors=True)
        raise
    save_checkpoint(f"models/{name}.pt", result, cfg)
    best = result.history[result.best_epoch - 1]
    print(
        f"train_{name}: kept epoch {result.best_epoch} of {cfg.epochs} (val acc {best['val_acc']:.4f}) in "
        f"models/{name}.pt; trained in {result.seconds:.0f} s ({result.precision} on {result.device})"
    )


if __name__ == "__main__":
    main()
