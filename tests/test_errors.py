"""Every way a stage stops is one `error:` line and a non-zero exit code, never a traceback."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import time

import pytest

from stages import errors
from stages.errors import Interrupted, UserError, entry_point
from tests.helpers import BIN, ROOT


@pytest.fixture(autouse=True)
def restore_signals(monkeypatch, tmp_path):
    """entry_point installs its own handlers, as in a stage process; pytest keeps its own afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in errors.EXIT_CODES}
    monkeypatch.setattr(errors, "PLANNED", [])
    monkeypatch.setattr(errors, "WRITTEN", [])
    (tmp_path / "params.yaml").write_text("data: {}\n")
    monkeypatch.chdir(tmp_path)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def outcome(capsys, failure: BaseException, planned=(), written=()) -> tuple[int, str]:
    @entry_point
    def main() -> None:
        errors.PLANNED.extend(planned)
        errors.WRITTEN.extend(written)
        raise failure

    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


def test_user_error_before_any_output_is_the_message_alone(capsys) -> None:
    assert outcome(capsys, UserError("params.yaml: bad")) == (1, "error: params.yaml: bad\n")


def test_user_error_after_outputs_were_planned_says_they_are_as_before(capsys) -> None:
    code, err = outcome(capsys, UserError("mlp diverged"), planned=["models/mlp.pt"])
    assert (code, err) == (1, "error: mlp diverged; nothing was written (models/mlp.pt is as before)\n")


@pytest.mark.parametrize(
    ("number", "advice"),
    [
        (errno.ENOSPC, "free some disk space and rerun"),
        (errno.EROFS, "write to a writable file system and rerun"),
        (errno.EACCES, "check its permissions and rerun"),
        (errno.EIO, "check the path and rerun"),
    ],
)
def test_os_errors_are_one_line_with_the_path_and_what_to_do(capsys, number, advice) -> None:
    failure = OSError(number, "Some reason", "plots/a.png")
    code, err = outcome(capsys, failure, planned=["plots/a.png", "plots/b.png"], written=["plots/a.png"])
    assert code == 1
    assert err == f"error: plots/a.png: Some reason; {advice}; wrote plots/a.png but left plots/b.png as before\n"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupts_name_the_signal_and_exit_128_plus_it(capsys, sig, code) -> None:
    assert outcome(capsys, Interrupted(sig), planned=["m.pt"]) == (
        code,
        f"error: interrupted by {sig.name}; nothing was written (m.pt is as before); rerun to start over\n",
    )


def test_an_interrupt_is_not_swallowed_by_except_exception() -> None:
    with pytest.raises(Interrupted):
        try:
            raise Interrupted(signal.SIGTERM)
        except Exception:  # what a careless library might do
            pytest.fail("swallowed")


def test_a_second_signal_while_the_first_unwinds_is_ignored() -> None:
    with pytest.raises(Interrupted):
        errors._raise_interrupted(signal.SIGTERM, None)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_after_the_stage_a_late_signal_is_ignored(capsys) -> None:
    entry_point(lambda: None)()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_start_up_is_one_line(tmp_path, sig, code) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import runpy, sys, time; sys.argv = ['-m']; import stages; time.sleep(30)"],
        cwd=ROOT,
        env={"PATH": str(BIN)},
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)  # past Python's own start-up, inside what stands for the seconds of `import torch`
    proc.send_signal(sig)
    stderr = proc.communicate(timeout=30)[1]
    assert proc.returncode == code
    assert stderr == f"error: interrupted by {sig.name} during start-up; nothing was written, rerun to start over\n"
