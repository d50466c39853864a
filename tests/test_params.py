from __future__ import annotations

import copy
import dataclasses
import shutil
import time

import pytest

from stages.engine import build_optimizer, build_scheduler
from stages.models import build_model
from stages.params import (
    CNNParams,
    DataParams,
    MLPParams,
    ParamsError,
    check_batches,
    load_params,
    parse_section,
    read_yaml,
    set_dotted,
)
from tests.helpers import DEFAULTS, ROOT, run, set_params, stage, with_change


def test_default_params_load() -> None:
    assert isinstance(load_params("data", ROOT / "params.yaml"), DataParams)
    assert isinstance(load_params("mlp", ROOT / "params.yaml"), MLPParams)
    cnn = load_params("cnn", ROOT / "params.yaml")
    assert isinstance(cnn, CNNParams) and cnn.name == "cnn"


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("mlp", "epochs", "ten", "mlp.epochs must be an integer from 1 to 10000, got 'ten'"),
        ("mlp", "epochs", -1, "mlp.epochs must be an integer from 1 to 10000, got -1"),
        ("cnn", "epochs", 2.5, "cnn.epochs must be an integer from 1 to 10000"),
        ("cnn", "epochs", True, "cnn.epochs must be an integer from 1 to 10000"),
        ("cnn", "batch_size", 0, "cnn.batch_size must be an integer from 1 to 60000, got 0"),
        ("mlp", "lr", 0, "mlp.lr must be a positive number, got 0"),
        ("mlp", "lr", -0.1, "mlp.lr must be a positive number"),
        ("mlp", "lr", float("nan"), "mlp.lr must be a positive number"),
        ("cnn", "dropout", 1.0, "cnn.dropout must be a number in [0, 1), got 1.0"),
        ("cnn", "dropout", -0.1, "cnn.dropout must be a number in [0, 1)"),
        ("cnn", "optimizer", "sgdd", "cnn.optimizer must be one of sgd, adam, adamw, got 'sgdd'"),
        ("cnn", "schedule", "linear", "cnn.schedule must be one of none, step, cosine, onecycle"),
        ("mlp", "activation", "sigmoid", "mlp.activation must be one of relu, gelu, silu, tanh"),
        ("mlp", "device", "tpu", "mlp.device must be one of auto, cpu, cuda, mps"),
        ("mlp", "hidden", [], "mlp.hidden must be a list of 1 to 16 integers from 1 to 16384, got []"),
        ("mlp", "hidden", [128, 1.5], "mlp.hidden must be a list of 1 to 16 integers"),
        ("mlp", "hidden", 128, "mlp.hidden must be a list of 1 to 16 integers"),
        ("cnn", "kernel_size", 4, "cnn.kernel_size must be an odd integer from 1 to 27"),
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


def test_whiten_needs_a_filter_pair_per_patch_direction() -> None:
    with pytest.raises(
        ParamsError, match=r"cnn\.whiten needs cnn\.channels\[0\] >= 2 \* kernel_size\^2 = 18 .* got 17; widen"
    ):
        parse_section("cnn", with_change("cnn", "channels", [17, 64]))
    parse_section("cnn", with_change("cnn", "channels", [18, 64]))
    raw = with_change("cnn", "kernel_size", 5)  # 50 filters for 5x5 patches: more than the default's 32
    with pytest.raises(ParamsError, match="= 50 .* got 32"):
        parse_section("cnn", raw)
    raw["whiten"] = False
    parse_section("cnn", raw)


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
    assert result.stderr.strip() == "error: params.yaml: cnn.epochs must be an integer from 1 to 10000, got 'ten'"
    assert "Traceback" not in result.stderr
    assert not (project / "models").exists() and not (project / "plots").exists()


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
    assert "error: params.yaml: mlp.epochs must be an integer from 1 to 10000, got 'ten'" in output
    assert "Traceback" not in output
    assert not (project / "models" / "mlp.pt").exists()


def test_set_dotted_sets_nested_keys_like_exp_run_s() -> None:
    raw = copy.deepcopy(DEFAULTS)
    set_dotted(raw, "cnn.augment.erase", 0.25)
    set_dotted(raw, "mlp.epochs", 3)
    assert raw["cnn"]["augment"]["erase"] == 0.25 and raw["mlp"]["epochs"] == 3
    assert raw["cnn"]["augment"]["hflip"] == DEFAULTS["cnn"]["augment"]["hflip"]


