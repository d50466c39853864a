"""predict: ordinary pictures in, Fashion-MNIST classes out; Fashion-MNIST's own images get evaluate's predictions."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from stages.data import CLASS_NAMES, Split, stratified_sample
from stages.engine import fit
from stages.errors import UserError
from stages.params import load_params
from stages.photo import read_image, to_fashion_mnist
from stages.predict import parse_args, show_names
from tests.helpers import BIN, ROOT, make_project, run, save_model, stage
from tests.photos import KINDS, RED, graded, header_only_png, save

SAMPLE = 600  # test images per check: enough to see a 4-point accuracy gap, small enough for seconds
# Other forms of the test images may fall 0.04 below the native ones: a Xeon with AMX (2026-12-02) measured
# enlarged 0.032 and product_photo 0.028 below native 0.813 with this fixture's model (0.03 failed there).
FORM_MARGIN = 0.04
PHOTOS = 200  # test images per kind of photo (six kinds): rendering and separating them takes most of the time
# How far below the native accuracy each kind may fall: the largest gap measured with this fixture's model, plus
# about 0.04 of noise (200 images). Gaps: AMD EPYC up to 0.06 (shadowed); on a Xeon (2026-12-02; its kernels train
# another model) textured 0.085 and shadowed 0.125, the rest under 0.03. A broken backdrop separation costs tens
# of points for its kind, still far outside these.
PHOTO_MARGIN = {"plain_white": 0.06, "graded": 0.06, "textured": 0.12, "shadowed": 0.16, "off_centre": 0.06,
                "dark_backdrop": 0.06}  # fmt: skip


@pytest.fixture(scope="module")
def trained(official_splits, tmp_path_factory) -> Path:
    """A project whose CNN learnt from 6,000 training images for two epochs (about 75 % accurate).

    The tiny pipeline's models get about 65 %: their mistakes are so many that accuracies move by points
    between two renderings of the same image, which would hide what this module measures.
    """
    project = make_project(tmp_path_factory.mktemp("predict") / "project")
    train, _ = official_splits
    pick = stratified_sample(train.labels, 6500, np.random.default_rng(0))
    fit_on, val = pick[:6000], pick[6000:]
    cfg = dataclasses.replace(load_params("cnn", project / "params.yaml"), epochs=2, batch_size=256, device="cpu")
    result = fit(
        cfg,
        Split(train.images[fit_on], train.labels[fit_on]),
        Split(train.images[val], train.labels[val]),
        torch.device("cpu"),
    )
    save_model(project / "models" / "cnn.pt", result, cfg)
    return project


def predict_json(project: Path, paths: list[Path], *args: str) -> list[dict]:
    result = stage(project, "predict", "--json", *args, *map(str, paths))
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_show_names_are_unique_and_safe() -> None:
    assert show_names(["a/shirt.jpg", "b/shirt.png", "shirt.jpg", "my photo!.png"]) == [
        "shirt", "shirt-2", "shirt-3", "my_photo_",
    ]  # fmt: skip
    # x.png's input picture would be x.input.png, x.input.png's own panel: the second is renumbered.
    assert show_names(["x.png", "x.input.png"]) == ["x", "x.input-2"]
    assert show_names(["x.input.png", "x.png"]) == ["x.input", "x-2"]


def test_show_never_overwrites_a_picture_it_classifies(trained, tmp_path, official_splits) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    picture = save(seen / "boot.input.png", official_splits[1].images[0])  # an earlier --show input, given back
    before = picture.read_bytes()
    result = stage(trained, "predict", str(picture), "--show", str(seen), check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"error: --show {seen} would overwrite your picture {picture}; choose another folder\n"
    assert picture.read_bytes() == before and sorted(seen.iterdir()) == [picture]


def test_make_predict_without_images_says_how_to_pass_them() -> None:
    result = run(ROOT, "make", "--no-print-directory", "predict", "IMAGES=", check=False)
    assert result.returncode != 0
    assert result.stderr.splitlines()[0] == (
        'error: no pictures given: make predict IMAGES="shoe.jpg shirt.png" '
        "(PNG or JPEG; MODEL=mlp for the MLP, SHOW=folder to see what the model saw)"
    )
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_make_predict_prints_only_what_predict_prints(tmp_path) -> None:
    """The README shows `make predict` output starting with the answer, so make must not echo the command."""
    missing = tmp_path / "missing.png"
    result = run(ROOT, "make", "--no-print-directory", "-o", "setup", "predict", f"IMAGES={missing}", check=False)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["a.png", "--top", "0"], "argument --top: must be a whole number from 1 to 10, not '0'"),
        (["a.png", "--top", "11"], "argument --top: must be a whole number from 1 to 10, not '11'"),
        (["a.png", "--model", "vit"], "argument --model: invalid choice: 'vit'"),
        ([], "no pictures given: python -m stages.predict IMAGE"),
        (["--model", "mlp"], "no pictures given: python -m stages.predict IMAGE"),
        (["a.png", "--top", "²"], "argument --top: must be a whole number from 1 to 10, not '²'"),  # isdigit's
        (["-dash.png"], r"unrecognized arguments: -dash\.png: a picture named -dash\.png goes after `--`, as in "),
        (["a.png", "-dash.png"], r"unrecognized arguments: -dash\.png: a picture named -dash\.png goes after `--`"),
        (["a.png", "--model", "mlp", "--checkpoint", "m.pt"], "argument --checkpoint: not allowed with argument"),
    ],
)
def test_bad_arguments_are_one_line(capsys, argv, message) -> None:
    with pytest.raises(UserError, match=f"^{message}"):
        parse_args(argv)
    assert capsys.readouterr().err == ""  # no usage dump before the one line


def test_a_name_starting_with_a_dash_is_a_picture_after_double_dash() -> None:
    assert parse_args(["--top", "2", "--", "-dash.png"]).images == ["-dash.png"]


# --- the command ---


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_test_images_as_png_get_evaluates_predictions(reproduced, tmp_path, name) -> None:
    images = np.load(reproduced / "data" / "prepared" / "test_images.npy")
    evaluated = pd.read_csv(reproduced / "plots" / name / "predictions.csv")
    picks = np.random.default_rng(1).choice(len(images), SAMPLE, replace=False)
    paths = [save(tmp_path / f"{i}.png", images[i]) for i in picks]
    results = predict_json(reproduced, paths, "--model", name)
    assert [r["image"] for r in results] == [str(p) for p in paths]
    assert [r["label"] for r in results] == list(evaluated["predicted"].iloc[picks])
    # Both round to 4 decimals, evaluate in float32 and predict in float64: the last digit may differ by one.
    assert np.allclose([r["probability"] for r in results], evaluated["probability"].iloc[picks], atol=1.01e-4)


def enlarged(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(image).resize((112, 112), Image.Resampling.BICUBIC)


def dark_on_white(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(255 - image).convert("RGB")


def product_photo(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    canvas = Image.new("RGB", (200, 160), "white")
    canvas.paste(Image.fromarray(255 - image).resize((112, 112), Image.Resampling.BICUBIC), (44, 24))
    return canvas


def off_centre_on_black(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    canvas = np.zeros((48, 48), dtype=np.uint8)
    top, left = rng.integers(0, 21, 2)
    canvas[top : top + 28, left : left + 28] = image
    return Image.fromarray(canvas)


def cutout(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    rgba = np.dstack([255 - image] * 3 + [np.where(image > 0, 255, 0)]).astype(np.uint8)
    return Image.fromarray(rgba).resize((84, 84), Image.Resampling.NEAREST)


FORMS = {
    "enlarged": (enlarged, "png"),
    "dark_on_white": (dark_on_white, "png"),
    "product_photo": (product_photo, "jpg"),
    "off_centre_on_black": (off_centre_on_black, "png"),
    "cutout": (cutout, "png"),
}


def accuracy_per_form(
    project: Path, test: Split, forms: dict, n: int, seed: int, folder: Path, **save_kwargs
) -> dict[str, float]:
    """predict's top-1 accuracy on n test images, native and in each form {name: (render, extension)}."""
    picks = np.random.default_rng(seed).choice(len(test.labels), n, replace=False)
    rng = np.random.default_rng(seed + 1)
    paths = {"native": [save(folder / f"{i}.png", test.images[i]) for i in picks]}
    for form, (render, ext) in forms.items():
        paths[form] = [save(folder / f"{i}-{form}.{ext}", render(test.images[i], rng), **save_kwargs) for i in picks]
    results = predict_json(project, [p for form_paths in paths.values() for p in form_paths])
    labels = np.array([CLASS_NAMES.index(r["label"]) for r in results]).reshape(len(paths), n)
    accuracy = dict(zip(paths, (labels == test.labels[picks]).mean(1).round(4), strict=True))
    print(f"top-1 accuracy per form: {accuracy}")
    return accuracy


