"""Interactive renders of a fitted avatar: a pose and a camera in, an image out, fast.

:class:`PreviewRenderer` is what an interactive viewer (``handnerf view``) calls on every
camera move or slider change. It keeps the posed frames (MANO, the deformer's trees, the
shell grid, self-shadow visibility: about 0.4 s of work per pose on 2 CPU cores) of the
last few poses, so moving the camera around a pose re-renders only the rays, and renders
at whatever size is asked (low while the user drags, full when still) through
:func:`handnerf.model.renderer.render_camera` and its fast path
(:mod:`handnerf.model.marching`). Usage::

    preview = PreviewRenderer(run.avatar)
    image = preview.render(mano, camera, size=128)  # (H, W, 3) float32 in [0, 1], CPU
    image = preview.render(mano, camera)            # the camera's own resolution
    image = preview.render(mano, camera, size=128, n_samples=32)  # coarser while dragging

``mano``: one frame of :class:`ManoParams` (the avatar's own shape is used whatever its
betas). ``camera``: a :class:`PinholeCamera` or :class:`CameraTensors` (world -> camera,
InterHand convention); ``size`` is the longer side of the image in pixels, the aspect
ratio and field of view kept (see :func:`handnerf.model.renderer.resized_camera`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

from handnerf.data.camera import PinholeCamera
from handnerf.errors import ParameterError
from handnerf.hand.hand_model import ManoParams
from handnerf.model.avatar import HandAvatar, PosedFrames
from handnerf.model.renderer import CameraTensors, render_camera, resized_camera

#: Posed frames kept: a viewer scrubbing a sequence back and forth revisits recent poses.
DEFAULT_MAX_POSES = 8


class PreviewRenderer:
    """Renders ``avatar`` for a pose and a camera at a requested size, caching posed frames.

    Args:
        avatar: the fitted avatar (``TrainedRun.avatar``), in eval mode.
        device: where to render (None: the avatar's device).
        max_poses: posed frames kept (least recently used dropped first).
        chunk: rays per render call (None: :func:`render_camera`'s default).
    """

    def __init__(
        self,
        avatar: HandAvatar,
        device: torch.device | str | None = None,
        max_poses: int = DEFAULT_MAX_POSES,
        chunk: int | None = None,
    ) -> None:
        if max_poses < 1:
            raise ParameterError(f"PreviewRenderer: max_poses must be >= 1, got {max_poses}")
        self.avatar = avatar
        self.device = avatar.betas.device if device is None else torch.device(device)
        self.max_poses = max_poses
        self.chunk = chunk
        self._posed: OrderedDict[bytes, PosedFrames] = OrderedDict()
        #: How many :meth:`posed` calls found their pose cached / had to pose it.
        self.hits = 0
        self.misses = 0

    def posed(self, mano: ManoParams) -> PosedFrames:
        """The posed frame of ``mano`` (one frame), from the cache when the same pose (same
        global rotation, finger pose and translation, bit for bit) was posed recently."""
        if len(mano) != 1:
            raise ParameterError(
                f"PreviewRenderer: one pose at a time, got {len(mano)} frames of MANO parameters"
            )
        key = pose_key(mano)
        frames = self._posed.get(key)
        if frames is not None:
            self.hits += 1
            self._posed.move_to_end(key)
            return frames
        self.misses += 1
        with torch.no_grad():
            frames = self.avatar.pose_frames(mano.to(self.device))
        self._posed[key] = frames
        while len(self._posed) > self.max_poses:
            self._posed.popitem(last=False)
        return frames

    def render(
        self,
        mano: ManoParams,
        camera: PinholeCamera | CameraTensors,
        size: int | None = None,
        camera_id: int | None = None,
        background: Tensor | None = None,
        n_samples: int | None = None,
    ) -> Tensor:
        """(H,W,3) float32 CPU image of the avatar posed by ``mano`` seen by ``camera``.

        ``size``: the longer image side in pixels (the other one scaled to keep the aspect
        ratio, the field of view unchanged); None: the camera's resolution.
        ``camera_id``: the fit's camera whose colour affine to apply (None: canonical
        colour, as for any virtual camera). ``background``: (3,) colour, default black.
        ``n_samples``: samples per ray instead of the avatar's (e.g. half while the user
        drags: about twice as fast, a slightly coarser image); None: the avatar's.
        """
        cam = CameraTensors.of(camera)
        if size is not None:
            if size < 1:
                raise ParameterError(f"PreviewRenderer: size must be >= 1 pixel, got {size}")
            longer = max(cam.width, cam.height)
            cam = resized_camera(
                cam,
                max(1, round(cam.width * size / longer)),
                max(1, round(cam.height * size / longer)),
            )
        frames = self.posed(mano)
        return render_camera(
            self.avatar,
            frames,
            cam,
            0,
            camera_id,
            self.device,
            chunk=self.chunk,
            background=background,
            n_samples=n_samples,
        )

    def clear(self) -> None:
        """Forget every posed frame (e.g. after the avatar's weights changed)."""
        self._posed.clear()


def pose_key(mano: ManoParams) -> bytes:
    """Bytes identifying one frame's pose: its global rotation, finger pose, translation."""
    parts = (mano.global_orient, mano.hand_pose, mano.transl)
    return b"".join(
        p.detach().to("cpu", torch.float64).contiguous().numpy().tobytes() for p in parts
    )
