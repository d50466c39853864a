"""File I/O that never leaves a half-written output or a mix of new and stale ones.

A stage writes each output to a temporary next to it, `.<name>.<pid>.<random>.tmp` (ignored by git and DVC),
and renames them all into place together at the end (`all_or_nothing`). Temporaries that a killed process left
behind are removed the next time the same output is written.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages import errors
from stages.errors import UserError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TEMP_SUFFIX = ".tmp"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries of `path` whose process is gone (a SIGKILL or a power cut left them)."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[^.]+{re.escape(TEMP_SUFFIX)}$")
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*{TEMP_SUFFIX}"):
        match = pattern.match(candidate.name)
        if match and not _pid_alive(int(match[1])):
            _remove(candidate)
            removed.append(candidate)
    return removed


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _new_temp(path: Path, folder: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    if folder:
        return Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent))
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual permissions
    return Path(tmp)


class Outputs:
    """A stage's outputs as temporary paths; `all_or_nothing` renames them over the real ones together."""

    def __init__(self) -> None:
        self.pending: dict[Path, Path] = {}  # final path -> temporary, in the order they are renamed
        self.kept_aside: dict[Path, Path] = {}  # live folder -> the temporary holding its previous content

    def path(self, final: str | Path) -> Path:
        """A temporary file for `final`. Outputs are renamed in the order asked for: ask for the model last."""
        return self._add(Path(final), folder=False)

    def folder(self, final: str | Path) -> Path:
        """A temporary folder for `final`, which replaces the whole folder."""
        return self._add(Path(final), folder=True)

    def live_folder(self, final: str | Path) -> Path:
        """`final` itself, for a log that tools follow while the stage runs (DVCLive). Its previous content is
        kept aside and put back if the stage fails; it is dropped when the stage succeeds."""
        final = Path(final)
        if final not in self.kept_aside:
            aside = _new_temp(final, folder=True)
            _plan(final)
            if final.exists() or final.is_symlink():
                os.replace(final, aside / final.name)
            self.kept_aside[final] = aside
        return final

    def _add(self, final: Path, folder: bool) -> Path:
        """The temporary for `final`, made on first asking: plan an output early, write it later."""
        if final not in self.pending:
            self.pending[final] = _new_temp(final, folder)
            # Planned again (a second write of the same output) means pending again.
            errors.WRITTEN[:] = [p for p in errors.WRITTEN if p != str(final)]
            _plan(final)
        return self.pending[final]

    @contextlib.contextmanager
    def writing(self, final: str | Path) -> Iterator[Path]:
        """`with outputs.writing(final) as tmp:` write `tmp` (pandas, numpy, matplotlib take a path); an OS error
        names `final`, the file the user knows, rather than its temporary."""
        tmp = self.path(final)
        try:
            yield tmp
        except OSError as exc:
            if exc.filename in (None, str(tmp), tmp):
                exc.filename = str(final)
            raise

    def write_text(self, final: str | Path, text: str) -> None:
        with self.writing(final) as tmp:
            tmp.write_text(text, encoding="utf-8")

    def write_json(self, final: str | Path, obj: Any) -> None:
        self.write_text(final, to_json(final, obj))

    def _commit(self) -> None:
        # No signal between two renames: a stage's outputs change together. A signal that arrives meanwhile
        # takes effect when they are all in place (and the message then says they were written).
        for final, tmp in self.pending.items():
            _check_replaceable(tmp, final)
        with errors.signals_held():
            errors.WRITTEN.extend(str(final) for final in self.kept_aside)
            for final, tmp in self.pending.items():
                _replace(tmp, final)
                errors.WRITTEN.append(str(final))
            self.pending.clear()
        for aside in self.kept_aside.values():
            shutil.rmtree(aside, ignore_errors=True)
        self.kept_aside.clear()

    def _discard(self) -> None:
        for tmp in self.pending.values():
            with contextlib.suppress(OSError):
                _remove(tmp)
        self.pending.clear()
        for final, aside in self.kept_aside.items():  # the unfinished live log goes, the previous one returns
            with contextlib.suppress(OSError):
                _remove(final)
                if (aside / final.name).exists() or (aside / final.name).is_symlink():
                    os.replace(aside / final.name, final)
                _remove(aside)
        self.kept_aside.clear()


def _plan(final: Path) -> None:
    """Note `final` in the journal of outputs this stage will write (last, if it was there already)."""
    errors.PLANNED[:] = [p for p in errors.PLANNED if p != str(final)] + [str(final)]


def _check_replaceable(tmp: Path, final: Path) -> None:
    """Before any rename: a folder where a file goes (or the reverse) would fail the rename halfway through."""
    if final.exists() and not final.is_symlink() and final.is_dir() != tmp.is_dir():
        what = "a directory" if final.is_dir() else "a file"
        raise UserError(
            f"{final} is {what}, where this stage writes {'a folder' if tmp.is_dir() else 'a file'}: "
            "move it out of the way and rerun"
        )


def _replace(tmp: Path, final: Path) -> None:
    """Rename `tmp` over `final`; a folder over a folder goes through a moment where `final` is absent."""
    try:
        if tmp.is_dir() and final.is_dir() and not final.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=TEMP_SUFFIX, dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as exc:
        exc.filename = str(final)
        raise


@contextlib.contextmanager
def all_or_nothing() -> Iterator[Outputs]:
    """Hand out temporary paths for a stage's outputs; rename them all into place only if the block succeeds.

    On any failure (an error, Ctrl-C, SIGTERM, a full disk) the temporaries are removed and every output is left
    as it was; the stage's error line then says so (`stages.errors.outputs_note`).
    """
    outputs = Outputs()
    try:
        yield outputs
    except BaseException:
        outputs._discard()
        raise
    try:
        outputs._commit()
    finally:
        outputs._discard()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """One output on its own: `with atomic_path(path) as tmp:` write `tmp`, renamed to `path` if the block ends well."""
    with all_or_nothing() as outputs, outputs.writing(path) as tmp:
        yield tmp


def write_json(path: str | Path, obj: Any) -> None:
    with all_or_nothing() as outputs:
        outputs.write_json(path, obj)


def to_json(path: str | Path, obj: Any) -> str:
    """JSON text, refusing NaN and infinities (which would make the file invalid JSON)."""
    try:
        return json.dumps(obj, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise UserError(f"{path} would hold NaN or an infinity, which JSON cannot: {_non_finite(obj)}") from None


def _non_finite(obj: Any, where: str = "") -> str:
    """The first non-finite number in nested dicts, as `test.loss is nan`."""
    if isinstance(obj, dict):
        found = (_non_finite(v, f"{where}.{k}".lstrip(".")) for k, v in obj.items())
        return next(filter(None, found), "")
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"{where or 'the value'} is {obj}"
    return ""


def save_png(fig: Figure, path: Path, dpi: int = 100) -> None:
    """A Matplotlib figure as PNG without Matplotlib's version in its metadata: the same inputs, the same bytes."""
    fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})


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
