"""tune: an Optuna study over params.yaml in which every trial is a DVC experiment named `<study>-<n>`.

`python -m stages.tune [--trials N] [--workers K] [--storage URL] [--push REMOTE] [--config tune.yaml]`
(`make tune ARGS=...`). The study maximises one model's validation accuracy at its kept epoch (never the test
set); `--trials` is the study's total, so a second call goes on where the storage says the study stands.
It only ever creates experiments: params.yaml, the workspace and the git history stay as they are.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from stages.errors import UserError, entry_point
from stages.params import MODELS, ParamsError, flatten, parse_section, read_yaml, set_dotted
from stages.study_plot import draw
from stages.trial import ENV, PRUNED, make_pruner, open_storage

OUT_DIR = Path("tuning")  # the default journal, the picture and each trial's log; ignored by git
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")  # a study name that makes valid experiment names
VAL_ACC = "dvclive/{model}/plots/metrics/{model}/val/acc.tsv"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


@dataclass(frozen=True)
class Param:
    """One dotted params.yaml key and where to look: a range (low, high; log or step) or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[str, ...] = ()  # as JSON: Optuna's choices must be scalars, ours may be lists

    def sample(self, trial: optuna.Trial) -> Any:
        if self.choices:
            return json.loads(trial.suggest_categorical(self.key, self.choices))
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step or 1)):
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
        for value in param.extremes():  # the params' own rules say which values are legal
            changed = copy.deepcopy(params)
            set_dotted(changed, key, value)
            section = key.split(".")[0]
            try:
                parse_section(section, changed[section])
            except ParamsError as exc:
                raise UserError(f"{path}: space.{key} reaches {json.dumps(value)}, which {exc}") from None
        space.append(param)
    return Config(raw["study"], raw["objective"], raw["trials"], pruner, tuple(space))


