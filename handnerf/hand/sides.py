"""Right and left hands: checking a side name, mirroring points and poses.

The left hand is the x-mirror of the right in MANO's rest frame (see
:mod:`handnerf.hand.procedural`): a point mirrors as (x, y, z) -> (-x, y, z) and an
axis-angle rotation as (a_x, a_y, a_z) -> (a_x, -a_y, -a_z).
"""

from __future__ import annotations

import numpy as np

from handnerf.errors import ParameterError

#: The two hand sides, as InterHand2.6M and the MANO files name them.
SIDES: tuple[str, ...] = ("right", "left")


def check_side(side: str) -> str:
    """``side`` itself if it is ``"right"`` or ``"left"``; else a :class:`ParameterError`."""
    if side not in SIDES:
        raise ParameterError(f"hand side must be 'right' or 'left', got {side!r}")
    return side


def mirror_points(points: np.ndarray) -> np.ndarray:
    """Points (..., 3) of the x-mirrored hand (a float64 copy)."""
    mirrored = np.array(points, dtype=np.float64, copy=True)
    mirrored[..., 0] *= -1.0
    return mirrored


def mirror_pose(pose: np.ndarray) -> np.ndarray:
    """Axis-angle rotations (..., 3 J) of the x-mirrored hand (a float64 copy, same shape)."""
    mirrored = np.array(pose, dtype=np.float64, copy=True).reshape(*pose.shape[:-1], -1, 3)
    mirrored[..., 1:] *= -1.0
    return mirrored.reshape(pose.shape)
