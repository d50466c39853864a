"""The commands' own options: a mistake is one line."""

from __future__ import annotations

import pytest

from stages.cli import ArgumentParser
from stages.errors import UserError


def test_a_bad_command_line_option_is_one_line_naming_the_help() -> None:
    parser = ArgumentParser(prog="python -m stages.x")
    parser.add_argument("--n", type=int)
    with pytest.raises(UserError, match=r"^argument --n: invalid int value: 'x' \(see `python -m stages.x --help`\)$"):
        parser.parse_args(["--n", "x"])
