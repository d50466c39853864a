"""make compare: `dvc exp show --json` as one short table."""

from __future__ import annotations

import copy

from stages.compare import MAX_PARAMS, changed_params, rows_from_exp_show, table


def _data(epochs: int, lr: float, mlp_acc: float | None, cnn_acc: float | None) -> dict:
    metrics = {}
    if mlp_acc is not None:
        metrics["metrics/mlp.json"] = {"data": {"mlp": {"test_acc": mlp_acc, "test_loss": 0.3}}}
    if cnn_acc is not None:
        metrics["metrics/cnn.json"] = {"data": {"cnn": {"test_acc": cnn_acc, "test_loss": 0.2}}}
        metrics["dvclive/cnn/metrics.json"] = {"data": {"cnn": {"val": {"acc": 0.5}}, "step": 3}}
    params = {
        "data": {"seed": 0},
        "mlp": {"epochs": 25},
        "cnn": {"epochs": epochs, "lr": lr, "augment": {"erase": 0.5}},
    }
    return {"params": {"params.yaml": {"data": params}}, "metrics": metrics}


SHOWN = [
    {"rev": "workspace", "name": None, "data": _data(20, 0.004, 0.9018, 0.9394), "experiments": None},
    {
        "rev": "0123456789abcdef",
        "name": "main",
        "data": _data(20, 0.004, 0.9018, 0.9394),
        "experiments": [
            {"name": "cnn-3-epochs", "revs": [{"rev": "aaaa", "data": _data(3, 0.004, 0.9018, 0.8871)}]},
            {
                "name": "lr-sweep-with-a-rather-long-name",
                "executor": {"state": "running"},
                "revs": [{"rev": "bbbb", "data": _data(20, 0.001, None, None)}],
            },
        ],
    },
]


def test_rows_are_workspace_baseline_then_its_experiments() -> None:
    rows = rows_from_exp_show(SHOWN)
    assert [(r.name, r.state) for r in rows] == [
        ("workspace", "success"),
        ("main", "success"),
        ("cnn-3-epochs", "success"),
        ("lr-sweep-with-a-rather-long-name", "running"),
    ]
    assert rows[2].metrics["cnn.test_acc"] == 0.8871 and rows[2].params["cnn.augment.erase"] == 0.5


def test_only_params_that_differ_between_rows_are_shown() -> None:
    assert changed_params(rows_from_exp_show(SHOWN)) == ["cnn.epochs", "cnn.lr"]


def test_table_puts_both_models_side_by_side_and_fits_120_columns() -> None:
    text = table(rows_from_exp_show(SHOWN))
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["experiment", "MLP", "acc", "CNN", "acc"]
    assert max(map(len, lines)) <= 120
    row = next(line for line in lines if line.startswith("cnn-3-epochs"))
    assert row.split()[1:5] == ["0.9018", "0.8871", "0.3000", "0.2000"]
    assert "cnn.epochs=3, cnn.lr=0.004" in row
    running = next(line for line in lines if line.startswith("lr-sweep"))
    assert "(running)" in running and running.split()[2:] == ["cnn.epochs=20,", "cnn.lr=0.001"]  # no numbers
    assert "0.5" not in text.split("params that differ")[1].replace("0.5000", "")  # erase is the same everywhere


def test_a_long_params_column_wraps_instead_of_being_cut() -> None:
    shown = [dict(SHOWN[1])]
    shown[0]["experiments"] = [
        {"name": f"exp-{i}", "revs": [{"rev": str(i), "data": _data(i, 0.001 * i, 0.9, 0.9)}]} for i in range(1, 4)
    ]
    for exp in shown[0]["experiments"]:
        exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["mlp"]["hidden"] = [1024, 512, 256, 128, 64, 32, 16]
        exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["mlp"]["epochs"] = 40 + len(exp["name"])
    text = table(rows_from_exp_show(shown))
    assert max(map(len, text.splitlines())) <= 120
    assert all(f"cnn.epochs={i}," in text for i in (1, 2, 3))
    assert text.count("mlp.hidden=") == 4 and text.count("16]") == 3  # wrapped, nothing dropped


def test_markdown_for_a_pull_request() -> None:
    lines = table(rows_from_exp_show(SHOWN), markdown=True).splitlines()
    assert lines[0].startswith("| experiment") and set(lines[1]) <= set("|-: ")
    # GitHub aligns a column by the divider's colons: names and params left, the numbers right.
    divider = lines[1].strip("|").split("|")
    assert divider[0].startswith(":") and divider[-1].startswith(":")
    assert all(cell.endswith(":") and not cell.startswith(":") for cell in divider[1:-1])
    assert len(lines) == 2 + 4


