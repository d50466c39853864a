from __future__ import annotations

import dataclasses

import pytest
import torch

from stages.engine import untrained_model
from stages.models import (
    WHITEN_IMAGES,
    build_model,
    check_size,
    count_parameters,
    principal_directions,
    whitening_filters,
)
from stages.params import ParamsError, parse_section
from tests.helpers import DEFAULTS, notebook, with_change


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


def test_batch_norm_really_fails_on_one_value_per_channel() -> None:
    mlp = dataclasses.replace(parse_section("mlp", DEFAULTS["mlp"]), batch_norm=True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        build_model(mlp).train()(torch.zeros(1, 1, 28, 28))


def test_models_too_large_to_train_are_refused_with_the_keys() -> None:
    mlp = parse_section("mlp", DEFAULTS["mlp"])
    check_size(mlp)
    with pytest.raises(ParamsError, match=r"mlp would have 549,\d{3},\d{3} parameters, .* make mlp\.hidden smaller"):
        check_size(dataclasses.replace(mlp, hidden=[16384, 16384, 16384]))
    cnn = parse_section("cnn", DEFAULTS["cnn"])
    with pytest.raises(ParamsError, match=r"cnn would keep [\d,]+ values per batch of 60000 .* lower cnn\.batch_size"):
        check_size(dataclasses.replace(cnn, batch_size=60000))


@pytest.mark.parametrize(
    ("key", "value", "layer"),
    [
        ("activation", "relu", torch.nn.ReLU),
        ("activation", "gelu", torch.nn.GELU),
        ("activation", "silu", torch.nn.SiLU),
        ("activation", "tanh", torch.nn.Tanh),
        ("pool", "max", torch.nn.MaxPool2d),
        ("pool", "avg", torch.nn.AvgPool2d),
    ],
)
def test_each_allowed_name_builds_its_layer(key: str, value: str, layer: type) -> None:
    model = build_model(parse_section("cnn", with_change("cnn", key, value)))
    assert any(type(m) is layer for m in model)


def test_pool_none_builds_no_pooling() -> None:
    model = build_model(parse_section("cnn", with_change("cnn", "pool", "none")))
    assert not any(isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)) for m in model)


def smooth_images(n: int, side: int = 12) -> torch.Tensor:
    """Noise blurred by a 3x3 box: neighbouring pixels correlated, as in real images, with an offset."""
    noise = torch.randn(n, 1, side + 2, side + 2, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.avg_pool2d(noise, 3, stride=1) * 2 + 0.5


def test_whitening_filters_decorrelate_patches() -> None:
    """Filtered by the first k^2 filters, every 3x3 patch of the images becomes one vector of k^2 values with
    unit variance and no correlation (eps 0: exactly the identity); the other k^2 filters are their negatives."""
    x = smooth_images(500)
    patches = x.unfold(2, 3, 1).unfold(3, 3, 1).reshape(-1, 9).double()
    before = torch.cov(patches.T)
    assert before[0, 1] > 0.5 * before[0, 0]  # neighbours correlate before
    filters = whitening_filters(x, 3, eps=0.0)
    assert filters.shape == (18, 1, 3, 3) and torch.equal(filters[9:], -filters[:9])
    out = torch.nn.functional.conv2d(x.double(), filters[:9].double())  # valid positions: every patch once
    after = torch.cov(out.permute(1, 0, 2, 3).reshape(9, -1))
    torch.testing.assert_close(after, torch.eye(9, dtype=torch.float64), atol=1e-4, rtol=0)
    # eps damps each direction to variance eigenvalue / (eigenvalue + eps): the weakest most.
    damped = torch.nn.functional.conv2d(x.double(), whitening_filters(x, 3, eps=0.05)[:9].double())
    variances = torch.cov(damped.permute(1, 0, 2, 3).reshape(9, -1), correction=0).diagonal()
    eigenvalues = torch.linalg.eigvalsh(torch.cov(patches.T, correction=0))
    torch.testing.assert_close(variances, eigenvalues / (eigenvalues + 0.05), atol=1e-4, rtol=0)


def test_whiten_sets_the_first_convs_first_filters_from_the_training_images() -> None:
    cfg = parse_section("cnn", DEFAULTS["cnn"])
    x = smooth_images(WHITEN_IMAGES + 50, side=28)
    cpu = torch.device("cpu")
    whitened, plain = (
        untrained_model(cfg, cpu, x)[0].weight,
        untrained_model(dataclasses.replace(cfg, whiten=False), cpu)[0].weight,
    )
    # Only the first WHITEN_IMAGES count: the same filters as from those alone.
    torch.testing.assert_close(whitened[:18], whitening_filters(x[:WHITEN_IMAGES], 3), rtol=0, atol=0)
    assert not torch.equal(whitened[:18], whitening_filters(x, 3))
    assert torch.equal(whitened[18:], plain[18:])  # the rest keep the seeded random init
    with pytest.raises(ValueError, match="pass x_train"):
        untrained_model(cfg, cpu)


def test_principal_directions_are_the_strongest_unit_directions_strongest_first() -> None:
    x = smooth_images(300, side=6)
    rows = principal_directions(x, 5).double()
    assert rows.shape == (5, 36)
    torch.testing.assert_close(rows @ rows.T, torch.eye(5, dtype=torch.float64), atol=1e-5, rtol=0)
    pixels = x.reshape(300, -1).double()
    variances = torch.var(pixels @ rows.T, dim=0, correction=0)
    assert torch.all(variances[:-1] >= variances[1:])  # strongest first
    strongest = torch.linalg.eigvalsh(torch.cov(pixels.T, correction=0))[-1]
    torch.testing.assert_close(variances[0], strongest, atol=1e-5, rtol=1e-5)  # the top one: the largest variance


def test_pca_init_sets_the_first_layers_first_rows_from_the_training_images() -> None:
    cfg = dataclasses.replace(parse_section("mlp", DEFAULTS["mlp"]), hidden=[40, 16])
    x = smooth_images(WHITEN_IMAGES + 50, side=28)
    cpu = torch.device("cpu")
    started = untrained_model(cfg, cpu, x)[1].weight
    plain = untrained_model(dataclasses.replace(cfg, pca_init=False), cpu)[1].weight
    # Only the first WHITEN_IMAGES count; 20 directions and their negatives, at the random rows' mean norm.
    directions = principal_directions(x[:WHITEN_IMAGES], 20) * plain.norm(dim=1).mean()
    torch.testing.assert_close(started, torch.cat([directions, -directions]), rtol=0, atol=0)
    assert not torch.allclose(started[:20], principal_directions(x, 20) * plain.norm(dim=1).mean(), atol=1e-6)
    wide = untrained_model(dataclasses.replace(cfg, hidden=[1600, 16]), cpu, x)[1].weight
    assert torch.equal(wide[784:1568], -wide[:784])  # at most one row pair per pixel direction...
    assert torch.equal(
        wide[1568:], untrained_model(dataclasses.replace(cfg, hidden=[1600, 16], pca_init=False), cpu)[1].weight[1568:]
    )
    with pytest.raises(ValueError, match=r"mlp\.pca_init .* pass x_train"):
        untrained_model(cfg, cpu)
