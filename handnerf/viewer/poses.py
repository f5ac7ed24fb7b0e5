"""The pose the viewer shows: a sequence frame's MANO parameters with sliders on top.

Every slider is one axis-angle component, in InterHand2.6M's convention (finger joints
relative to MANO's ``hands_mean``, as :class:`ManoParams` stores them): a slider set to
``v`` puts exactly ``v`` into the rendered parameters. Shape and translation stay the
frame's (the avatar renders with the subject's shape anyway).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from handnerf.errors import ParameterError
from handnerf.hand.hand_model import ManoParams

#: MANO's finger joints (rows 1-15 of its 16 joints; row 0 is the wrist), per finger from
#: the knuckle out. ``hand_pose[3 * (j - 1) : 3 * j]`` is joint ``j``'s axis-angle.
FINGER_JOINTS: dict[str, tuple[int, int, int]] = {
    "thumb": (13, 14, 15),
    "index": (1, 2, 3),
    "middle": (4, 5, 6),
    "ring": (10, 11, 12),
    "pinky": (7, 8, 9),
}
#: Anatomical names of a finger's three joints, knuckle first.
JOINT_NAMES: dict[str, tuple[str, str, str]] = {
    finger: ("CMC", "MCP", "IP") if finger == "thumb" else ("MCP", "PIP", "DIP")
    for finger in FINGER_JOINTS
}
AXES = ("x", "y", "z")


@dataclass(frozen=True)
class PoseSlider:
    """One slider: a component of ``global_orient`` (joint 0) or of a finger joint."""

    finger: str | None  # None: the global rotation
    joint: int  # MANO joint row, 0 for the global rotation
    axis: int  # 0, 1, 2: x, y, z of the axis-angle vector

    @property
    def label(self) -> str:
        if self.finger is None:
            return f"rotation {AXES[self.axis]}"
        name = JOINT_NAMES[self.finger][FINGER_JOINTS[self.finger].index(self.joint)]
        return f"{name} {AXES[self.axis]}"

    @property
    def key(self) -> str:
        """A stable identifier, e.g. ``global.x`` or ``index.PIP.z``."""
        if self.finger is None:
            return f"global.{AXES[self.axis]}"
        return f"{self.finger}.{self.label.replace(' ', '.')}"


def pose_sliders() -> list[PoseSlider]:
    """The 3 global-rotation sliders, then 9 per finger (thumb, index, middle, ring, pinky)."""
    sliders = [PoseSlider(None, 0, a) for a in range(3)]
    for finger, joints in FINGER_JOINTS.items():
        sliders += [PoseSlider(finger, j, a) for j in joints for a in range(3)]
    return sliders


class PoseState:
    """The base frame's MANO parameters plus the sliders' edits (thread-safe).

    ``values`` holds the 48 slider components: global_orient (3) then hand_pose (45), as
    in InterHand2.6M's 48-value ``pose``.
    """

    def __init__(self, base: ManoParams) -> None:
        self._lock = threading.Lock()
        self._base = self._checked(base)
        self._values = self._pose_of(self._base)

    @staticmethod
    def _checked(base: ManoParams) -> ManoParams:
        if len(base) != 1:
            raise ParameterError(f"the viewer poses one frame at a time, got {len(base)}")
        return base.validate("viewer pose").to("cpu", torch.float32)

    @staticmethod
    def _pose_of(params: ManoParams) -> torch.Tensor:
        return torch.cat([params.global_orient[0], params.hand_pose[0]]).clone()

    @staticmethod
    def index(slider: PoseSlider) -> int:
        """Position of ``slider``'s component in the 48-value pose."""
        return slider.axis if slider.finger is None else 3 * slider.joint + slider.axis

    def set_base(self, base: ManoParams) -> None:
        """Show another frame: its parameters replace the base and every edit."""
        base = self._checked(base)
        with self._lock:
            self._base = base
            self._values = self._pose_of(base)

    def value(self, slider: PoseSlider) -> float:
        with self._lock:
            return float(self._values[self.index(slider)])

    def set(self, slider: PoseSlider, value: float) -> None:
        with self._lock:
            self._values[self.index(slider)] = float(value)

    def reset(self, finger: str | None) -> None:
        """Undo the edits of one finger (``None``: the global rotation) back to the frame's."""
        base = self._pose_of(self._base)
        with self._lock:
            for slider in pose_sliders():
                if slider.finger == finger:
                    i = self.index(slider)
                    self._values[i] = base[i]

    def reset_all(self) -> None:
        with self._lock:
            self._values = self._pose_of(self._base)

    def mano(self) -> ManoParams:
        """The pose to render: (1, ...) parameters, a copy."""
        with self._lock:
            values = self._values.clone()
            base = self._base
        return ManoParams(
            global_orient=values[None, :3],
            hand_pose=values[None, 3:],
            betas=base.betas.clone(),
            transl=base.transl.clone(),
        )