@pytest.mark.long
def test_other_forms_of_the_test_images_are_as_accurate(official_splits, trained, tmp_path) -> None:
    accuracy = accuracy_per_form(trained, official_splits[1], FORMS, SAMPLE, 2, tmp_path)
    assert all(accuracy[form] >= accuracy["native"] - FORM_MARGIN for form in FORMS), accuracy


def test_bad_files_are_one_line_each_and_the_rest_is_classified(official_splits, trained, tmp_path) -> None:
    image = official_splits[1].images[0]
    good = [save(tmp_path / "good.png", image), save(tmp_path / "good.jpg", Image.fromarray(255 - image), quality=95)]
    (tmp_path / "empty.png").touch()
    (tmp_path / "notes.png").write_text("not a picture\n")
    (tmp_path / "truncated.png").write_bytes(good[0].read_bytes()[:100])
    header_only_png(tmp_path / "bomb.png", 20_000, 20_000)
    bad = {
        "notes.png": "not a PNG or JPEG image",
        "empty.png": "the file is empty",
        "missing.png": "no such file",
        "bomb.png": "refused as a possible decompression bomb",
        "truncated.png": "cannot decode the image",
    }
    paths = [good[0], *(tmp_path / name for name in bad), good[1]]
    result = stage(trained, "predict", "--json", *map(str, paths), check=False)
    assert result.returncode == 1
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(p) for p in good]
    *errors, summary = result.stderr.splitlines()
    assert len(errors) == len(bad), result.stderr
    for line, (name, why) in zip(errors, bad.items(), strict=True):
        assert line.startswith(f"error: {tmp_path / name}: {why}"), line
    assert summary == f"error: {len(bad)} of {len(paths)} images could not be classified"


