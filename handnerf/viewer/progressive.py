"""Progressive rendering on a worker thread: small while the view changes, full when still.

Every change (a slider, the camera, the scrubber) bumps a version. The worker renders the
latest version as a preview (``preview_size`` px on the longer side); when no change has
arrived by the time that preview is shown, the view is still, and it renders the same
version at ``full_size``. Changes that arrive during a render are merged: only the latest
is drawn, and a full-size render in flight is dropped at once (the renderer is asked
between bands of rows), so moving again never waits for a stale still. Stillness is
decided by what arrives, not by a clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from handnerf.errors import ConfigError
from handnerf.hand.hand_model import ManoParams
from handnerf.viewer.cameras import ViewCamera

#: Weight of the newest frame in the frame-rate average.
_RATE_SMOOTHING = 0.3


@dataclass(frozen=True)
class ViewFrame:
    """A shown image and exactly what it shows.

    image (H, W, 3) uint8; ``size`` its longer side; ``version`` the change it renders;
    ``full``: the still (full-size) image rather than a preview; ``seconds``: its render time.
    """

    image: np.ndarray
    pose: ManoParams
    camera: ViewCamera
    size: int
    version: int
    full: bool
    seconds: float


#: ``(pose, camera, size, cancelled) -> image``, or None when ``cancelled()`` stopped it.
#: ``cancelled`` is None for a preview: previews always finish, in one piece.
RenderFn = Callable[[ManoParams, ViewCamera, int, Callable[[], bool] | None], np.ndarray | None]
ShowFn = Callable[[ViewFrame], None]


class ProgressiveRenderer:
    """Draws the latest (pose, camera) through ``render`` and hands each image to ``show``."""

    def __init__(
        self,
        render: RenderFn,
        show: ShowFn,
        pose: ManoParams,
        camera: ViewCamera,
        full_size: int,
        preview_size: int,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if full_size < 8 or preview_size < 8:
            raise ConfigError(
                f"viewer image sizes must be >= 8 px, got full {full_size}, preview {preview_size}"
            )
        self._render = render
        self._show = show
        self._on_error = on_error
        self.full_size = full_size
        self.preview_size = min(preview_size, full_size)
        self._cond = threading.Condition()
        self._pose = pose
        self._camera = camera
        self._version = 1  # the first view is a change: the worker draws it at once
        self._shown_version = 0
        self._shown_full = False
        self._last: ViewFrame | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: Frames per second of previews and of full images (moving averages), once seen.
        self.rates: dict[str, float] = {}
        #: The last render's exception (the worker carries on with the next change).
        self.error: BaseException | None = None

    # ----------------------------------------------------------------- requests

    def update(self, pose: ManoParams | None = None, camera: ViewCamera | None = None) -> int:
        """Change what is shown; returns the new version."""
        with self._cond:
            if pose is not None:
                self._pose = pose
            if camera is not None:
                self._camera = camera
            self._version += 1
            self._cond.notify_all()
            return self._version

    @property
    def version(self) -> int:
        with self._cond:
            return self._version

    @property
    def pose(self) -> ManoParams:
        with self._cond:
            return self._pose

    @property
    def camera(self) -> ViewCamera:
        with self._cond:
            return self._camera

    @property
    def last_frame(self) -> ViewFrame | None:
        with self._cond:
            return self._last

    def wait_for(self, done: Callable[[ViewFrame], bool], timeout: float) -> ViewFrame:
        """Block until a shown frame satisfies ``done``; TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._last is None or not done(self._last):
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    raise TimeoutError(
                        f"no matching viewer frame within {timeout:g} s (last error: {self.error})"
                    )
                self._cond.wait(left)
            return self._last

    def wait_still(self, timeout: float) -> ViewFrame:
        """The full-size frame of the latest change, once drawn."""
        return self.wait_for(lambda f: f.full and f.version == self.version, timeout)

    # ----------------------------------------------------------------- worker

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._work, name="handnerf-viewer-render")
        self._thread.daemon = True  # never keeps a dying interpreter alive mid-render
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the worker (after the render in flight, if any)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _next(self) -> tuple[int, ManoParams, ViewCamera, bool] | None:
        """Wait for work: (version, pose, camera, full), or None when stopping."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                if self._version != self._shown_version:
                    # A change: a preview first, unless previews are full-size anyway.
                    full = self.preview_size >= self.full_size
                    return self._version, self._pose, self._camera, full
                if not self._shown_full:
                    return self._version, self._pose, self._camera, True
                self._cond.wait()

    def _moved_on(self, version: int, full: bool) -> Callable[[], bool] | None:
        """Whether a render of ``version`` has become stale; None for a preview, which
        always finishes (so it is drawn whole: bands, for cancelling, cost time)."""
        if not full:
            return None
        return lambda: self._stopping or self._version != version

    def _work(self) -> None:
        while (job := self._next()) is not None:
            version, pose, camera, full = job
            size = self.full_size if full else self.preview_size
            start = time.perf_counter()
            try:
                # A full image is stale as soon as anything changes: the worker drops it
                # and previews the change. Previews always finish (they are the feedback).
                image = self._render(pose, camera, size, self._moved_on(version, full))
                if image is None:
                    continue
                frame = ViewFrame(
                    image, pose, camera, size, version, full, time.perf_counter() - start
                )
                self._show(frame)
            except Exception as exc:  # shown in the GUI; the next change may render fine
                with self._cond:
                    self.error = exc
                    self._shown_version, self._shown_full = version, True
                    self._cond.notify_all()
                if self._on_error is not None:
                    self._on_error(exc)
                continue
            with self._cond:
                kind = "full" if full else "preview"
                rate = 1.0 / max(frame.seconds, 1e-6)
                old = self.rates.get(kind)
                self.rates[kind] = (
                    rate if old is None else (1 - _RATE_SMOOTHING) * old + _RATE_SMOOTHING * rate
                )
                self._last = frame
                self._shown_version, self._shown_full = version, full
                self.error = None
                self._cond.notify_all()
