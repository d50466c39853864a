"""How every entry point stops: one `error:` line on stderr, a non-zero exit code, never a traceback.

What a failed stage leaves is DVC's business: `dvc repro` removes a stage's outputs before running it and records
nothing in dvc.lock for one that failed, so the next `dvc repro` runs it again. Run by hand, each file a stage
writes is either the old one or the new one (`stages.files.atomic_path`).
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

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, a closed terminal: exit 130, 143, 129
ADVICE = {
    **dict.fromkeys((errno.ENOSPC, errno.EDQUOT), "free some disk space and rerun"),
    **dict.fromkeys((errno.EACCES, errno.EPERM), "check its permissions and rerun"),
    **dict.fromkeys((errno.EISDIR, errno.ENOTDIR), "remove what is in the way and rerun"),
    errno.EROFS: "write to a writable file system and rerun",
}
# PyTorch reports a failed allocation as a RuntimeError ("DefaultCPUAllocator: can't allocate memory"; CUDA's
# torch.OutOfMemoryError is one too), numpy as a MemoryError.
OUT_OF_MEMORY = re.compile(r"can't allocate memory|not enough memory|out of memory", re.IGNORECASE)
RESTORE = (
    "DVC removed this stage's outputs before running it: "
    "`git checkout params.yaml && dvc checkout` brings back the last committed ones"
)


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""


def describe_os_error(exc: OSError) -> str:
    """`path: reason; what to do`, without the errno numbers and quoting Python adds."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}; {ADVICE.get(exc.errno, 'check the path and rerun')}"


def install_startup_handlers() -> None:
    """While Python imports torch and friends (seconds), a signal ends the process at once with one line."""

    def leave(signum: int, _frame: object) -> None:
        os.write(
            2, f"error: interrupted by {signal.Signals(signum).name} during start-up; nothing was written\n".encode()
        )
        os._exit(128 + signum)

    for sig in SIGNALS:
        signal.signal(sig, leave)


def _fail(message: str, code: int) -> None:
    if os.environ.get("DVC_STAGE"):  # DVC sets it in the stages it runs
        message += f"; {RESTORE}"
    with contextlib.suppress(OSError):  # stderr itself is gone: the exit code still tells
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def entry_point(main: Callable[[], None] | None = None, *, needs_params: bool = True) -> Callable:
    """Wrap an entry point's main(): every way it can stop becomes one line and a non-zero exit code.

    A signal raises KeyboardInterrupt where the program is, and is remembered, so that the process exits with the
    signal's code even where a library swallows the exception (in a `__del__` or a callback); a second signal
    while the first unwinds is ignored. `needs_params=False` for a command that runs outside the repository.
    """
    if main is None:
        return functools.partial(entry_point, needs_params=needs_params)

    @functools.wraps(main)
    def wrapper() -> None:
        received: list[int] = []
        note = "rerun to start over"

        def on_signal(signum: int, _frame: object) -> None:
            if not received:  # KeyboardInterrupt, a BaseException: no `except Exception` swallows it
                received.append(signum)
                raise KeyboardInterrupt

        for sig in SIGNALS:
            signal.signal(sig, on_signal)
        try:
            if sys.stdout is None:  # started with stdout closed (`>&-`): print() would drop every line silently
                raise UserError("standard output is closed: run it with its output going to a terminal, file or pipe")
            if needs_params and not Path("params.yaml").is_file():
                raise UserError(f"no params.yaml in {Path.cwd()}: run the stages from the repository root")
            main()
            sys.stdout.flush()  # here, where a failure is one line, rather than at exit
        except KeyboardInterrupt as exc:  # ours, or Python's own if a library restored its SIGINT handler
            received[:1] = received or [signal.SIGINT]
            note = str(exc) or note  # a main() that cleaned up may say what the user can rely on now
        except BrokenPipeError:  # a reader that stopped early (`| head -1`): end quietly, as any Unix tool does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the flush at exit cannot fail
            sys.exit(128 + signal.SIGPIPE)
        except UserError as exc:
            _fail(str(exc), 1)
        except OSError as exc:
            _fail(describe_os_error(exc), 1)
        except (MemoryError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not OUT_OF_MEMORY.search(str(exc)):
                raise  # a bug: its traceback is what a developer needs
            first = (str(exc).strip() or type(exc).__name__).splitlines()[0][:160]
            _fail(f"out of memory ({first}): lower the batch size or the model's size, or free memory; rerun", 1)
        finally:
            for sig in SIGNALS:  # the work is over: a late signal during shutdown is no traceback
                signal.signal(sig, signal.SIG_IGN)
        if received:
            _fail(f"interrupted by {signal.Signals(received[0]).name}; {note}", 128 + received[0])

    return wrapper
