"""Fashion-MNIST on disk: find a source, verify it, parse IDX, split, and save/load the prepared tensors."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.errors import UserError
from stages.files import atomic_path
from stages.params import IMAGE_SIDE, NUM_CLASSES, TEST_IMAGES, TRAIN_IMAGES, DataParams

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# MD5 of the decompressed IDX bytes: Debian re-compressed the .gz files, so their own checksums differ from upstream's.
RAW_FILES = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
SPLIT_SIZES = {"train": TRAIN_IMAGES, "t10k": TEST_IMAGES}

RAW_DIR = Path("data/raw")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
PREPARED_DIR = Path("data/prepared")
ENV_VAR = "FASHION_MNIST_DIR"
HOW_TO_GET = (
    "install it with `sudo apt-get install dataset-fashion-mnist`, "
    f"or point {ENV_VAR} (or data.raw_dir in params.yaml) at a folder holding the four IDX files, "
    "or connect to the internet so torchvision can download them into data/raw/"
)


class DataError(UserError):
    pass


def confusion(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts of each (actual, predicted) pair of class labels: actual classes as rows, predicted as columns."""
    pairs = actual.astype(np.int64) * NUM_CLASSES + predicted
    return np.bincount(pairs, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, (N, 28, 28)
    labels: np.ndarray  # int64, (N,)


def file_in(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _complete(folder: Path) -> bool:
    return all(file_in(folder, name) for name in RAW_FILES)


def find_source(raw_dir: str | None) -> Path:
    """The folder with the four IDX files: params, then the environment, data/raw, Debian's package, download."""
    named = [
        (f"data.raw_dir in params.yaml ({raw_dir})", raw_dir),
        (f"{ENV_VAR}={os.environ.get(ENV_VAR)}", os.environ.get(ENV_VAR)),
    ]
    for label, value in named:
        if value:
            folder = Path(value).expanduser()
            if not _complete(folder):
                missing = [n for n in RAW_FILES if not file_in(folder, n)]
                raise DataError(f"{label} lacks {', '.join(missing)} (.gz or decompressed); fix the path or unset it")
            return folder
    for folder in (RAW_DIR, DEBIAN_DIR):
        if _complete(folder):
            return folder
    return download(RAW_DIR)


def download(target: Path) -> Path:
    """Last resort: torchvision's downloader (needs internet); keeps the .gz files in data/raw/."""
    from torchvision.datasets import FashionMNIST

    tried = f"data.raw_dir, {ENV_VAR}, {RAW_DIR}/, {DEBIAN_DIR}/ and a download"
    if target.exists():
        missing = ", ".join(n for n in RAW_FILES if not file_in(target, n))
        raise DataError(f"{target}/ lacks {missing}: add the missing files or remove the folder; {HOW_TO_GET}")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Beside the target, so that the last step is a rename on one file system rather than a copy.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        try:
            for train in (True, False):
                FashionMNIST(tmp, train=train, download=True)
        except Exception as exc:  # any network or mirror failure means the same thing to the user
            reason = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else type(exc).__name__
            raise DataError(f"Fashion-MNIST not found (tried {tried}: {reason}); {HOW_TO_GET}") from None
        # All four files appear at once or not at all: a partial data/raw/ would shadow the other sources.
        staging = Path(tmp, "complete")
        staging.mkdir()
        for name in RAW_FILES:
            shutil.copy(Path(tmp, "FashionMNIST", "raw", f"{name}.gz"), staging / f"{name}.gz")
        staging.rename(target)
    return target


def parse_idx(raw: bytes, path: Path, magic: int, dims: tuple[int, ...]) -> np.ndarray:
    """The uint8 data of decompressed IDX bytes, after checking the magic number, the sizes and the length."""
    header = np.frombuffer(raw, dtype=">u4", count=1 + len(dims)) if len(raw) >= 4 * (1 + len(dims)) else []
    if len(header) == 0 or header[0] != magic or tuple(header[1:]) != dims:
        found = f"magic {header[0]} and shape {tuple(int(d) for d in header[1:])}" if len(header) else "no header"
        raise DataError(
            f"{path} is not an IDX file of magic {magic} and shape {dims} ({found}); replace it with the official file"
        )
    expected = idx_length(dims)
    if len(raw) != expected:
        found = f"more than {expected:,}" if len(raw) > expected else f"{len(raw):,}"
        raise DataError(
            f"{path} has the right header but {found} bytes (decompressed) where the official file has "
            f"{expected:,}; it is {'truncated' if len(raw) < expected else 'not the official file'}: replace it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=4 * len(header)).reshape(dims).copy()  # writable for torch


def idx_length(dims: tuple[int, ...]) -> int:
    """Bytes of an IDX file of uint8 data: the magic number and one size per dimension, then the data."""
    return 4 * (1 + len(dims)) + math.prod(dims)


def read_idx(path: Path, name: str) -> np.ndarray:
    """One official IDX file (plain or gzip): its header first, so a swapped file says what it is, then its MD5.

    At most one byte more than the official file is read (or decompressed): a gzip bomb stops there."""
    count = SPLIT_SIZES[name.split("-")[0]]
    magic, dims = (IMAGES_MAGIC, (count, IMAGE_SIDE, IMAGE_SIDE)) if "images" in name else (LABELS_MAGIC, (count,))
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read(idx_length(dims) + 1)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path} is a truncated or corrupt gzip file ({exc}); download or reinstall it") from None
    except OSError as exc:
        reason = exc.strerror or exc
        raise DataError(f"cannot read {path}: {reason}; check its permissions or use another source") from None
    array = parse_idx(raw, path, magic, dims)
    actual = hashlib.md5(raw).hexdigest()
    if actual != RAW_FILES[name]:
        raise DataError(
            f"{path} has the wrong checksum (MD5 of the decompressed bytes: expected {RAW_FILES[name]}, "
            f"got {actual}); replace it with the official file"
        )
    return array


def load_raw(folder: Path) -> tuple[Split, Split]:
    """The official 60,000 training and 10,000 test images."""
    arrays = {name: read_idx(file_in(folder, name), name) for name in RAW_FILES}
    train = Split(arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"].astype(np.int64))
    test = Split(arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"].astype(np.int64))
    return train, test


def stratified_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of n items whose class proportions match `labels` (largest remainders break ties)."""
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    exact = n * counts / counts.sum()
    take = np.floor(exact).astype(int)
    for cls in np.argsort(-(exact - take), kind="stable")[: n - take.sum()]:
        take[cls] += 1
    chosen = [rng.choice(np.flatnonzero(labels == cls), size=k, replace=False) for cls, k in enumerate(take)]
    return np.sort(np.concatenate(chosen))


def split_train(train: Split, cfg: DataParams) -> tuple[Split, Split]:
    """Carve a stratified validation set out of the training images, then optionally shrink the rest."""
    rng = np.random.default_rng(cfg.seed)
    val_idx = stratified_sample(train.labels, cfg.val_size, rng)
    rest = np.setdiff1d(np.arange(len(train.labels)), val_idx)
    if cfg.train_limit is not None:
        rest = rest[stratified_sample(train.labels[rest], cfg.train_limit, rng)]
    return Split(train.images[rest], train.labels[rest]), Split(train.images[val_idx], train.labels[val_idx])


def save_split(split: Split, name: str, folder: Path) -> None:
    """Plain .npy files in `folder`: byte-identical for identical arrays, so DVC sees no change when nothing
    changed."""
    for kind, array in (("images", split.images), ("labels", split.labels)):
        _save_npy(folder / f"{name}_{kind}.npy", array)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save appends .npy to a bare path
        np.save(f, array)


def load_split(name: str, folder: Path = PREPARED_DIR, mmap: bool = False) -> Split:
    """A prepared split, checked to be what prepare writes; with `mmap` the images stay on disk until touched."""
    try:
        images = np.load(folder / f"{name}_images.npy", allow_pickle=False, mmap_mode="r" if mmap else None)
        labels = np.load(folder / f"{name}_labels.npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read the prepared {name} split in {folder}/ ({exc}); run `dvc repro prepare`"
        ) from None
    problem = None
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        problem = f"images are {images.dtype} {images.shape}, not uint8 (N, {IMAGE_SIDE}, {IMAGE_SIDE})"
    elif labels.dtype != np.int64 or labels.shape != images.shape[:1]:
        problem = f"labels are {labels.dtype} {labels.shape} for {len(images)} images, not int64 ({len(images)},)"
    elif len(labels) and not 0 <= labels.min() <= labels.max() < NUM_CLASSES:
        problem = f"labels run from {labels.min()} to {labels.max()}, outside 0-{NUM_CLASSES - 1}"
    if problem:
        raise DataError(f"the prepared {name} split in {folder}/ is damaged ({problem}); run `dvc repro prepare`")
    return Split(images, labels)
