from __future__ import annotations

import dataclasses
import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from stages import data
from stages.data import (
    RAW_FILES,
    DataError,
    Split,
    confusion,
    find_source,
    load_raw,
    load_split,
    parse_idx,
    read_idx,
    save_split,
    split_train,
    stratified_sample,
)
from stages.params import DataParams
from tests.helpers import set_params, stage


@pytest.fixture(scope="module")
def official_dir() -> Path:
    """The real dataset, found the way `prepare` finds it (make setup installs Debian's package)."""
    return find_source(None)


@pytest.fixture
def no_defaults(monkeypatch, tmp_path) -> None:
    """Hide data/raw, Debian's folder, the environment variable and the download."""
    monkeypatch.setattr(data, "RAW_DIR", tmp_path / "no-raw")
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.delenv(data.ENV_VAR, raising=False)


def copy_official(official_dir: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        src = data.file_in(official_dir, name)
        shutil.copy(src, dest / src.name)
    return dest


def test_official_files_parse_with_the_right_shapes(official_dir) -> None:
    train, test = load_raw(official_dir)
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (10000, 28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_source_order(no_defaults, monkeypatch, official_dir, tmp_path) -> None:
    raw = copy_official(official_dir, tmp_path / "raw")
    env = copy_official(official_dir, tmp_path / "env")
    param = copy_official(official_dir, tmp_path / "param")
    monkeypatch.setattr(data, "RAW_DIR", raw)
    assert find_source(None) == raw
    monkeypatch.setenv(data.ENV_VAR, str(env))
    assert find_source(None) == env
    assert find_source(str(param)) == param


def test_named_source_that_is_broken_is_an_error(no_defaults, monkeypatch, tmp_path, official_dir) -> None:
    monkeypatch.setattr(data, "DEBIAN_DIR", official_dir)  # a good fallback must not hide the mistake
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="FASHION_MNIST_DIR=.*nowhere lacks train-images-idx3-ubyte"):
        find_source(None)
    with pytest.raises(DataError, match=r"data\.raw_dir in params\.yaml"):
        find_source(str(tmp_path / "nowhere"))


def test_no_source_lists_every_place_and_the_fixes(no_defaults, monkeypatch) -> None:
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError) as err:
        find_source(None)
    message = str(err.value)
    places = ("data.raw_dir", "FASHION_MNIST_DIR", str(data.RAW_DIR), str(data.DEBIAN_DIR), "a download")
    for part in (*places, "apt-get install dataset-fashion-mnist", "internet"):
        assert part in message


def test_a_download_appears_whole_by_a_rename_beside_its_folder(no_defaults, monkeypatch, tmp_path) -> None:
    import torchvision.datasets

    roots = []

    def fake(root, train, download):  # writes what torchvision's downloader leaves: root/FashionMNIST/raw/*.gz
        roots.append(Path(root))
        raw = Path(root, "FashionMNIST", "raw")
        raw.mkdir(parents=True, exist_ok=True)
        for name in RAW_FILES:
            (raw / f"{name}.gz").write_bytes(name.encode())

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake)
    target = tmp_path / "data" / "raw"
    assert data.download(target) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{name}.gz" for name in RAW_FILES)
    # Staged in the target's own folder (a rename there cannot be a half-done copy), and nothing of it stays.
    assert {root.parent for root in roots} == {target.parent} and list(target.parent.iterdir()) == [target]


def test_wrong_checksum_names_file_expected_and_actual(official_dir, tmp_path) -> None:
    folder = copy_official(official_dir, tmp_path / "raw")
    path = data.file_in(folder, "t10k-labels-idx1-ubyte")
    raw = bytearray(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes())
    raw[-1] ^= 1
    path.unlink()
    bad = folder / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError) as err:
        read_idx(bad, "t10k-labels-idx1-ubyte")
    assert "15d484375f8d13e6eb1aabb0c3f46965" in str(err.value)
    assert hashlib.md5(raw).hexdigest() in str(err.value) and str(bad) in str(err.value)


def test_truncated_gzip(tmp_path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(np.random.default_rng(0).bytes(10000))[:100])
    with pytest.raises(DataError, match="truncated or corrupt gzip"):
        read_idx(path, "t10k-labels-idx1-ubyte")