# --- bounds: the last allowed value passes and the first beyond it fails, on each side ---


@pytest.mark.parametrize(
    ("section", "key", "good", "bad"),
    [
        ("data", "val_size", 10, 9),
        ("data", "val_size", 59990, 59991),
        ("data", "train_limit", 10, 9),
        ("data", "train_limit", 55000, 55001),  # 60000 minus the default val_size 5000
        ("data", "seed", 0, -1),
        ("data", "seed", 2**32 - 1, 2**32),
        ("mlp", "seed", 2**32 - 1, 2**32),
        ("mlp", "epochs", 1, 0),
        ("mlp", "epochs", 10_000, 10_001),
        ("cnn", "batch_size", 1, 0),
        ("cnn", "batch_size", 60_000, 60_001),
        ("cnn", "augment.shift", 0, -1),
        ("cnn", "augment.shift", 4, 5),
        ("cnn", "augment.erase", 0.0, -0.01),
        ("cnn", "augment.erase", 0.99, 1.0),
        ("cnn", "dropout", 0.0, -0.01),
        ("cnn", "momentum", 0.99, 1.0),
        ("cnn", "warmup", 0.01, 0.0),
        ("cnn", "warmup", 0.99, 1.0),
        ("cnn", "label_smoothing", 0.0, -0.01),
        ("cnn", "weight_decay", 0.0, -1e-9),
        ("cnn", "lr", 1e-12, 0.0),
        ("cnn", "normalize.std", 1e-9, 0.0),
        ("cnn", "kernel_size", 1, -1),
        ("cnn", "kernel_size", 27, 29),
        ("cnn", "fc", 0, -1),
        ("cnn", "fc", 16_384, 16_385),
        ("cnn", "channels", [4096], [4097]),
        ("cnn", "channels", [1], [0]),
        ("mlp", "hidden", [16_384], [16_385]),
        ("mlp", "hidden", [8] * 16, [8] * 17),
    ],
)
def test_bounds_are_exact(section: str, key: str, good: object, bad: object) -> None:
    raw = with_change(section, key, good)
    if section == "cnn":
        raw["whiten"] = False  # its own rule ties the first block's width to the kernel (tested above)
    parse_section(section, raw)
    with pytest.raises(ParamsError, match=f"{section}.{key} must be"):
        parse_section(section, with_change(section, key, bad))


def test_huge_numbers_are_refused_with_a_short_message() -> None:
    for key in ("lr", "weight_decay", "normalize.mean"):
        with pytest.raises(ParamsError) as err:
            parse_section("mlp", with_change("mlp", key, 10**400))  # no float can hold it
        assert f"mlp.{key} must be" in str(err.value) and len(str(err.value)) < 200


# --- params.yaml as DVC reads it ---


def dvc_reads(text: str) -> dict:
    from dvc.utils.serialize import parse_yaml

    return parse_yaml(text, "params.yaml")


@pytest.mark.parametrize("value", ["010", "0x10", "0o10", "1_000", "012345", "08", "1e3", "+7"])
def test_integer_forms_read_as_dvc_reads_them(tmp_path, value) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(f"data:\n  seed: {value}\n")
    assert read_yaml(path)["data"]["seed"] == dvc_reads(path.read_text())["data"]["seed"]


@pytest.mark.parametrize("value", ["yes", "no", "on", "off"])
def test_yaml_1_1_booleans_are_strings_as_in_dvc_and_refused(tmp_path, value) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text().replace("tta: true", f"tta: {value}"))
    assert dvc_reads(path.read_text())["cnn"]["tta"] == value
    with pytest.raises(ParamsError, match=f"cnn.tta must be true or false, got '{value}'"):
        load_params("cnn", path)


def test_a_duplicate_key_is_refused_as_dvc_refuses_it(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text().replace("\ncnn:\n", "\ncnn:\n  epochs: 3\n"))
    with pytest.raises(ParamsError, match=r'is not valid YAML at line \d+: found duplicate key "epochs"'):
        load_params("cnn", path)
    with pytest.raises(Exception, match="corrupted"):
        dvc_reads(path.read_text())


