"""Hand poses: anatomical angles, limits, sampling, smooth ROM sequences, wrist turns."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from handnerf.errors import ParameterError
from handnerf.hand import poses

EPS = 1e-9


def test_axes_are_orthonormal_and_angles_invert() -> None:
    for side in ("right", "left"):
        axes = poses.joint_axes(side)
        np.testing.assert_allclose(
            np.einsum("jai,jbi->jab", axes, axes), np.tile(np.eye(3), (15, 1, 1)), atol=1e-12
        )
        angles = poses.sample_hand_angles(np.random.default_rng(1))
        np.testing.assert_allclose(
            poses.angles_from_pose(poses.pose_from_angles(angles, side), side), angles, atol=1e-12
        )


def test_finger_flexion_turns_towards_the_palm() -> None:
    # MANO's rest frame: fingers along -x, palm towards -y; flexing a finger must turn
    # its direction towards -y (and the left hand's too, being the x-mirror)
    for side, finger_dir in (("right", [-1.0, 0, 0]), ("left", [1.0, 0, 0])):
        angles = np.zeros((15, 3))
        angles[3, 0] = 0.8  # middle MCP
        rotvec = poses.pose_from_angles(angles, side).reshape(15, 3)[3]
        bent = Rotation.from_rotvec(rotvec).apply(finger_dir)
        assert bent[1] < -0.6


def test_sampled_poses_stay_within_limits() -> None:
    rng = np.random.default_rng(0)
    lo, hi = poses.ANGLE_LIMITS[..., 0], poses.ANGLE_LIMITS[..., 1]
    samples = np.stack([poses.sample_hand_pose(rng, "right") for _ in range(300)])
    assert np.all(np.isfinite(samples))
    angles = np.stack([poses.angles_from_pose(p) for p in samples])
    assert np.all(angles >= lo - EPS) and np.all(angles <= hi + EPS)
    # genuinely varied: each flexion spans a good part of its range
    flex = angles[:, [0, 1, 3, 4, 6, 9], 0]
    assert np.all(flex.max(axis=0) - flex.min(axis=0) > 0.8)


def test_left_pose_is_the_mirror_of_the_right() -> None:
    right = poses.sample_hand_pose(np.random.default_rng(5), "right").reshape(15, 3)
    left = poses.sample_hand_pose(np.random.default_rng(5), "left").reshape(15, 3)
    np.testing.assert_allclose(left, right * [1, -1, -1], atol=1e-12)


def test_relative_pose_round_trip_and_bad_input() -> None:
    mean = poses.relaxed_pose()
    pose = poses.key_pose("fist")
    np.testing.assert_allclose(poses.to_absolute(poses.to_relative(pose, mean), mean), pose)
    np.testing.assert_allclose(poses.to_relative(mean, mean), 0.0)
    with pytest.raises(ParameterError, match="45"):
        poses.to_relative(np.zeros(44), mean)
    with pytest.raises(ParameterError, match="NaN"):
        poses.to_relative(np.full(45, np.nan), mean)
    with pytest.raises(ParameterError, match="unknown key pose"):
        poses.key_pose("jazz_hands")
    with pytest.raises(ParameterError, match="side"):
        poses.sample_hand_pose(np.random.default_rng(0), "both")


@pytest.mark.parametrize("kind", ["train", "novel"])
def test_rom_sequences_are_smooth_and_plausible(kind: str) -> None:
    seq = poses.rom_sequence(np.random.default_rng(2), 120, "right", kind)
    assert seq.shape == (120, 45)
    step = np.abs(np.diff(seq, axis=0)).max()
    assert 0 < step < 0.3  # moves, but never jumps
    angles = np.stack([poses.angles_from_pose(p) for p in seq])
    lo, hi = poses.ANGLE_LIMITS[..., 0], poses.ANGLE_LIMITS[..., 1]
    assert np.all(angles >= lo - EPS) and np.all(angles <= hi + EPS)
    again = poses.rom_sequence(np.random.default_rng(2), 120, "right", kind)
    np.testing.assert_array_equal(seq, again)


def test_novel_sequence_visits_poses_the_train_cycle_does_not() -> None:
    train_keys = np.stack([poses.key_pose(n) for n in set(poses.SEQUENCE_KINDS["train"])])
    novel = poses.rom_sequence(np.random.default_rng(3), 90, "right", "novel")
    distance = np.abs(novel[:, None, :] - train_keys[None]).max(axis=2).min(axis=1)
    assert distance.max() > 0.8
    with pytest.raises(ParameterError, match="kind"):
        poses.rom_sequence(np.random.default_rng(0), 10, "right", "dance")
    with pytest.raises(ParameterError, match="n_frames"):
        poses.rom_sequence(np.random.default_rng(0), 0, "right", "train")


def test_short_sequences_and_wrist_orientations() -> None:
    assert poses.rom_sequence(np.random.default_rng(0), 1, "left").shape == (1, 45)
    rng = np.random.default_rng(4)
    turns = np.stack([poses.sample_global_orient(rng, max_angle=0.5) for _ in range(200)])
    assert np.linalg.norm(turns, axis=1).max() <= 0.5 + 1e-9
    orient = poses.global_orient_sequence(rng, 80, max_angle=0.8)
    assert orient.shape == (80, 3)
    rotations = Rotation.from_rotvec(orient)
    steps = (rotations[1:] * rotations[:-1].inv()).magnitude()
    assert 0 < steps.max() < 0.15
