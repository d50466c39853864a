"""predict: classify your own pictures with a trained model.

`python -m stages.predict IMAGE [IMAGE ...] [--model cnn|mlp | --checkpoint PATH] [--top K] [--json] [--show DIR]`
turns each PNG or JPEG into a Fashion-MNIST image (stages/photo.py) and prints the K most likely classes.
`--model` reads the repository's models/<model>.pt; `--checkpoint` any model file (`dvc artifacts get`), from
any folder: the params the model needs are in the file. `--show DIR` writes the 28x28 image the model saw.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tabulate import tabulate
from torch import nn

from stages.checkpoint import load_checkpoint
from stages.cli import ArgumentParser
from stages.data import CLASS_NAMES
from stages.engine import MODEL_PATH, predict_log_probs, to_inputs
from stages.errors import UserError, entry_point
from stages.files import atomic_path, save_png
from stages.params import MODELS, NUM_CLASSES, CNNParams, MLPParams
from stages.photo import UnreadableImage, read_image, to_fashion_mnist

NO_PICTURES = (
    "no pictures given: python -m stages.predict IMAGE [IMAGE ...] (PNG or JPEG; see --help), "
    'or make predict IMAGES="shoe.jpg shirt.png"'
)


def _top(text: str) -> int:
    # isascii: str.isdigit also accepts '²', which int() refuses, and argparse would then say "invalid _top value".
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= NUM_CLASSES:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {NUM_CLASSES}, not {text!r}")
    return int(text)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m stages.predict", description=__doc__.splitlines()[0])
    # "*", not "+": no pictures is then ours to word, without matching argparse's English.
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="PNG or JPEG files of any size and mode")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", choices=MODELS, help="which of the repository's trained models (default: cnn)")
    which.add_argument(
        "--checkpoint", type=Path, metavar="PATH", help="a model file, e.g. from `dvc artifacts get`; any folder"
    )
    parser.add_argument("--top", type=_top, default=3, metavar="K", help="show the K likeliest classes (default: 3)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image and line")
    parser.add_argument(
        "--show",
        type=Path,
        metavar="DIR",
        help="write, for each picture, DIR/NAME.input.png (the 28x28 image the model saw, which predicts the same "
        "when given back) and DIR/NAME.png (the picture, that input enlarged and the prediction side by side)",
    )
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # argparse takes a name that starts with '-' for an option it does not know.
        dashed = [arg for arg in unknown if arg.startswith("-")]
        hint = f": a picture named {dashed[0]} goes after `--`, as in `python -m stages.predict -- {dashed[0]}`"
        raise UserError(f"unrecognized arguments: {' '.join(unknown)}{hint if dashed else ''}")
    if not args.images:
        raise UserError(NO_PICTURES)
    return args


def show_names(paths: list[str]) -> list[str]:
    """One file name stem per picture, from its own name, numbered where two pictures' --show files would share
    a name (x.png's input is x.input.png, which is x.input.png's own panel)."""
    names, taken = [], set()
    for path in paths:
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(path).stem) or "image"
        name, k = stem, 1
        while {name, f"{name}.input"} & taken:
            k += 1
            name = f"{stem}-{k}"
        taken |= {name, f"{name}.input"}
        names.append(name)
    return names


def show_files(folder: Path, name: str) -> dict[str, str]:
    """What --show writes for one picture: the 28x28 input the model saw and the side-by-side panel."""
    return {"input": str(folder / f"{name}.input.png"), "shown": str(folder / f"{name}.png")}


def check_show_keeps_pictures(folder: Path, names: list[str], paths: list[str]) -> None:
    """Refuse a --show folder where a file written would replace one of the pictures being classified."""
    pictures = {Path(path).resolve() for path in paths}
    for name in names:
        for written in show_files(folder, name).values():
            if Path(written).resolve() in pictures:
                raise UserError(f"--show {folder} would overwrite your picture {written}; choose another folder")


def thumbnail(picture: np.ndarray, side: int = 256) -> np.ndarray:
    """A small copy of a picture for --show, so that many large photos do not all stay in memory."""
    img = Image.fromarray(picture)
    img.thumbnail((side, side), Image.Resampling.BOX)
    return np.asarray(img)


def write_show(folder: Path, name: str, picture: np.ndarray, seen: np.ndarray, top: list[list]) -> dict[str, str]:
    """Write the 28x28 input and a side-by-side panel for one picture; returns their paths."""
    from matplotlib.figure import Figure  # only --show needs Matplotlib (half a second to import)

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--show {folder}: cannot create the folder ({exc.strerror})") from None
    files = show_files(folder, name)
    with atomic_path(files["input"]) as tmp:
        Image.fromarray(seen).save(tmp, format="PNG")
    fig = Figure(figsize=(7.5, 2.8), layout="constrained")
    photo, model_input, bars = fig.subplots(1, 3, width_ratios=[1, 1, 1.3])
    photo.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
    photo.set_title("your picture", fontsize=9)
    model_input.imshow(seen, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    model_input.set_title("what the model saw (28x28)", fontsize=9)
    for ax in (photo, model_input):
        ax.set_xticks([])
        ax.set_yticks([])
    labels, probs = zip(*top, strict=True)
    bars.barh(range(len(top)), probs, color="#4c78a8")
    bars.set_yticks(range(len(top)), labels, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlim(0, 1)
    bars.bar_label(bars.containers[0], [f"{p:.1%}" for p in probs], padding=2, fontsize=8)
    bars.set_title(f"prediction: {top[0][0]}", fontsize=9)
    bars.tick_params(axis="x", labelsize=7)
    save_png(fig, files["shown"])
    return files


def classify(model: nn.Module, cfg: MLPParams | CNNParams, images: np.ndarray) -> torch.Tensor:
    """Class probabilities for uint8 (N, 28, 28) images, computed exactly as evaluate computes them."""
    return predict_log_probs(model, to_inputs(images, cfg, torch.device("cpu")), cfg).softmax(1)  # as evaluate


def check_probabilities(probs: torch.Tensor, path: Path, name: str) -> None:
    """A model whose outputs overflow gives NaN probabilities: say so rather than print "nan%"."""
    if not torch.isfinite(probs).all():
        raise UserError(
            f"{path} gives NaN or infinite probabilities (its weights overflow); retrain with `dvc repro train_{name}`"
        )


def emit(text: str) -> None:
    """Print the results; a full or failing stdout (`> /dev/full`) is named as such. A reader that stops early
    (`| head -1`) ends the command quietly: entry_point's BrokenPipeError."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise UserError(f"cannot write the results to standard output: {exc.strerror or exc}") from None


