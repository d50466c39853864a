"""Photos to Fashion-MNIST images: a PNG or JPEG of a garment in, the (28, 28) uint8 image a model reads out.

The garment is separated from its backdrop (plain, graded, textured or shadowed, light or dark: fitted on the
picture's border), then, alone on black, trimmed, its longest side fitted to 28 px and centred. numpy and Pillow
only, no torch: the same images can be prepared, inspected and tested without loading a model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stages.errors import UserError
from stages.files import not_a_regular_file
from stages.params import IMAGE_SIDE

FORMATS = ("PNG", "JPEG")
# A border brighter than this on average is a light background. No Fashion-MNIST image has a border mean above
# 108, and none of their negatives one below 147.
LIGHT_BORDER = 127
# Pictures are shrunk to this longest side before the item is looked for: ample for a 28x28 result, and the
# averaging that shrinking does already damps grain.
WORK_SIDE = 256
# An item pixel differs from the background fitted under it by at least this much in some colour channel (JPEG
# leaves a faint haze round edges), and by NOISE_MARGIN times the grain measured on the border.
CONTRAST = 12
NOISE_MARGIN = 6
TEXTURE_MARGIN = 1.5  # a backdrop's slow texture needs only 4 (6 / 1.5) times its spread: its blotches are few
# A shadow on a light backdrop darkens all three channels by about the same factor, and by less than this
# factor; a garment changes the colour or darkens more. Such pixels are backdrop unless enclosed by the item.
SHADOW_FACTOR = 0.6
SHADOW_TINT = 0.06
SHADOW_KEEP = 0.5
EDGE = 0.015  # share of the picture's longest side: how far the item reaches into shadow-like pale pixels
# Specks of texture or noise that pass the threshold: any part smaller than this share of the largest part.
MIN_PART = 0.01
BLUR_FROM = 100
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class UnreadableImage(UserError):
    """One picture that cannot be classified; the others still are."""


def check_regular_file(path: Path) -> None:
    """Only a regular file is opened: a FIFO would block for ever and keep the other images waiting."""
    try:
        problem = not_a_regular_file(path)
        empty = problem is None and path.stat().st_size == 0
    except OSError as exc:  # a symlink loop, a file name used as a folder: this picture fails, not all of them
        raise UnreadableImage(f"cannot read it ({exc.strerror or exc})") from None
    if problem == "does not exist":
        raise UnreadableImage("no such file")
    if problem:
        raise UnreadableImage(f"{problem}, not an image")
    if empty:
        raise UnreadableImage("the file is empty")


def read_image(path: Path) -> np.ndarray:
    """A PNG or JPEG of any mode as a uint8 (H, W, 3) RGB array, its transparent pixels composited onto white."""
    check_regular_file(path)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 89 and 179 megapixels; a picture that large is refused either way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as img:
                return _rgb(ImageOps.exif_transpose(img))  # phone photos keep their rotation in EXIF
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


def _rgb(img: Image.Image) -> np.ndarray:
    if img.mode.startswith("I;16"):
        # Pillow converts 16-bit grayscale to L by clipping at 255, which turns nearly everything white.
        return np.repeat((np.asarray(img) >> 8).astype(np.uint8)[..., None], 3, axis=2)
    if img.has_transparency_data:
        # Transparent pixels are background; Fashion-MNIST's product photos were on white before being negated.
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    # Colour is kept until the item is found: a yellow shirt on white differs in colour more than in brightness.
    return np.asarray(img.convert("RGB"))


def luma(rgb: np.ndarray) -> np.ndarray:
    """Pillow's own RGB -> L conversion (ITU-R 601-2), so gray pictures keep their exact values."""
    r, g, b = (rgb[..., c].astype(np.int32) for c in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def _border(a: np.ndarray, width: int) -> np.ndarray:
    """A boolean mask of the `width` outermost rows and columns."""
    ring = np.ones(a.shape[:2], dtype=bool)
    ring[width:-width, width:-width] = False
    return ring


def _surface(h: int, w: int, ys: np.ndarray, xs: np.ndarray, terms: int) -> np.ndarray:
    """The design matrix of a polynomial surface over the picture: 3 terms a plane, 6 a quadratic."""
    u, v = xs / max(w - 1, 1) * 2 - 1, ys / max(h - 1, 1) * 2 - 1
    return np.stack([np.ones_like(u), u, v, u * u, u * v, v * v][:terms], axis=-1)


def fit_background(picture: np.ndarray, light: bool) -> tuple[np.ndarray, float]:
    """The backdrop under the whole (H, W, 3) float picture, fitted on its border as a quadratic surface per channel
    (a gradient, a vignette or uneven light), and the grain of the border around that fit (a standard deviation).

    The fit starts from the lightest tenth of the border (the darkest on a dark picture), because an item may touch
    most of the border (trousers, bags) and is darker there; it then takes in the border pixels it explains."""
    h, w = picture.shape[:2]
    ring = _border(picture, max(1, round(min(h, w) * 0.02)))
    ys, xs = np.nonzero(ring)
    values = picture[ring].astype(np.float64)
    # The outermost ring in order round the picture: neighbours along it differ by about the grain, also where the
    # item touches it (a median ignores the item's own edges).
    edge = np.concatenate([picture[0], picture[1:, -1], picture[-1, -2::-1], picture[-2:0:-1, 0]])
    grain = 1.4826 / np.sqrt(2) * float(np.median(np.abs(np.diff(edge, axis=0)).max(1)))
    fit = np.percentile(values, 90 if light else 10, axis=0, keepdims=True)
    for terms in (1, 3, 3, 6, 6):
        keep = np.abs(values - fit).max(1) <= max(CONTRAST, NOISE_MARGIN * grain)
        coef, *_ = np.linalg.lstsq(_surface(h, w, ys, xs, terms)[keep], values[keep], rcond=None)
        fit = _surface(h, w, ys, xs, terms) @ coef
    # A textured backdrop (cloth, paper, wood) varies more slowly than grain but more than the fit follows: how far
    # the border strays from the fit counts as grain too.
    texture = 1.4826 * float(np.median(np.abs(values[keep] - fit[keep]).max(1))) / TEXTURE_MARGIN
    yy, xx = np.mgrid[0:h, 0:w]
    return (_surface(h, w, yy, xx, 6) @ coef).astype(np.float32), max(grain, texture)


def _blur(picture: np.ndarray) -> np.ndarray:
    """A 5x5 Gaussian blur (sigma 1 px) per channel, edges replicated: damps grain before thresholding."""
    k = np.exp(-0.5 * np.arange(-2, 3) ** 2)
    k /= k.sum()
    h, w = picture.shape[:2]
    rows = np.pad(picture, ((2, 2), (0, 0), (0, 0)), mode="edge")
    picture = sum(k[i] * rows[i : i + h] for i in range(5))
    cols = np.pad(picture, ((0, 0), (2, 2), (0, 0)), mode="edge")
    return sum(k[i] * cols[:, i : i + w] for i in range(5)).astype(np.float32)


def _neighbourhood(a: np.ndarray, reduce: np.ufunc, fill: int) -> np.ndarray:
    """`reduce` (np.minimum or np.maximum) of each pixel's 3x3 neighbourhood; outside the picture counts as `fill`."""
    h, w = a.shape
    padded = np.full((h + 2, w + 2), fill, dtype=a.dtype)
    padded[1:-1, 1:-1] = a
    out = a.copy()
    for dy in range(3):
        for dx in range(3):
            reduce(out, padded[dy : dy + h, dx : dx + w], out=out)
    return out


def components(mask: np.ndarray) -> np.ndarray:
    """8-connected parts of a boolean mask: each pixel's label is the smallest flat index in its part; -1 outside.

    Labels spread to neighbours and then jump along the labels they point to, so this takes a few dozen passes of
    whole-array numpy operations (single-threaded and fast) rather than one per pixel of the longest path."""
    size = mask.size
    labels = np.where(mask, np.arange(size).reshape(mask.shape), size)
    while True:
        spread = np.where(mask, _neighbourhood(labels, np.minimum, size), size)
        flat = spread.ravel()
        inside = flat < size
        for _ in range(4):
            flat[inside] = flat[flat[inside]]
        if np.array_equal(spread, labels):
            return np.where(mask, labels, -1)
        labels = spread


def clean_mask(found: np.ndarray) -> np.ndarray:
    """`found` without specks (parts under MIN_PART of the largest) and with its holes filled."""
    labels = components(found)
    ids, sizes = np.unique(labels[labels >= 0], return_counts=True)
    kept = np.isin(labels, ids[sizes >= max(4, MIN_PART * sizes.max())])
    # A hole is backdrop the border cannot reach without crossing the item (a bag's handle, a printed logo).
    outside = components(~kept)
    border = _border(found, 1)
    reached = np.isin(outside, np.unique(outside[border & (outside >= 0)]))
    return ~reached


def item_mask(picture: np.ndarray, light: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Where the item is in an (H, W, 3) float picture, the backdrop fitted under it, and the least difference
    from that backdrop (in any channel) that unblurred pixels of the item show."""
    # Blurring damps grain in photos; in a small picture it would wash out thin lines (a bag's handle).
    smooth = _blur(picture) if max(picture.shape[:2]) >= BLUR_FROM else picture
    background, grain = fit_background(smooth, light)
    found = np.abs(smooth - background).max(2) > max(CONTRAST, NOISE_MARGIN * grain)
    if not found.any():
        raise UnreadableImage("nothing stands out from the background: the picture looks blank")
    backdrop = _border(picture, 1) & ~found  # the item may touch the border
    raw_grain = 1.4826 * float(np.median(np.abs(picture - background)[backdrop])) if backdrop.any() else 0.0
    threshold = max(CONTRAST, NOISE_MARGIN * raw_grain)
    whole = clean_mask(found)
    if not light:
        return whole, background, threshold
    # Shadows on a light backdrop: darker by a similar factor in every channel, and not much darker. A grey item's
    # pale parts look the same, so shadows are only left out when what remains is most of the item; the item then
    # gets back the pale pixels right at its edge.
    factor = smooth.clip(1) / background.clip(1)
    shadow = (factor.max(2) - factor.min(2) < SHADOW_TINT) & (factor.mean(2) > SHADOW_FACTOR) & (factor.mean(2) < 1)
    if not (found & ~shadow).any():
        return whole, background, threshold
    core = clean_mask(found & ~shadow)
    if core.sum() < SHADOW_KEEP * whole.sum():
        return whole, background, threshold
    grown = core
    for _ in range(max(1, round(EDGE * max(picture.shape[:2])))):
        grown = _neighbourhood(grown, np.maximum, False) & whole
    return grown, background, threshold


def _shrink(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = WORK_SIDE / max(h, w)
    if scale >= 1:
        return rgb.astype(np.float32)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX), dtype=np.float32)


def fit_to_frame(crop: np.ndarray) -> np.ndarray:
    """A float picture of the item alone, trimmed to it, laid out as in Fashion-MNIST: its longest side 28 px,
    centred, its brightest pixels 255 (every Fashion-MNIST image reaches 254 or 255)."""
    h, w = crop.shape
    scale = IMAGE_SIDE / max(h, w)
    fit_w, fit_h = max(1, round(w * scale)), max(1, round(h * scale))
    # Shrinking averages areas (no ringing that would set the brightness below); the rare tiny item is enlarged.
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.LANCZOS
    fitted = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize((fit_w, fit_h), method))
    canvas = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    # Where the margins cannot be equal, Fashion-MNIST puts the extra pixel above and left of the item.
    top, left = (IMAGE_SIDE - fit_h + 1) // 2, (IMAGE_SIDE - fit_w + 1) // 2
    canvas[top : top + fit_h, left : left + fit_w] = fitted.clip(0)
    peak = float(canvas.max())
    if peak <= 0:
        raise UnreadableImage("nothing stands out from the background: the picture looks blank")
    return (canvas * (255 / peak)).round().clip(0, 255).astype(np.uint8)


def to_fashion_mnist(picture: np.ndarray) -> np.ndarray:
    """A uint8 grayscale (H, W) or RGB (H, W, 3) picture as a (28, 28) uint8 Fashion-MNIST image: the item alone, light
    on black, trimmed, fitted, centred. A 28x28 grayscale picture with a dark border is already one and comes back
    unchanged."""
    h, w = picture.shape[:2]
    if min(h, w) < 3:  # no backdrop around an inside: every measure below would be of an empty set
        raise UnreadableImage(f"{w}x{h} pixels is too small to hold a garment on its backdrop (3x3 at least)")
    gray = picture if picture.ndim == 2 else luma(picture)
    light = gray[_border(gray, 1)].mean() > LIGHT_BORDER
    if gray.shape == (IMAGE_SIDE, IMAGE_SIDE) and not light and (picture.ndim == 2 or _is_gray(picture)):
        return gray
    rgb = _shrink(picture if picture.ndim == 3 else np.repeat(picture[..., None], 3, axis=2))
    mask, background, threshold = item_mask(rgb, light)
    # The mask comes from a blurred picture, which spreads a sharp edge by a pixel or two: the item's box is
    # where the unblurred picture itself stands out (grain that high is all but impossible), inside the mask.
    sharp = mask & (np.abs(rgb - background).max(2) > threshold)
    if not sharp.any():
        raise UnreadableImage("nothing stands out from the background: the picture looks blank")
    rows, cols = np.flatnonzero(sharp.any(1)), np.flatnonzero(sharp.any(0))
    # How far each pixel stands from the backdrop under it, in brightness: the item as if shot on a plain
    # backdrop, which Fashion-MNIST then negated (dark garments on white became light on black).
    contrast = np.where(mask, np.abs(rgb @ LUMA_WEIGHTS - background @ LUMA_WEIGHTS), 0)
    return fit_to_frame(contrast[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])


def _is_gray(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
