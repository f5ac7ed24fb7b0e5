"""Hand crops and full-frame downscales keep image and camera consistent; frame filters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from handnerf.data.camera import PinholeCamera
from handnerf.data.crops import (
    CropConfig,
    crop_hand,
    downscale,
    prepare_view,
    square_box,
)
from handnerf.data.filters import FrameFilterConfig, check_frame, filter_views, is_grayscale
from handnerf.data.interhand import FrameView, InterHandCapture, load_image
from handnerf.errors import ConfigError, DataError


def portrait_camera() -> PinholeCamera:
    rotation = [[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    return PinholeCamera.from_interhand(
        [-1000.0, 0.0, 0.0], rotation, [1200.0, 1210.0], [167.3, 255.8], 334, 512, "400002", "test"
    )


def rectangle_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((512, 334), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_crop_camera_equals_crop_and_resize_of_the_projection() -> None:
    camera = portrait_camera()
    image = np.zeros((512, 334, 3), np.uint8)
    # bbox (100, 200)-(180, 300): longer side 100 -> side ceil(130) = 130 centred on (140, 250),
    # so the box starts at (140 - 65, 250 - 65) = (75, 185) and the scale is 256 / 130.
    crop = crop_hand(image, camera, mask=rectangle_mask(100, 200, 180, 300))
    assert crop.box == (75, 185, 130, 130)
    assert crop.image.shape == (256, 256, 3) and crop.mask is not None
    points = camera.center + np.random.default_rng(1).normal([1.0, 0.0, 0.0], 0.05, (40, 3))
    uv, _ = camera.project(points)
    np.testing.assert_allclose(
        crop.camera.project(points)[0], (uv - [75, 185]) * 256 / 130, atol=1e-9
    )
    # A crop pixel is in the mask when at least half of it is covered. The mask's bbox maps
    # to x in (100 - 75) * 256/130 = 49.23 .. (180 - 75) * 256/130 = 206.77 -> columns 49..206,
    # and y in (200 - 185) * 256/130 = 29.54 .. (300 - 185) * 256/130 = 226.46 -> rows 30..225.
    cols = np.flatnonzero(crop.mask.any(axis=0))
    rows = np.flatnonzero(crop.mask.any(axis=1))
    assert (cols[0], cols[-1] + 1) == (49, 207)
    assert (rows[0], rows[-1] + 1) == (30, 226)


def test_crop_image_content_follows_the_camera() -> None:
    camera = portrait_camera()
    image = np.zeros((512, 334, 3), np.uint8)
    image[240:250, 130:140] = 200  # a block spanning (130, 240)-(140, 250) in continuous pixels
    crop = crop_hand(image, camera, mask=rectangle_mask(100, 200, 180, 300))
    weights = crop.image[..., 0].astype(float)
    rows, cols = np.mgrid[0:256, 0:256]
    centroid = (
        np.array([(weights * (cols + 0.5)).sum(), (weights * (rows + 0.5)).sum()]) / weights.sum()
    )
    # the block's centre (135, 245) -> ((135 - 75), (245 - 185)) * 256/130 = (118.15, 118.15)
    np.testing.assert_allclose(centroid, [118.15, 118.15], atol=0.2)


def test_crop_outside_the_image_is_black() -> None:
    camera = portrait_camera()
    image = np.full((512, 334, 3), 255, np.uint8)
    # bbox (0, 0)-(60, 60): side 78 centred on (30, 30) -> box from (-9, -9): 9/78 of it is outside.
    crop = crop_hand(image, camera, mask=rectangle_mask(0, 0, 60, 60))
    assert crop.box == (-9, -9, 78, 78)
    # The image edge lands at 9 * 256/78 = 29.5. Upsampling is bilinear between source pixel
    # centres, so output pixels whose centre maps before source centre 8.5 (output < 27.9) are
    # pure padding and those past source centre 9.5 (output > 31.2) pure image.
    assert (crop.image[:27, :] == 0).all() and (crop.image[:, :27] == 0).all()
    assert (crop.image[32:, 32:] == 255).all()
    assert 0 < crop.image[29, 100, 0] < 255
    # `valid` marks exactly the pixels resampled from the image alone: all white, and every
    # pixel with any black padding mixed in is left out.
    assert crop.valid is not None and crop.valid.shape == (256, 256)
    assert (crop.image[crop.valid] == 255).all()
    assert (crop.image[~crop.valid] < 255).any(axis=-1).mean() > 0.9
    assert not crop.valid[:31, :].any() and crop.valid[32:, 32:].all()


def test_crop_from_projected_points_and_errors() -> None:
    camera = portrait_camera()
    image = np.zeros((512, 334, 3), np.uint8)
    points = camera.center + np.random.default_rng(2).normal([1.0, 0.0, 0.0], 0.02, (100, 3))
    uv, _ = camera.project(points)
    crop = crop_hand(image, camera, points=points, scale=1.5, out_size=128)
    expected = square_box((uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()), 1.5)
    assert crop.box == expected and crop.image.shape == (128, 128, 3)
    assert crop.camera.width == crop.camera.height == 128
    with pytest.raises(DataError, match="mask is empty and no points"):
        crop_hand(image, camera, mask=np.zeros((512, 334), bool))
    with pytest.raises(DataError, match="image is 10x10"):
        crop_hand(np.zeros((10, 10, 3), np.uint8), camera, points=points)


def test_full_frame_downscale_keeps_pixel_centres() -> None:
    camera = portrait_camera()
    image = np.zeros((512, 334, 3), np.uint8)
    image[10:12, 20:22] = 255  # pixels (20..21, 10..11) = continuous (20, 10)-(22, 12)
    half = downscale(image, camera, 0.5, mask=image[..., 0] > 0)
    assert half.image.shape == (256, 167, 3)
    np.testing.assert_allclose(half.camera.K[:2], camera.K[:2] * 0.5)
    # continuous (20, 10)-(22, 12) -> (10, 5)-(11, 6): exactly output pixel (10, 5)
    assert half.image[5, 10, 0] == 255 and half.image.sum() == 3 * 255
    assert half.mask is not None and half.mask.sum() == 1 and half.mask[5, 10]
    same = prepare_view(image, camera, CropConfig(mode="full"))
    assert same.image.shape == image.shape
    with pytest.raises(ConfigError, match="crop mode"):
        prepare_view(image, camera, CropConfig(mode="zoom"))


# --------------------------------------------------------------------------- filters


def make_view(camera: PinholeCamera) -> FrameView:
    return FrameView(
        image_path=Path("unused.jpg"),
        split="test",
        capture=0,
        seq_name="seq",
        camera_id=camera.name,
        frame_idx=0,
        camera=camera,
        mano={},
        hand="right",
        keypoints_world=None,
        keypoints_valid=None,
        bbox=None,
    )


def colour_image(max_value: int = 200) -> np.ndarray:
    image = np.random.default_rng(3).integers(0, max_value, (512, 334, 3), dtype=np.uint8)
    return image


@pytest.mark.parametrize(
    ("mask", "image", "reason"),
    [
        (rectangle_mask(100, 200, 200, 300), colour_image(), None),
        (rectangle_mask(100, 200, 170, 300), colour_image(), "hand bbox under 80 px"),
        (rectangle_mask(5, 200, 105, 300), colour_image(), "within 10 px of the border"),
        (rectangle_mask(100, 420, 200, 505), colour_image(), "within 10 px of the border"),
        (rectangle_mask(100, 200, 200, 300), colour_image(19), "too dark (max < 20)"),
        (
            rectangle_mask(100, 200, 200, 300),
            np.repeat(colour_image()[..., :1], 3, -1),
            "grayscale",
        ),
        (rectangle_mask(100, 200, 150, 250), colour_image(), "mask under 3000 px"),
    ],
)
def test_each_filter_gives_its_reason(
    mask: np.ndarray, image: np.ndarray, reason: str | None
) -> None:
    result = check_frame(make_view(portrait_camera()), image, mask)
    if reason is None:
        assert result is None
    else:
        assert result is not None and reason in result


def test_filter_thresholds_are_configurable() -> None:
    view = make_view(portrait_camera())
    small = rectangle_mask(100, 200, 150, 250)  # 50 x 50 = 2500 px
    relaxed = FrameFilterConfig(min_bbox_px=40, min_mask_px=2000)
    assert check_frame(view, colour_image(), small, relaxed) is None
    off = FrameFilterConfig(min_max_intensity=None, drop_grayscale=False)
    gray_dark = np.full((512, 334, 3), 5, np.uint8)
    assert check_frame(view, gray_dark, rectangle_mask(100, 200, 200, 300), off) is None


def test_jpeg_noise_is_still_grayscale(tmp_path: Path) -> None:
    from PIL import Image

    gray = np.repeat(colour_image()[..., :1], 3, -1)
    Image.fromarray(gray).save(tmp_path / "g.jpg", quality=90)
    Image.fromarray(colour_image()).save(tmp_path / "c.jpg", quality=90)
    assert is_grayscale(np.asarray(Image.open(tmp_path / "g.jpg").convert("RGB")))
    assert not is_grayscale(np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB")))


def test_filter_views_counts_drops_in_the_report(interhand_root: Path) -> None:
    capture = InterHandCapture(interhand_root, capture=0)
    config = FrameFilterConfig(min_bbox_px=None, border_margin_px=None)  # tiny test images
    kept = filter_views(capture.views, load_image, None, config, capture.selection_report)
    assert len(capture.views) == 12 and len(kept) == 8
    assert {v.camera_id for v in kept} == {"400002", "400004"}
    assert capture.selection_report.skipped["filter: grayscale image"] == 4
    assert capture.selection_report.count("after frame filters") == 8
    assert "filter: grayscale image" in str(capture.selection_report)
