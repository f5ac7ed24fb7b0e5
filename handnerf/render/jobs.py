"""Videos of a trained avatar: novel views (orbit) and novel poses.

Both render square images of ``size`` px in ray chunks (bounded memory at any size) on a
black background and return uint8 frames for :func:`handnerf.render.video.write_video`.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from handnerf import interrupts
from handnerf.data.camera import PinholeCamera
from handnerf.errors import ConfigError, DataError
from handnerf.hand.hand_model import ManoParams
from handnerf.model.avatar import PosedFrames
from handnerf.model.renderer import render_camera
from handnerf.runs.loader import TrainedRun
from handnerf.synth.rig import look_at_rotation
from handnerf.train.fit_hands import FitMano, mano_length, mano_to, map_mano


def framing_camera(
    campos: np.ndarray,
    target: np.ndarray,
    radius: float,
    size: int,
    roll: float = 0.0,
    margin: float = 1.25,
) -> PinholeCamera:
    """A virtual camera at ``campos`` looking at ``target`` whose square image of ``size``
    px holds a sphere of ``radius`` around the target (times ``margin``)."""
    R = look_at_rotation(campos, target, roll)
    distance = float(np.linalg.norm(target - campos))
    half_angle = np.arcsin(min(0.99, margin * radius / distance))
    focal = 0.5 * size / np.tan(half_angle)
    K = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
    return PinholeCamera(K=K, R=R, t=-R @ campos, width=size, height=size, name="virtual")


def orbit_cameras(
    center: np.ndarray,
    radius: float,
    n: int,
    size: int,
    distance: float = 0.6,
    elevation_deg: float = 20.0,
) -> list[PinholeCamera]:
    """``n`` cameras on a horizontal circle around ``center`` (world z up), elevated a little."""
    cams = []
    elev = np.deg2rad(elevation_deg)
    for k in range(n):
        azim = 2 * np.pi * k / n
        offset = distance * np.array(
            [np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)]
        )
        cams.append(framing_camera(center + offset, center, radius, size))
    return cams


def _render(
    run: TrainedRun, frames: PosedFrames, frame_id: int, cam: PinholeCamera, chunk: int | None
) -> np.ndarray:
    """Frame ``frame_id`` seen by a virtual camera (canonical colour: no camera affine)."""
    img = render_camera(run.avatar, frames, cam, frame_id, None, run.device, chunk=chunk)
    return (img.numpy() * 255).round().astype(np.uint8)


def hand_sphere(vertices: torch.Tensor) -> tuple[np.ndarray, float]:
    """Centre (3,) and radius of a sphere around posed vertices (V,3)."""
    v = vertices.detach().cpu().numpy()
    center = 0.5 * (v.min(0) + v.max(0))
    return center, float(np.linalg.norm(v - center, axis=1).max())


def render_orbit(
    run: TrainedRun,
    mano: FitMano,
    n_frames: int = 36,
    size: int = 192,
    chunk: int | None = None,
    progress: bool = True,
) -> list[np.ndarray]:
    """Novel views: the camera circles the hand posed by ``mano`` (one frame)."""
    if n_frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {n_frames}")
    with torch.no_grad():
        frames = run.avatar.pose_frames(mano_to(mano, run.device))
    center, radius = hand_sphere(frames.vertices[0])
    cams = orbit_cameras(center, radius, n_frames, size)
    out = []
    for cam in tqdm(cams, desc="orbit", disable=not progress):
        out.append(_render(run, frames, 0, cam, chunk))
        interrupts.reached("render.frame", len(out))
    return out


def interpolate_mano(mano: ManoParams, n_frames: int) -> ManoParams:
    """``n_frames`` parameter sets along the sequence, linear in axis-angle between frames
    (smooth enough between 5 fps frames for viewing; shape stays fixed)."""
    t = len(mano)
    if t == 1 or n_frames <= t:
        idx = torch.linspace(0, t - 1, max(1, min(n_frames, t))).round().long()
        return mano.index(idx)
    pos = torch.linspace(0, t - 1, n_frames)
    lo = pos.floor().long().clamp(max=t - 2)
    w = (pos - lo)[:, None]

    def lerp(x: torch.Tensor) -> torch.Tensor:
        return x[lo] * (1 - w) + x[lo + 1] * w

    return ManoParams(
        global_orient=lerp(mano.global_orient),
        hand_pose=lerp(mano.hand_pose),
        betas=lerp(mano.betas),
        transl=lerp(mano.transl),
    )


def render_pose_sequence(
    run: TrainedRun,
    mano: FitMano,
    n_frames: int = 36,
    size: int = 192,
    orbit: bool = False,
    chunk: int | None = None,
    progress: bool = True,
) -> list[np.ndarray]:
    """Novel poses: the avatar driven by ``mano`` (another sequence), seen by a camera that
    follows the hand (fixed direction, or orbiting with ``orbit``)."""
    if mano_length(mano) == 0:
        raise DataError("the pose sequence is empty")

    def subject(side: str | None, params: ManoParams) -> ManoParams:
        # The shape is the subject's: novel poses drive the fitted hand, not another subject.
        seq = interpolate_mano(params, n_frames)
        betas = run.avatar.betas if side is None else run.avatar.hand(side).betas
        seq.betas = betas[None].cpu().expand(len(seq), -1).clone()
        return seq

    seq = map_mano(mano, subject)
    n = mano_length(seq)
    with torch.no_grad():
        frames = run.avatar.pose_frames(mano_to(seq, run.device))
    centers = [hand_sphere(frames.vertices[i]) for i in range(n)]
    radius = max(r for _, r in centers)
    out = []
    for i in tqdm(range(n), desc="poses", disable=not progress):
        center = centers[i][0]
        azim = 2 * np.pi * i / n if orbit else 0.0
        offset = 0.6 * np.array([np.cos(azim) * 0.94, np.sin(azim) * 0.94, 0.34])
        cam = framing_camera(center + offset, center, radius, size)
        out.append(_render(run, frames, i, cam, chunk))
        interrupts.reached("render.frame", len(out))
    return out
