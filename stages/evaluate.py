"""evaluate: both trained models on the official test split -> metrics and plot data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from stages.checkpoint import load_checkpoint
from stages.data import CLASS_NAMES, confusion, load_split
from stages.engine import MODEL_PATH, score, to_inputs, untrained_model
from stages.errors import entry_point
from stages.files import atomic_path, write_json
from stages.models import count_parameters
from stages.params import MODELS


def per_class(matrix: np.ndarray) -> pd.DataFrame:
    hits = np.diag(matrix).astype(float)
    recall = hits / np.maximum(matrix.sum(1), 1)
    precision = hits / np.maximum(matrix.sum(0), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return pd.DataFrame({
        "class": CLASS_NAMES, "accuracy": recall, "precision": precision, "f1": f1, "support": matrix.sum(1),
    })  # fmt: skip


@dataclass(frozen=True)
class Evaluation:
    metrics: dict
    per_class: pd.DataFrame
    predictions: pd.DataFrame


def evaluate_model(name: str) -> Evaluation:
    model, cfg, record = load_checkpoint(MODEL_PATH.format(name=name), name)
    test = load_split("test")
    # On the CPU in float32 wherever training ran: the test metrics of a model are then the same on every machine
    # that has it (dvc pull), and 10,000 images take seconds.
    device = torch.device("cpu")
    x_test, y_test = to_inputs(test.images, cfg, device), torch.from_numpy(test.labels)
    tested = score(model, x_test, y_test, cfg)
    x_train = to_inputs(load_split("train").images, cfg, device)  # what the untrained net was built from
    untrained = score(untrained_model(cfg, device, x_train), x_test, y_test, cfg)

    probs = tested.log_probs.softmax(1)  # exp(), renormalised: a TTA average may sum to 1 +- 1e-7
    predicted = probs.argmax(1).numpy()
    classes = per_class(confusion(test.labels, predicted))
    # Short, model-prefixed names: `dvc exp show` columns read `cnn.test_acc`, `mlp.test_acc`. No wall-clock
    # figures: a rerun of the same code and params must leave `dvc metrics diff` empty. The kept epoch's
    # validation scores are in the per-epoch curves (dvclive/<model>/), which the report reads.
    metrics = {
        name: {
            "test_acc": tested.accuracy,
            "test_loss": tested.loss,
            "test_f1": round(float(classes["f1"].mean()), 6),
            "untrained_acc": untrained.accuracy,
            "params": count_parameters(model),
            "epochs": cfg.epochs,
            "best_epoch": record["best_epoch"],
            "precision": record["precision"],
            "device": record["device"],
        }
    }
    names = np.array(CLASS_NAMES)
    confidence = probs.max(1).values.numpy().round(4)
    predictions = pd.DataFrame({"actual": names[test.labels], "predicted": names[predicted], "probability": confidence})
    print(f"evaluate {name}: test accuracy {tested.accuracy:.4f} (kept epoch {record['best_epoch']} of {cfg.epochs})")
    return Evaluation(metrics, classes, predictions)


@entry_point
def main() -> None:
    for name in MODELS:
        result = evaluate_model(name)
        with atomic_path(f"plots/{name}/per_class.csv") as tmp:
            result.per_class.to_csv(tmp, index=False, float_format="%.4f")
        with atomic_path(f"plots/{name}/predictions.csv") as tmp:
            result.predictions.to_csv(tmp, index=False)
        write_json(f"metrics/{name}.json", result.metrics)


if __name__ == "__main__":
    main()
