"""``handnerf eval`` of a run fitted from a ``handnerf prepare`` cache.

The cache is prepared from the tiny capture with a camera selection (the last camera left
out) and a mask-area frame filter that drops views of the held-out cameras; evaluation
must score exactly the views the cache kept, with the masks it stored.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from handnerf.data.crops import CropConfig
from handnerf.data.filters import FrameFilterConfig
from handnerf.data.interhand import InterHandCapture
from handnerf.data.prepare import PrepareSpec, prepare_cache
from handnerf.errors import DataError
from handnerf.evaluation.evaluate import evaluate_run, select_views
from handnerf.evaluation.protocols import EvalProtocol, get_protocol
from handnerf.metrics.image import psnr
from handnerf.runs.loader import load_run

TRAIN_SEQ = "ROM04_RT_Occlusion"
NOVEL_SEQ = "ROM03_RT_No_Occlusion"
SIZE = 48
#: The cache's own geometry (1.3x bbox crops of 48 px): scored from the stored images.
CACHE_GEOMETRY = EvalProtocol(
    name="cache-geometry",
    description="the test cache's crops, PSNR/SSIM inside the mask",
    image_mode="crop",
    crop_scale=1.3,
    crop_size=SIZE,
    metric_region="mask",
    lpips_net="alex",
)
#: Rows and columns of the stored crop that a test turns into the whole mask.
RECT_ROWS, RECT_COLS = (10, 30), (12, 28)

ViewKey = tuple[str, str, int]


@dataclass(frozen=True)
class Prepared:
    cache: Path
    run: Path
    unselected_camera: str
    holdout: list[str]


def spec(cameras: list[str], filters: FrameFilterConfig | None) -> PrepareSpec:
    return PrepareSpec(
        seqs=(TRAIN_SEQ, NOVEL_SEQ),
        cameras=tuple(cameras),
        crop=CropConfig(mode="crop", scale=1.3, out_size=SIZE),
        filters=filters,
    )


def view_status(cache: Path) -> dict[ViewKey, dict[str, Any]]:
    """Every view record the cache wrote (kept and filtered), read straight from disk."""
    records = {}
    for path in (cache / "views").rglob("*.json"):
        record = json.loads(path.read_text())
        records[(record["seq"], record["camera"], int(record["frame"]))] = record
    return records


@pytest.fixture(scope="module")
def prepared(
    tiny_capture: Path, small_fit: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Prepared:
    from handnerf.train.fit_job import run_fit

    base = tmp_path_factory.mktemp("evalprep")
    cameras = sorted({v.camera_id for v in InterHandCapture(tiny_capture, seqs=[TRAIN_SEQ]).views})
    selected, unselected = cameras[:-1], cameras[-1]
    # Mask areas of the selected training views, to set a filter that drops some views
    # of the held-out camera (the one whose hand sizes vary most) but not all of them.
    probe = base / "probe"
    prepare_cache(tiny_capture, probe, spec(selected, None), workers=1, progress=False)
    areas: dict[str, list[int]] = {}
    for (seq, camera, _), record in view_status(probe).items():
        if seq == TRAIN_SEQ:
            areas.setdefault(camera, []).append(int(record["mask_px"]))
    held_out = max(areas, key=lambda camera: max(areas[camera]) - min(areas[camera]))
    smallest, second = sorted(areas[held_out])[:2]
    filters = FrameFilterConfig(
        min_bbox_px=None,
        border_margin_px=None,
        min_max_intensity=None,
        drop_grayscale=False,
        min_mask_px=(smallest + second) // 2 + 1,
    )
    cache = base / "cache"
    prepare_cache(tiny_capture, cache, spec(selected, filters), workers=1, progress=False)
    holdout = [held_out]
    run = base / "run"
    overrides = [*small_fit, "train.steps=4", f"data.holdout_cameras=[{','.join(holdout)}]"]
    run_fit(cache, run, overrides=overrides, progress=False)
    return Prepared(cache=cache, run=run, unselected_camera=unselected, holdout=holdout)


def expected_views(prepared: Prepared) -> set[ViewKey]:
    """(split, camera, frame) of every view the cache kept that eval must score."""
    expected: set[ViewKey] = set()
    for (seq, camera, frame), record in view_status(prepared.cache).items():
        if record["status"] != "kept":
            continue
        if seq == TRAIN_SEQ and camera in prepared.holdout:
            expected.add(("novel_view", camera, frame))
        elif seq == NOVEL_SEQ:
            expected.add(("novel_pose", camera, frame))
    return expected


def saved(report_dir: Path, row: dict[str, Any], kind: str) -> np.ndarray:
    stem = f"{row['split']}_cam{row['camera']}_frame{int(row['frame']):06d}"
    image = iio.imread(report_dir / "images" / f"{stem}_{kind}.png")
    if kind == "mask":
        return (image[..., 0] if image.ndim == 3 else image) > 127
    return image[..., :3]


def stored(cache: Path, seq: str, camera: str, frame: int, kind: str) -> np.ndarray:
    suffix = "_mask" if kind == "mask" else ""
    path = cache / "views" / seq / f"cam{camera}" / f"{frame:06d}{suffix}.png"
    if kind == "mask":
        return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def copy_run_and_cache(prepared: Prepared, dest: Path) -> tuple[Path, Path]:
    """A copy of the cache and of the run, the run pointing at the copied cache."""
    cache, run = dest / "cache", dest / "run"
    shutil.copytree(prepared.cache, cache)
    shutil.copytree(prepared.run, run)
    info = json.loads((run / "run.json").read_text())
    info["data_root"] = str(cache.resolve())
    (run / "run.json").write_text(json.dumps(info))
    return cache, run


def test_eval_scores_exactly_the_kept_views_with_the_stored_masks(
    prepared: Prepared, tmp_path: Path
) -> None:
    status = view_status(prepared.cache)
    # The filter dropped views of the held-out cameras and of the novel-pose sequence.
    dropped = {key for key, record in status.items() if record["status"] == "filtered"}
    assert any(seq == TRAIN_SEQ and cam in prepared.holdout for seq, cam, _ in dropped)
    assert any(seq == NOVEL_SEQ for seq, _, _ in dropped)
    assert all(cam != prepared.unselected_camera for _, cam, _ in status)

    out = tmp_path / "report"
    report = evaluate_run(load_run(prepared.run, device="cpu"), CACHE_GEOMETRY, out, progress=False)
    scored = {(row["split"], row["camera"], row["frame"]) for row in report["images"]}
    assert scored == expected_views(prepared)
    assert {cam for _, cam, _ in scored} <= set(status_cameras(status))
    assert prepared.unselected_camera not in {cam for _, cam, _ in scored}

    run_section = report["run"]
    assert run_section["views_from"] == f"prepared cache {prepared.cache.resolve()}"
    assert "stored masks" in run_section["masks_from"]
    assert "stored images" in run_section["images_from"]
    reason = f"mask under {threshold_of(status)} px"
    assert run_section["prepared_cache"]["filter_counts"] == {reason: len(dropped)}
    for row in report["images"]:
        seq = TRAIN_SEQ if row["split"] == "novel_view" else NOVEL_SEQ
        key = (seq, row["camera"], int(row["frame"]))
        mask = stored(prepared.cache, *key, "mask")
        got = saved(out, row, "mask")
        # The metric region is the stored mask (less any padding).
        assert not (got & ~mask).any()
        assert np.count_nonzero(mask & ~got) <= row["padding_px"]
        # The ground truth is the stored image on black outside that mask.
        gt = saved(out, row, "gt")
        np.testing.assert_array_equal(gt, stored(prepared.cache, *key, "image") * got[..., None])


def status_cameras(status: dict[ViewKey, dict[str, Any]]) -> set[str]:
    return {cam for _, cam, _ in status}


def threshold_of(status: dict[ViewKey, dict[str, Any]]) -> int:
    reasons = {r["reason"] for r in status.values() if r["status"] == "filtered"}
    assert len(reasons) == 1, reasons
    return int(next(iter(reasons)).split()[2])


def test_the_metric_region_follows_an_altered_stored_mask(
    prepared: Prepared, tmp_path: Path
) -> None:
    cache, run_dir = copy_run_and_cache(prepared, tmp_path)
    first = sorted(k for k in expected_views(prepared) if k[0] == "novel_view")
    first.sort(key=lambda k: (k[2], k[1]))
    _, camera, frame = first[0]  # what max_views=1 evaluates
    rect = np.zeros((SIZE, SIZE), np.uint8)
    rect[slice(*RECT_ROWS), slice(*RECT_COLS)] = 255
    mask_path = cache / "views" / TRAIN_SEQ / f"cam{camera}" / f"{frame:06d}_mask.png"
    assert cv2.imwrite(str(mask_path), rect)
    run = load_run(run_dir, device="cpu")

    out = tmp_path / "same-geometry"
    report = evaluate_run(
        run, CACHE_GEOMETRY, out, splits=("novel_view",), max_views=1, progress=False
    )
    (row,) = report["images"]
    assert (row["camera"], row["frame"]) == (camera, frame)
    got = saved(out, row, "mask")
    np.testing.assert_array_equal(got, rect > 0)
    render = saved(out, row, "render").astype(np.float64) / 255
    gt = saved(out, row, "gt").astype(np.float64) / 255
    assert abs(psnr(render, gt, got) - row["psnr"]) < 0.3  # PNG quantisation only
    assert not gt[~got].any()

    # Another geometry (full frame at half size) cuts the source image and maps the
    # stored mask through the view's recorded crop box.
    out = tmp_path / "full-frame"
    report = evaluate_run(
        run, get_protocol("handnerf"), out, splits=("novel_view",), max_views=1, progress=False
    )
    (row,) = report["images"]
    got = saved(out, row, "mask")
    x0, y0, w, h = view_status(cache)[(TRAIN_SEQ, camera, frame)]["crop"]["box"]
    rows, cols = np.mgrid[: got.shape[0], : got.shape[1]]
    u, v = (cols + 0.5) / 0.5, (rows + 0.5) / 0.5  # source pixel coordinates
    expected = (
        (u >= x0 + RECT_COLS[0] * w / SIZE)
        & (u < x0 + RECT_COLS[1] * w / SIZE)
        & (v >= y0 + RECT_ROWS[0] * h / SIZE)
        & (v < y0 + RECT_ROWS[1] * h / SIZE)
    )
    iou = np.count_nonzero(got & expected) / np.count_nonzero(got | expected)
    assert iou > 0.9, iou
    assert "source images" in report["run"]["images_from"]


def test_without_the_source_root_only_the_cache_geometry_is_evaluated(
    prepared: Prepared, tmp_path: Path
) -> None:
    cache, run_dir = copy_run_and_cache(prepared, tmp_path)
    gone = tmp_path / "gone"
    for name in ("index.json", "prepare.json"):
        content = json.loads((cache / name).read_text())
        content["source"]["root"] = str(gone)
        (cache / name).write_text(json.dumps(content))
    run = load_run(run_dir, device="cpu")
    # The stored images need no source.
    report = evaluate_run(
        run, CACHE_GEOMETRY, tmp_path / "ok", splits=("novel_view",), max_views=2, progress=False
    )
    assert report["n_images"] == 2
    with pytest.raises(DataError, match="handnerf-default") as caught:
        evaluate_run(
            run, get_protocol("handnerf-default"), tmp_path / "no", max_views=1, progress=False
        )
    message = str(caught.value)
    assert f"1.3x hand-bbox crops of {SIZE}x{SIZE} px" in message
    assert str(gone) in message


def test_a_cache_without_the_novel_pose_sequence_is_an_error(
    prepared: Prepared, tmp_path: Path
) -> None:
    loaded = load_run(prepared.run, device="cpu")
    cfg = loaded.cfg.data
    cfg.novel_pose_seq = "ROM07_Not_Prepared"
    run = SimpleNamespace(
        cfg=SimpleNamespace(data=cfg),
        data_root=prepared.cache.resolve(),
        run_dir=tmp_path,
        info=loaded.info,
    )
    with pytest.raises(DataError, match="ROM07_Not_Prepared") as caught:
        select_views(run, ("novel_view", "novel_pose"), None)  # type: ignore[arg-type]
    message = str(caught.value)
    assert str(prepared.cache.resolve()) in message and "--split novel_view" in message
    # novel_view alone still works.
    chosen = select_views(run, ("novel_view",), None)  # type: ignore[arg-type]
    assert {item.view.camera_id for item in chosen} <= set(prepared.holdout)
