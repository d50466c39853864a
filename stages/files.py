"""Writing outputs: each file whole or not at all, and the same bytes for the same content.

That is all a stage needs beyond DVC: `dvc repro` itself removes a stage's outputs before running it and records
nothing for a stage that failed (see stages/errors.py), so no set of files needs to change together.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.errors import UserError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """`with atomic_path(path) as tmp:` write `tmp`; it is renamed to `path` only if the block ends well.

    The temporary, `.<name>.<random>.tmp` beside `path` (ignored by git and DVC), is removed on any failure; a
    SIGKILL or a power cut can leave one behind, never a half-written `path`. An OS error names `path`.
    """
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


def write_json(path: str | Path, obj: Any) -> None:
    """Indented JSON, refusing NaN and infinities (which would make the file invalid JSON)."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise UserError(f"{path} would hold NaN or an infinity, which JSON cannot: {_non_finite(obj)}") from None
    write_text(path, text)


def _non_finite(obj: Any, where: str = "") -> str:
    """The first non-finite number in nested dicts, as `cnn.test_loss is nan`."""
    if isinstance(obj, dict):
        found = (_non_finite(v, f"{where}.{k}".lstrip(".")) for k, v in obj.items())
        return next(filter(None, found), "")
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"{where or 'the value'} is {obj}"
    return ""


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
