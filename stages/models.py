"""The two architectures, built from their params sections alone."""

from __future__ import annotations

from torch import nn

from stages.params import IMAGE_SIDE, NUM_CLASSES, CNNParams, MLPParams, feature_side

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def build_mlp(cfg: MLPParams) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = IMAGE_SIDE * IMAGE_SIDE
    for size in cfg.hidden:
        layers.append(nn.Linear(width, size, bias=not cfg.batch_norm))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(ACTIVATIONS[cfg.activation]())
        if cfg.dropout:
            layers.append(nn.Dropout(cfg.dropout))
        width = size
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


def build_cnn(cfg: CNNParams) -> nn.Sequential:
    """Blocks of conv -> pool -> BN -> activation: pooling first runs BN and the activation on a 4x smaller map."""
    layers: list[nn.Module] = []
    channels = 1
    pool = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}.get(cfg.pool)
    padding = cfg.kernel_size // 2 if cfg.padding == "same" else 0
    for out in cfg.channels:
        layers.append(nn.Conv2d(channels, out, cfg.kernel_size, padding=padding, bias=not cfg.batch_norm))
        if pool:
            layers.append(pool(2))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(ACTIVATIONS[cfg.activation]())
        channels = out
    layers.append(nn.Flatten())
    width = channels * feature_side(cfg) ** 2
    if cfg.fc:
        layers += [nn.Linear(width, cfg.fc), ACTIVATIONS[cfg.activation]()]
        width = cfg.fc
    if cfg.dropout:
        layers.append(nn.Dropout(cfg.dropout))
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


def build_model(cfg: MLPParams | CNNParams) -> nn.Sequential:
    return build_mlp(cfg) if isinstance(cfg, MLPParams) else build_cnn(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
