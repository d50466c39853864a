"""Photos to Fashion-MNIST images (stages/photo.py): Fashion-MNIST's own images pass unchanged, any picture of a
garment becomes its 28x28 image, and a file that cannot be read is one picture's error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.photo import UnreadableImage, clean_mask, read_image, to_fashion_mnist
from tests.photos import KINDS, RED, graded, header_only_png, save, shadowed


def test_every_fashion_mnist_image_passes_through_unchanged(official_splits) -> None:
    for split in official_splits:
        for image in split.images:
            assert to_fashion_mnist(image) is image


def test_negatives_are_inverted_back(official_splits) -> None:
    _, test = official_splits
    images = test.images[np.random.default_rng(0).choice(len(test.images), 500, replace=False)]
    back = np.stack([to_fashion_mnist(255 - image) for image in images])
    # Not exact: the trimming drops the faintest edge pixels, and fitting again resamples.
    assert np.abs(back.astype(int) - images).mean() < 4


def palette(image: np.ndarray) -> Image.Image:
    img = Image.frombytes("P", image.shape[::-1], image.tobytes())
    img.putpalette([v for gray in range(256) for v in (gray, gray, gray)])
    return img


MODES: dict[str, Callable[[np.ndarray], Image.Image]] = {
    "L": Image.fromarray,
    "RGB": lambda a: Image.fromarray(a).convert("RGB"),
    "RGBA opaque": lambda a: Image.fromarray(a).convert("RGBA"),
    "LA opaque": lambda a: Image.fromarray(a).convert("LA"),
    "P": palette,
    "16-bit": lambda a: Image.fromarray(a.astype(np.uint16) * 257),
}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_of_a_native_image_reads_the_same(official_splits, tmp_path, mode) -> None:
    image = official_splits[1].images[0]
    path = save(tmp_path / "image.png", MODES[mode](image))
    assert np.array_equal(to_fashion_mnist(read_image(path)), image)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_become_the_white_background(official_splits, tmp_path, mode) -> None:
    image = official_splits[1].images[0]
    negative = 255 - image
    rng = np.random.default_rng(0)
    cutout = np.dstack([negative, negative, negative, np.where(image > 0, 255, 0)]).astype(np.uint8)
    cutout[image == 0, :3] = rng.integers(0, 256, (int((image == 0).sum()), 3))  # what transparency hides
    img = Image.fromarray(cutout).convert(mode)
    assert np.array_equal(
        read_image(save(tmp_path / "cutout.png", img)), read_image(save(tmp_path / "neg.png", negative))
    )


def test_exif_rotation_is_applied(tmp_path) -> None:
    img = Image.new("L", (40, 20), 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = save(tmp_path / "phone.jpg", img, exif=exif)
    assert read_image(path).shape == (40, 20, 3)


def test_item_is_trimmed_fitted_and_centred() -> None:
    # A dark 100x200 item on an off-white 200x300 picture, away from the centre.
    picture = np.full((200, 300), 240, dtype=np.uint8)
    picture[20:120, 50:250] = 0
    expected = np.zeros((28, 28), dtype=np.uint8)
    expected[7:21] = 255  # 200 px wide -> 28; 100 px high -> 14, the odd pixel of margin above as in Fashion-MNIST
    assert np.array_equal(to_fashion_mnist(picture), expected)


@pytest.mark.parametrize("transpose", [False, True])
def test_the_odd_pixel_of_margin_goes_above_and_left(transpose) -> None:
    # A 100x60 dark item on off-white: 28 px high, 17 px wide (60 * 0.28 = 16.8), so 11 px of margin across:
    # 6 left and 5 right, as Fashion-MNIST centres. Transposed: 6 above and 5 below.
    picture = np.full((200, 300), 240, dtype=np.uint8)
    picture[50:150, 100:160] = 0
    expected = np.zeros((28, 28), dtype=bool)
    expected[:, 6:23] = True  # where the item is; its edge pixels may be partly lit by the resampling
    if transpose:
        picture, expected = picture.T.copy(), expected.T
    assert np.array_equal(to_fashion_mnist(picture) > 0, expected)


@pytest.mark.parametrize(("fmt", "ext"), [("GIF", "gif"), ("BMP", "bmp"), ("TIFF", "tif"), ("WEBP", "webp")])
def test_only_png_and_jpeg_are_read(official_splits, tmp_path, fmt, ext) -> None:
    image = Image.fromarray(official_splits[1].images[0])
    with pytest.raises(UnreadableImage, match=r"^not a PNG or JPEG image$"):
        read_image(save(tmp_path / f"image.{ext}", image, format=fmt))
    # What counts is the content, not the name: a PNG called .jpg is read.
    assert read_image(save(tmp_path / "named.jpg", image, format="PNG")).shape[:2] == (28, 28)


def test_special_files_are_refused_without_opening_them(tmp_path) -> None:
    os.mkfifo(tmp_path / "fifo.png")
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("opened the FIFO, which blocks"))
    signal.alarm(10)
    try:
        with pytest.raises(UnreadableImage, match=r"^is a special file \(a FIFO, socket or device\), not an image$"):
            read_image(tmp_path / "fifo.png")
    finally:
        signal.alarm(0)
    with pytest.raises(UnreadableImage, match="special file"):
        read_image(Path("/dev/zero"))
    with pytest.raises(UnreadableImage, match=r"^is a directory, not an image$"):
        read_image(tmp_path)
    (tmp_path / "empty.png").touch()
    with pytest.raises(UnreadableImage, match=r"^the file is empty$"):
        read_image(tmp_path / "empty.png")


def test_grain_and_jpeg_noise_do_not_stretch_the_box(tmp_path) -> None:
    rng = np.random.default_rng(0)
    picture = 220 + rng.normal(0, 6, (200, 300))
    picture[20:120, 50:250] = 20 + rng.normal(0, 6, (100, 200))
    path = save(tmp_path / "photo.jpg", picture.clip(0, 255).astype(np.uint8), quality=80)
    result = to_fashion_mnist(read_image(path)).astype(int)
    assert result[7:21].min() > 200 and result[:7].max() == 0 and result[21:].max() == 0


def test_a_blank_picture_is_refused() -> None:
    with pytest.raises(UnreadableImage, match="looks blank"):
        to_fashion_mnist(np.full((50, 60), 250, dtype=np.uint8))


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (40, 2, 3)])
def test_a_picture_too_small_for_a_backdrop_is_refused_in_one_line(shape) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "mean of empty slice" once came first
        with pytest.raises(UnreadableImage, match=rf"^{shape[1]}x{shape[0]} pixels is too small to hold a garment"):
            to_fashion_mnist(np.full(shape, 200, dtype=np.uint8))


def test_specks_go_and_holes_are_filled() -> None:
    found = np.zeros((60, 60), dtype=bool)
    found[10:50, 10:50] = True
    found[20:30, 20:30] = False  # a hole: a bag's handle, a pale print
    found[55, 55] = True  # a speck of grain
    mask = clean_mask(found)
    assert mask[10:50, 10:50].all() and mask.sum() == 40 * 40


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


@pytest.mark.parametrize("kind", KINDS)
def test_photos_give_back_the_test_image(official_splits, tmp_path, kind) -> None:
    """Separated from its backdrop and fitted to the frame, a photographed garment is its test image again; a
    backdrop kept as part of the item would shrink and shift it and break the match."""
    _, test = official_splits
    rng = np.random.default_rng(4)
    scores = []
    for i in rng.choice(len(test.labels), 20, replace=False):
        path = save(tmp_path / f"{i}.jpg", KINDS[kind](test.images[i], rng), quality=85)
        scores.append(correlation(to_fashion_mnist(read_image(path)), test.images[i]))
    assert np.median(scores) > 0.85 and min(scores) > 0.4, np.round(scores, 3)


def test_the_issues_red_t_shirt_fills_the_frame(official_splits, tmp_path) -> None:
    # The picture that came out as `Bag 58 %`: a red T-shirt on a light, grainy, graded backdrop.
    _, test = official_splits
    shirt = test.images[np.flatnonzero(test.labels == 0)[0]]
    path = save(tmp_path / "red-t-shirt.jpg", graded(shirt, np.random.default_rng(7), RED), quality=85)
    seen = to_fashion_mnist(read_image(path))
    rows, cols = np.flatnonzero(seen.max(1) > 30), np.flatnonzero(seen.max(0) > 30)
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) >= 26  # the garment, not the backdrop, spans the frame
    assert correlation(seen, shirt) > 0.9


def test_a_shadow_is_not_part_of_the_item(official_splits, tmp_path) -> None:
    _, test = official_splits
    boot = test.images[np.flatnonzero(test.labels == 9)[0]]
    path = save(tmp_path / "shadow.jpg", shadowed(boot, np.random.default_rng(1)), quality=85)
    # With the shadow kept as part of the boot (no shadow rule) this picture gives 0.76; with it, 0.89.
    assert correlation(to_fashion_mnist(read_image(path)), boot) > 0.85


@pytest.mark.parametrize("side", [10_000, 20_000])  # Pillow warns above 89 megapixels and refuses above 179
def test_decompression_bombs_are_refused_from_the_header(tmp_path, side) -> None:
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        read_image(header_only_png(tmp_path / "bomb.png", side, side))


def test_the_photo_module_imports_without_torch() -> None:
    code = "import sys, stages.photo; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_a_symlink_loop_or_a_path_through_a_file_is_this_pictures_error(tmp_path) -> None:
    """Both make stat() fail with an OSError other than "not found", which once stopped all of predict."""
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(UnreadableImage, match=r"^cannot read it \(Too many levels of symbolic links\)$"):
        read_image(tmp_path / "loop.png")
    (tmp_path / "file.png").write_bytes(b"not a folder")
    with pytest.raises(UnreadableImage, match=r"^cannot read it \(Not a directory\)$"):
        read_image(tmp_path / "file.png" / "inner.png")