def test_table_shows_the_top_k(official_splits, trained, tmp_path) -> None:
    path = save(tmp_path / "boot.png", official_splits[1].images[0])
    out = stage(trained, "predict", str(path), "--top", "5").stdout.splitlines()
    label = out[0].removeprefix(f"{path}: ")
    rows = [line.rsplit(None, 1) for line in out[3:]]
    assert out[0] != label and label in CLASS_NAMES and out[1].split() == ["class", "probability"]
    assert len(rows) == 5 and rows[0][0] == label and all(name in CLASS_NAMES for name, _ in rows)
    percents = [float(p.rstrip("%")) for _, p in rows]
    assert percents == sorted(percents, reverse=True) and sum(percents) <= 100.5


def test_json_top_k_is_sorted_and_sums_to_one(official_splits, trained, tmp_path) -> None:
    path = save(tmp_path / "boot.png", official_splits[1].images[0])
    (result,) = predict_json(trained, [path], "--top", "10", "--model", "cnn")
    names, probs = zip(*result["top"], strict=True)
    assert sorted(names) == sorted(CLASS_NAMES) and result["label"] == names[0] and result["probability"] == probs[0]
    assert list(probs) == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-3)


def test_a_missing_model_says_to_run_dvc_repro_or_dvc_checkout_when_dvc_lock_has_it(project) -> None:
    result = stage(project, "predict", "anything.png", check=False)
    assert result.returncode == 1
    assert result.stderr == "error: models/cnn.pt does not exist: run `dvc repro` to create it\n"
    shutil.copy(ROOT / "dvc.lock", project)  # as after a failed `dvc exp run`, which removed the model
    result = stage(project, "predict", "anything.png", check=False)
    assert result.returncode == 1
    assert result.stderr == (
        "error: models/cnn.pt does not exist: `dvc checkout models/cnn.pt` brings back the version dvc.lock "
        "records (`dvc pull models/cnn.pt` if this clone's cache lacks it)\n"
    )


