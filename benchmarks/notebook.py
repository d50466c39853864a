"""The notebook configuration: params.yaml with benchmarks/notebook.yaml laid over it.

`python -m benchmarks.notebook` prints the `-S key=value` arguments for `dvc exp run`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stages.params import flatten, parse_section, read_yaml, set_dotted

OVERLAY = Path(__file__).with_name("notebook.yaml")


def overrides() -> dict[str, Any]:
    return flatten(read_yaml(OVERLAY))


def notebook_params(section: str, params: str | Path = "params.yaml") -> Any:
    """One validated section of the notebook configuration."""
    raw = read_yaml(params)
    for dotted, value in overrides().items():
        set_dotted(raw, dotted, value)
    return parse_section(section, raw[section])


if __name__ == "__main__":
    print(
        " ".join(
            f"-S '{key}={value if isinstance(value, str) else json.dumps(value)}'" for key, value in overrides().items()
        )
    )