def test_tiny_synthetic_idx_files_parse(tmp_path) -> None:
    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8)
    raw = np.array([2051, 3, 28, 28], dtype=">u4").tobytes() + images.tobytes()
    assert np.array_equal(parse_idx(raw, tmp_path / "tiny", 2051, (3, 28, 28)), images)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    raw = np.array([2049, 3], dtype=">u4").tobytes() + labels.tobytes()
    assert parse_idx(raw, tmp_path / "tiny", 2049, (3,)).tolist() == [7, 0, 9]


@pytest.mark.parametrize(
    ("header", "found"), [((2051, 10000), "magic 2051 and shape (10000,)"), ((2049, 9999), "shape (9999,)")]
)
def test_wrong_magic_or_shape(tmp_path, header, found) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(np.array(header, dtype=">u4").tobytes() + bytes(10000)))
    with pytest.raises(DataError) as err:
        read_idx(path, "t10k-labels-idx1-ubyte")
    assert "is not an IDX file of magic 2049 and shape (10000,)" in str(err.value) and found in str(err.value)


def test_truncated_idx_after_a_good_header(tmp_path) -> None:
    raw = np.array([2049, 10000], dtype=">u4").tobytes() + bytes(5000)
    with pytest.raises(DataError, match=r"short has the right header but 5,008 bytes .* has 10,008; it is truncated"):
        parse_idx(raw, tmp_path / "short", 2049, (10000,))
    with pytest.raises(DataError, match=r"but more than 10,008 bytes .*; it is not the official file"):
        parse_idx(raw + bytes(5001), tmp_path / "long", 2049, (10000,))


def test_incomplete_data_raw_is_named_not_overwritten(no_defaults, monkeypatch, tmp_path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    monkeypatch.setattr(data, "RAW_DIR", partial)
    with pytest.raises(DataError, match="partial/ lacks train-labels-idx1-ubyte"):
        find_source(None)


def test_stratified_sample_keeps_class_shares_and_is_seeded() -> None:
    labels = np.repeat(np.arange(10), [100, 100, 100, 100, 100, 50, 50, 50, 50, 300])
    picked = stratified_sample(labels, 101, np.random.default_rng(0))
    assert len(picked) == 101 and len(set(picked)) == 101
    counts = np.bincount(labels[picked], minlength=10)
    assert np.all(np.abs(counts - 101 * np.bincount(labels) / len(labels)) < 1)
    assert np.array_equal(picked, stratified_sample(labels, 101, np.random.default_rng(0)))


def test_split_is_disjoint_stratified_and_limited() -> None:
    labels = np.repeat(np.arange(10), 100)
    index = np.arange(1000)
    images = np.stack([index % 256, index // 256], axis=1).astype(np.uint8)[:, :, None]  # unique per image
    train = data.Split(images, labels)
    cfg = DataParams(raw_dir=None, val_size=100, seed=3, train_limit=50)
    rest, val = split_train(train, cfg)
    assert np.bincount(val.labels).tolist() == [10] * 10
    assert np.bincount(rest.labels).tolist() == [5] * 10
    assert not set(map(bytes, rest.images)) & set(map(bytes, val.images))
    full, val_again = split_train(train, dataclasses.replace(cfg, train_limit=None))
    assert len(full.labels) + len(val_again.labels) == 1000  # complete: every image is in one split
    assert set(map(bytes, full.images)) | set(map(bytes, val.images)) == set(map(bytes, images))
    assert np.array_equal(val_again.images, val.images)  # deterministic for the seed


def test_prepare_writes_splits_and_samples(project) -> None:
    stage(project, "prepare")
    prepared = project / "data" / "prepared"
    assert np.load(prepared / "train_labels.npy").shape == (1000,)
    assert np.load(prepared / "val_images.npy").shape == (200, 28, 28)
    assert np.load(prepared / "test_labels.npy").shape == (10000,)
    assert (project / "plots" / "samples.png").stat().st_size > 10_000


def test_prepare_with_a_corrupt_source_writes_nothing(project, official_dir, tmp_path) -> None:
    folder = copy_official(official_dir, tmp_path / "raw")
    victim = data.file_in(folder, "train-images-idx3-ubyte")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    set_params(project, {"data.raw_dir": str(folder)})
    result = stage(project, "prepare", check=False)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "train-images-idx3-ubyte" in result.stderr
    assert not (project / "data").exists()


def test_saved_splits_load_back_identical_also_memory_mapped(tmp_path) -> None:
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), rng.integers(0, 10, 30).astype(np.int64))
    save_split(split, "train", tmp_path)
    for mmap in (False, True):
        loaded = load_split("train", tmp_path, mmap=mmap)
        assert np.array_equal(loaded.images, split.images) and np.array_equal(loaded.labels, split.labels)
    assert isinstance(load_split("train", tmp_path, mmap=True).images, np.memmap)
    with pytest.raises(DataError, match=r"cannot read the prepared val split .* run `dvc repro prepare`"):
        load_split("val", tmp_path)


def test_stratified_sample_follows_the_largest_remainder_rule() -> None:
    # 10 classes of 7, 7, 7, 7, 7, 7, 5, 5, 4, 4 images (60); 13 of them: exact shares 1.517 (x6), 1.083 (x2),
    # 0.867 (x2). Floors give 8 (1 x6, 1 x2, 0 x2); the 5 left go to the largest remainders: 0.867, 0.867 (the
    # 4-image classes) and 0.517 for the first three 7-image classes (ties broken by class order).
    counts = [7, 7, 7, 7, 7, 7, 5, 5, 4, 4]
    labels = np.repeat(np.arange(10), counts)
    picked = stratified_sample(labels, 13, np.random.default_rng(0))
    assert np.bincount(labels[picked], minlength=10).tolist() == [2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    assert np.all(np.diff(picked) > 0)  # sorted, no repeats


def test_a_gzip_bomb_is_read_only_as_far_as_the_official_size(tmp_path) -> None:
    import tracemalloc

    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    header = np.array([2049, 10000], dtype=">u4").tobytes()
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header)
        for _ in range(50):
            f.write(bytes(1_000_000))  # 50 MB of zeros in about 50 KB
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"has the right header but more than 10,008 bytes \(decompressed\)"):
            read_idx(path, "t10k-labels-idx1-ubyte")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000


