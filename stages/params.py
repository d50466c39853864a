"""params.yaml, one validated section at a time: each section becomes a frozen dataclass.

Every key must be present and valid; a mistake is one line naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stages.errors import UserError

IMAGE_SIDE = 28
NUM_CLASSES = 10
TRAIN_IMAGES = 60_000


class ParamsError(UserError):
    pass


@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    allowed: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _one_of(*names: str) -> Rule:
    return Rule(lambda v: v in names, "one of " + ", ".join(names))


def _optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.ok(v), f"{rule.allowed} or null")


POSITIVE_INT = Rule(lambda v: _is_int(v) and v > 0, "a positive integer")
NON_NEGATIVE_INT = Rule(lambda v: _is_int(v) and v >= 0, "a non-negative integer")
POSITIVE_NUMBER = Rule(lambda v: _is_number(v) and v > 0, "a positive number")
NON_NEGATIVE_NUMBER = Rule(lambda v: _is_number(v) and v >= 0, "a non-negative number")
NUMBER = Rule(_is_number, "a number")
FRACTION = Rule(lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
OPEN_FRACTION = Rule(lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)")
BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
ODD_INT = Rule(lambda v: _is_int(v) and v > 0 and v % 2 == 1, "a positive odd integer")
SIZES = Rule(
    lambda v: isinstance(v, list) and len(v) > 0 and all(_is_int(x) and x > 0 for x in v),
    "a non-empty list of positive integers",
)
ACTIVATIONS = _one_of("relu", "gelu", "silu", "tanh")


def _key(rule: Rule) -> Any:
    return field(metadata={"rule": rule})


@dataclass(frozen=True, kw_only=True)
class DataParams:
    raw_dir: str | None = _key(Rule(lambda v: v is None or (isinstance(v, str) and v != ""), "a folder path or null"))
    val_size: int = _key(POSITIVE_INT)
    seed: int = _key(NON_NEGATIVE_INT)
    train_limit: int | None = _key(_optional(POSITIVE_INT))

    def check(self) -> None:
        spare = TRAIN_IMAGES - NUM_CLASSES
        if not NUM_CLASSES <= self.val_size <= spare:
            raise ParamsError(
                f"params.yaml: data.val_size must be between {NUM_CLASSES} (one image per class) and {spare} "
                f"(smaller than the {TRAIN_IMAGES} training images), got {self.val_size}"
            )
        left = TRAIN_IMAGES - self.val_size
        if self.train_limit is not None and not NUM_CLASSES <= self.train_limit <= left:
            raise ParamsError(
                f"params.yaml: data.train_limit must be null or between {NUM_CLASSES} (one image per class) "
                f"and {left} (the training images left after data.val_size), got {self.train_limit}"
            )


@dataclass(frozen=True, kw_only=True)
class Normalize:
    mean: float = _key(NUMBER)
    std: float = _key(POSITIVE_NUMBER)


@dataclass(frozen=True, kw_only=True)
class Augment:
    hflip: bool = _key(BOOL)
    shift: int = _key(Rule(lambda v: _is_int(v) and 0 <= v <= 4, "an integer from 0 to 4 (pixels)"))
    erase: float = _key(FRACTION)


@dataclass(frozen=True, kw_only=True)
class TrainParams:
    """What both models share: the optimisation and the input pipeline."""

    epochs: int = _key(POSITIVE_INT)
    lr: float = _key(POSITIVE_NUMBER)
    batch_size: int = _key(POSITIVE_INT)
    optimizer: str = _key(_one_of("sgd", "adam", "adamw"))
    dropout: float = _key(FRACTION)
    momentum: float = _key(FRACTION)
    nesterov: bool = _key(BOOL)
    weight_decay: float = _key(NON_NEGATIVE_NUMBER)
    schedule: str = _key(_one_of("none", "step", "cosine", "onecycle"))
    warmup: float = _key(OPEN_FRACTION)
    label_smoothing: float = _key(FRACTION)
    seed: int = _key(NON_NEGATIVE_INT)
    device: str = _key(_one_of("auto", "cpu", "cuda", "mps"))
    precision: str = _key(_one_of("auto", "fp32", "bf16"))
    normalize: Normalize = field(metadata={"section": Normalize})
    augment: Augment = field(metadata={"section": Augment})
    tta: bool = _key(BOOL)

    def check(self) -> None:
        if self.nesterov and not (self.optimizer == "sgd" and self.momentum > 0):
            raise ParamsError(
                f"params.yaml: {self.name}.nesterov needs optimizer: sgd and momentum > 0, "
                f"got optimizer {self.optimizer} with momentum {self.momentum}"
            )

    @property
    def name(self) -> str:
        return SECTION_NAMES[type(self)]


@dataclass(frozen=True, kw_only=True)
class MLPParams(TrainParams):
    hidden: list[int] = _key(SIZES)
    activation: str = _key(ACTIVATIONS)
    batch_norm: bool = _key(BOOL)


@dataclass(frozen=True, kw_only=True)
class CNNParams(TrainParams):
    channels: list[int] = _key(SIZES)
    kernel_size: int = _key(ODD_INT)
    padding: str = _key(_one_of("same", "valid"))
    pool: str = _key(_one_of("max", "avg", "none"))
    batch_norm: bool = _key(BOOL)
    activation: str = _key(ACTIVATIONS)
    fc: int = _key(NON_NEGATIVE_INT)
    channels_last: bool = _key(BOOL)

    def check(self) -> None:
        super().check()
        feature_side(self)


def feature_side(cfg: CNNParams) -> int:
    """Side of the square feature map after the conv blocks; each block is conv then optional 2x2 pool."""
    side = IMAGE_SIDE
    for block in range(1, len(cfg.channels) + 1):
        if cfg.padding == "valid":
            side -= cfg.kernel_size - 1
        if cfg.pool != "none":
            side //= 2
        if side < 1:
            raise ParamsError(
                f"params.yaml: cnn.channels has {len(cfg.channels)} conv blocks, which shrink the 28x28 image "
                f"below 1x1 at block {block}; use fewer blocks, padding: same, a smaller kernel_size or pool: none"
            )
    return side


SECTIONS: dict[str, type] = {"data": DataParams, "mlp": MLPParams, "cnn": CNNParams}
SECTION_NAMES = {cls: name for name, cls in SECTIONS.items()}
MODELS = ("mlp", "cnn")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: `lr: 1e-3` (as `dvc exp run -S` writes it) is a number, not a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?$|^[-+]?\d+\.\d*$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: {prefix} must be a mapping of keys to values, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ParamsError(f"params.yaml: unknown key {prefix}.{key}; allowed keys: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name not in raw:
            raise ParamsError(f"params.yaml: {key} is missing; add it (see the README for its meaning)")
        value = raw[name]
        if "section" in f.metadata:
            values[name] = _build(f.metadata["section"], value, key)
            continue
        rule: Rule = f.metadata["rule"]
        if not rule.ok(value):
            raise ParamsError(f"params.yaml: {key} must be {rule.allowed}, got {value!r}")
        # YAML integers are valid floats; store them as floats so the dataclass types hold.
        values[name] = float(value) if f.type == "float" else value
    cfg = cls(**values)
    if hasattr(cfg, "check"):
        cfg.check()
    return cfg


def parse_section(section: str, raw: Any) -> Any:
    """Validate one section's raw mapping (from params.yaml or a checkpoint) into its dataclass."""
    return _build(SECTIONS[section], raw, section)


def read_yaml(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ParamsError(f"cannot read {path}: {exc.strerror}; run from the repository root") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must be a mapping with the sections {', '.join(SECTIONS)}")
    return raw


def load_params(section: str, path: str | Path = "params.yaml") -> Any:
    raw = read_yaml(path)
    if section not in raw:
        raise ParamsError(f"params.yaml: section {section} is missing")
    return parse_section(section, raw[section])


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set a dotted key (`cnn.augment.erase`) in nested params, as `dvc exp run -S` does."""
    *parents, key = dotted.split(".")
    for parent in parents:
        tree = tree[parent]
    tree[key] = value


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
