from __future__ import annotations

import copy
import sys

import pytest

from stages.params import (
    CNNParams,
    DataParams,
    MLPParams,
    ParamsError,
    load_params,
    parse_section,
    read_yaml,
    set_dotted,
)
from tests.conftest import ROOT, run, set_params, stage

DEFAULTS = read_yaml(ROOT / "params.yaml")


def with_change(section: str, dotted: str, value: object) -> dict:
    raw = copy.deepcopy(DEFAULTS[section])
    set_dotted(raw, dotted, value)
    return raw


def test_default_params_load() -> None:
    assert isinstance(load_params("data", ROOT / "params.yaml"), DataParams)
    assert isinstance(load_params("mlp", ROOT / "params.yaml"), MLPParams)
    cnn = load_params("cnn", ROOT / "params.yaml")
    assert isinstance(cnn, CNNParams) and cnn.name == "cnn"


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("mlp", "epochs", "ten", "mlp.epochs must be a positive integer, got 'ten'"),
        ("mlp", "epochs", -1, "mlp.epochs must be a positive integer, got -1"),
        ("cnn", "epochs", 2.5, "cnn.epochs must be a positive integer"),
        ("cnn", "epochs", True, "cnn.epochs must be a positive integer"),
        ("cnn", "batch_size", 0, "cnn.batch_size must be a positive integer, got 0"),
        ("mlp", "lr", 0, "mlp.lr must be a positive number, got 0"),
        ("mlp", "lr", -0.1, "mlp.lr must be a positive number"),
        ("mlp", "lr", float("nan"), "mlp.lr must be a positive number"),
        ("cnn", "dropout", 1.0, "cnn.dropout must be a number in [0, 1), got 1.0"),
        ("cnn", "dropout", -0.1, "cnn.dropout must be a number in [0, 1)"),
        ("cnn", "optimizer", "sgdd", "cnn.optimizer must be one of sgd, adam, adamw, got 'sgdd'"),
        ("cnn", "schedule", "linear", "cnn.schedule must be one of none, step, cosine, onecycle"),
        ("mlp", "activation", "sigmoid", "mlp.activation must be one of relu, gelu, silu, tanh"),
        ("mlp", "device", "tpu", "mlp.device must be one of auto, cpu, cuda, mps"),
        ("mlp", "hidden", [], "mlp.hidden must be a non-empty list of positive integers, got []"),
        ("mlp", "hidden", [128, 1.5], "mlp.hidden must be a non-empty list of positive integers"),
        ("mlp", "hidden", 128, "mlp.hidden must be a non-empty list of positive integers"),
        ("cnn", "kernel_size", 4, "cnn.kernel_size must be a positive odd integer"),
        ("cnn", "normalize.std", 0, "cnn.normalize.std must be a positive number"),
        ("cnn", "augment.shift", 9, "cnn.augment.shift must be an integer from 0 to 4"),
        ("data", "val_size", 60000, "data.val_size must be between 10"),
        ("data", "val_size", 5, "data.val_size must be between 10"),
        ("data", "train_limit", 5, "data.train_limit must be null or between 10"),
        ("data", "train_limit", 59000, "data.train_limit must be null or between 10 (one image per class) and 55000"),
    ],
)
def test_invalid_values_name_the_key(section: str, key: str, value: object, expected: str) -> None:
    with pytest.raises(ParamsError) as err:
        parse_section(section, with_change(section, key, value))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_and_missing_keys() -> None:
    raw = with_change("cnn", "epoch", 3)
    with pytest.raises(ParamsError, match=r"unknown key cnn\.epoch; allowed keys: epochs, lr"):
        parse_section("cnn", raw)
    raw = copy.deepcopy(DEFAULTS["mlp"])
    del raw["lr"]
    with pytest.raises(ParamsError, match=r"mlp\.lr is missing"):
        parse_section("mlp", raw)


def test_conv_stack_that_shrinks_below_one_pixel() -> None:
    raw = with_change("cnn", "channels", [8, 8, 8, 8, 8, 8])
    with pytest.raises(ParamsError, match=r"shrink the 28x28 image below 1x1 at block 5"):
        parse_section("cnn", raw)
    raw = with_change("cnn", "channels", [8, 8])
    raw.update(kernel_size=15, padding="valid", pool="none")
    with pytest.raises(ParamsError, match="below 1x1 at block 2"):
        parse_section("cnn", raw)


def test_nesterov_needs_sgd_with_momentum() -> None:
    with pytest.raises(ParamsError, match=r"cnn\.nesterov needs optimizer: sgd"):
        parse_section("cnn", with_change("cnn", "nesterov", True))


def test_exponent_floats_as_dvc_writes_them(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text().replace("lr: 0.004", "lr: 1e-3")
    path.write_text(text)
    assert load_params("cnn", path).lr == pytest.approx(1e-3)


def test_invalid_yaml_is_one_line(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("cnn: [unclosed\n")
    with pytest.raises(ParamsError, match="is not valid YAML at line"):
        load_params("cnn", path)


def test_stage_rejects_bad_params_before_any_work(project) -> None:
    set_params(project, {"cnn.epochs": "ten"})
    result = stage(project, "train", "cnn", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: params.yaml: cnn.epochs must be a positive integer, got 'ten'"
    assert "Traceback" not in result.stderr
    assert not (project / "models").exists() and not (project / "plots").exists()


def test_stage_started_as_a_file_path_says_how_to_run_it(project) -> None:
    result = run(project, sys.executable, "stages/train.py", "mlp", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: run the stages from the repository root as `python -m stages.train mlp`"


def test_stage_from_another_directory_says_where_to_run(project, tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = stage(elsewhere, "prepare", check=False, env={"PYTHONPATH": str(project)})
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: no params.yaml in {elsewhere}: run the stages from the repository root"


def test_bad_value_from_dvc_exp_run_is_one_line(project) -> None:
    result = run(project, "dvc", "exp", "run", "-S", "mlp.epochs=ten", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "error: params.yaml: mlp.epochs must be a positive integer, got 'ten'" in output
    assert "Traceback" not in output
    assert not (project / "models" / "mlp.pt").exists()


def test_set_dotted_sets_nested_keys_like_exp_run_s() -> None:
    raw = copy.deepcopy(DEFAULTS)
    set_dotted(raw, "cnn.augment.erase", 0.25)
    set_dotted(raw, "mlp.epochs", 3)
    assert raw["cnn"]["augment"]["erase"] == 0.25 and raw["mlp"]["epochs"] == 3
    assert raw["cnn"]["augment"]["hflip"] == DEFAULTS["cnn"]["augment"]["hflip"]
