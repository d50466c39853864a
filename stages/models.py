"""The two architectures, built from their params sections alone."""

from __future__ import annotations

import torch
from torch import nn

from stages.params import (
    ACTIVATIONS,
    IMAGE_SIDE,
    NUM_CLASSES,
    POOLS,
    CNNParams,
    MLPParams,
    ParamsError,
    feature_side,
)

# Far beyond this project's models (0.5M parameters, 20M activations a batch), far below a machine's memory.
MAX_PARAMETERS = 100_000_000
MAX_ACTIVATIONS = 1_000_000_000  # values a training batch keeps for the backward pass (4 GB in float32)
# cnn.whiten: airbench's patch-whitening init (KellerJordan/cifar10-airbench, its eps and a subset of the
# images as there; 10,000 images give 6.8M patches, enough for a 9x9 covariance, and take about 2 s).
WHITEN_IMAGES = 10_000
WHITEN_EPS = 5e-4


def activation(cfg: MLPParams | CNNParams) -> nn.Module:
    return getattr(nn, ACTIVATIONS[cfg.activation])()


def build_mlp(cfg: MLPParams) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = IMAGE_SIDE * IMAGE_SIDE
    for size in cfg.hidden:
        layers.append(nn.Linear(width, size, bias=not cfg.batch_norm))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(activation(cfg))
        if cfg.dropout:
            layers.append(nn.Dropout(cfg.dropout))
        width = size
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


def build_cnn(cfg: CNNParams) -> nn.Sequential:
    """Blocks of conv -> pool -> BN -> activation: pooling first runs BN and the activation on a 4x smaller map."""
    layers: list[nn.Module] = []
    channels = 1
    pool = getattr(nn, POOLS[cfg.pool]) if POOLS[cfg.pool] else None
    padding = cfg.kernel_size // 2 if cfg.padding == "same" else 0
    for out in cfg.channels:
        layers.append(nn.Conv2d(channels, out, cfg.kernel_size, padding=padding, bias=not cfg.batch_norm))
        if pool:
            layers.append(pool(2))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(activation(cfg))
        channels = out
    layers.append(nn.Flatten())
    width = channels * feature_side(cfg) ** 2
    if cfg.fc:
        layers += [nn.Linear(width, cfg.fc), activation(cfg)]
        width = cfg.fc
    if cfg.dropout:
        layers.append(nn.Dropout(cfg.dropout))
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


@torch.no_grad()
def whitening_filters(x: torch.Tensor, k: int, eps: float = WHITEN_EPS) -> torch.Tensor:
    """(2 k^2, 1, k, k) filters that whiten the k x k patches of the images `x` (N, 1, H, W): each eigenvector
    of the patch covariance divided by sqrt(its eigenvalue + eps), then the same filters negated, so that ReLU
    passes both signs of each direction. The covariance is summed in float64: the same images give the same
    filters, bit for bit."""
    patches = x.cpu().unfold(2, k, 1).unfold(3, k, 1).reshape(-1, k * k).double()  # every valid patch
    patches -= patches.mean(0)
    evals, evecs = torch.linalg.eigh(patches.T @ patches / len(patches))
    filters = (evecs / torch.sqrt(evals + eps)).T.reshape(k * k, 1, k, k)
    return torch.cat([filters, -filters]).float()


@torch.no_grad()
def whiten_first_conv(model: nn.Module, x: torch.Tensor) -> None:
    """Start the first conv's first 2 k^2 filters as `whitening_filters` of the first WHITEN_IMAGES of `x`;
    the rest keep their random init, and all of them train."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    filters = whitening_filters(x[:WHITEN_IMAGES], conv.kernel_size[0])
    conv.weight[: len(filters)] = filters.to(conv.weight)


@torch.no_grad()
def principal_directions(x: torch.Tensor, n: int) -> torch.Tensor:
    """The n strongest principal directions of the images `x` (N, 1, H, W) as unit rows (n, H * W), strongest
    first (at most H * W of them); the covariance is summed in float64, as in `whitening_filters`."""
    pixels = x.cpu().reshape(len(x), -1).double()
    pixels -= pixels.mean(0)
    evecs = torch.linalg.eigh(pixels.T @ pixels / len(pixels)).eigenvectors  # weakest first
    return evecs.flip(1)[:, :n].T.float()


@torch.no_grad()
def pca_first_layer(model: nn.Module, x: torch.Tensor) -> None:
    """Start the first linear layer's first 2n rows as the n strongest `principal_directions` of the first
    WHITEN_IMAGES of `x` and their negatives (n = min(width // 2, pixels)), scaled to the rows' mean random norm
    so that they learn at the rate the random rows would; with batch norm after the layer, each of these units
    starts as a whitened principal component. The rest keep their random init, and all of them train."""
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    rows = principal_directions(x[:WHITEN_IMAGES], linear.out_features // 2)  # at most one per pixel
    rows = rows.to(linear.weight) * linear.weight.norm(dim=1).mean()
    linear.weight[: 2 * len(rows)] = torch.cat([rows, -rows])


def build_model(cfg: MLPParams | CNNParams) -> nn.Sequential:
    return build_mlp(cfg) if isinstance(cfg, MLPParams) else build_cnn(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_size(cfg: MLPParams | CNNParams, where: str = "params.yaml", fix: str | None = None) -> None:
    """Refuse a model too large to train here, before any of it is allocated for real.

    `where` names the file the params come from, and `fix` replaces the advice to make them smaller: a
    checkpoint's own params are fixed by getting another file, not by editing them."""
    with torch.device("meta"):  # parameters without memory: an oversized model is counted, never allocated
        model = build_model(cfg)
    sizes = f"{cfg.name}.hidden" if isinstance(cfg, MLPParams) else f"{cfg.name}.channels or {cfg.name}.fc"
    if count_parameters(model) > MAX_PARAMETERS:
        raise ParamsError(
            f"{where}: {cfg.name} would have {count_parameters(model):,} parameters, more than the "
            f"{MAX_PARAMETERS:,} this project allows; {fix or f'make {sizes} smaller'}"
        )
    # Within that limit the model is small enough to materialise, uninitialised (no random numbers drawn), and
    # run on one image: every layer's output grows with the batch, so one image's outputs times the batch size
    # are what a batch keeps. (A forward pass on the meta device would spend a second warming up.)
    model = model.to_empty(device="cpu").eval()
    per_image = []
    for layer in model:
        layer.register_forward_hook(lambda _layer, _inputs, out: per_image.append(out.numel()))
    with torch.no_grad():
        model(torch.zeros(1, 1, IMAGE_SIDE, IMAGE_SIDE))
    kept = sum(per_image) * cfg.batch_size
    if kept > MAX_ACTIVATIONS:
        raise ParamsError(
            f"{where}: {cfg.name} would keep {kept:,} values per batch of {cfg.batch_size} for the "
            f"backward pass, more than the {MAX_ACTIVATIONS:,} this project allows; "
            f"{fix or f'lower {cfg.name}.batch_size or make {sizes} smaller'}"
        )
