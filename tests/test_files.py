"""All-or-nothing outputs and their temporaries."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import threading

import pytest

from stages import errors, files
from stages.errors import Interrupted, UserError
from stages.files import all_or_nothing, atomic_path, remove_stale_temporaries, write_json
from tests.helpers import run


@pytest.fixture(autouse=True)
def fresh_journal(monkeypatch):
    """Each test starts with nothing planned or written, as a fresh stage process does."""
    monkeypatch.setattr(errors, "PLANNED", [])
    monkeypatch.setattr(errors, "WRITTEN", [])


def write(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "out" / "metrics.json"
    write(path, "old")

    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_outputs_appear_together_or_not_at_all(tmp_path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "sub" / "b.png"
    write(a, "old a")
    assert errors.outputs_note() == f"{a} had already been written"
    with pytest.raises(OSError), all_or_nothing() as outputs:
        outputs.path(a).write_text("new a")
        outputs.path(b).write_text("new b")
        raise OSError(errno.ENOSPC, "No space left on device")  # between the writes and the renames
    assert a.read_text() == "old a" and not b.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.csv", "sub"]  # no temporaries left
    assert errors.outputs_note() == f"nothing was written ({a} and {b} are as before)"


def test_the_note_names_what_was_written_and_what_was_left() -> None:
    assert errors.outputs_note() == "nothing was written"
    errors.PLANNED.extend(["plots/a.png", "models/m.pt"])
    assert errors.outputs_note() == "nothing was written (plots/a.png and models/m.pt are as before)"
    errors.WRITTEN.append("plots/a.png")
    assert errors.outputs_note() == "wrote plots/a.png but left models/m.pt as before"
    errors.WRITTEN.append("models/m.pt")
    assert errors.outputs_note() == "plots/a.png and models/m.pt had already been written"
    errors.PLANNED[:] = ["x", "y", "z"]
    errors.WRITTEN[:] = []
    assert errors.outputs_note() == "nothing was written (x, y and z are as before)"
    errors.PLANNED[:] = ["x"]
    assert errors.outputs_note() == "nothing was written (x is as before)"


def test_success_renames_in_the_order_asked_for_and_records_it(tmp_path) -> None:
    first, model = tmp_path / "history.csv", tmp_path / "model.pt"
    with all_or_nothing() as outputs:
        outputs.write_text(first, "h")
        outputs.write_text(model, "m")
        assert not first.exists() and not model.exists()  # nothing in place before the block ends
    assert errors.PLANNED == errors.WRITTEN == [str(first), str(model)]
    assert first.read_text() == "h" and model.read_text() == "m"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", "model.pt"]


def test_a_folder_output_replaces_the_whole_folder(tmp_path) -> None:
    folder = tmp_path / "data" / "prepared"
    folder.mkdir(parents=True)
    (folder / "stale.npy").write_text("stale")
    with all_or_nothing() as outputs:
        (outputs.folder(folder) / "train.npy").write_text("new")
    assert [p.name for p in folder.iterdir()] == ["train.npy"]
    assert [p.name for p in folder.parent.iterdir()] == ["prepared"]


def test_a_folder_in_the_way_of_a_file_fails_before_any_rename(tmp_path) -> None:
    first, second = tmp_path / "first.txt", tmp_path / "second.png"
    write(first, "old")
    (second / "inside").mkdir(parents=True)
    in_the_way = r"second\.png is a directory, where this stage writes a file: move it"
    with pytest.raises(UserError, match=in_the_way), all_or_nothing() as outputs:
        outputs.write_text(first, "new")
        outputs.write_text(second, "new")
    assert first.read_text() == "old" and errors.WRITTEN == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.txt", "second.png"]


def test_a_signal_during_the_renames_waits_until_all_are_done(tmp_path, monkeypatch) -> None:
    previous = signal.signal(signal.SIGTERM, errors._raise_interrupted)
    renamed = []
    real_replace = files._replace

    def replace_then_signal(tmp, final) -> None:
        real_replace(tmp, final)
        renamed.append(final)
        os.kill(os.getpid(), signal.SIGTERM)  # a second would be delivered here without the mask

    monkeypatch.setattr(files, "_replace", replace_then_signal)
    a, b = tmp_path / "a", tmp_path / "b"
    # Another thread, as torch's are in a stage: the kernel may hand it a process's signal, which a signal
    # mask on the main thread alone would not hold back.
    done = threading.Event()
    threading.Thread(target=done.wait, daemon=True).start()
    try:
        with pytest.raises(Interrupted), all_or_nothing() as outputs:
            outputs.write_text(a, "a")
            outputs.write_text(b, "b")
    finally:
        done.set()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert renamed == [a, b] and a.read_text() == "a" and b.read_text() == "b"
    assert errors.outputs_note() == f"{a} and {b} had already been written"


def test_an_os_error_names_the_output_not_its_temporary(tmp_path) -> None:
    with pytest.raises(OSError) as err, atomic_path(tmp_path / "metrics.json"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.filename == str(tmp_path / "metrics.json")
    assert errors.describe_os_error(err.value) == (
        f"{tmp_path / 'metrics.json'}: No space left on device; free some disk space and rerun"
    )


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_permissions_the_umask_gives(tmp_path, umask) -> None:
    old = os.umask(umask)
    try:
        write(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path) -> None:
    dead = _dead_pid()
    stale = tmp_path / f".metrics.json.{dead}.abc123.tmp"
    stale_dir = tmp_path / f".metrics.json.{dead}.def456.tmp"
    live = tmp_path / f".metrics.json.{os.getpid()}.ghi789.tmp"
    other = tmp_path / f".other.json.{dead}.abc123.tmp"
    stale.write_text("x")
    stale_dir.mkdir()
    live.write_text("x")
    other.write_text("x")
    write(tmp_path / "metrics.json", "new")
    assert not stale.exists() and not stale_dir.exists()
    assert live.exists() and other.exists()  # a live writer's, and another output's
    assert remove_stale_temporaries(tmp_path / "other.json") == [other]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_git_and_dvc_ignore_the_temporaries(project) -> None:
    names = ["plots/.samples.png.123.abc_1.tmp", "data/.prepared.123.x.tmp/train_images.npy"]
    for name in names:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x")
    assert run(project, "git", "status", "--porcelain", "--untracked-files=all").stdout.count(".tmp") == 0
    ignored = run(project, "dvc", "check-ignore", *names).stdout.split()
    assert ignored == names


def test_nan_in_json_is_refused_with_the_key(tmp_path) -> None:
    with pytest.raises(UserError, match=r"m\.json would hold NaN or an infinity, which JSON cannot: test\.loss is nan"):
        write_json(tmp_path / "m.json", {"test": {"accuracy": 0.5, "loss": float("nan")}})
    assert not any(tmp_path.iterdir())


def test_an_output_planned_early_is_written_later_in_its_place(tmp_path) -> None:
    log, model = tmp_path / "live", tmp_path / "model.pt"
    with all_or_nothing() as outputs:
        live = outputs.folder(log)
        planned = outputs.path(model)  # before the work, so that an error meanwhile names it; renamed last
        (live / "metrics.json").write_text("{}")
        outputs.write_text(model, "m")
        assert outputs.path(model) == planned and planned.stat().st_size > 0
    assert [str(log), str(model)] == errors.WRITTEN and (log / "metrics.json").is_file()


@pytest.mark.parametrize("fails", [False, True])
def test_a_live_folder_is_written_in_place_and_put_back_on_failure(tmp_path, fails) -> None:
    live, model = tmp_path / "dvclive" / "cnn", tmp_path / "models" / "cnn.pt"
    (live / "plots").mkdir(parents=True)
    (live / "metrics.json").write_text("old")
    write(model, "old model")
    errors.PLANNED.clear()
    errors.WRITTEN.clear()
    with contextlib.suppress(OSError), all_or_nothing() as outputs:
        assert outputs.live_folder(live) == live and not live.exists()  # the previous log is set aside
        outputs.path(model)
        live.mkdir()
        (live / "metrics.json").write_text("epoch 1")  # followed by tools while the stage runs
        if fails:
            raise OSError(errno.ENOSPC, "No space left on device")
        outputs.write_text(model, "new model")
    if fails:
        assert (live / "metrics.json").read_text() == "old" and (live / "plots").is_dir()
        assert model.read_text() == "old model"
        assert errors.outputs_note() == f"nothing was written ({live} and {model} are as before)"
    else:
        assert sorted(p.name for p in live.iterdir()) == ["metrics.json"]
        assert (live / "metrics.json").read_text() == "epoch 1" and model.read_text() == "new model"
        assert [str(live), str(model)] == errors.WRITTEN
    assert not list(tmp_path.rglob("*.tmp"))
