"""Hand sides (:mod:`handnerf.hand.sides`): side names, mirrored points and poses."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from handnerf.errors import ParameterError
from handnerf.hand.sides import SIDES, check_side, mirror_points, mirror_pose


def test_check_side_accepts_the_two_sides_only() -> None:
    for side in SIDES:
        assert check_side(side) == side
    with pytest.raises(ParameterError, match="'right' or 'left'"):
        check_side("both")


def test_mirrors_are_copies_and_involutions() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(7, 3))
    pose = rng.normal(size=(4, 45))
    mirrored = mirror_points(points)
    np.testing.assert_array_equal(mirrored[:, 1:], points[:, 1:])
    np.testing.assert_array_equal(mirrored[:, 0], -points[:, 0])
    np.testing.assert_array_equal(mirror_points(mirrored), points)
    np.testing.assert_array_equal(mirror_pose(mirror_pose(pose)), pose)
    assert mirror_pose(pose).shape == pose.shape


def test_mirrored_pose_rotates_the_mirrored_points() -> None:
    # x-mirror M = diag(-1, 1, 1): the mirrored hand's rotation is M R M, so a rotated
    # point mirrors to the mirrored rotation of the mirrored point.
    rng = np.random.default_rng(1)
    rotvec = rng.normal(size=3)
    point = rng.normal(size=(1, 3))
    turned = Rotation.from_rotvec(rotvec).apply(point)
    turned_mirror = Rotation.from_rotvec(mirror_pose(rotvec)).apply(mirror_points(point))
    np.testing.assert_allclose(turned_mirror, mirror_points(turned), atol=1e-12)