def test_nested_aliases_are_refused_before_they_are_expanded(tmp_path) -> None:
    lines = ["a0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]  # 10**12 values
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\nmlp:\n  hidden: *a11\n")
    assert path.stat().st_size < 2000
    started = time.perf_counter()
    with pytest.raises(ParamsError, match="expands to more than 10,000 values") as err:
        load_params("mlp", path)
    assert time.perf_counter() - started < 5 and len(str(err.value)) < 300
    path.write_text("mlp: &m\n  hidden: [*m]\n")  # a structure that holds itself
    with pytest.raises(ParamsError, match="expands to more than"):
        load_params("mlp", path)


def test_a_bad_value_deep_inside_is_shown_short() -> None:
    nested = [[[[list(range(1000))]]]]
    with pytest.raises(ParamsError) as err:
        parse_section("mlp", with_change("mlp", "hidden", nested))
    assert len(str(err.value)) < 200


def test_params_that_are_not_utf8_or_too_large(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"data:\n  seed: 0  # caf\xe9\n")
    with pytest.raises(ParamsError, match=r"is not UTF-8 text \(byte 0xe9 on line 2\); save it as UTF-8"):
        load_params("data", path)
    path.write_bytes(b"# " + b"x" * 1_000_000 + b"\n")
    with pytest.raises(ParamsError, match="is larger than 1,000,000 bytes"):
        load_params("data", path)


# --- cross-field checks that need the number of training images, run before training ---


def test_onecycle_needs_two_warm_up_steps() -> None:
    cfg = dataclasses.replace(parse_section("mlp", DEFAULTS["mlp"]), epochs=1, batch_size=250, warmup=0.25)
    # 1000 images in batches of 250 are 4 steps, a quarter of them 1: PyTorch would divide by zero.
    with pytest.raises(ZeroDivisionError):
        build_scheduler(build_optimizer(build_model(cfg), cfg), cfg, steps=4)
    with pytest.raises(ParamsError, match=r"mlp\.warmup 0\.25 of 4 steps .* is 1 warm-up steps, .* at least 2"):
        check_batches(cfg, 1000)
    with pytest.raises(ParamsError, match="of 4 steps"):
        check_batches(dataclasses.replace(cfg, batch_size=300), 1000)  # 3 full batches and a part: 4 steps
    check_batches(dataclasses.replace(cfg, batch_size=125), 1000)  # 8 steps, 2 of warm-up
    check_batches(dataclasses.replace(cfg, schedule="cosine"), 1000)


def test_batch_norm_refuses_a_last_batch_of_one_image() -> None:
    mlp = dataclasses.replace(parse_section("mlp", DEFAULTS["mlp"]), batch_norm=True, batch_size=64, schedule="none")
    with pytest.raises(ParamsError, match=r"mlp\.batch_size 64 leaves a last batch of one image \(of 129"):
        check_batches(mlp, 129)
    check_batches(mlp, 130)
    with pytest.raises(ParamsError, match=r"mlp\.batch_size 1 trains on one image a batch \(of 130"):
        check_batches(dataclasses.replace(mlp, batch_size=1), 130)  # 130 % 1 is 0: every batch is one image
    check_batches(dataclasses.replace(mlp, batch_norm=False), 129)
    cnn = dataclasses.replace(parse_section("cnn", DEFAULTS["cnn"]), batch_size=64, schedule="none", channels=[8, 8, 8])
    check_batches(cnn, 129)  # its last batch norm sees 3x3 maps: 9 values per channel even for one image
    one_pixel = dataclasses.replace(cnn, channels=[8, 8, 8, 8])  # 28 -> 14 -> 7 -> 3 -> 1, like the default
    with pytest.raises(ParamsError, match=r"cnn\.batch_size 64 leaves a last batch of one image"):
        check_batches(one_pixel, 129)


def test_params_yaml_is_committed_as_dvc_writes_it(tmp_path) -> None:
    """`dvc exp run -S` and `dvc exp apply` rewrite params.yaml in DVC's own YAML style; committed in that style,
    they change only the values they set, so a `git commit -am` after them carries no reformatting."""
    from dvc.utils.serialize import modify_yaml

    copy = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", copy)
    with modify_yaml(copy):
        pass
    assert copy.read_text() == (ROOT / "params.yaml").read_text()
