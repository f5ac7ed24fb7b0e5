"""Rendering a whole camera image of posed frames: the inference path.

Training validation, ``handnerf render`` and ``handnerf eval`` all render through
:func:`render_camera`, so a held-out view looks the same wherever it is rendered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from handnerf.data.camera import PinholeCamera
from handnerf.errors import ConfigError, ResourceError
from handnerf.model.avatar import HandAvatar, PosedFrames
from handnerf.model.marching import MIN_TRANSMITTANCE, can_march, march_rays
from handnerf.model.rays import RayBundle, pixel_rays

#: Smallest ray chunk :func:`render_camera` falls back to when memory runs out.
MIN_RENDER_CHUNK = 256


@dataclass(frozen=True)
class CameraTensors:
    """A pinhole camera as tensors (a view of a training :class:`ViewStack`, say).

    K (3,3) intrinsics in pixels; R (3,3), t (3,) world -> camera (``X_cam = R X + t``,
    metres, OpenCV axes); the image is ``height`` x ``width`` pixels.
    """

    K: Tensor
    R: Tensor
    t: Tensor
    height: int
    width: int

    @classmethod
    def of(cls, camera: PinholeCamera | CameraTensors) -> CameraTensors:
        """``camera`` as float32 tensors (a :class:`PinholeCamera`'s float64 arrays rounded once)."""
        if isinstance(camera, CameraTensors):
            return camera

        def tensor(x: np.ndarray) -> Tensor:
            return torch.from_numpy(np.asarray(x)).float()

        return cls(
            K=tensor(camera.K),
            R=tensor(camera.R),
            t=tensor(camera.t),
            height=int(camera.height),
            width=int(camera.width),
        )


def resized_camera(camera: PinholeCamera | CameraTensors, width: int, height: int) -> CameraTensors:
    """``camera`` resampled to ``width`` x ``height`` pixels: the same viewpoint and field
    of view (intrinsics scaled per axis, so the image corners stay on the same rays), e.g.
    a low-resolution preview of a view."""
    if width < 1 or height < 1:
        raise ConfigError(f"a camera image needs >= 1 pixel a side, got {width}x{height}")
    cam = CameraTensors.of(camera)
    scale = torch.tensor([width / cam.width, height / cam.height, 1.0], dtype=cam.K.dtype)
    return CameraTensors(
        K=scale[:, None] * cam.K, R=cam.R, t=cam.t, height=int(height), width=int(width)
    )


def camera_rays(camera: CameraTensors, device: torch.device) -> tuple[Tensor, Tensor]:
    """All H*W rays of ``camera`` through pixel centres, row-major, made on ``device``:
    origins, unit directions (H*W,3).

    On a GPU, building them on the CPU and copying them over would cost more than
    rendering a small frame.
    """
    v, u = torch.meshgrid(
        torch.arange(camera.height, device=device),
        torch.arange(camera.width, device=device),
        indexing="ij",
    )
    u, v = u.reshape(-1), v.reshape(-1)
    n = u.shape[0]
    K, R, t = (x.to(device, torch.float32) for x in (camera.K, camera.R, camera.t))
    return pixel_rays(K.expand(n, 3, 3), R.expand(n, 3, 3), t.expand(n, 3), u, v)


def render_camera(
    avatar: HandAvatar,
    frames: PosedFrames,
    camera: PinholeCamera | CameraTensors,
    frame_id: int,
    camera_id: int | None,
    device: torch.device | str | None = None,
    chunk: int | None = None,
    background: Tensor | None = None,
    amp: bool | None = None,
    marching: bool | None = None,
    min_transmittance: float = MIN_TRANSMITTANCE,
    n_samples: int | None = None,
) -> Tensor:
    """Render frame ``frame_id`` of ``frames`` seen by ``camera``: one (H,W,3) float32 CPU
    image, in ray chunks so memory stays bounded at any size.

    This is the inference path: ``torch.inference_mode`` (no autograd graph, no version
    counters), rays made and composited on ``device`` (None: the avatar's) with a single
    copy back, samples culled by the avatar's occupancy (and marched by nerfacc's fused
    kernels where available), and on CUDA the field under fp16 autocast as in training
    (``amp``: None means on for CUDA; False gives plain fp32, e.g. to compare backends).
    ``chunk``: rays per :meth:`HandAvatar.render_rays` call (None: 65536 on CUDA and on
    the CPU's fast path, where fewer, larger rounds pay; 8192 on the CPU's reference path,
    whose per-sample tensors stay in cache). ``camera_id=None`` renders the canonical colour, without a camera's colour affine
    (virtual cameras, cameras the fit never saw). ``background``: (3,) colour, default black.
    ``marching``: None (default) renders front to back with early ray termination
    (:func:`handnerf.model.marching.march_rays`: the same samples, occupancy test and
    field, but a ray stops once its transmittance is below ``min_transmittance``, so
    the image differs by at most that much per channel) wherever the avatar's sampler
    allows it (the torch sampler: CPU, or CUDA without nerfacc); False: the reference
    path, :meth:`HandAvatar.render_rays` on every shell sample. ``n_samples`` (fast path
    only): samples per ray instead of the avatar's, e.g. fewer for an interactive preview
    while the view moves (None: the avatar's; the image then is the reference's).
    A chunk that runs out of memory is retried in halves (down to ``MIN_RENDER_CHUNK`` rays)
    instead of failing; only then is a :class:`ResourceError` raised. The result is an
    ordinary tensor (not an inference tensor), so callers may modify it in place.
    """
    device = avatar.betas.device if device is None else torch.device(device)
    cam = CameraTensors.of(camera)
    use_amp = device.type == "cuda" and amp is not False
    march = can_march(avatar) if marching is None else marching
    if chunk is None:
        # A GPU needs large launches to be busy, and so does the fast path (each round's
        # bookkeeping is per call: measured on the demo avatar, a 256x256 crop takes 1.9 s
        # in chunks of 8192 rays, 1.5 s in one of 65536); the reference path's per-sample
        # tensors stay in cache in small chunks.
        chunk = 1 << 16 if device.type == "cuda" or march else 8192
    if chunk < 1:
        raise ConfigError(f"chunk must be a positive number of rays, got {chunk}")
    if n_samples is not None and not march:
        raise ConfigError("n_samples (samples per ray) applies to the fast path only")
    with torch.inference_mode():
        origins, dirs = camera_rays(cam, device)
        n = origins.shape[0]
        bg = (background if background is not None else torch.zeros(3)).to(device, torch.float32)
        out = torch.empty(n, 3, device=device)
        # Chunks only ever shrink (on OOM), so slices of these serve every chunk.
        fid = torch.full((min(chunk, n),), frame_id, dtype=torch.long, device=device)
        cid = None if camera_id is None else torch.full_like(fid, camera_id)
        s = 0
        while s < n:
            m = min(chunk, n - s)
            rays = RayBundle(
                origins=origins[s : s + m],
                directions=dirs[s : s + m],
                frame_ids=fid[:m],
                camera_ids=None if cid is None else cid[:m],
            )
            try:
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    if march:
                        res = march_rays(
                            avatar, frames, rays, bg, min_transmittance, n_samples=n_samples
                        )
                    else:
                        res = avatar.render_rays(frames, rays, bg.expand(m, 3), training=False)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc):
                    raise
                if m <= MIN_RENDER_CHUNK:
                    raise ResourceError(
                        f"rendering {cam.height}x{cam.width} rays in chunks of {m} does not "
                        f"fit in {device.type} memory ({str(exc).splitlines()[0]})"
                    ) from exc
                chunk = max(MIN_RENDER_CHUNK, m // 2)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            out[s : s + m] = res["rgb"].float().clamp(0, 1)
            s += m
        image = out.reshape(cam.height, cam.width, 3)
    # Copied outside inference mode: an ordinary CPU tensor that callers may write into.
    return image.to("cpu", copy=True)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (CUDA OOM or the CPU allocator giving up)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return "out of memory" in text or "can't allocate memory" in text
