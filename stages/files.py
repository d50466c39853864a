"""Writing outputs: each file whole or not at all, the same bytes for the same content. Beyond that, DVC's rule
holds (stages/errors.py): no set of files needs to change together."""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from stages.errors import UserError
from stages.params import flatten

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """`with atomic_path(path) as tmp:` write `tmp`, renamed to `path` if the block ends well, else removed. The
    temporary, `.<name>.<random>.tmp` (ignored by git and DVC), is all a SIGKILL can leave. OS errors name `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename in (None, name, tmp):
            exc.filename = str(path)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: dict) -> None:
    """Indented JSON, refusing NaN and infinities (which would make the file invalid JSON)."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    except ValueError:
        found = (f"{k} is {v}" for k, v in flatten(obj).items() if isinstance(v, float) and not math.isfinite(v))
        bad = next(found, "a value in a list")
        raise UserError(f"{path} would hold NaN or an infinity, which JSON cannot: {bad}") from None
    write_text(path, text)


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> None:
    """A Matplotlib figure as PNG without Matplotlib's version in its metadata: the same inputs, the same bytes."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})


def not_a_regular_file(path: Path) -> str | None:
    """None for an existing regular file, else what `path` is: only regular files are opened, since a FIFO
    would block the reader for ever and a device may never end."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    if stat.S_ISDIR(mode):
        return "is a directory"
    return None if stat.S_ISREG(mode) else "is a special file (a FIFO, socket or device)"
