"""predict: classify your own pictures with a trained model.

`python -m stages.predict IMAGE [IMAGE ...] [--model cnn|mlp] [--top K] [--json]` turns each PNG or JPEG into a
Fashion-MNIST image (a light item on black, trimmed, its longest side fitted to 28 px and centred) and prints the
K most likely classes.
"""

from __future__ import annotations

if not __package__:  # started as a file path, where `import stages` would end in a traceback
    raise SystemExit("error: run the stages from the repository root as `python -m stages.predict`")

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tabulate import tabulate
from torch import nn

from stages.data import CLASS_NAMES
from stages.engine import load_checkpoint, predict_logits, to_inputs
from stages.errors import UserError, entry_point
from stages.files import not_a_regular_file
from stages.params import IMAGE_SIDE, MODELS, NUM_CLASSES, CNNParams, MLPParams

FORMATS = ("PNG", "JPEG")
# A border brighter than this on average is a light background. No Fashion-MNIST image has a border mean above
# 108, and none of their negatives one below 147.
LIGHT_BORDER = 127
# Item pixels stand at least this far above the background (JPEG leaves a faint haze round edges), and on grainy
# pictures NOISE_MARGIN times the grain measured on the border (which JPEG smooths): a backdrop is never the item.
CONTRAST = 8
NOISE_MARGIN = 8
# A row or column belongs to the item when this share of it does: lone noisy pixels must not stretch the box.
MIN_SHARE = 0.01


class UnreadableImage(UserError):
    """One picture that cannot be classified; the others still are."""


def check_regular_file(path: Path) -> None:
    """Only a regular file is opened: a FIFO would block for ever and keep the other images waiting."""
    problem = not_a_regular_file(path)
    if problem == "does not exist":
        raise UnreadableImage("no such file")
    if problem:
        raise UnreadableImage(f"{problem}, not an image")
    if path.stat().st_size == 0:
        raise UnreadableImage("the file is empty")


def read_image(path: Path) -> np.ndarray:
    """A PNG or JPEG of any mode as a uint8 grayscale array, its transparent pixels composited onto white."""
    check_regular_file(path)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 89 and 179 megapixels; a picture that large is refused either way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as img:
                return _grayscale(ImageOps.exif_transpose(img))  # phone photos keep their rotation in EXIF
    except FileNotFoundError:
        raise UnreadableImage("no such file") from None
    except PermissionError:
        raise UnreadableImage("cannot read it: permission denied") from None
    except UnidentifiedImageError:
        raise UnreadableImage(f"not a {' or '.join(FORMATS)} image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"refused as a possible decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnreadableImage(f"cannot decode the image ({exc})") from None


def _grayscale(img: Image.Image) -> np.ndarray:
    if img.mode.startswith("I;16"):
        # Pillow converts 16-bit grayscale to L by clipping at 255, which turns nearly everything white.
        return (np.asarray(img) >> 8).astype(np.uint8)
    if img.has_transparency_data:
        # Transparent pixels are background; Fashion-MNIST's product photos were on white before being negated.
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    return np.asarray(img.convert("L"))


def to_fashion_mnist(gray: np.ndarray) -> np.ndarray:
    """A uint8 grayscale picture as a (28, 28) uint8 Fashion-MNIST image: light item on black, trimmed, fitted,
    centred. A 28x28 picture with a dark border is already one and comes back unchanged."""
    # The border in order round the picture, so that neighbours along it can be compared.
    ring = np.concatenate([gray[0], gray[1:, -1], gray[-1, -2::-1], gray[-2:0:-1, 0]]).astype(np.int16)
    light = ring.mean() > LIGHT_BORDER
    if gray.shape == (IMAGE_SIDE, IMAGE_SIDE) and not light:
        return gray
    if light:
        gray, ring = 255 - gray, 255 - ring
    # A low percentile, because an item may touch most of the border (trousers, bags) and is light there.
    background = float(np.percentile(ring, 10))
    # Neighbours along the border differ by about the noise (grain, JPEG), also where the item touches it.
    noise = float(np.median(np.abs(np.diff(ring, append=ring[:1]))))
    item = gray > background + max(CONTRAST, NOISE_MARGIN * noise)
    rows = np.flatnonzero(item.mean(1) >= MIN_SHARE)
    cols = np.flatnonzero(item.mean(0) >= MIN_SHARE)
    if not len(rows) or not len(cols):
        raise UnreadableImage("nothing stands out from the background: the picture looks blank")
    crop = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)
    # Fashion-MNIST's background is pure black: an off-white or grey backdrop becomes black, white stays white.
    crop = ((crop - background).clip(0) * (255 / (255 - background))).round().astype(np.uint8)
    h, w = crop.shape
    scale = IMAGE_SIDE / max(h, w)
    fit_w, fit_h = max(1, round(w * scale)), max(1, round(h * scale))
    fitted = np.asarray(Image.fromarray(crop).resize((fit_w, fit_h), Image.Resampling.LANCZOS))
    canvas = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    # Where the margins cannot be equal, Fashion-MNIST puts the extra pixel above and left of the item.
    top, left = (IMAGE_SIDE - fit_h + 1) // 2, (IMAGE_SIDE - fit_w + 1) // 2
    canvas[top : top + fit_h, left : left + fit_w] = fitted
    return canvas


