"""Rays: the one ray type that flows through training and inference.

Training draws pixels of its views (:mod:`handnerf.train.rays`), inference renders every
pixel of a camera (:mod:`handnerf.model.renderer`); both hand :class:`RayBundle` s to
:meth:`handnerf.model.avatar.HandAvatar.render_rays`.

Camera convention (InterHand2.6M's, :mod:`handnerf.data.camera`): ``X_cam = R X_world + t``,
OpenCV axes, pixel ``(col, row)`` centred at ``(col + 0.5, row + 0.5)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

#: A dataclass of rays (and what goes with them), moved between devices by :func:`fields_to`.
RaysT = TypeVar("RaysT")


def fields_to(rays: RaysT, device: torch.device | str, non_blocking: bool = False) -> RaysT:
    """A copy of the dataclass ``rays`` with each field moved to ``device``: tensors and
    nested ray types alike (anything with ``.to(device, non_blocking=...)``); None stays."""

    def moved(value: Any) -> Any:
        return None if value is None else value.to(device, non_blocking=non_blocking)

    changes = {f.name: moved(getattr(rays, f.name)) for f in dataclasses.fields(rays)}  # type: ignore[arg-type]
    return dataclasses.replace(rays, **changes)  # type: ignore[type-var]


@dataclass
class RayBundle:
    """R world-space rays of posed frames seen by cameras.

    Attributes:
        origins: (R,3) ray origins (camera centres), world, metres.
        directions: (R,3) unit ray directions, world.
        frame_ids: (R,) long, the frame (index into the :class:`PosedFrames`) each ray sees.
        camera_ids: (R,) long, the fit's camera of each ray (its colour affine), or None:
            the canonical colour (virtual cameras, cameras the fit never saw).
    """

    origins: Tensor
    directions: Tensor
    frame_ids: Tensor
    camera_ids: Tensor | None = None

    def __len__(self) -> int:
        return int(self.origins.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RayBundle:
        """The same rays on ``device``."""
        return fields_to(self, device, non_blocking)

    def cat(self, other: RayBundle) -> RayBundle:
        """These rays followed by ``other``'s (both with camera ids, or both without)."""
        if (self.camera_ids is None) != (other.camera_ids is None):
            raise ValueError("cannot join rays with camera ids to rays without")
        return RayBundle(
            origins=torch.cat([self.origins, other.origins]),
            directions=torch.cat([self.directions, other.directions]),
            frame_ids=torch.cat([self.frame_ids, other.frame_ids]),
            camera_ids=(
                None
                if self.camera_ids is None or other.camera_ids is None
                else torch.cat([self.camera_ids, other.camera_ids])
            ),
        )


def pixel_rays(
    K: Tensor, R: Tensor, t: Tensor, u: Tensor, v: Tensor, offset: Tensor | float = 0.5
) -> tuple[Tensor, Tensor]:
    """World rays through ``(u, v) + offset`` (default: pixel centres).

    K, R (R,3,3), t (R,3), u, v (R,) integer pixel coordinates, offset a number or (R,2)
    (x, y) within the pixel -> origins, unit dirs (R,3). Camera convention:
    X_cam = R X_world + t, OpenCV axes.
    """
    off = torch.as_tensor(offset, dtype=K.dtype, device=K.device).expand(u.shape[0], 2)
    pix = torch.stack(
        [
            u.to(K.dtype) + off[:, 0],
            v.to(K.dtype) + off[:, 1],
            torch.ones(u.shape[0], dtype=K.dtype, device=K.device),
        ],
        -1,
    )
    d_cam = torch.linalg.solve(K, pix.unsqueeze(-1)).squeeze(-1)
    d_world = (R.transpose(-1, -2) @ d_cam.unsqueeze(-1)).squeeze(-1)
    origins = -(R.transpose(-1, -2) @ t.unsqueeze(-1)).squeeze(-1)
    return origins, torch.nn.functional.normalize(d_world, dim=-1)