# --- the command against a failing environment: a quickly trained MLP is enough ---


@pytest.fixture(scope="module")
def quick(official_splits, tmp_path_factory) -> Path:
    project = make_project(tmp_path_factory.mktemp("quick") / "project")
    train, _ = official_splits
    cfg = dataclasses.replace(load_params("mlp", project / "params.yaml"), epochs=1, device="cpu", precision="fp32")
    fit_on = Split(train.images[:600], train.labels[:600])
    val = Split(train.images[600:700], train.labels[600:700])
    save_model(project / "models" / "mlp.pt", fit(cfg, fit_on, val, torch.device("cpu")), cfg)
    return project


def predict_process(project: Path, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "stages.predict", "--model", "mlp", *args]
    return subprocess.Popen(command, cwd=project, env=env, stderr=subprocess.PIPE, text=True, **popen)


def test_a_fifo_among_the_images_does_not_hang_the_others(official_splits, quick, tmp_path) -> None:
    os.mkfifo(tmp_path / "fifo.png")
    good = save(tmp_path / "good.png", official_splits[1].images[0])
    paths = (str(tmp_path / "fifo.png"), str(good))
    result = stage(quick, "predict", "--model", "mlp", "--json", *paths, check=False, timeout=120)
    assert result.returncode == 1
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(good)]
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'fifo.png'}: is a special file (a FIFO, socket or device), not an image",
        "error: 1 of 2 images could not be classified",
    ]


