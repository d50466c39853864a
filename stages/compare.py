"""compare: the experiment table a person reads first, built on `dvc exp show --json`.

`python -m stages.compare [--md] [DVC EXP SHOW OPTIONS]` (`make compare ARGS=...`) prints one row per
experiment (the workspace, each baseline commit, each experiment derived from it): its name, the params whose
values differ between the rows, and both models' test accuracy and loss side by side. Options it does not know
(`-A`, `-a`, `--rev REV`, `-n N`) go to `dvc exp show` and choose the rows. Experiments that differ only in
their seeds (`make seeds`) share one row: the mean ± standard deviation of each metric, and how many they are.
An experiment that failed or has not finished shows its state and no numbers.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass

from tabulate import tabulate

from stages.errors import UserError, entry_point
from stages.params import MODELS, flatten

METRICS = (("test_acc", "acc"), ("test_loss", "loss"))
WIDTH = 120  # the table fits a 120-column terminal, or the real one when it is wider
SEEDS = ("data.seed", "mlp.seed", "cnn.seed")  # experiments that differ only in these are one setting
MAX_PARAMS = 4  # params listed per row before "+N more": a row far from the baseline stays a few lines


@dataclass(frozen=True)
class Row:
    name: str
    state: str  # success, running, queued, failed
    params: dict[str, object]  # dotted key -> value
    metrics: dict[str, object]  # "cnn.test_acc" -> value
    baseline: bool = False  # the workspace or a commit, not an experiment
    commit: str = ""  # the baseline's rev: experiments of different commits (`-A`) are never one setting


def _row(name: str, state: str, data: dict | None, commit: str, baseline: bool = False) -> Row:
    data = data or {}
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    metrics: dict[str, object] = {}
    for entry in (data.get("metrics") or {}).values():
        metrics.update(flatten(entry.get("data") or {}))
    return Row(name, state, flatten(params), metrics, baseline, commit)


def rows_from_exp_show(shown: list[dict]) -> list[Row]:
    """`dvc exp show --json` as rows: each baseline commit (and the workspace), then its experiments."""
    rows = []
    for baseline in shown:
        rev = baseline["rev"]
        name = "workspace" if rev == "workspace" else baseline.get("name") or rev[:7]
        rows.append(_row(name, "success", baseline.get("data"), rev, baseline=True))
        for exp in baseline.get("experiments") or []:
            revs = exp.get("revs") or [{}]
            state = (exp.get("executor") or {}).get("state") or "success"
            exp_name = exp.get("name") or (revs[0].get("rev") or "?")[:7]
            rows.append(_row(exp_name, state, revs[0].get("data"), rev))
    return rows


def changed_params(rows: list[Row]) -> list[str]:
    """The params whose values differ between the rows that have params, in params.yaml order."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row.params))
    with_params = [row for row in rows if row.params]
    return [key for key in keys if len({json.dumps(row.params.get(key)) for row in with_params}) > 1]


def _number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def seed_groups(rows: list[Row]) -> list[list[Row]]:
    """The rows in order, each finished experiment together with the others of its commit that differ only in
    their seeds, oldest first (`dvc exp show` lists the newest first) and one run per seed: a rerun of the same
    seeds is the same run, not another sample. The workspace and the baselines stay rows of their own: they are
    what the experiments are read against."""
    groups: dict[str, dict[str, tuple[int, Row]]] = {}
    for i, row in enumerate(rows):
        setting = json.dumps([row.commit, {k: v for k, v in row.params.items() if k not in SEEDS}], sort_keys=True)
        seeds = json.dumps([row.params.get(k) for k in SEEDS])
        alone = row.baseline or row.state != "success"
        groups.setdefault(f"row {i}" if alone else setting, {})[seeds] = (i, row)  # the older run of the seeds wins
    return [[row for _, row in sorted(group.values(), reverse=True)] for group in groups.values()]


def _mean(group: list[Row], key: str) -> str:
    values = [row.metrics[key] for row in group if isinstance(row.metrics.get(key), float)]
    if len(values) < 2:
        return _number(values[0] if values else None)
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _param(value: object) -> str:
    """A param for the table: floats to 4 significant digits, so a sampled lr is not 18 characters wide."""
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value)


def _params_cell(group: list[Row], changed: list[str]) -> str:
    cells = []
    for key in changed:
        values = list(dict.fromkeys(_param(row.params.get(key)) for row in group))
        cells.append(f"{key}={'/'.join(values)}")
    if len(cells) > MAX_PARAMS:
        cells[MAX_PARAMS:] = [f"+{len(cells) - MAX_PARAMS} more"]
    return ", ".join(cells)


def table(rows: list[Row], markdown: bool = False, width: int = WIDTH) -> str:
    changed = changed_params(rows)
    headers = ["experiment"]
    for _, short in METRICS:
        headers += [f"{model.upper()} {short}" for model in MODELS]
    headers.append("params that differ")
    body = []
    for group in seed_groups(rows):
        first = group[0]  # the oldest run of the setting names it (usually the one that was then reseeded)
        name = first.name if first.state == "success" else f"{first.name} ({first.state})"
        if len(group) > 1:
            name += f" (x{len(group)} seeds)"
        cells = [name]
        for key, _ in METRICS:
            # A failed or unfinished experiment's metrics are its baseline's or none: show none.
            cells += [_mean(group, f"{model}.{key}") if first.state == "success" else "" for model in MODELS]
        cells.append(_params_cell(group, changed))
        body.append(cells)
    align = ("left",) + ("right",) * (len(headers) - 2) + ("left",)
    if markdown:  # "pipe" marks the alignment in the divider, so GitHub right-aligns the numbers too
        return tabulate(body, headers, tablefmt="pipe", disable_numparse=True, colalign=align)
    # Wrap the params column so the whole table fits the width: no cell is ever cut short. Its share is what
    # the other columns leave, found by rendering (tabulate pads headers by rules of its own).
    params_width = width
    while True:
        text = tabulate(
            body,
            headers,
            disable_numparse=True,
            colalign=align,
            maxcolwidths=[None] * (len(headers) - 1) + [params_width],
        )
        overflow = max(map(len, text.splitlines())) - width
        if overflow <= 0 or params_width <= 20:
            return text
        params_width = max(20, params_width - overflow)


def exp_show(args: list[str]) -> list[dict]:
    dvc = shutil.which("dvc")
    if not dvc:
        raise UserError("dvc is not on PATH: run `make compare`, or `source .venv/bin/activate` first")
    result = subprocess.run([dvc, "exp", "show", "--json", *args], capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"`dvc exp show --json {' '.join(args)}` failed: {message}")
    return json.loads(result.stdout)


@entry_point
def main() -> None:
    args = sys.argv[1:]
    markdown = "--md" in args
    rows = rows_from_exp_show(exp_show([a for a in args if a != "--md"]))
    width = max(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns) if sys.stdout.isatty() else WIDTH
    print(table(rows, markdown, width))


if __name__ == "__main__":
    main()