def _top(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= NUM_CLASSES:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {NUM_CLASSES}, not {text!r}")
    return int(text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line instead of argparse's usage dump, like every other mistake the stages report.
        raise UserError(f"{message} (see `python -m stages.predict --help`)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog="python -m stages.predict", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files of any size and mode")
    parser.add_argument("--model", choices=MODELS, default="cnn", help="which trained model (default: cnn)")
    parser.add_argument("--top", type=_top, default=3, metavar="K", help="show the K likeliest classes (default: 3)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image and line")
    return parser.parse_args(argv)


def classify(model: nn.Module, cfg: MLPParams | CNNParams, images: np.ndarray) -> torch.Tensor:
    """Class probabilities for uint8 (N, 28, 28) images, computed exactly as evaluate computes them."""
    return predict_logits(model, to_inputs(images, cfg, torch.device("cpu")), cfg).softmax(1)


def check_probabilities(probs: torch.Tensor, name: str) -> None:
    """A model whose outputs overflow gives NaN probabilities: say so rather than print "nan%"."""
    if not torch.isfinite(probs).all():
        raise UserError(
            f"models/{name}.pt gives NaN or infinite probabilities (its weights overflow); "
            f"retrain with `dvc repro train_{name}`"
        )


def emit(text: str) -> None:
    """Print the results. A reader that stops early (`| head -1`) ends the command quietly, as with any Unix
    tool; a full or failing stdout (`> /dev/full`) is one error line."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _drop_stdout()
        sys.exit(141)  # 128 + SIGPIPE, what the shell reports for a tool killed by a closed pipe
    except OSError as exc:
        _drop_stdout()
        raise UserError(f"cannot write the results to standard output: {exc.strerror or exc}") from None


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so Python's final flush of what is left does not fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@entry_point
def main() -> None:
    args = parse_args(sys.argv[1:])
    model, cfg, _ = load_checkpoint(f"models/{args.model}.pt", args.model)
    paths, images = [], []
    for path in args.images:
        try:
            images.append(to_fashion_mnist(read_image(Path(path))))
            paths.append(path)
        except UnreadableImage as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
    if images:
        probs = classify(model, cfg, np.stack(images))
        check_probabilities(probs, args.model)
        # Stable, so that among equal probabilities the first class wins, as with evaluate's argmax.
        ranked = torch.sort(probs, dim=1, descending=True, stable=True).indices[:, : args.top]
        blocks = []
        for path, p, order in zip(paths, probs.tolist(), ranked.tolist(), strict=True):
            top = [[CLASS_NAMES[c], round(p[c], 4)] for c in order]
            if args.json:
                blocks.append(json.dumps({"image": path, "label": top[0][0], "probability": top[0][1], "top": top}))
            else:
                table = tabulate(
                    [(name, f"{prob:.1%}") for name, prob in top],
                    headers=("class", "probability"),
                    colalign=("left", "right"),
                )
                blocks.append(f"{path}: {top[0][0]}\n{table}")
        emit(("\n" if args.json else "\n\n").join(blocks))
    failed = len(args.images) - len(paths)
    if failed:
        raise UserError(f"{failed} of {len(args.images)} images could not be classified")


if __name__ == "__main__":
    main()
