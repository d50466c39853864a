"""User-facing errors: one line on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path


class UserError(Exception):
    """Something the user can fix; the message says what is wrong and how to fix it."""


class Interrupted(UserError):
    """Ctrl-C or SIGTERM: reported like a user error so nothing half-done is left."""


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}; nothing was written, rerun to start over")


def entry_point(main: Callable[[], None]) -> Callable[[], None]:
    """Wrap a stage's main(): user errors and interrupts become one line and exit code 1 (130 for Ctrl-C)."""

    @functools.wraps(main)
    def wrapper() -> None:
        signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            if not Path("params.yaml").is_file():
                raise UserError(f"no params.yaml in {Path.cwd()}: run the stages from the repository root")
            main()
        except KeyboardInterrupt:
            print("error: interrupted by SIGINT; nothing was written, rerun to start over", file=sys.stderr)
            sys.exit(130)
        except Interrupted as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(143)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)

    return wrapper
