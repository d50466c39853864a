"""Every way an entry point stops is one `error:` line and a non-zero exit code, never a traceback."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from stages.errors import UserError, entry_point
from tests.helpers import BIN, ROOT


@pytest.fixture(autouse=True)
def in_a_project(monkeypatch, tmp_path):
    """entry_point installs its own signal handlers, as in a stage process; pytest gets its own back after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    (tmp_path / "params.yaml").write_text("data: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def outcome(capsys, failure: BaseException) -> tuple[int, str]:
    @entry_point
    def main() -> None:
        raise failure

    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


def test_a_user_error_is_its_message(capsys) -> None:
    assert outcome(capsys, UserError("params.yaml: bad")) == (1, "error: params.yaml: bad\n")


def test_under_dvc_a_failure_says_how_to_get_the_removed_outputs_back(capsys, monkeypatch) -> None:
    monkeypatch.setenv("DVC_STAGE", "train_cnn")
    code, err = outcome(capsys, UserError("cnn diverged"))
    assert code == 1 and err.startswith("error: cnn diverged; DVC removed this stage's outputs")
    assert "`git checkout params.yaml && dvc checkout`" in err and err.count("\n") == 1


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
    code, err = outcome(capsys, OSError(number, "Some reason", "plots/a.png"))
    assert (code, err) == (1, f"error: plots/a.png: Some reason; {advice}\n")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_interrupts_name_the_signal_and_exit_128_plus_it(capsys, sig, code) -> None:
    @entry_point
    def main() -> None:
        os.kill(os.getpid(), sig)
        time.sleep(5)

    with pytest.raises(SystemExit) as exit_:
        main()
    assert (exit_.value.code, capsys.readouterr().err) == (
        code,
        f"error: interrupted by {sig.name}; rerun to start over\n",
    )


def test_no_params_yaml_is_refused_unless_the_command_runs_anywhere(capsys, tmp_path) -> None:
    (tmp_path / "params.yaml").unlink()
    code, err = outcome(capsys, UserError("never reached"))
    assert code == 1 and err.startswith("error: no params.yaml in ")
    ran = []
    entry_point(needs_params=False)(lambda: ran.append(1))()
    assert ran == [1]


def run_entry_point(body: str, **popen) -> subprocess.Popen:
    """A process whose main() is `body`, wrapped by entry_point as a stage's is."""
    code = "import os, signal, sys, time\nfrom stages.errors import entry_point\n"
    code += f"@entry_point\ndef main():\n{textwrap.indent(textwrap.dedent(body), '    ')}\nmain()\n"
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True, **popen)


def test_an_interrupt_is_not_swallowed_by_except_exception(capsys) -> None:
    @entry_point
    def main() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Exception:  # what a careless library does
            pytest.fail("swallowed")

    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 143


def test_a_signal_that_a_library_swallows_still_ends_the_process_with_its_code() -> None:
    # What Python does to an exception raised inside a __del__ or a callback: prints "Exception ignored" and goes
    # on. The process must still say it was interrupted and exit 130, not finish with 0.
    proc = run_entry_point("""
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except BaseException:
            pass
        print("finished")
    """)
    assert proc.wait(timeout=30) == 130
    assert proc.stderr.read() == "error: interrupted by SIGINT; rerun to start over\n"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_real_signal_mid_work_is_one_line_and_128_plus_it(sig, code) -> None:
    proc = run_entry_point("print('ready', flush=True)\ntime.sleep(30)", stdout=subprocess.PIPE)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == code
    assert proc.stderr.read() == f"error: interrupted by {sig.name}; rerun to start over\n"


def test_a_second_signal_while_the_first_unwinds_is_ignored() -> None:
    proc = run_entry_point("""
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # during the clean-up the first one started
            time.sleep(0.2)
    """)
    assert proc.wait(timeout=30) == 143
    assert proc.stderr.read() == "error: interrupted by SIGTERM; rerun to start over\n"


def test_a_closed_stdout_is_an_error_not_a_silent_success() -> None:
    proc = run_entry_point("print('the answer')", preexec_fn=lambda: os.close(1))
    assert proc.wait(timeout=30) == 1
    assert proc.stderr.read().startswith("error: standard output is closed")


def test_a_full_stdout_is_one_line() -> None:
    with open("/dev/full", "w") as full:
        proc = run_entry_point("print('the answer')", stdout=full)
        assert proc.wait(timeout=30) == 1
    assert proc.stderr.read() == "error: No space left on device; free some disk space and rerun\n"


def test_a_reader_that_stops_early_ends_the_command_quietly() -> None:
    read, write = os.pipe()
    os.close(read)  # `| head -1` after its line
    proc = run_entry_point("print('x' * 100_000)", stdout=write)
    os.close(write)
    assert proc.wait(timeout=30) == 141  # 128 + SIGPIPE, what the shell shows for any tool in that spot
    assert proc.stderr.read() == ""


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_during_start_up_is_one_line(sig, code) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.argv = ['-m']; import stages; time.sleep(30)"],
        cwd=ROOT,
        env={"PATH": str(BIN)},
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)  # past Python's own start-up, inside what stands for the seconds of `import torch`
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == code
    assert proc.stderr.read() == f"error: interrupted by {sig.name} during start-up; nothing was written\n"


@pytest.mark.parametrize(
    "failure",
    [
        MemoryError("Unable to allocate 728. TiB for an array"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to"),
    ],
)
def test_out_of_memory_is_one_line_with_what_to_lower(capsys, failure) -> None:
    code, err = outcome(capsys, failure)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: out of memory (") and "lower the batch size or the model's size" in err


def test_other_runtime_errors_are_bugs_and_keep_their_traceback(capsys) -> None:
    with pytest.raises(RuntimeError, match="a bug"):
        entry_point(lambda: (_ for _ in ()).throw(RuntimeError("a bug")))()


def test_a_main_that_cleans_up_after_a_signal_can_say_what_is_left(capsys) -> None:
    @entry_point
    def main() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            raise KeyboardInterrupt("the study is intact in s.journal: run the same command to go on") from None

    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 143
    assert capsys.readouterr().err == (
        "error: interrupted by SIGTERM; the study is intact in s.journal: run the same command to go on\n"
    )
