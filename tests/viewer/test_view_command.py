"""``handnerf view`` on the command line: bad runs fail clearly, a busy port is said."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from handnerf.cli import main

REPO = Path(__file__).resolve().parents[2]

#: A job that hangs fails here, whatever the machine's load (no clock in the waits).
pytestmark = pytest.mark.timeout(900)


def test_a_missing_run_folder_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["view", "--run", str(tmp_path / "nowhere"), "--port", "0"])
    err = capsys.readouterr().err
    assert status == 2
    assert "handnerf view: error:" in err and "nowhere" in err and "run.json" in err


def test_a_corrupt_checkpoint_is_a_clear_error(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    latest = run / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:200])  # truncated
    status = main(["view", "--run", str(run), "--port", "0"])
    err = capsys.readouterr().err
    assert status == 2
    assert str(latest) in err and "corrupted or truncated" in err


def test_a_run_whose_capture_is_gone_is_a_clear_error(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    info = run / "run.json"
    info.write_text(info.read_text().replace('"data_root": "', '"data_root": "/gone'))
    status = main(["view", "--run", str(run), "--port", "0"])
    err = capsys.readouterr().err
    assert status == 2
    assert "data_root" in err and "/gone" in err and "no longer exists" in err


def test_a_bad_port_number_is_refused(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["view", "--run", str(tiny_run), "--port", "70000"]) == 2
    assert "--port must be in 0..65535" in capsys.readouterr().err


def _wait_for_line(path: Path, prefix: str, proc: subprocess.Popen[str]) -> str:
    """The first line of ``path`` starting with ``prefix`` (the job's progress points).
    No clock: a job that exits fails at once, one that hangs meets pytest-timeout."""
    while True:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.startswith(prefix):
                    return line
        if proc.poll() is not None:
            raise AssertionError(f"handnerf view exited with {proc.returncode}")
        time.sleep(0.2)


def test_the_command_serves_on_the_next_free_port_and_stops_on_sigterm(
    tiny_run: Path, tmp_path: Path
) -> None:
    progress = tmp_path / "progress.txt"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HANDNERF_PROGRESS_FILE": str(progress),
        "PYTHONUNBUFFERED": "1",
    }
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cmd = [sys.executable, "-m", "handnerf.cli", "view", "--run", str(tiny_run)]
        cmd += ["--port", str(port), "--size", "32", "--preview-size", "16", "--device", "cpu"]
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            served = int(_wait_for_line(progress, "view.serve", proc).split()[1])
            assert served != port
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    assert proc.returncode == 130, out
    assert f"port {port} is busy; serving on port {served}" in out
    assert f"http://127.0.0.1:{served}" in out
