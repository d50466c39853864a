"""Outputs are written whole or not at all, with the usual permissions, and JSON never holds NaN."""

from __future__ import annotations

import errno
import os

import pytest

from stages.errors import UserError, describe_os_error
from stages.files import atomic_path, write_json, write_text
from tests.helpers import run


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "out" / "metrics.json"
    write_text(path, "old")
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_a_write_replaces_the_file_only_when_it_is_complete(tmp_path) -> None:
    path = tmp_path / "report.md"
    write_text(path, "old")
    with atomic_path(path) as tmp:
        tmp.write_text("new")
        assert path.read_text() == "old"  # until the block ends
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_an_os_error_names_the_output_not_its_temporary(tmp_path) -> None:
    with pytest.raises(OSError) as err, atomic_path(tmp_path / "metrics.json"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.filename == str(tmp_path / "metrics.json")
    assert describe_os_error(err.value) == (
        f"{tmp_path / 'metrics.json'}: No space left on device; free some disk space and rerun"
    )


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_permissions_the_umask_gives(tmp_path, umask) -> None:
    old = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_git_and_dvc_ignore_the_temporaries(project) -> None:
    names = ["plots/.samples.png.abc_1.tmp", "models/.cnn.pt.x2y.tmp"]
    for name in names:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x")
    assert run(project, "git", "status", "--porcelain", "--untracked-files=all").stdout.count(".tmp") == 0
    assert run(project, "dvc", "check-ignore", *names).stdout.split() == names


def test_nan_in_json_is_refused_with_the_key(tmp_path) -> None:
    with pytest.raises(UserError, match=r"m\.json would hold NaN or an infinity, which JSON cannot: test\.loss is nan"):
        write_json(tmp_path / "m.json", {"test": {"accuracy": 0.5, "loss": float("nan")}})
    assert not any(tmp_path.iterdir())