def cli_value(value: Any) -> str:
    """A value as `dvc exp run -S key=value` reads it (YAML): strings bare, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass
class Tuner:
    """The trials of one machine: `workers` threads, each running one `dvc exp run --temp` at a time."""

    cfg: Config
    study: optuna.Study
    storage: str
    total: int
    workers: int
    push: str | None
    baseline: str  # the commit experiments branch from: their refs live under it
    params: dict
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: set[subprocess.Popen] = field(default_factory=set)

    def claimed(self) -> int:
        """Trials that count towards the total: finished or running (on any machine); not interrupted ones."""
        return sum(not t.user_attrs.get("interrupted") for t in self.study.get_trials(deepcopy=False))

    def work(self) -> None:
        while not self.stop.is_set():
            with self.lock:  # ask under the lock: this machine's workers never overshoot the total together
                if self.claimed() >= self.total:
                    return
                trial = self.study.ask()
            try:
                state, value, note = self.run(trial)
            except Exception as exc:  # noqa: BLE001 - any fault of one trial is that trial's failure
                state, value, note = optuna.trial.TrialState.FAIL, None, f"failed: {exc}"
            if self.stop.is_set():
                trial.set_user_attr("interrupted", True)
                state, value = optuna.trial.TrialState.FAIL, None
            self.study.tell(trial, value, state)
            print(f"{trial.user_attrs['experiment']}: {note}", flush=True)

    def run(self, trial: optuna.Trial) -> tuple[optuna.trial.TrialState, float | None, str]:
        name = f"{self.cfg.study}-{trial.number}"
        values = {p.key: p.sample(trial) for p in self.cfg.space}
        model = self.cfg.objective
        trial.set_user_attr("experiment", name)
        trial.set_user_attr("epochs", values.get(f"{model}.epochs", self.params[model]["epochs"]))
        # The trial's id (Optuna has no public getter) lets the train stage report to this very trial.
        spec = {"storage": self.storage, "study": self.cfg.study, "trial_id": trial._trial_id, "model": model}
        # Each run gets its share of the cores: K torch processes with all threads each would fight over them.
        threads = max(1, len(os.sched_getaffinity(0)) // self.workers)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), ENV: json.dumps({**spec, "pruner": self.cfg.pruner})}
        sets = [arg for key, value in values.items() for arg in ("-S", f"{key}={cli_value(value)}")]
        log = OUT_DIR / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            cmd = ["dvc", "--wait-for-lock", "exp", "run", "--temp", "-n", name, *sets]
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            self.running.add(proc)
            proc.wait()
            self.running.discard(proc)
        text = log.read_text()
        if proc.returncode != 0:
            pruned = re.search(f"{PRUNED} [0-9]+", text)
            if pruned:
                return optuna.trial.TrialState.PRUNED, None, pruned[0]
            errors = [line for line in text.splitlines() if line.startswith(("error:", "ERROR:"))] or ["no message"]
            return optuna.trial.TrialState.FAIL, None, f"failed ({errors[-1]}; see {log})"
        value = self.objective(name)
        if self.push:
            subprocess.run(["dvc", "exp", "push", self.push, name], check=True, capture_output=True)
        return optuna.trial.TrialState.COMPLETE, value, f"val acc {value:.4f} with {_listed(values)}"

    def objective(self, name: str) -> float:
        """The kept epoch's validation accuracy: the best of the run's per-epoch curve (as fit keeps it)."""
        import dvc.api

        ref = f"refs/exps/{self.baseline[:2]}/{self.baseline[2:]}/{name}"
        with self.lock:  # dvc.api opens the repository: one thread at a time
            text = dvc.api.read(VAL_ACC.format(model=self.cfg.objective), repo=".", rev=ref)
        return max(float(row["acc"]) for row in csv.DictReader(io.StringIO(text), delimiter="\t"))


def _listed(values: dict[str, Any]) -> str:
    """Values for a person to read: floats to 4 significant digits (the experiment has them in full)."""
    return ", ".join(f"{k}={f'{v:.4g}' if isinstance(v, float) else cli_value(v)}" for k, v in values.items())


def open_study(cfg: Config, url: str) -> optuna.Study:
    try:
        return optuna.create_study(
            study_name=cfg.study,
            storage=open_storage(url),
            direction="maximize",
            load_if_exists=True,  # a second call goes on with the same study
            sampler=optuna.samplers.TPESampler(constant_liar=True),  # K workers don't all try the same point
            pruner=make_pruner(cfg.pruner),
        )
    except Exception as exc:  # noqa: BLE001 - whatever the backend raises, it is one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot open the study storage {url}: {reason}; check --storage") from None


def summary(study: optuna.Study, model: str) -> str:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
    count = {s: sum(t.state == s for t in trials) for s in FINISHED}
    planned = sum(t.user_attrs.get("epochs", 0) for t in trials if t.state != optuna.trial.TrialState.FAIL)
    trained = sum(
        len(t.intermediate_values) if t.state == optuna.trial.TrialState.PRUNED else t.user_attrs.get("epochs", 0)
        for t in trials
        if t.state != optuna.trial.TrialState.FAIL
    )
    lines = [
        f"study {study.study_name}: {len(trials)} trials, "
        + ", ".join(f"{n} {word}" for n, word in zip(count.values(), ("complete", "pruned", "failed"), strict=True))
        + f"; {trained} of {planned} {model} epochs trained (pruning stopped the rest)"
    ]
    if count[optuna.trial.TrialState.COMPLETE]:
        best = study.best_trial
        name = best.user_attrs["experiment"]
        shown = {key: json.loads(v) if isinstance(v, str) else v for key, v in best.params.items()}
        lines += [f"best: {name}, {model} val acc {best.value:.4f} with {_listed(shown)}", f"  dvc exp apply {name}"]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make tune ARGS=", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tune.yaml", help="the study and its search space")
    parser.add_argument("--trials", type=int, help="the study's total number of trials (default: tune.yaml's)")
    parser.add_argument("--workers", type=int, default=1, help="trials at a time on this machine")
    parser.add_argument("--storage", help="an RDB URL or a journal file shared by every machine of the study")
    parser.add_argument("--push", metavar="REMOTE", help="`dvc exp push REMOTE` each finished trial")
    args = parser.parse_args(argv)
    if (args.trials is not None and args.trials < 1) or args.workers < 1:
        raise UserError("--trials and --workers must be positive integers")
    return args


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@entry_point
def main() -> None:
    args = parse_args(sys.argv[1:])
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial prints its own line instead
    params = read_yaml()
    cfg = load_config(args.config, params)
    url = args.storage or str(OUT_DIR / f"{cfg.study}.journal")
    if "://" not in url:  # a journal file: the train stage opens it from a scratch copy elsewhere
        url = str(Path(url).resolve())
        if not args.storage:
            OUT_DIR.mkdir(exist_ok=True)
    baseline = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
    study = open_study(cfg, url)
    tuner = Tuner(cfg, study, url, args.trials or cfg.trials, args.workers, args.push, baseline.strip(), params)
    threads = [threading.Thread(target=tuner.work, daemon=True) for _ in range(args.workers)]
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        tuner.stop.set()
        for proc in list(tuner.running):
            proc.send_signal(signal.SIGINT)
        for thread in threads:
            thread.join()
        print(f"error: interrupted; the study is intact in {url}: run the same command to go on", file=sys.stderr)
        sys.exit(130)
    print(summary(study, cfg.objective))
    picture = OUT_DIR / f"{cfg.study}.png"
    draw(study, cfg.space, picture)
    print(f"picture: {picture}")


if __name__ == "__main__":
    main()