# predict needs no params.yaml: with --checkpoint it runs from any folder, and the model file holds its params.
@entry_point(needs_params=False)
def main() -> None:
    args = parse_args(sys.argv[1:])
    name = None if args.checkpoint else args.model or "cnn"  # None: the file says which model it is
    model_path = args.checkpoint or Path(MODEL_PATH.format(name=name))
    model, cfg, _ = load_checkpoint(model_path, name)
    paths, images, pictures = [], [], []
    for path in args.images:
        try:
            picture = read_image(Path(path))
            images.append(to_fashion_mnist(picture))
            paths.append(path)
            if args.show:
                pictures.append(thumbnail(picture))
        except UnreadableImage as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
    if images:
        probs = classify(model, cfg, np.stack(images))
        check_probabilities(probs, model_path, cfg.name)
        # Stable, so that among equal probabilities the first class wins, as with evaluate's argmax.
        ranked = torch.sort(probs, dim=1, descending=True, stable=True).indices[:, : args.top]
        names = show_names(paths)
        if args.show:
            check_show_keeps_pictures(args.show, names, paths)
        blocks = []
        for i, (path, p, order) in enumerate(zip(paths, probs.tolist(), ranked.tolist(), strict=True)):
            top = [[CLASS_NAMES[c], round(p[c], 4)] for c in order]
            shown = write_show(args.show, names[i], pictures[i], images[i], top) if args.show else {}
            if args.json:
                record = {"image": path, "label": top[0][0], "probability": top[0][1], "top": top, **shown}
                blocks.append(json.dumps(record))
            else:
                table = tabulate(
                    [(name, f"{prob:.1%}") for name, prob in top],
                    headers=("class", "probability"),
                    colalign=("left", "right"),
                )
                seen = f"\n(the model saw {shown['input']}; side by side in {shown['shown']})" if shown else ""
                blocks.append(f"{path}: {top[0][0]}\n{table}{seen}")
        emit(("\n" if args.json else "\n\n").join(blocks))
    failed = len(args.images) - len(paths)
    if failed:
        raise UserError(f"{failed} of {len(args.images)} images could not be classified")


if __name__ == "__main__":
    main()
