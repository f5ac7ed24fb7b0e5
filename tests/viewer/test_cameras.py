"""ViewCamera: viser's camera and capture cameras in, pinhole cameras of any size out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import viser.transforms as vtf

from handnerf.data.camera import PinholeCamera
from handnerf.errors import ConfigError
from handnerf.synth.rig import look_at_rotation
from handnerf.viewer.cameras import ViewCamera


def _capture_camera() -> PinholeCamera:
    campos = np.array([0.4, -0.3, 0.25])
    R = look_at_rotation(campos, np.zeros(3), roll=0.3)
    K = np.array([[600.0, 0, 167.0], [0, 600.0, 256.0], [0, 0, 1]])
    return PinholeCamera(K=K, R=R, t=-R @ campos, width=334, height=512, name="400002")


def test_a_viser_camera_is_read_with_viser_own_rotation_convention() -> None:
    cam = _capture_camera()
    # viser's wxyz is the camera -> world rotation (OpenCV axes); its own library makes it.
    wxyz = vtf.SO3.from_matrix(cam.R.T).wxyz
    view = ViewCamera.from_viser(wxyz, cam.center, fov=0.7, aspect=1.5)
    np.testing.assert_allclose(view.R, cam.R, atol=1e-9)
    np.testing.assert_allclose(view.center, cam.center)
    np.testing.assert_allclose(vtf.SO3(view.wxyz).as_matrix(), cam.R.T, atol=1e-9)


def test_a_capture_camera_renders_from_its_own_viewpoint_at_any_size() -> None:
    cam = _capture_camera()
    view = ViewCamera.from_pinhole(cam)
    assert view.aspect == pytest.approx(334 / 512)
    for size in (64, 512):
        pin = view.pinhole(size)
        assert max(pin.width, pin.height) == size
        np.testing.assert_allclose(pin.center, cam.center, atol=1e-12)
        # A point seen by the capture camera lands at the same place, relative to the image.
        point = cam.center + 0.5 * cam.R[2] + 0.05 * cam.R[0] - 0.08 * cam.R[1]
        uv_cap, _ = cam.project(point[None])
        uv, depth = pin.project(point[None])
        assert depth[0] > 0
        np.testing.assert_allclose(
            uv[0] / [pin.width, pin.height], uv_cap[0] / [cam.width, cam.height], atol=2e-3
        )


def test_the_vertical_field_of_view_spans_the_image_height() -> None:
    view = ViewCamera(R=np.eye(3), center=np.zeros(3), fov_y=math.radians(60), aspect=2.0)
    pin = view.pinhole(200)
    assert (pin.width, pin.height) == (200, 100)
    edge = np.array([[0.0, -math.tan(math.radians(30)), 1.0]])  # top edge of the view
    uv, _ = pin.project(edge)
    np.testing.assert_allclose(uv[0], [100.0, 0.0], atol=1e-9)


@pytest.mark.parametrize(("fov", "aspect"), [(0.0, 1.0), (math.pi, 1.0), (1.0, 0.0), (1.0, -2)])
def test_a_degenerate_camera_is_refused(fov: float, aspect: float) -> None:
    with pytest.raises(ConfigError, match="fov_y"):
        ViewCamera(R=np.eye(3), center=np.zeros(3), fov_y=fov, aspect=aspect)