def _experiment(name: str, data: dict, state: str | None = None) -> dict:
    exp = {"name": name, "revs": [{"rev": name, "data": data}]}
    if state:
        exp["executor"] = {"state": state}
    return exp


def _seeded(seed: int, lr: float, cnn_acc: float) -> dict:
    data = _data(20, lr, 0.9, cnn_acc)
    data["params"]["params.yaml"]["data"]["cnn"]["seed"] = seed
    return data


def _baseline(experiments: list[dict]) -> list[dict]:
    return [{"rev": "0123456789abcdef", "name": "main", "data": _seeded(0, 0.004, 0.94), "experiments": experiments}]


def test_experiments_that_differ_only_in_seeds_are_one_row_with_mean_and_spread() -> None:
    # Newest first, as `dvc exp show` lists them: "again" reran seed 1, which adds no sample.
    runs = ((0, 0.93), (1, 0.94), (2, 0.95))
    shown = _baseline(
        [_experiment("again", _seeded(1, 0.003, 0.94)), _experiment("other-lr", _seeded(1, 0.001, 0.91))]
        + [_experiment(f"s{seed}", _seeded(seed, 0.003, acc)) for seed, acc in reversed(runs)]
    )
    lines = table(rows_from_exp_show(shown)).splitlines()
    grouped = [line for line in lines if line.startswith("s0")]  # named after its oldest run
    assert len(grouped) == 1 and not any(line.startswith(("s1", "s2", "again")) for line in lines)
    assert "(x3 seeds)" in grouped[0] and "0.9400 ± 0.0100" in grouped[0]  # mean and sample standard deviation
    assert "cnn.seed=0/1/2" in grouped[0] and "cnn.lr=0.003" in grouped[0]
    # A different lr is another setting, and the baseline stays a row of its own even with seed 0's params.
    assert any(line.startswith("other-lr") and "± " not in line for line in lines)
    assert any(line.startswith("main") and "0.9400 " in line for line in lines)


def test_experiments_of_different_commits_are_never_one_row() -> None:
    # `make compare ARGS=-A`: the same params and seed run on two commits are two results, each under its own.
    older = {"rev": "fedcba9876543210", "name": None, "data": _seeded(0, 0.004, 0.94)}
    older["experiments"] = [_experiment("old-run", _seeded(0, 0.003, 0.80))]
    shown = _baseline([_experiment("new-run", _seeded(0, 0.003, 0.93))]) + [older]
    lines = table(rows_from_exp_show(shown)).splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["main", "new-run", "fedcba9", "old-run"]
    assert "0.9300" in lines[3] and "0.8000" in lines[5] and "seeds" not in "".join(lines)


def test_a_failed_or_unfinished_experiment_shows_its_state_and_no_numbers() -> None:
    # DVC gives a failed queued experiment its baseline's metrics: they must not pass for the experiment's.
    baseline_numbers = _seeded(0, 0.004, 0.9394)
    shown = _baseline(
        [_experiment(n, copy.deepcopy(baseline_numbers), s) for n, s in (("f", "failed"), ("q", "queued"))]
    )
    lines = table(rows_from_exp_show(shown), markdown=True).splitlines()
    for name, state in (("f", "failed"), ("q", "queued")):
        cells = [c.strip() for c in next(line for line in lines if line.startswith(f"| {name} ")).split("|")[1:-1]]
        assert cells[0] == f"{name} ({state})" and cells[1:5] == ["", "", "", ""]


def test_a_row_lists_a_few_params_then_how_many_more() -> None:
    far = _seeded(0, 0.001, 0.8)
    cnn = far["params"]["params.yaml"]["data"]["cnn"]
    cnn.update(epochs=3, batch_size=64, dropout=0.1, momentum=0.5, tta=False, fc=64)
    shown = _baseline([_experiment("notebook", far)])
    shown[0]["data"]["params"]["params.yaml"]["data"]["cnn"].update(
        batch_size=256, dropout=0.3, momentum=0.9, tta=True, fc=128
    )
    lines = table(rows_from_exp_show(shown), markdown=True).splitlines()
    params = next(line for line in lines if line.startswith("| notebook")).split("|")[-2].strip()
    assert params.count("=") == MAX_PARAMS and params.endswith(", +3 more")  # 7 differ: epochs, lr and 5 more