def test_a_truncated_plain_file_says_how_long_it_is(tmp_path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(np.array([2049, 10000], dtype=">u4").tobytes() + bytes(5000))
    with pytest.raises(DataError) as err:
        read_idx(path, "t10k-labels-idx1-ubyte")
    assert "has the right header but 5,008 bytes (decompressed) where the official file has 10,008" in str(err.value)
    assert "truncated" in str(err.value)


def test_an_unreadable_dataset_file_is_one_line(tmp_path, monkeypatch) -> None:
    import builtins

    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"x")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(builtins, "open", denied)  # root reads any file, so a chmod cannot show this
    with pytest.raises(DataError, match=f"cannot read {path}: Permission denied; check its permissions"):
        read_idx(path, "t10k-labels-idx1-ubyte")


def test_confusion_rows_are_actual_classes_and_columns_predicted() -> None:
    actual = np.array([0, 0, 0, 1, 2])
    predicted = np.array([1, 1, 0, 1, 9])
    matrix = confusion(actual, predicted)
    assert matrix.shape == (10, 10) and matrix.sum() == 5
    assert matrix[0, 1] == 2 and matrix[1, 0] == 0  # two 0s taken for 1s; a transposed matrix swaps these
    assert matrix[0, 0] == 1 and matrix[1, 1] == 1 and matrix[2, 9] == 1 and matrix[9, 2] == 0


@pytest.mark.parametrize(
    ("images", "labels", "problem"),
    [
        (np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 10, 2]), "labels run from 0 to 10, outside 0-9"),
        (np.zeros((4, 28, 28), np.uint8), np.array([0, -1, 2, 3]), "labels run from -1 to 3"),
        (np.zeros((4, 27, 27), np.uint8), np.arange(4), "images are uint8 (4, 27, 27), not uint8 (N, 28, 28)"),
        (np.zeros((4, 28, 28), np.float32), np.arange(4), "images are float32"),
        (np.zeros((4, 28, 28), np.uint8), np.arange(3), "labels are int64 (3,) for 4 images"),
        (np.zeros((4, 28, 28), np.uint8), np.arange(4).astype(np.float64), "labels are float64"),
    ],
)
def test_a_damaged_prepared_split_names_itself_and_the_stage_to_rerun(tmp_path, images, labels, problem) -> None:
    for kind, array in (("images", images), ("labels", labels)):
        np.save(tmp_path / f"train_{kind}.npy", array)
    with pytest.raises(DataError, match=r"the prepared train split in .* is damaged \(") as err:
        load_split("train", tmp_path)
    assert problem in str(err.value) and str(err.value).endswith("run `dvc repro prepare`")
