"""tune.yaml: a study's name, objective, pruner and search space, checked against params.yaml's own rules."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from stages.errors import UserError
from stages.params import MODELS, ParamsError, flatten, parse_section, set_dotted

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")  # a study name that makes valid experiment names


@dataclass(frozen=True)
class Param:
    """One dotted params.yaml key and where to look: a range (low, high; log or step) or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[str, ...] = ()  # as JSON: Optuna's choices must be scalars, ours may be lists
    integer: bool = False  # the key holds whole numbers (epochs), whatever the range's bounds look like

    def sample(self, trial: optuna.Trial) -> Any:
        if self.choices:
            return json.loads(trial.suggest_categorical(self.key, self.choices))
        if self.integer:
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list[Any]:
        return [json.loads(c) for c in self.choices] if self.choices else [self.low, self.high]


@dataclass(frozen=True)
class Config:
    study: str
    objective: str  # the model whose kept epoch's validation accuracy is maximised
    trials: int
    pruner: dict[str, int]
    space: tuple[Param, ...]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict) or not (set(spec) == {"choices"} or {"low", "high"} <= set(spec)):
        raise UserError(f"{where}: space.{key} must be {{choices: [...]}} or {{low: L, high: H}} (log: true, step: S)")
    if "choices" in spec:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise UserError(f"{where}: space.{key}.choices must be a non-empty list")
        return Param(key, choices=tuple(dict.fromkeys(json.dumps(c) for c in spec["choices"])))
    unknown = set(spec) - {"low", "high", "log", "step"}
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    if unknown or not (_number(low) and _number(high)) or not isinstance(log, bool):
        raise UserError(f"{where}: space.{key} takes numbers low and high, log: true|false and step (got {spec})")
    if low >= high:
        raise UserError(f"{where}: space.{key} is an empty range: low {low} must be below high {high}")
    if log and (low <= 0 or step is not None):
        raise UserError(f"{where}: space.{key}: a log range needs low > 0 and no step")
    if step is not None and not (_number(step) and step > 0):
        raise UserError(f"{where}: space.{key}.step must be a positive number")
    return Param(key, low, high, log, step)


def load_config(path: str | Path, params: dict) -> Config:
    """tune.yaml, checked against `params` (params.yaml as read): every value it can sample is a legal param."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}; run from the repository root") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"{path} is not valid YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    keys = {"study", "objective", "trials", "pruner", "space"}
    if not isinstance(raw, dict) or set(raw) != keys:
        raise UserError(f"{path} must be a mapping with exactly the keys {', '.join(sorted(keys))}")
    if not isinstance(raw["study"], str) or not NAME.fullmatch(raw["study"]):
        raise UserError(f"{path}: study must be a name of letters, digits, - and _ (up to 40), got {raw['study']!r}")
    if raw["objective"] not in MODELS:
        raise UserError(f"{path}: objective must be one of {', '.join(MODELS)} (its kept epoch's val accuracy)")
    if not (isinstance(raw["trials"], int) and raw["trials"] > 0):
        raise UserError(f"{path}: trials must be a positive integer")
    pruner = raw["pruner"]
    if (
        not isinstance(pruner, dict)
        or set(pruner) != {"startup_trials", "warmup_epochs"}
        or not all(isinstance(v, int) and v >= 0 for v in pruner.values())
    ):
        raise UserError(f"{path}: pruner must be {{startup_trials: N, warmup_epochs: M}} with integers >= 0")
    if not isinstance(raw["space"], dict) or not raw["space"]:
        raise UserError(f"{path}: space must map params.yaml keys (as `dvc exp run -S` names them) to ranges")
    known = flatten(params)
    space = []
    for key, spec in raw["space"].items():
        if key not in known:
            raise UserError(f"{path}: space.{key} is not a params.yaml key; keys look like mlp.lr or cnn.augment.erase")
        param = _param(key, spec, str(path))
        section, *inner = key.split(".")
        for value in param.extremes():  # the params' own rules say which values are legal
            changed = copy.deepcopy(params)
            set_dotted(changed, key, value)
            try:
                parsed = parse_section(section, changed[section])
            except ParamsError as exc:
                raise UserError(f"{path}: space.{key} reaches {json.dumps(value)}, which {exc}") from None
        if not param.choices:
            # The parsed value's type is the key's (a float key's 0 becomes 0.0): {low: 0, high: 1} on
            # weight_decay searches the decimals between, on epochs the whole numbers.
            for name in inner:
                parsed = getattr(parsed, name)
            integer = isinstance(parsed, int) and not isinstance(parsed, bool)
            if integer and not isinstance(param.step or 1, int):
                raise UserError(f"{path}: space.{key} holds whole numbers: its step must be one, got {param.step}")
            param = dataclasses.replace(param, integer=integer)
        space.append(param)
    return Config(raw["study"], raw["objective"], raw["trials"], pruner, tuple(space))


def cli_value(value: Any) -> str:
    """A value as `dvc exp run -S key=value` reads it (YAML): strings bare, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)
