"""tune: an Optuna study over params.yaml in which every trial is a DVC experiment named `<study>-<n>`.

`python -m stages.tune [--trials N] [--workers K] [--storage URL] [--push REMOTE] [--config tune.yaml]`
(`make tune ARGS=...`). The study maximises one model's validation accuracy at its kept epoch (never the test
set); `--trials` is the study's total, so a second call goes on where the storage says the study stands.
It only ever creates experiments: params.yaml, the workspace and the git history stay as they are.
"""

from __future__ import annotations

import argparse
import contextlib
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

from stages.cli import ArgumentParser
from stages.errors import UserError, entry_point
from stages.params import read_yaml
from stages.study_plot import draw
from stages.trial import ENV, PRUNED, make_pruner, open_storage
from stages.tune_config import Config, cli_value, load_config

OUT_DIR = Path("tuning")  # the default journal, the picture and each trial's log; ignored by git
VAL_ACC = "dvclive/{model}/plots/metrics/{model}/val/acc.tsv"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


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
    # Released by each worker as it ends. Waited on instead of Thread.join, which Ctrl-C can leave believing a
    # running thread has ended (Python 3.11, bpo-45274): the study must see every interrupted trial told first.
    ended: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def claimed(self) -> int:
        """Trials that count towards the total: finished or running (on any machine); not interrupted ones."""
        return sum(not t.user_attrs.get("interrupted") for t in self.study.get_trials(deepcopy=False))

    def work(self) -> None:
        try:
            self.trials()
        finally:
            self.ended.release()

    def trials(self) -> None:
        while not self.stop.is_set():
            with self.lock:  # ask under the lock: this machine's workers never overshoot the total together
                if self.claimed() >= self.total:
                    return
                trial = self.study.ask()
            name = f"{self.cfg.study}-{trial.number}"  # Optuna numbers trials across every worker: no name twice
            trial.set_user_attr("experiment", name)
            try:
                state, value, note = self.run(trial, name)
            except Exception as exc:  # any fault of one trial is that trial's failure, not the study's
                state, value, note = optuna.trial.TrialState.FAIL, None, f"failed: {exc}"
            if self.stop.is_set():
                trial.set_user_attr("interrupted", True)
                state, value, note = optuna.trial.TrialState.FAIL, None, "interrupted"
            self.study.tell(trial, value, state)
            print(f"{name}: {note}", flush=True)

    def run(self, trial: optuna.Trial, name: str) -> tuple[optuna.trial.TrialState, float | None, str]:
        values = {p.key: p.sample(trial) for p in self.cfg.space}
        model = self.cfg.objective
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
            # A session of its own: Ctrl-C reaches the study alone, which passes it on to every run it started.
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.running.add(proc)
            proc.wait()
            self.running.discard(proc)
        text = log.read_text()
        if proc.returncode != 0:
            pruned = re.search(f"{PRUNED} [0-9]+", text)
            if pruned:
                return optuna.trial.TrialState.PRUNED, None, pruned[0]
            # The stage's own `error:` line says what went wrong; DVC's `ERROR:` lines only that a stage failed.
            lines = text.splitlines()
            errors = [ln for ln in lines if ln.startswith("error:")] or [ln for ln in lines if ln.startswith("ERROR:")]
            return optuna.trial.TrialState.FAIL, None, f"failed ({(errors or ['no message'])[-1]}; see {log})"
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
    except Exception as exc:  # whatever the backend raises (a file, a database driver), it is one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot open the study storage {url}: {reason}; check --storage") from None


def summary(study: optuna.Study, model: str) -> str:
    every = study.get_trials(deepcopy=False)
    trials = [t for t in every if t.state in FINISHED and not t.user_attrs.get("interrupted")]
    interrupted = sum(bool(t.user_attrs.get("interrupted")) for t in every)
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
        + (f"; {interrupted} interrupted, not counted" if interrupted else "")
    ]
    if count[optuna.trial.TrialState.COMPLETE]:
        best = study.best_trial
        name = best.user_attrs["experiment"]
        shown = {key: json.loads(v) if isinstance(v, str) else v for key, v in best.params.items()}
        lines += [f"best: {name}, {model} val acc {best.value:.4f} with {_listed(shown)}", f"  dvc exp apply {name}"]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m stages.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tune.yaml", help="the study and its search space")
    parser.add_argument("--trials", type=int, help="the study's total number of trials (default: tune.yaml's)")
    parser.add_argument("--workers", type=int, default=1, help="trials at a time on this machine")
    parser.add_argument("--storage", help="an RDB URL or a journal file shared by every machine of the study")
    parser.add_argument("--push", metavar="REMOTE", help="`dvc exp push REMOTE` each finished trial")
    args = parser.parse_args(argv)
    if (args.trials is not None and args.trials < 1) or args.workers < 1:
        raise UserError("--trials and --workers must be positive integers")
    return args


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
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        raise UserError("make tune runs trials as experiments of the last commit: git add -A && git commit first")
    study = open_study(cfg, url)
    tuner = Tuner(cfg, study, url, args.trials or cfg.trials, args.workers, args.push, head.stdout.strip(), params)
    threads = [threading.Thread(target=tuner.work, daemon=True) for _ in range(args.workers)]
    for thread in threads:
        thread.start()
    ended = 0
    try:
        for _ in threads:
            tuner.ended.acquire()
            ended += 1
    except KeyboardInterrupt:  # a signal (entry_point ignores a second one, so this clean-up runs to its end)
        tuner.stop.set()
        for proc in list(tuner.running):
            with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
                os.killpg(proc.pid, signal.SIGINT)  # dvc and the stage it runs
        for _ in range(len(threads) - ended):
            tuner.ended.acquire()
        raise KeyboardInterrupt(f"the study is intact in {url}: run the same command to go on") from None
    print(summary(study, cfg.objective))
    picture = OUT_DIR / f"{cfg.study}.png"
    draw(study, cfg.space, picture)
    print(f"picture: {picture}")


if __name__ == "__main__":
    main()
