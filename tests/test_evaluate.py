"""evaluate's arithmetic: the per-class scores read from a confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest

from stages.data import confusion
from stages.evaluate import per_class


def test_per_class_recall_precision_and_f1() -> None:
    actual = np.array([0, 0, 0, 1, 2])
    predicted = np.array([1, 1, 0, 1, 9])
    table = per_class(confusion(actual, predicted))
    # Class 0: 1 of 3 found (recall 1/3), its one prediction right (precision 1); class 1: recall 1,
    # precision 1/3; class 2: never found; class 9: predicted once, wrongly; class 5: absent everywhere.
    assert table.loc[0, "accuracy"] == pytest.approx(1 / 3) and table.loc[0, "precision"] == 1.0
    assert table.loc[1, "accuracy"] == 1.0 and table.loc[1, "precision"] == pytest.approx(1 / 3)
    assert table.loc[0, "f1"] == pytest.approx(0.5) and table.loc[1, "f1"] == pytest.approx(0.5)
    assert table.loc[2, "f1"] == 0.0 and table.loc[9, "precision"] == 0.0 and table.loc[5, "f1"] == 0.0
    assert table["support"].tolist() == [3, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert table.loc[0, "class"] == "T-shirt/top" and table.loc[9, "class"] == "Ankle boot"
