"""Pose sliders: each one is exactly one component of the rendered MANO parameters."""

from __future__ import annotations

import pytest
import torch

from handnerf.errors import ParameterError
from handnerf.hand.hand_model import ManoParams
from handnerf.viewer.poses import FINGER_JOINTS, PoseState, pose_sliders


def _frame(seed: int = 0) -> ManoParams:
    g = torch.Generator().manual_seed(seed)
    return ManoParams(
        global_orient=torch.randn(1, 3, generator=g),
        hand_pose=0.3 * torch.randn(1, 45, generator=g),
        betas=torch.randn(1, 10, generator=g),
        transl=torch.randn(1, 3, generator=g),
    )


def test_sliders_cover_the_global_rotation_and_every_finger_joint_once() -> None:
    sliders = pose_sliders()
    assert len(sliders) == 48
    assert len({s.key for s in sliders}) == 48
    assert sorted(PoseState.index(s) for s in sliders) == list(range(48))
    for finger, joints in FINGER_JOINTS.items():
        assert {s.joint for s in sliders if s.finger == finger} == set(joints)


def test_a_slider_value_lands_in_exactly_its_component() -> None:
    base = _frame()
    state = PoseState(base)
    index_pip_y = next(s for s in pose_sliders() if s.key == "index.PIP.y")
    state.set(index_pip_y, 1.25)
    pose = state.mano()
    # MANO joint 2 (index PIP) is hand_pose[3:6]; y is its second component.
    expected = base.hand_pose.clone()
    expected[0, 4] = 1.25
    assert torch.equal(pose.hand_pose, expected)
    assert torch.equal(pose.global_orient, base.global_orient)
    assert torch.equal(pose.transl, base.transl) and torch.equal(pose.betas, base.betas)
    rot_z = next(s for s in pose_sliders() if s.key == "global.z")
    state.set(rot_z, -2.0)
    assert state.mano().global_orient[0, 2] == -2.0


def test_reset_undoes_one_finger_or_everything_back_to_the_frame() -> None:
    base = _frame()
    state = PoseState(base)
    for s in pose_sliders():
        state.set(s, 0.5)
    state.reset("thumb")
    pose = state.mano()
    thumb_rows = [3 * (j - 1) + a for j in FINGER_JOINTS["thumb"] for a in range(3)]
    assert torch.equal(pose.hand_pose[0, thumb_rows], base.hand_pose[0, thumb_rows])
    assert bool((pose.hand_pose[0, :3] == 0.5).all())  # index untouched by the thumb's reset
    state.reset(None)
    assert torch.equal(state.mano().global_orient, base.global_orient)
    state.reset_all()
    assert torch.equal(state.mano().hand_pose, base.hand_pose)
    other = _frame(1)
    state.set_base(other)
    assert torch.equal(state.mano().hand_pose, other.hand_pose)


def test_more_than_one_frame_is_refused() -> None:
    with pytest.raises(ParameterError, match="one frame"):
        PoseState(ManoParams.zeros(2))
