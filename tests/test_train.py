"""The train stage as a user runs it: outputs, interrupts and divergence through the command line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import BIN, run, set_params, stage


@pytest.fixture
def prepared(project):
    stage(project, "prepare")
    return project


def test_train_writes_model_and_live_log(prepared) -> None:
    set_params(prepared, {"mlp.epochs": 2})
    result = stage(prepared, "train", "mlp")
    assert "mlp epoch 1/2: train loss" in result.stdout
    # The last line says what was kept, how long it took and in which precision
    assert re.fullmatch(
        r"train_mlp: kept epoch [12] of 2 \(val acc 0\.\d{4}\) in models/mlp\.pt; "
        r"trained in \d+ s \((bf16|fp32) on cpu\)",
        result.stdout.strip().splitlines()[-1],
    )
    checkpoint = torch.load(prepared / "models" / "mlp.pt", weights_only=True)
    assert checkpoint["model"] == "mlp" and checkpoint["params"]["epochs"] == 2 and len(checkpoint["class_names"]) == 10
    assert (
        (prepared / "dvclive" / "mlp" / "plots" / "metrics" / "mlp" / "val" / "acc.tsv")
        .read_text()
        .startswith("step\tacc\n1\t")
    )


@pytest.mark.parametrize(
    ("sig", "code", "name"),
    # SIGINT in `make test`; the other two end to end in `pytest -m long` only (about 17 s each), since
    # test_errors.py already checks each signal's exit code in-process.
    [
        (signal.SIGINT, 130, "SIGINT"),
        pytest.param(signal.SIGTERM, 143, "SIGTERM", marks=pytest.mark.long),
        pytest.param(signal.SIGHUP, 129, "SIGHUP", marks=pytest.mark.long),
    ],
)
def test_interrupt_mid_training_writes_no_model_and_repro_recovers(prepared, sig, code, name) -> None:
    set_params(prepared, {"cnn.epochs": 200})
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.train", "cnn"],
        cwd=prepared,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().startswith("cnn epoch 1/200")  # training is under way
    live = prepared / "dvclive" / "cnn" / "metrics.json"
    deadline = time.monotonic() + 60
    while not live.exists() and time.monotonic() < deadline:  # DVCLive writes the epoch just after the line
        time.sleep(0.1)
    assert json.loads(live.read_text())["step"] == 1  # the live log follows the run
    proc.send_signal(sig)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == code
    assert stderr.strip().splitlines() == [f"error: interrupted by {name}; rerun to start over"]
    assert not (prepared / "models").exists() or not any((prepared / "models").iterdir())
    assert not list(prepared.rglob("*.tmp"))
    set_params(prepared, {"cnn.epochs": 1})
    assert "Running stage 'train_cnn'" in run(prepared, "dvc", "repro", "train_cnn").stdout
    assert (prepared / "models" / "cnn.pt").is_file()


def test_divergence_exits_with_one_line_and_no_model(prepared) -> None:
    set_params(prepared, {"mlp.optimizer": "sgd", "mlp.lr": 1e6, "mlp.schedule": "none", "mlp.label_smoothing": 0.0})
    result = stage(prepared, "train", "mlp", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: mlp diverged in epoch 1: the training loss became")
    assert "lower mlp.lr" in result.stderr and "Traceback" not in result.stderr
    assert not (prepared / "models" / "mlp.pt").exists()


def test_a_schedule_that_would_crash_is_refused_before_training(prepared) -> None:
    # 1000 training images in batches of 250: 4 steps, one of them warm-up, where OneCycleLR divides by zero.
    set_params(prepared, {"mlp.batch_size": 250})
    result = stage(prepared, "train", "mlp", check=False)
    assert result.returncode == 1 and "epoch" not in result.stdout
    assert result.stderr.startswith("error: params.yaml: mlp.warmup 0.25 of 4 steps (1 epochs of 4 batches) is 1 ")
    assert len(result.stderr.splitlines()) == 1
    assert not (prepared / "models").exists()
