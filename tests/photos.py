"""Product photos made from Fashion-MNIST test images, for measuring `predict` on pictures like real ones.

Each test image becomes a colour garment (its dark-on-white original, tinted) shot on a backdrop: plain white,
light with a gradient and grain, textured, with a soft drop shadow, off-centre and small, or a light garment on a
dark backdrop. The garment is lit like its backdrop (a gradient darkens both), and every photo is saved as JPEG,
so a perfect `predict` would get the test image back up to resampling and compression.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

RED = np.array([200, 30, 40], dtype=np.float32)
# Garment colours on light backdrops (RGB): a red T-shirt, navy, green, mustard, black, grey, pink, denim, brown.
DARK_COLOURS = np.array(
    [RED, [30, 40, 90], [30, 110, 60], [210, 160, 40], [20, 20, 20],
     [120, 120, 125], [230, 120, 160], [70, 100, 150], [110, 70, 40]],
    dtype=np.float32,
)  # fmt: skip
# Garment colours on dark backdrops: cream, light blue, white, pale yellow.
LIGHT_COLOURS = np.array([[235, 225, 200], [170, 200, 235], [245, 245, 245], [240, 230, 150]], dtype=np.float32)
SCALE = 6  # a 28x28 test image becomes a 168x168 garment


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, round(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kern = torch.from_numpy((k / k.sum()).astype(np.float32))
    t = torch.nn.functional.pad(torch.from_numpy(a.astype(np.float32))[None, None], (radius,) * 4, mode="replicate")
    t = torch.nn.functional.conv2d(t, kern.view(1, 1, 1, -1))
    return torch.nn.functional.conv2d(t, kern.view(1, 1, -1, 1))[0, 0].numpy()


def _garment(image: np.ndarray, scale: float = SCALE) -> tuple[np.ndarray, np.ndarray]:
    """The test image enlarged: its darkness v in [0, 1] and its opacity (soft at the silhouette)."""
    side = round(28 * scale)
    v = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    v = v.clip(0, 1)
    return v, (v / 0.12).clip(0, 1)


def _dark_garment_on(backdrop: np.ndarray, image: np.ndarray, rng: np.random.Generator, scale: float = SCALE,
                     where: tuple[int, int] | None = None, shadow: bool = False,
                     colour: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """A tinted garment on a light backdrop (H, W, 3), lit like the backdrop under it."""
    v, alpha = _garment(image, scale)
    h, w = v.shape
    top, left = where or ((backdrop.shape[0] - h) // 2, (backdrop.shape[1] - w) // 2)
    light = backdrop  # the garment is lit as the backdrop is where nothing stands in the way
    if shadow:
        dy, dx = rng.integers(6, 14, 2)
        cast = np.zeros(backdrop.shape[:2], dtype=np.float32)
        cast[top + dy : top + dy + h, left + dx : left + dx + w] = alpha[: backdrop.shape[0] - top - dy,
                                                                           : backdrop.shape[1] - left - dx]  # fmt: skip
        backdrop = backdrop * (1 - 0.35 * _blur(cast, 5.0))[..., None]
    colour = DARK_COLOURS[rng.integers(len(DARK_COLOURS))] if colour is None else colour
    # Dark-on-white original, tinted: white where the test image is 0, the colour where it is 255.
    paint = 255 - v[..., None] * (255 - colour)
    region = (slice(top, top + h), slice(left, left + w))
    under = backdrop[region]
    lit = light[region] * paint / 255
    out = backdrop.copy()
    out[region] = under * (1 - alpha[..., None]) + lit * alpha[..., None]
    return out


def _light(shape: tuple[int, int], rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """A light backdrop with a linear gradient from `high` to `low` in a random direction, slightly tinted."""
    h, w = shape
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy).astype(np.float32)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    gray = high - (high - low) * ramp
    tint = rng.uniform(-6, 6, 3).astype(np.float32)
    return gray[..., None] + tint


def _finish(photo: np.ndarray, rng: np.random.Generator, grain: float) -> Image.Image:
    photo = photo + rng.normal(0, grain, photo.shape) if grain else photo
    return Image.fromarray(photo.clip(0, 255).round().astype(np.uint8))


def plain_white(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    backdrop = np.full((220, 260, 3), 250, dtype=np.float32)
    return _finish(_dark_garment_on(backdrop, image, rng), rng, 1.5)


def graded(image: np.ndarray, rng: np.random.Generator, colour: np.ndarray | None = None) -> Image.Image:
    """The issue's red T-shirt: a light backdrop graded from about 245 to 175, with visible grain."""
    backdrop = _light((240, 240), rng, rng.uniform(170, 190), rng.uniform(235, 250))
    return _finish(_dark_garment_on(backdrop, image, rng, colour=colour), rng, 6)


def textured(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A light cloth or paper backdrop: blotches of a few shades plus fine grain."""
    blotches = np.asarray(
        Image.fromarray(rng.normal(0, 1, (12, 12)).astype(np.float32), mode="F").resize((240, 240), Image.BICUBIC)
    )
    backdrop = (225 + 12 * blotches)[..., None] + np.zeros(3, dtype=np.float32)
    return _finish(_dark_garment_on(backdrop, image, rng), rng, 9)


def shadowed(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    backdrop = _light((240, 240), rng, 215, 240)
    h = round(28 * SCALE)
    return _finish(_dark_garment_on(backdrop, image, rng, where=((240 - h) // 2 - 8, (240 - h) // 2 - 8),
                                    shadow=True), rng, 3)  # fmt: skip


def off_centre(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A small garment (a third of the picture) anywhere on a light graded backdrop."""
    backdrop = _light((300, 400), rng, 200, 245)
    scale = 4.0
    side = round(28 * scale)
    top, left = rng.integers(0, 300 - side), rng.integers(0, 400 - side)
    return _finish(_dark_garment_on(backdrop, image, rng, scale, where=(top, left)), rng, 3)


def dark_backdrop(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A light garment on a dark, slightly graded backdrop (the way Fashion-MNIST itself looks)."""
    backdrop = 255 - _light((240, 240), rng, 200, 235)
    v, alpha = _garment(image)
    colour = LIGHT_COLOURS[rng.integers(len(LIGHT_COLOURS))]
    top = (240 - v.shape[0]) // 2
    region = (slice(top, top + v.shape[0]), slice(top, top + v.shape[1]))
    out = backdrop.copy()
    under = out[region]
    out[region] = under + v[..., None] * (colour - under)
    return _finish(out, rng, 4)


KINDS: dict[str, Callable[[np.ndarray, np.random.Generator], Image.Image]] = {
    "plain_white": plain_white,
    "graded": graded,
    "textured": textured,
    "shadowed": shadowed,
    "off_centre": off_centre,
    "dark_backdrop": dark_backdrop,
}


def save(path: Path, image: Image.Image | np.ndarray, **kwargs) -> Path:
    """Write a picture (PIL or uint8 array) to `path`, its format from the name unless `format` is given."""
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, **kwargs)
    return path


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A grayscale PNG that claims a size; Pillow must refuse it from the header, before decoding anything."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(width + 1)))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(png)
    return path
