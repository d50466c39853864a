"""train_mlp / train_cnn: `python -m stages.train mlp|cnn` trains one model from its params section."""

from __future__ import annotations

if not __package__:  # started as a file path, where `import stages` would end in a traceback
    raise SystemExit("error: run the stages from the repository root as `python -m stages.train mlp`")

import sys

import pandas as pd

from stages.data import load_split
from stages.engine import HISTORY_COLUMNS, fit, resolve_device, save_checkpoint
from stages.errors import UserError, entry_point
from stages.files import write_with
from stages.models import check_size
from stages.params import MODELS, check_batches, load_params


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
    result = fit(cfg, load_split("train"), load_split("val"), device)
    history = pd.DataFrame(result.history, columns=HISTORY_COLUMNS)
    write_with(f"plots/{name}/history.csv", lambda tmp: history.to_csv(tmp, index=False, float_format="%.6g"))
    save_checkpoint(f"models/{name}.pt", result, cfg)
    best = result.history[result.best_epoch - 1]
    print(f"train_{name}: kept epoch {result.best_epoch} (val accuracy {best['val_accuracy']:.4f}) in models/{name}.pt")


if __name__ == "__main__":
    main()
