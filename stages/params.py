"""params.yaml, one validated section at a time: each section becomes a frozen dataclass.

Every key must be present and valid; a mistake is one line naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stages.errors import UserError

IMAGE_SIDE = 28
NUM_CLASSES = 10
TRAIN_IMAGES = 60_000  # the official splits
TEST_IMAGES = 10_000
# The names params.yaml may use for a choice, with the torch.nn or torch.optim class each one builds: the rules
# below and the builders (models.py, engine.py) both read these, so a choice is added in one place.
ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "silu": "SiLU", "tanh": "Tanh"}  # torch.nn
POOLS = {"max": "MaxPool2d", "avg": "AvgPool2d", "none": None}  # torch.nn
OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}  # torch.optim
SCHEDULES = ("none", "step", "cosine", "onecycle")  # built by engine.build_scheduler
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
# Bounds that keep a typo from asking for terabytes or years; far beyond anything this dataset needs.
MAX_SEED = 2**32 - 1  # numpy's legacy seeding refuses more
MAX_EPOCHS = 10_000
MAX_LAYERS = 16
MAX_WIDTH = 16_384  # units of a hidden or FC layer
MAX_CHANNELS = 4_096
MAX_KERNEL = IMAGE_SIDE - 1
# params.yaml itself: read at most this many bytes, and expand aliases to at most this many values.
MAX_PARAMS_BYTES = 1_000_000
MAX_PARAMS_VALUES = 10_000

_short = reprlib.Repr()
_short.maxlevel, _short.maxlist, _short.maxdict, _short.maxstring, _short.maxother, _short.maxlong = 3, 8, 8, 60, 60, 40


def _shown(value: Any) -> str:
    """A value for an error message, cut short: a nested alias bomb must not make the message gigabytes long."""
    return _short.repr(value)


def _shown_key(key: Any) -> str:
    return _short.repr(key).strip("'") if isinstance(key, str) else _short.repr(key)


class ParamsError(UserError):
    pass


@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    allowed: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer of hundreds of digits has no float
        return False


def _int_in(low: int, high: int, unit: str = "") -> Rule:
    return Rule(lambda v: _is_int(v) and low <= v <= high, f"an integer from {low} to {high}{unit}")


def _sizes(high: int) -> Rule:
    return Rule(
        lambda v: isinstance(v, list) and 0 < len(v) <= MAX_LAYERS and all(_is_int(x) and 0 < x <= high for x in v),
        f"a list of 1 to {MAX_LAYERS} integers from 1 to {high}",
    )


def _one_of(*names: str) -> Rule:
    return Rule(lambda v: v in names, "one of " + ", ".join(names))


def _optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.ok(v), f"{rule.allowed} or null")


POSITIVE_INT = Rule(lambda v: _is_int(v) and v > 0, "a positive integer")
SEED = _int_in(0, MAX_SEED)
POSITIVE_NUMBER = Rule(lambda v: _is_number(v) and v > 0, "a positive number")
NON_NEGATIVE_NUMBER = Rule(lambda v: _is_number(v) and v >= 0, "a non-negative number")
NUMBER = Rule(_is_number, "a number")
FRACTION = Rule(lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
OPEN_FRACTION = Rule(lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)")
BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
ODD_INT = Rule(lambda v: _is_int(v) and 0 < v <= MAX_KERNEL and v % 2 == 1, f"an odd integer from 1 to {MAX_KERNEL}")
ACTIVATION = _one_of(*ACTIVATIONS)


def _key(rule: Rule) -> Any:
    return field(metadata={"rule": rule})


@dataclass(frozen=True, kw_only=True)
class DataParams:
    raw_dir: str | None = _key(Rule(lambda v: v is None or (isinstance(v, str) and v != ""), "a folder path or null"))
    val_size: int = _key(POSITIVE_INT)
    seed: int = _key(SEED)
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

    epochs: int = _key(_int_in(1, MAX_EPOCHS))
    lr: float = _key(POSITIVE_NUMBER)
    batch_size: int = _key(_int_in(1, TRAIN_IMAGES))
    optimizer: str = _key(_one_of(*OPTIMIZERS))
    dropout: float = _key(FRACTION)
    momentum: float = _key(FRACTION)
    nesterov: bool = _key(BOOL)
    weight_decay: float = _key(NON_NEGATIVE_NUMBER)
    schedule: str = _key(_one_of(*SCHEDULES))
    warmup: float = _key(OPEN_FRACTION)
    label_smoothing: float = _key(FRACTION)
    seed: int = _key(SEED)
    device: str = _key(_one_of(*DEVICES))
    precision: str = _key(_one_of(*PRECISIONS))
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
    hidden: list[int] = _key(_sizes(MAX_WIDTH))
    activation: str = _key(ACTIVATION)
    batch_norm: bool = _key(BOOL)
    pca_init: bool = _key(BOOL)


@dataclass(frozen=True, kw_only=True)
class CNNParams(TrainParams):
    channels: list[int] = _key(_sizes(MAX_CHANNELS))
    kernel_size: int = _key(ODD_INT)
    padding: str = _key(_one_of("same", "valid"))
    pool: str = _key(_one_of(*POOLS))
    batch_norm: bool = _key(BOOL)
    activation: str = _key(ACTIVATION)
    fc: int = _key(_int_in(0, MAX_WIDTH, "; 0 = none"))
    channels_last: bool = _key(BOOL)
    whiten: bool = _key(BOOL)

    def check(self) -> None:
        super().check()
        feature_side(self)
        filters = 2 * self.kernel_size**2
        if self.whiten and self.channels[0] < filters:
            raise ParamsError(
                f"params.yaml: cnn.whiten needs cnn.channels[0] >= 2 * kernel_size^2 = {filters} (a whitening "
                f"filter and its negative per {self.kernel_size}x{self.kernel_size} patch direction), got "
                f"{self.channels[0]}; widen the first block, use a smaller kernel_size or set cnn.whiten: false"
            )


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
                f"params.yaml: cnn.channels has {len(cfg.channels)} conv blocks, which shrink the "
                f"{IMAGE_SIDE}x{IMAGE_SIDE} image below 1x1 at block {block}; use fewer blocks, padding: same, "
                "a smaller kernel_size or pool: none"
            )
    return side


def check_batches(cfg: TrainParams, images: int) -> None:
    """The checks that need the number of training images; the train stage runs them before loading any."""
    batches = math.ceil(images / cfg.batch_size)
    steps = cfg.epochs * batches
    if cfg.schedule == "onecycle" and cfg.warmup * steps < 2:
        raise ParamsError(
            f"params.yaml: {cfg.name}.warmup {cfg.warmup:g} of {steps} steps ({cfg.epochs} epochs of {batches} "
            f"batches) is {cfg.warmup * steps:g} warm-up steps, and the one-cycle schedule needs at least 2; "
            f"lower {cfg.name}.batch_size or raise {cfg.name}.epochs or {cfg.name}.warmup"
        )
    # Training-mode batch norm needs two values per channel: one image is too few where it sees 1x1 maps.
    single_values = isinstance(cfg, MLPParams) or (isinstance(cfg, CNNParams) and feature_side(cfg) == 1)
    if cfg.batch_norm and single_values and (cfg.batch_size == 1 or images % cfg.batch_size == 1):
        batch = "trains on one image a batch" if cfg.batch_size == 1 else "leaves a last batch of one image"
        raise ParamsError(
            f"params.yaml: {cfg.name}.batch_size {cfg.batch_size} {batch} (of {images} training images), which "
            f"batch norm cannot train on; choose another {cfg.name}.batch_size"
        )


SECTIONS: dict[str, type] = {"data": DataParams, "mlp": MLPParams, "cnn": CNNParams}
SECTION_NAMES = {cls: name for name, cls in SECTIONS.items()}
MODELS = ("mlp", "cnn")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: {prefix} must be a mapping of keys to values, got {_shown(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types = typing.get_type_hints(cls)  # the real types, whether or not annotations are postponed (strings)
    for key in raw:
        if key not in fields:
            raise ParamsError(f"params.yaml: unknown key {prefix}.{_shown_key(key)}; allowed keys: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name not in raw:
            raise ParamsError(
                f"params.yaml: {key} is missing; add it (the project's params.yaml shows each key and its meaning)"
            )
        value = raw[name]
        if "section" in f.metadata:
            values[name] = _build(f.metadata["section"], value, key)
            continue
        rule: Rule = f.metadata["rule"]
        if not rule.ok(value):
            raise ParamsError(f"params.yaml: {key} must be {rule.allowed}, got {_shown(value)}")
        # YAML integers are valid floats; store them as floats so the dataclass types hold.
        values[name] = float(value) if types[name] is float else value
    cfg = cls(**values)
    if hasattr(cfg, "check"):
        cfg.check()
    return cfg


def parse_section(section: str, raw: Any) -> Any:
    """Validate one section's raw mapping (from params.yaml or a checkpoint) into its dataclass."""
    return _build(SECTIONS[section], raw, section)


