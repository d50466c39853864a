"""File I/O that never leaves a half-written output: write to a temporary file, then rename."""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from stages.errors import UserError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Atomically create `path` with a writer that takes a path (pandas, numpy, matplotlib, torch)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save, byte for byte the same for the same tensors.

    Saved to a path, torch names the zip's records after the file, here a random temporary name; saved to a
    buffer they are always named `archive/`, so identical weights give identical files and DVC hashes.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_with(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def load_torch(path: str | Path) -> Any:
    """Load a checkpoint with weights_only=True; anything that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: run `dvc repro` to create it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"refusing to load {path}: it holds objects other than tensors and plain data "
            f"({first[:120]}); only load model files you trust, or retrain with `dvc repro`"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise UserError(f"{path} is not a readable model file ({exc}): retrain with `dvc repro`") from None
