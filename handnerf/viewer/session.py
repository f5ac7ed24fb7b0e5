"""The viewer's one door to rendering: a pose and a viewpoint in, an image out.

Everything the viewer draws goes through :meth:`RenderSession.render_view`, so a faster
renderer replaces this class's body and nothing else.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable

import numpy as np

from handnerf.data.camera import PinholeCamera
from handnerf.hand.hand_model import ManoParams
from handnerf.model.avatar import PosedFrames
from handnerf.model.marching import can_march
from handnerf.model.preview import PreviewRenderer
from handnerf.model.renderer import render_camera
from handnerf.runs.loader import TrainedRun
from handnerf.viewer.cameras import ViewCamera

#: Bands of rows a cancellable render is drawn in (checks for cancellation in between).
CANCEL_BANDS = 4


def row_band(camera: PinholeCamera, top: int, bottom: int) -> PinholeCamera:
    """The camera of rows ``top:bottom`` of ``camera``'s image (same rays, fewer rows)."""
    K = camera.K.copy()
    K[1, 2] -= top
    return dataclasses.replace(camera, K=K, height=bottom - top)


class RenderSession:
    """Renders a fitted run's avatar for the viewer.

    Posing a frame (MANO, self-shadow visibility, the deformer's lookup structures) costs
    about as much as a small image on a CPU, so the last few poses' :class:`PosedFrames`
    are kept (:class:`PreviewRenderer`'s cache): turning the camera around a still hand,
    or scrubbing back and forth, poses each frame once. Images render through
    :func:`render_camera`'s fast path (front-to-back marching) wherever the avatar allows.
    """

    def __init__(self, run: TrainedRun, chunk: int | None = None) -> None:
        self.run = run
        self.chunk = chunk
        self._lock = threading.Lock()
        self._preview = PreviewRenderer(run.avatar, run.device, chunk=chunk)
        n_samples = getattr(run.avatar.sampler, "n_samples", None)
        #: Samples per ray of a coarse (moving) image: half the avatar's, on the fast path
        #: only (None: the avatar's own, e.g. nerfacc's marching or a two-hand avatar).
        self.coarse_samples: int | None = (
            max(8, n_samples // 2) if n_samples is not None and can_march(run.avatar) else None
        )

    def posed(self, pose: ManoParams) -> PosedFrames:
        """``pose`` (a batch of one) prepared for rendering, reused while it is recent."""
        return self._preview.posed(pose)

    def render_view(
        self,
        pose: ManoParams,
        camera: ViewCamera,
        size: int,
        cancelled: Callable[[], bool] | None = None,
        coarse: bool = False,
    ) -> np.ndarray | None:
        """The avatar in ``pose`` (one frame) seen from ``camera``: (H, W, 3) uint8 whose
        longer side is ``size`` px, black background, canonical colour (no capture camera's
        colour affine: a viewpoint is a virtual camera).

        With ``cancelled``, the image is drawn in bands of rows and ``cancelled()`` is asked
        between bands: when it says yes the render stops and returns None (a view that moved
        on need not wait for a stale full-size image). ``coarse``: fewer samples per ray
        (:attr:`coarse_samples`), for previews while the view moves: about twice as fast,
        a slightly coarser image.
        """
        pinhole = camera.pinhole(size)
        bands = 1 if cancelled is None else min(CANCEL_BANDS, pinhole.height)
        edges = np.linspace(0, pinhole.height, bands + 1).round().astype(int)
        parts = []
        with self._lock:  # one render at a time: the avatar's caches are not thread-safe
            frames = self.posed(pose)
            for top, bottom in itertools.pairwise(edges.tolist()):
                if cancelled is not None and cancelled():
                    return None
                image = render_camera(
                    self.run.avatar,
                    frames,
                    row_band(pinhole, top, bottom),
                    0,
                    None,
                    self.run.device,
                    chunk=self.chunk,
                    n_samples=self.coarse_samples if coarse else None,
                )
                parts.append(image.numpy())
        return (np.concatenate(parts) * 255).round().astype(np.uint8)

    def hand_center(self, pose: ManoParams) -> np.ndarray:
        """(3,) centre of the posed hand's bounding box, world metres."""
        with self._lock:
            vertices = self.posed(pose).vertices[0].detach().cpu().numpy()
        return 0.5 * (vertices.min(0) + vertices.max(0))
