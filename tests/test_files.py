from __future__ import annotations

import pytest

from stages.errors import UserError
from stages.files import load_torch, write_text, write_with


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "out" / "metrics.json"
    write_text(path, "old")

    def broken(tmp) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_with(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_outputs_get_ordinary_permissions(tmp_path) -> None:
    write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o044 == 0o044  # group and others may read, unlike mkstemp's 0600


def test_missing_or_garbage_model_file(tmp_path) -> None:
    with pytest.raises(UserError, match=r"does not exist: run `dvc repro`"):
        load_torch(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="bad.pt"):
        load_torch(tmp_path / "bad.pt")
