"""How every entry point stops: one `error:` line on stderr, a non-zero exit code, never a traceback.

What a failed or interrupted stage leaves is DVC's business: `dvc repro` removes a stage's outputs before it runs
the stage and records nothing in dvc.lock for one that failed, so the next `dvc repro` runs it again. Run by hand,
each file a stage writes is either the old one or the new one (`stages.files.atomic_path`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, a closed terminal


def exit_code(signum: int) -> int:
    """128 + the signal's number, what a shell reports for a process that signal ended: 130, 143, 129."""
    return 128 + signum


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""


class Interrupted(BaseException):
    """A signal. A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


ADVICE = {
    errno.ENOSPC: "free some disk space and rerun",
    errno.EDQUOT: "free some disk space and rerun",
    errno.EACCES: "check its permissions and rerun",
    errno.EPERM: "check its permissions and rerun",
    errno.EROFS: "write to a writable file system and rerun",
    errno.EISDIR: "remove what is in the way and rerun",
    errno.ENOTDIR: "remove what is in the way and rerun",
}


OUT_OF_MEMORY = re.compile(r"can't allocate memory|not enough memory|out of memory", re.IGNORECASE)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def describe_os_error(exc: OSError) -> str:
    """`path: reason; what to do`, without the errno numbers and quoting Python adds."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{reason}; {ADVICE.get(exc.errno, 'check the path and rerun')}"


def _startup_handler(signum: int, _frame: object) -> None:
    os.write(2, f"error: interrupted by {signal.Signals(signum).name} during start-up; nothing was written\n".encode())
    os._exit(exit_code(signum))


def install_startup_handlers() -> None:
    """While Python imports torch and friends (seconds), a signal ends the process with one line at once."""
    for sig in SIGNALS:
        signal.signal(sig, _startup_handler)


def _fail(message: str, code: int) -> None:
    with contextlib.suppress(OSError):  # stderr itself is gone: the exit code still tells
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that Python's last flush at exit does not fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _restore_hint() -> str:
    """Under DVC (which sets DVC_STAGE) the stage's outputs were removed before it ran: say how to get them back."""
    if not os.environ.get("DVC_STAGE"):
        return ""
    return (
        "; DVC removed this stage's outputs before running it: "
        "`git checkout params.yaml && dvc checkout` brings back the last committed ones"
    )


def entry_point(main: Callable[[], None] | None = None, *, needs_params: bool = True) -> Callable:
    """Wrap an entry point's main(): every way it can stop becomes one line and a non-zero exit code.

    A signal raises Interrupted where the program is; it is also remembered, so that even if a library swallows
    the exception (a `__del__`, a callback) the process still exits with the signal's code. A second signal
    while the first unwinds is ignored. `needs_params=False` for commands that run outside the repository.
    """
    if main is None:
        return functools.partial(entry_point, needs_params=needs_params)

    @functools.wraps(main)
    def wrapper() -> None:
        received: list[int] = []

        def on_signal(signum: int, _frame: object) -> None:
            if not received:
                received.append(signum)
                raise Interrupted(signum)

        for sig in SIGNALS:
            signal.signal(sig, on_signal)
        try:
            if sys.stdout is None:  # started with stdout closed (`>&-`): print() would drop every line silently
                raise UserError("standard output is closed: run it with its output going to a terminal, file or pipe")
            if needs_params and not Path("params.yaml").is_file():
                raise UserError(f"no params.yaml in {Path.cwd()}: run the stages from the repository root")
            main()
            sys.stdout.flush()  # here, where a failure is one line, rather than at exit
        except Interrupted as exc:
            received[:1] = [exc.signum]
        except KeyboardInterrupt:  # only where something reinstalled Python's default handler
            received[:1] = [signal.SIGINT]
        except BrokenPipeError:
            # A reader that stopped early (`| head -1`) ends the command quietly, as with any Unix tool.
            _drop_stdout()
            sys.exit(exit_code(signal.SIGPIPE))
        except UserError as exc:
            _fail(f"{exc}{_restore_hint()}", 1)
        except OSError as exc:
            _fail(f"{describe_os_error(exc)}{_restore_hint()}", 1)
        except (MemoryError, RuntimeError) as exc:
            # PyTorch reports a failed allocation as a RuntimeError (CUDA's as its subclass OutOfMemoryError).
            if not (
                isinstance(exc, MemoryError) or OUT_OF_MEMORY.search(str(exc)) or "OutOfMemory" in type(exc).__name__
            ):
                raise
            _fail(
                f"out of memory ({_first_line(exc)}): lower the batch size or the model's size, or free memory; rerun",
                1,
            )
        finally:
            for sig in SIGNALS:  # the work is over: a late signal during shutdown is no traceback
                signal.signal(sig, signal.SIG_IGN)
        if received:
            name = signal.Signals(received[0]).name
            _fail(f"interrupted by {name}; rerun to start over{_restore_hint()}", exit_code(received[0]))

    return wrapper
