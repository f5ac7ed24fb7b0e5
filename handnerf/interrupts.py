"""Graceful SIGINT/SIGTERM for the whole life of a command, and named progress points.

Every ``handnerf`` command calls :func:`install` before anything else. From then on:

* **Outside a held section** a SIGINT or SIGTERM raises :class:`Interrupted` (a
  ``KeyboardInterrupt``) where the program is. The CLI turns it into exit status 130.
  Nothing is half-written by that, because every file goes through
  :func:`handnerf.files.atomic_write_bytes`, whose write-and-rename is a held section.
* **Inside** :func:`held` a signal is only recorded. Code that can stop early (the
  training loop) polls :func:`pending` between units of work and :func:`take` s the signal
  once it has stopped cleanly; otherwise the signal is raised as :class:`Interrupted` when
  the outermost held section ends, i.e. just after the write or step in flight finished.
  A second signal while one is pending means "now": it is raised at once.

:func:`reached` marks named points of a job (``start``, ``fit.step``, ``write``...). It
costs one environment look-up unless a fault-injection harness asks for more:

* ``HANDNERF_PROGRESS_FILE=PATH``: each point reached is appended to PATH as
  ``name value`` (one line each), so a harness can follow a job's progress instead of
  guessing from the clock.
* ``HANDNERF_HOLD_AT=name`` or ``name=value`` (``value`` may be a shell-style pattern,
  e.g. ``write=*.png``): the first time that point is reached, the
  job appends ``hold name value`` to the progress file and waits there (at most
  :data:`HOLD_LIMIT_S`) until a signal arrives. A kill aimed at a point then lands exactly
  there, on a fast machine or a slow one (``tools/reliability.py`` uses this).
"""

from __future__ import annotations

import fnmatch
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

PROGRESS_ENV = "HANDNERF_PROGRESS_FILE"
HOLD_ENV = "HANDNERF_HOLD_AT"
#: A held job that no signal reaches goes on after this long (a harness that died).
HOLD_LIMIT_S = 120.0
SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM asked the job to stop; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    depth = 0  # nesting of held sections
    pending: int | None = None  # a signal recorded inside a held section
    installed = False  # our handler is in place (by install() or an outermost held())
    hold_done = False  # the HANDNERF_HOLD_AT point was reached once already


def _handle(signum: int, frame: FrameType | None) -> None:
    if _State.depth == 0 or _State.pending is not None:
        _State.pending = None
        raise Interrupted(signum)
    _State.pending = signum


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> dict[int, Any]:
    """Handle SIGINT and SIGTERM as described above; returns the handlers it replaced
    (give them to :func:`restore`). Does nothing outside the main thread."""
    if not _in_main_thread():
        return {}
    previous = {sig: signal.signal(sig, _handle) for sig in SIGNALS}
    _State.installed = True
    return previous


def restore(previous: dict[int, Any]) -> None:
    """Put back the handlers :func:`install` replaced and forget any pending signal."""
    if previous and _in_main_thread():
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _State.installed = False
    _State.pending = None
    _State.hold_done = False


def leave_to_parent() -> None:
    """In a pool worker: ignore SIGINT/SIGTERM and leave the decision to the parent.

    A Ctrl-C reaches the whole process group. The parent shuts its pool down after the
    tasks in flight (each writes atomically) instead of workers dying mid-task and
    breaking the pool.
    """
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def pending() -> int | None:
    """The signal recorded in the current held section, if any (still pending)."""
    return _State.pending


def take() -> int | None:
    """Clear and return the pending signal: the caller has acted on it."""
    signum, _State.pending = _State.pending, None
    return signum


@contextmanager
def held() -> Iterator[None]:
    """Record SIGINT/SIGTERM instead of raising them until the block ends.

    Also works where :func:`install` was never called (library use, threads): an
    outermost section then installs the handler for its duration (main thread only).
    """
    previous: dict[int, Any] = {}
    if not _State.installed and _State.depth == 0 and _in_main_thread():
        previous = {sig: signal.signal(sig, _handle) for sig in SIGNALS}
        _State.installed = True
    _State.depth += 1
    try:
        yield
    except BaseException:
        _leave(previous)
        raise
    _leave(previous)
    if _State.depth == 0 and _State.pending is not None:
        raise Interrupted(take() or signal.SIGINT)


def _leave(previous: dict[int, Any]) -> None:
    _State.depth -= 1
    if previous:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _State.installed = False


def reached(point: str, value: object = None) -> None:
    """Mark progress point ``point`` (with an optional step, count or file name)."""
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    label = point if value is None else f"{point} {value}"
    hold = os.environ.get(HOLD_ENV, "")
    name, _, wanted = hold.partition("=")
    holding = (
        not _State.hold_done
        and name == point
        and (not wanted or (value is not None and fnmatch.fnmatchcase(str(value), wanted)))
    )
    with open(path, "a") as log:
        log.write(f"{'hold ' if holding else ''}{label}\n")
    if not holding:
        return
    _State.hold_done = True
    deadline = time.monotonic() + HOLD_LIMIT_S
    # Outside a held section the signal raises Interrupted out of this sleep; inside one
    # it is recorded, and the job carries on to the end of the section.
    while _State.pending is None and time.monotonic() < deadline:
        time.sleep(0.005)