def test_a_fetched_model_file_classifies_from_any_folder(official_splits, quick, tmp_path) -> None:
    """`dvc artifacts get ... -o mlp.pt`, then predict where there is no params.yaml and no models/; a symlink
    loop and a path through a file among the pictures are one error line each, as a missing picture is."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(quick / "models" / "mlp.pt", elsewhere / "fetched.pt")
    good = save(tmp_path / "good.png", official_splits[1].images[0])
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    paths = [str(tmp_path / "loop.png"), str(good), str(good / "inner.png")]
    result = stage(elsewhere, "predict", "--checkpoint", "fetched.pt", "--json", *paths, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {paths[0]}: cannot read it (Too many levels of symbolic links)",
        f"error: {paths[2]}: cannot read it (Not a directory)",
        "error: 2 of 3 images could not be classified",
    ]
    assert result.stdout == stage(quick, "predict", "--model", "mlp", "--json", str(good)).stdout  # the same answer


def test_a_closed_stdout_is_an_error(official_splits, quick, tmp_path) -> None:
    good = save(tmp_path / "good.png", official_splits[1].images[0])
    # `>&-`: Python then has no sys.stdout, and print() would drop the results without a word.
    result = run(
        quick, "sh", "-c", '"$0" -m stages.predict --model mlp "$1" >&-', sys.executable, str(good), check=False
    )
    assert result.returncode == 1 and result.stderr.startswith("error: standard output is closed")


def test_a_full_stdout_is_one_line(official_splits, quick, tmp_path) -> None:
    good = save(tmp_path / "good.png", official_splits[1].images[0])
    with open("/dev/full", "w") as full:
        proc = predict_process(quick, str(good), stdout=full)
        stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 1
    assert stderr == "error: cannot write the results to standard output: No space left on device\n"


def test_a_reader_that_stops_early_ends_predict_quietly(official_splits, quick, tmp_path) -> None:
    good = save(tmp_path / "good.png", official_splits[1].images[0])
    proc = predict_process(quick, str(good), stdout=subprocess.PIPE)
    proc.stdout.close()  # as `| head -0` would
    stderr = proc.communicate(timeout=120)[1]
    assert (proc.returncode, stderr) == (141, "")


def test_a_model_whose_outputs_overflow_says_so(official_splits, quick, tmp_path) -> None:
    checkpoint = torch.load(quick / "models" / "mlp.pt", weights_only=True)
    last_weight = list(checkpoint["state_dict"])[-2]  # the output layer: finite weights, infinite logits
    checkpoint["state_dict"][last_weight] = torch.full_like(checkpoint["state_dict"][last_weight], 3e38)
    overflow = make_project(tmp_path / "overflow")
    (overflow / "models").mkdir()
    torch.save(checkpoint, overflow / "models" / "mlp.pt")
    good = save(tmp_path / "good.png", official_splits[1].images[0])
    result = stage(overflow, "predict", "--model", "mlp", str(good), check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        "error: models/mlp.pt gives NaN or infinite probabilities (its weights overflow); "
        "retrain with `dvc repro train_mlp`\n"
    )


def test_show_writes_what_the_model_saw_and_it_predicts_the_same(official_splits, trained, tmp_path) -> None:
    _, test = official_splits
    photo = save(tmp_path / "red-t-shirt.jpg", graded(test.images[0], np.random.default_rng(7), RED), quality=85)
    native = save(tmp_path / "boot.png", test.images[0])
    (first, second) = predict_json(trained, [photo, native], "--show", str(tmp_path / "seen"), "--top", "10")
    assert first["input"] == str(tmp_path / "seen" / "red-t-shirt.input.png")
    assert first["shown"] == str(tmp_path / "seen" / "red-t-shirt.png")
    seen = np.asarray(Image.open(first["input"]))
    assert seen.shape == (28, 28) and np.array_equal(seen, to_fashion_mnist(read_image(photo)))
    assert np.array_equal(np.asarray(Image.open(second["input"])), test.images[0])
    panel = Image.open(first["shown"])
    assert panel.width > 600 and panel.height > 200
    # The 28x28 input given back is classified exactly as the photo was.
    (again,) = predict_json(trained, [Path(first["input"])], "--top", "10")
    assert again["top"] == first["top"]
    text = stage(trained, "predict", str(photo), "--show", str(tmp_path / "seen")).stdout
    assert text.splitlines()[-1] == (
        f"(the model saw {tmp_path / 'seen' / 'red-t-shirt.input.png'}; "
        f"side by side in {tmp_path / 'seen' / 'red-t-shirt.png'})"
    )


def test_show_into_a_file_is_one_line(trained, tmp_path, official_splits) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    path = save(tmp_path / "boot.png", official_splits[1].images[0])
    result = stage(trained, "predict", str(path), "--show", str(tmp_path / "taken"), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: --show {tmp_path / 'taken'}: cannot create the folder")


@pytest.mark.long
def test_photos_are_classified_nearly_as_well_as_the_test_images(official_splits, trained, tmp_path) -> None:
    """Each kind of product photo (tests/photos.py) against the same test images in their native form."""
    kinds = {kind: (render, "jpg") for kind, render in KINDS.items()}
    accuracy = accuracy_per_form(trained, official_splits[1], kinds, PHOTOS, 5, tmp_path, quality=85)
    assert all(accuracy[kind] >= accuracy["native"] - PHOTO_MARGIN[kind] for kind in KINDS), accuracy