def read_yaml(path: str | Path = "params.yaml") -> dict:
    """params.yaml exactly as DVC reads it (ruamel.yaml's safe loader, YAML 1.2), so that the values a stage
    trains with are the ones `dvc params diff` and `dvc exp show` report: `seed: 010` is 10 for both, `yes` is
    a string, and a duplicate key is refused as DVC refuses it. Bounded in size before anything is expanded."""
    from ruamel.yaml import YAML, YAMLError

    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PARAMS_BYTES + 1)
    except OSError as exc:
        raise ParamsError(f"cannot read {path}: {exc.strerror}; run from the repository root") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ParamsError(f"{path} is larger than {MAX_PARAMS_BYTES:,} bytes; it should be a few dozen lines")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ParamsError(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    try:
        raw = YAML(typ="safe").load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ParamsError(f"{path} is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ParamsError(f"{path} is nested too deeply to be params") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must be a mapping with the sections {', '.join(SECTIONS)}")
    if _expanded_size(raw, {}, set()) > MAX_PARAMS_VALUES:
        raise ParamsError(
            f"{path} expands to more than {MAX_PARAMS_VALUES:,} values (YAML aliases nested in aliases?); "
            "write the values out"
        )
    return raw


def _expanded_size(value: Any, sizes: dict[int, int], open_: set[int]) -> int:
    """How many values `value` holds once every alias is written out; a self-reference counts as endless."""
    if not isinstance(value, (dict, list)):
        return 1
    key = id(value)
    if key in sizes:
        return sizes[key]
    if key in open_:
        return MAX_PARAMS_VALUES + 1
    open_.add(key)
    children = value.values() if isinstance(value, dict) else value
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, open_)
        if total > MAX_PARAMS_VALUES:
            break
    open_.discard(key)
    sizes[key] = total
    return total


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


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys (`cnn.augment.erase`), the names `dvc exp run -S` and `dvc exp show` use."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
