"""The command line of the commands that are not pipeline stages (predict, tune): mistakes as one line."""

from __future__ import annotations

import argparse
from typing import NoReturn

from stages.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are one UserError line, as every other mistake is, instead of a usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see `{self.prog} --help`)")
