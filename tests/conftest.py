"""Fixtures shared by the test modules: tiny copies of the project, fresh or reproduced."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.data import Split, find_source, load_raw
from tests.helpers import make_project, run


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh tiny project (1000 training images, one epoch) nothing has run in yet."""
    return make_project(tmp_path / "project")


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project after one full `dvc repro`, shared by the tests that only read it."""
    dest = make_project(tmp_path_factory.mktemp("reproduced") / "project")
    run(dest, "dvc", "repro")
    return dest


@pytest.fixture(scope="module")
def official_splits() -> tuple[Split, Split]:
    """The real training and test images, found the way `prepare` finds them."""
    return load_raw(find_source(None))
