"""User-facing errors: one line on stderr, a non-zero exit, never a traceback.

Every way a stage can stop (a user error, Ctrl-C or SIGTERM, an OS error such as a full disk) ends in one
`error:` line that also says which outputs were written and which were left as they were (the journal below,
kept by `stages.files.all_or_nothing`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM. A BaseException, like KeyboardInterrupt, so no `except Exception` can swallow it."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.exit_code = EXIT_CODES[signal.Signals(signum)]


# What this process promised to write (in order) and what it has renamed into place so far.
PLANNED: list[str] = []
WRITTEN: list[str] = []


def _listing(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else ", ".join(paths[:-1]) + " and " + paths[-1]


def outputs_note() -> str:
    """What the stage wrote and what it left as it was, for the last line of a failed stage."""
    left = [p for p in PLANNED if p not in WRITTEN]
    if not WRITTEN:
        if not left:
            return "nothing was written"
        return f"nothing was written ({_listing(left)} {'is' if len(left) == 1 else 'are'} as before)"
    if not left:
        return f"{_listing(WRITTEN)} had already been written"
    return f"wrote {_listing(WRITTEN)} but left {_listing(left)} as before"


ADVICE = {
    errno.ENOSPC: "free some disk space and rerun",
    errno.EDQUOT: "free some disk space and rerun",
    errno.EACCES: "check its permissions and rerun",
    errno.EPERM: "check its permissions and rerun",
    errno.EROFS: "write to a writable file system and rerun",
    errno.EISDIR: "remove what is in the way and rerun",
    errno.ENOTDIR: "remove what is in the way and rerun",
}


def describe_os_error(exc: OSError) -> str:
    """`path: reason; what to do`, without the errno numbers and quoting Python adds."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{reason}; {ADVICE.get(exc.errno, 'check the path and rerun')}"


class _Held:
    """While a stage renames its outputs into place, a signal waits until they all are (see signals_held)."""

    active = False
    pending: int | None = None


def _raise_interrupted(signum: int, _frame: object) -> None:
    if _Held.active:
        _Held.pending = _Held.pending or signum
        return
    # A second signal while the first one unwinds (removing temporaries, printing) must not interrupt that.
    for sig in EXIT_CODES:
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C or SIGTERM during the block takes effect when it ends. Python runs signal handlers in the main
    thread only, so this holds even where torch's threads would receive a signal that a mask blocks here."""
    _Held.active = True
    try:
        yield
    finally:
        _Held.active = False
        signum, _Held.pending = _Held.pending, None
    if signum is not None:
        _raise_interrupted(signum, None)


def startup_handler(signum: int, _frame: object) -> None:
    """Ctrl-C or SIGTERM while Python imports torch and friends: nothing exists yet, so leave at once."""
    name = signal.Signals(signum).name
    os.write(2, f"error: interrupted by {name} during start-up; nothing was written, rerun to start over\n".encode())
    os._exit(EXIT_CODES[signal.Signals(signum)])


def install_startup_handlers() -> None:
    for sig in EXIT_CODES:
        signal.signal(sig, startup_handler)


def _fail(message: str, code: int) -> None:
    with contextlib.suppress(OSError):  # stderr itself is gone: the exit code still tells
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def entry_point(main: Callable[[], None], needs_params: bool = True) -> Callable[[], None]:
    """Wrap a stage's main(): every way it can stop becomes one line and a non-zero exit code. A command that
    runs outside the repository (`needs_params=False`: predict) is spared the check for params.yaml."""

    @functools.wraps(main)
    def wrapper() -> None:
        for sig in EXIT_CODES:
            signal.signal(sig, _raise_interrupted)
        try:
            if needs_params and not Path("params.yaml").is_file():
                raise UserError(f"no params.yaml in {Path.cwd()}: run the stages from the repository root")
            main()
        except KeyboardInterrupt:  # only if something reinstalled Python's default handler
            _fail(f"interrupted by SIGINT; {outputs_note()}; rerun to start over", 130)
        except Interrupted as exc:
            _fail(f"{exc}; {outputs_note()}; rerun to start over", exc.exit_code)
        except UserError as exc:
            _fail(f"{exc}; {outputs_note()}" if PLANNED else str(exc), 1)
        except OSError as exc:
            _fail(f"{describe_os_error(exc)}; {outputs_note()}", 1)
        finally:
            # The work is over, either way: a late signal during interpreter shutdown is not a traceback.
            for sig in EXIT_CODES:
                signal.signal(sig, signal.SIG_IGN)

    return wrapper
