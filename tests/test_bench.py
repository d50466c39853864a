"""`make bench` on a tiny budget: it runs and writes the keys the README and issue tracker read."""

from __future__ import annotations

import json

from benchmarks.bench import check_targets, round_ratios
from benchmarks.notebook import notebook_params, overrides
from tests.helpers import ROOT, run


def test_notebook_overlay_is_valid_params() -> None:
    assert overrides()["data.val_size"] == 12000
    assert notebook_params("mlp", ROOT / "params.yaml").hidden == [128, 64]
    assert notebook_params("cnn", ROOT / "params.yaml").channels == [10, 20]


def test_speedup_is_the_median_of_each_rounds_ratio() -> None:
    runs = {
        "mlp notebook": [10.0, 20.0, 40.0],
        "mlp ours fp32": [50.0, 40.0, 200.0],
        "cnn notebook": [4.0, 2.0, 1.0],
        "cnn ours fp32": [8.0, 8.0, 8.0],
    }
    ratios = round_ratios(runs)
    assert ratios["mlp ours fp32"] == [5.0, 2.0, 5.0]  # paired round by round, not sorted
    assert ratios["cnn ours fp32"] == [2.0, 4.0, 8.0]  # each model against its own notebook loop
    assert ratios["mlp notebook"] == [1.0, 1.0, 1.0]


def test_bench_smoke_run_writes_results(tmp_path) -> None:
    out = tmp_path / "results.json"
    result = run(ROOT, "python", "-m", "benchmarks.bench", "--batches", "3", "--repeats", "1", "--out", str(out))
    assert "| MLP" in result.stdout and "| CNN" in result.stdout
    results = json.loads(out.read_text())
    for key in ("mlp_speedup", "cnn_speedup", "torch_threads", "cnn_training_gflops", "matmul_gflops"):
        assert key in results
    assert results["mlp_speedup"] > 0 and results["cnn_speedup"] > 0
    assert set(results["images_per_second"]) == {
        f"{m} {loop}" for m in ("mlp", "cnn") for loop in ("notebook", "ours fp32", "ours auto", "model only")
    }
    assert "target: MLP loop >= 90 % of the model-only ceiling" in result.stdout
    assert set(results["targets_met"]) == {"mlp_90_percent_of_ceiling", "mlp_10x", "cnn_3x"}
    speedups = results["speedup_per_round"]
    (cnn_ours,), (cnn_notebook,) = (
        results["images_per_second"]["cnn ours fp32"],
        results["images_per_second"]["cnn notebook"],
    )
    (mlp_ours,), (mlp_notebook,) = (
        results["images_per_second"]["mlp ours fp32"],
        results["images_per_second"]["mlp notebook"],
    )
    assert speedups["cnn ours fp32"] == [cnn_ours / cnn_notebook]
    assert results["mlp_speedup"] == mlp_ours / mlp_notebook


def test_targets_judge_the_mlp_against_the_ceiling_of_the_same_run() -> None:
    runs = {"mlp ours fp32": [90.0, 95.0, 80.0], "mlp model only": [100.0, 100.0, 100.0]}
    speedup = {"mlp ours fp32": 9.0, "mlp model only": 10.0, "cnn ours fp32": 3.1}
    targets = check_targets(runs, speedup)
    assert targets["mlp_share_of_ceiling"] == 0.9  # the median of the rounds' shares, not of the speeds
    assert targets["met"] == {"mlp_90_percent_of_ceiling": True, "mlp_10x": None, "cnn_3x": True}
    slow = check_targets({**runs, "mlp ours fp32": [85.0, 89.0, 80.0]}, {**speedup, "mlp model only": 12.0})
    assert slow["met"] == {"mlp_90_percent_of_ceiling": False, "mlp_10x": False, "cnn_3x": True}
    assert check_targets(runs, {**speedup, "cnn ours fp32": 2.9})["met"]["cnn_3x"] is False
