"""The procedural hand's designed rest joints (MANO's rest frame, right hand).

MANO's rest joints as hard-coded in public hand-avatar code, rounded to the millimetre and
scaled by :data:`SCALE` about the wrist (sources and the frame's axes: the docstring of
:mod:`handnerf.hand.procedural`). The procedural hand's geometry and rig are built around
these joints, and :mod:`handnerf.hand.poses` takes its joint axes from them.
"""

from __future__ import annotations

import numpy as np

from handnerf.hand.sides import check_side, mirror_points

#: Scale of the designed layout about the wrist (see the module docstring).
SCALE: float = 1.08
#: Rest joints in millimetres, MANO's frame, before scaling (see the module docstring).
JOINTS_MM: np.ndarray = np.array(
    [
        [95.0, 6.0, 6.0],  # 0 wrist
        [8.0, 1.0, 27.0],  # 1 index MCP
        [-25.0, 5.0, 29.0],
        [-47.0, 4.0, 29.0],
        [1.0, 5.0, 3.0],  # 4 middle MCP
        [-30.0, 7.0, -3.0],
        [-53.0, 5.5, -7.0],
        [27.0, -3.5, -37.0],  # 7 pinky MCP
        [10.0, -3.5, -49.5],
        [-6.0, -4.0, -60.0],
        [14.0, 2.5, -20.5],  # 10 ring MCP
        [-14.5, 4.5, -25.5],
        [-38.0, 3.0, -33.0],
        [71.5, -9.0, 32.0],  # 13 thumb CMC
        [52.0, -8.0, 55.5],
        [30.0, -13.5, 70.0],
    ]
)


def scaled_mm(points_mm: np.ndarray) -> np.ndarray:
    """Points (..., 3) of the unscaled design (mm) scaled by :data:`SCALE` about the wrist."""
    wrist = JOINTS_MM[0]
    return wrist + SCALE * (np.asarray(points_mm, dtype=np.float64) - wrist)


def rest_joint_layout(side: str = "right") -> np.ndarray:
    """Designed rest joints in metres, MANO's frame; the regressed ``J`` is within ~1 mm.

    Returns:
        (16, 3) joint positions (left: x-mirrored).
    """
    side = check_side(side)
    joints = scaled_mm(JOINTS_MM) * 1e-3
    return mirror_points(joints) if side == "left" else joints
