"""prepare: verified raw Fashion-MNIST -> stratified train/val/test splits in data/prepared/ and plots/samples.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from stages.data import CLASS_NAMES, PREPARED_DIR, Split, find_source, load_raw, save_split, split_train
from stages.errors import entry_point
from stages.files import save_png
from stages.params import load_params

SAMPLES_PER_CLASS = 10


def plot_samples(split: Split, path: Path) -> None:
    """One row per class with its name, the first few images of that class."""
    fig = Figure(figsize=(SAMPLES_PER_CLASS * 0.9, len(CLASS_NAMES) * 0.95))
    axes = fig.subplots(len(CLASS_NAMES), SAMPLES_PER_CLASS)
    for cls, row in enumerate(axes):
        picks = np.flatnonzero(split.labels == cls)[:SAMPLES_PER_CLASS]
        for ax, i in zip(row, picks, strict=False):
            ax.imshow(split.images[i], cmap="gray", vmin=0, vmax=255)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(CLASS_NAMES[cls], rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle("Fashion-MNIST training samples, one row per class")
    fig.tight_layout()
    save_png(fig, path, dpi=80)


@entry_point
def main() -> None:
    cfg = load_params("data")
    source = find_source(cfg.raw_dir)
    full_train, test = load_raw(source)
    train, val = split_train(full_train, cfg)
    for name, split in (("train", train), ("val", val), ("test", test)):
        save_split(split, name, PREPARED_DIR)
    plot_samples(train, Path("plots/samples.png"))
    sizes = ", ".join(f"{len(s.labels)} {n}" for n, s in (("train", train), ("val", val), ("test", test)))
    print(f"prepare: {source} -> {PREPARED_DIR}/ with {sizes} images")


if __name__ == "__main__":
    main()
