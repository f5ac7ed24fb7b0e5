"""``handnerf.interrupts``: held sections, the CLI's exit status, progress points and holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from handnerf import interrupts
from handnerf.files import atomic_write_bytes


@pytest.fixture
def handlers() -> Iterator[None]:
    """Install the CLI's handlers for one test, then give pytest its own back."""
    previous = interrupts.install()
    try:
        yield
    finally:
        interrupts.restore(previous)


def _signal_self(sig: int = signal.SIGTERM) -> None:
    os.kill(os.getpid(), sig)


def test_outside_a_held_section_a_signal_interrupts_at_once(handlers: None) -> None:
    with pytest.raises(interrupts.Interrupted) as raised:
        _signal_self()
        for _ in range(10_000):  # the handler runs between bytecodes, well before the end
            pass
        pytest.fail("no interrupt")
    assert raised.value.signum == signal.SIGTERM
    assert isinstance(raised.value, KeyboardInterrupt)


def test_a_held_signal_is_raised_when_the_outermost_section_ends(handlers: None) -> None:
    done = []
    with pytest.raises(interrupts.Interrupted):
        with interrupts.held():
            with interrupts.held():
                _signal_self(signal.SIGINT)
                done.append("inner")
            assert interrupts.pending() == signal.SIGINT  # not raised by the inner section
            done.append("outer")
    assert done == ["inner", "outer"]
    assert interrupts.pending() is None


def test_a_taken_signal_is_not_raised_again(handlers: None) -> None:
    with interrupts.held():
        _signal_self()
        assert interrupts.take() == signal.SIGTERM
    assert interrupts.pending() is None


def test_a_second_signal_means_now(handlers: None) -> None:
    reached = []
    with pytest.raises(interrupts.Interrupted), interrupts.held():
        _signal_self()
        reached.append(1)
        _signal_self()
        for _ in range(10_000):
            pass
        reached.append(2)
    assert reached == [1]


def test_held_works_without_install_and_restores_the_previous_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with interrupts.held():
        assert signal.getsignal(signal.SIGTERM) is not before
        _signal_self()
        assert interrupts.take() == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_during_an_atomic_write_leaves_the_whole_new_file(
    handlers: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")
    real_replace = os.replace

    def signalled_mid_write(src: str, dst: str) -> None:
        _signal_self()  # between the temp file and the rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", signalled_mid_write)
    with pytest.raises(interrupts.Interrupted):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"new" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_progress_points_are_traced_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = tmp_path / "progress"
    interrupts.reached("fit.step", 1)
    assert not trace.exists()
    monkeypatch.setenv(interrupts.PROGRESS_ENV, str(trace))
    interrupts.reached("start", "fit")
    interrupts.reached("fit.step", 1)
    assert trace.read_text().splitlines() == ["start fit", "fit.step 1"]


def test_a_job_holds_at_its_point_until_the_signal(
    handlers: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = tmp_path / "progress"
    monkeypatch.setenv(interrupts.PROGRESS_ENV, str(trace))
    monkeypatch.setenv(interrupts.HOLD_ENV, "write=*.png")

    def signal_once_held() -> None:
        while "hold" not in (trace.read_text() if trace.exists() else ""):
            threading.Event().wait(0.005)
        _signal_self()

    sender = threading.Thread(target=signal_once_held)
    sender.start()
    interrupts.reached("write", "a.json")  # not the point: passes
    with pytest.raises(interrupts.Interrupted):
        interrupts.reached("write", "b.png")
    sender.join()
    assert trace.read_text().splitlines() == ["write a.json", "hold write b.png"]
    interrupts.reached("write", "c.png")  # holds once per process
    assert trace.read_text().splitlines()[-1] == "write c.png"


@pytest.mark.parametrize("point", ["start", "exit"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_cli_exits_130_when_signalled_at_start_or_teardown(
    tmp_path: Path, point: str, sig: int
) -> None:
    trace = tmp_path / "progress"
    env = os.environ | {interrupts.PROGRESS_ENV: str(trace), interrupts.HOLD_ENV: point}
    proc = subprocess.Popen(
        [sys.executable, "-m", "handnerf.cli", "hand", "--out", str(tmp_path / "hand")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    while "hold" not in (trace.read_text() if trace.exists() else ""):
        assert proc.poll() is None, f"ended before {point}: {proc.stderr.read()}"
        threading.Event().wait(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"interrupted by {signal.Signals(sig).name}" in err
    if point == "exit":  # the work was done before the signal; it stays whole
        for name in ("MANO_RIGHT.pkl", "MANO_LEFT.pkl"):
            assert (tmp_path / "hand" / name).stat().st_size > 0
    else:
        assert not (tmp_path / "hand").exists()


def test_the_cli_called_as_a_library_gives_the_callers_handlers_back(tmp_path: Path) -> None:
    from handnerf.cli import main

    before = {sig: signal.getsignal(sig) for sig in interrupts.SIGNALS}
    assert main(["hand", "--out", str(tmp_path / "hand")]) == 0
    assert {sig: signal.getsignal(sig) for sig in interrupts.SIGNALS} == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_synth_stopped_while_writing_leaves_only_whole_files(tmp_path: Path, sig: int) -> None:
    """synth (not in the kill harness) stops like every job: 130, nothing half-written."""
    import imageio.v3 as iio

    trace, out = tmp_path / "progress", tmp_path / "capture"
    env = os.environ | {
        interrupts.PROGRESS_ENV: str(trace),
        interrupts.HOLD_ENV: "write=*.jpg",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "handnerf.cli", "synth", "--preset", "tiny", "--workers", "1"]
    proc = subprocess.Popen([*cmd, "--out", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    while "hold" not in (trace.read_text() if trace.exists() else ""):
        assert proc.poll() is None, proc.stderr.read()
        threading.Event().wait(0.01)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGTERM else -signal.SIGKILL)
    files = [p for p in out.rglob("*") if p.is_file()]
    temps = [p for p in files if p.name.startswith(".") and ".tmp" in p.suffixes]
    # a graceful stop finishes the write in flight; only SIGKILL may leave its temp file
    assert len(temps) == (0 if sig == signal.SIGTERM else 1), temps
    images = [p for p in files if p.suffix in (".jpg", ".png")]
    if sig == signal.SIGTERM:
        assert images, "the held write (the first image) finishes before the stop"
    for image in images:
        assert iio.imread(image).size > 0
