from __future__ import annotations

import pytest
import torch

from benchmarks.notebook import notebook_params
from stages.models import build_model, count_parameters
from stages.params import parse_section
from tests.conftest import ROOT
from tests.test_params import DEFAULTS, with_change


def notebook(name: str):
    return notebook_params(name, ROOT / "params.yaml")


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_default_models_give_ten_logits(name: str) -> None:
    model = build_model(parse_section(name, DEFAULTS[name])).eval()
    assert model(torch.zeros(7, 1, 28, 28)).shape == (7, 10)


def test_notebook_architectures_match_the_notebook() -> None:
    mlp, cnn = build_model(notebook("mlp")), build_model(notebook("cnn"))
    # 784-128-64-10 and conv 10/20 5x5 with pooling, 320-50-10: the notebook's parameter counts.
    assert count_parameters(mlp) == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert count_parameters(cnn) == (25 * 10 + 10) + (10 * 20 * 25 + 20) + (320 * 50 + 50) + (50 * 10 + 10)
    for model in (mlp, cnn):
        assert model.eval()(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_optional_layers_follow_params() -> None:
    with_bn = build_model(parse_section("mlp", with_change("mlp", "batch_norm", True)))
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in with_bn)
    no_fc = build_model(parse_section("cnn", with_change("cnn", "fc", 0)))
    assert sum(isinstance(m, torch.nn.Linear) for m in no_fc) == 1
    gelu = build_model(parse_section("cnn", with_change("cnn", "activation", "gelu")))
    assert any(isinstance(m, torch.nn.GELU) for m in gelu)
