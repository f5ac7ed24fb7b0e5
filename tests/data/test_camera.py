"""PinholeCamera: InterHand's convention checked against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from handnerf.data.camera import PinholeCamera
from handnerf.errors import DataError

WHERE = "annotations/test/InterHand2.6M_test_camera.json: cams['0'] camera '400002'"

# A camera 1 m behind the origin (campos = (0, 0, -1000) mm) looking along +z with R = I.
AXIS_ALIGNED = dict(
    campos_mm=[0.0, 0.0, -1000.0],
    camrot=np.eye(3).tolist(),
    focal=[1000.0, 1100.0],
    princpt=[160.0, 250.0],
    width=334,
    height=512,
    name="400002",
    where=WHERE,
)

# Rotated 90 degrees: world -> camera rows (0,0,-1), (0,1,0), (1,0,0) (det +1),
# camera centre at (-2000, 0, 0) mm, i.e. looking along world +x.
ROTATED_R = [[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


def make(**changes: object) -> PinholeCamera:
    return PinholeCamera.from_interhand(**{**AXIS_ALIGNED, **changes})  # type: ignore[arg-type]


def test_projection_matches_hand_computed_pixel() -> None:
    camera = make()
    # t = -R campos = (0, 0, 1) m; X = (0.1, -0.05, 0.5) m -> X_cam = (0.1, -0.05, 1.5)
    # u = 1000 * 0.1 / 1.5 + 160 = 226.6667 ; v = 1100 * -0.05 / 1.5 + 250 = 213.3333
    uv, depth = camera.project(np.array([[0.1, -0.05, 0.5]]))
    np.testing.assert_allclose(camera.t, [0.0, 0.0, 1.0])
    np.testing.assert_allclose(uv, [[226.666667, 213.333333]], atol=1e-5)
    np.testing.assert_allclose(depth, [1.5])
    np.testing.assert_allclose(camera.center, [0.0, 0.0, -1.0])


def test_rotated_camera_matches_hand_computed_pixel() -> None:
    camera = make(camrot=ROTATED_R, campos_mm=[-2000.0, 0.0, 0.0])
    # t = -R campos = -(0, 0, -2) = (0, 0, 2) m; centre = -R^T t = (-2, 0, 0) m.
    # X = (0, 0.2, 0.3): R X = (-0.3, 0.2, 0) -> X_cam = (-0.3, 0.2, 2.0)
    # u = 1000 * -0.15 + 160 = 10 ; v = 1100 * 0.1 + 250 = 360
    uv, depth = camera.project(np.array([[0.0, 0.2, 0.3], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(camera.center, [-2.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(uv, [[10.0, 360.0], [160.0, 250.0]], atol=1e-9)
    np.testing.assert_allclose(depth, [2.0, 2.0])


def test_world_rays_pass_through_pixel_centres() -> None:
    camera = make(camrot=ROTATED_R, campos_mm=[-2000.0, 0.0, 0.0])
    pixels = np.array([[0, 0], [10, 359], [333, 511]])
    origins, directions = camera.world_rays(pixels)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0)
    np.testing.assert_allclose(origins, np.tile([-2.0, 0.0, 0.0], (3, 1)), atol=1e-12)
    uv, depth = camera.project(origins + 3.0 * directions)
    np.testing.assert_allclose(uv, pixels + 0.5, atol=1e-9)
    assert np.all(depth > 0)


def test_full_grid_is_row_major() -> None:
    camera = make(width=4, height=3)
    origins, directions = camera.world_rays()
    assert origins.shape == directions.shape == (12, 3)
    uv, _ = camera.project(origins + directions)
    np.testing.assert_allclose(uv[1], [1.5, 0.5], atol=1e-9)  # second pixel: column 1, row 0
    np.testing.assert_allclose(uv[4], [0.5, 1.5], atol=1e-9)  # fifth: column 0, row 1


def test_scaled_and_cropped_cameras_map_projections() -> None:
    camera = make()
    points = np.random.default_rng(0).normal(0, 0.1, (50, 3))
    uv, _ = camera.project(points)
    half = camera.scaled(0.5)
    assert (half.width, half.height) == (167, 256)
    np.testing.assert_allclose(half.project(points)[0], uv * 0.5, atol=1e-9)
    crop = camera.cropped(100, 150, 200, 200, 256)
    np.testing.assert_allclose(crop.project(points)[0], (uv - [100, 150]) * 1.28, atol=1e-9)
    assert (crop.width, crop.height) == (256, 256)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"camrot": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]]}, "not a rotation"),
        ({"camrot": [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]}, "not a rotation"),
        ({"camrot": [[1.0, 0.0], [0.0, 1.0]]}, "camrot must have shape"),
        ({"focal": [1000.0, float("nan")]}, "focal contains NaN"),
        ({"campos_mm": [0.0, "x", 1.0]}, "campos is not numeric"),
        ({"princpt": [1.0, 2.0, 3.0]}, "princpt must have shape"),
        ({"focal": [-5.0, 5.0]}, "focal must be positive"),
    ],
)
def test_bad_camera_entries_name_the_source(changes: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        make(**changes)
    assert WHERE in str(info.value)
