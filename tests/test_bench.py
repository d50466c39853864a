"""`make bench` on a tiny budget: it runs and writes the keys the README and issue tracker read."""

from __future__ import annotations

import json
import statistics

import pytest

from benchmarks.notebook import notebook_params, overrides
from tests.conftest import ROOT, run

pytestmark = pytest.mark.slow


def test_notebook_overlay_is_valid_params() -> None:
    assert overrides()["data.val_size"] == 12000
    assert notebook_params("mlp", ROOT / "params.yaml").hidden == [128, 64]
    assert notebook_params("cnn", ROOT / "params.yaml").channels == [10, 20]


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
    speedups = results["speedup_per_round"]
    assert results["mlp_speedup"] == statistics.median(speedups["mlp ours fp32"])
    assert speedups["mlp notebook"] == [1.0] and len(speedups["cnn ours fp32"]) == 1
