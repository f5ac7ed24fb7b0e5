"""Two-hand selections (``hand='both'``): both readers, the null-hand rule, the union and
per-hand masks with occlusion, crops around both hands and the frame filters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handnerf.data.crops import CropConfig, prepare_view
from handnerf.data.filters import FrameFilterConfig, filter_views
from handnerf.data.interhand import InterHandCapture
from handnerf.data.masks import MaskCache, mask_iou
from handnerf.data.stream import select_views
from handnerf.data.two_hand_masks import TwoHandMasker, side_view
from handnerf.errors import DataError, SelectionError
from handnerf.hand.hand_model import HandModel
from handnerf.synth.two_hands import NOVEL_SEQ, TRAIN_SEQS

OCCLUSION = TRAIN_SEQS["occlusion"]
MANO_JSON = Path("annotations") / "test" / "InterHand2.6M_test_MANO_NeuralAnnot.json"


@pytest.fixture(scope="module")
def masker() -> TwoHandMasker:
    return TwoHandMasker({side: HandModel.from_folder(None, side) for side in ("right", "left")})


def _gt_mask(root: Path, view) -> np.ndarray:  # type: ignore[no-untyped-def]
    rel = view.image_path.relative_to(root / "images")
    return np.asarray(Image.open((root / "gt_masks" / rel).with_suffix(".png"))) > 127


def test_both_selects_two_hand_frames_in_either_reader(tiny_two_hand_capture: Path) -> None:
    capture = InterHandCapture(tiny_two_hand_capture, hand="both", seqs=[OCCLUSION])
    streamed = select_views(tiny_two_hand_capture, hand="both", seqs=[OCCLUSION])
    assert len(capture) == len(streamed) == 2 * 6
    for a, b in zip(capture.views, streamed.views, strict=True):
        assert a.key == b.key and a.hand == b.hand == "both"
        assert a.hand_type == "interacting" and a.mano == {}
        assert list(a.hands_mano) == ["right", "left"]
        for side in ("right", "left"):
            for name in ("pose", "shape", "trans"):
                np.testing.assert_array_equal(a.hands_mano[side][name], b.hands_mano[side][name])
        assert a.keypoints_world is not None and a.keypoints_world.shape == (42, 3)
        assert a.keypoints_valid is not None and a.keypoints_valid.all()
    assert capture.selection_report.count("with both-hand MANO") == 12
    # a single-hand selection of the same capture is unchanged: 21 keypoints of its hand
    left = InterHandCapture(tiny_two_hand_capture, hand="left", seqs=[OCCLUSION])
    assert left.views[0].keypoints_world is not None
    np.testing.assert_array_equal(
        left.views[0].keypoints_world, capture.views[0].keypoints_world[21:]
    )
    np.testing.assert_array_equal(
        side_view(capture.views[0], "left").mano["trans"], left.views[0].mano["trans"]
    )


def test_a_frame_with_one_null_hand_is_a_counted_skip(
    tiny_two_hand_capture: Path, tmp_path: Path
) -> None:
    root = tmp_path / "capture"
    shutil.copytree(tiny_two_hand_capture, root)
    mano = json.loads((root / MANO_JSON).read_text())
    capture = InterHandCapture(root, hand="both", seqs=[NOVEL_SEQ])
    nulled = str(capture.views[0].frame_idx)
    mano["0"][nulled]["left"] = None
    (root / MANO_JSON).write_text(json.dumps(mano))
    for select in (InterHandCapture, select_views):
        both = select(root, hand="both", seqs=[NOVEL_SEQ])
        assert {v.frame_idx for v in both.views} == {capture.views[-1].frame_idx}
        assert both.selection_report.skipped == {"MANO entry is null (left hand; both needed)": 6}
        # the right hand alone still has the frame
        assert len(select(root, hand="right", seqs=[NOVEL_SEQ]).views) == 12
    # no frame with both hands: a clear error
    for frame in mano["0"].values():
        frame["right"] = None
    (root / MANO_JSON).write_text(json.dumps(mano))
    with pytest.raises(SelectionError, match="both"):
        InterHandCapture(root, hand="both", seqs=[NOVEL_SEQ])
    with pytest.raises(SelectionError, match="usable MANO fits of both hands"):
        select_views(root, hand="both", seqs=[NOVEL_SEQ])
    with pytest.raises(SelectionError, match="hands are right, left, both"):
        InterHandCapture(root, hand="two")


def test_union_and_visible_masks(
    tiny_two_hand_capture: Path, masker: TwoHandMasker, tmp_path: Path
) -> None:
    capture = InterHandCapture(tiny_two_hand_capture, hand="both", seqs=[OCCLUSION])
    occluded = 0
    for view in capture.views:
        union = masker.mask(view)
        # MANO silhouettes of both hands against the ray-cast ground truth of both
        assert mask_iou(union, _gt_mask(tiny_two_hand_capture, view)) > 0.98
        visible = masker.visible(view)
        whole = masker.silhouettes(view)
        assert not (visible["right"] & visible["left"]).any()
        np.testing.assert_array_equal(visible["right"] | visible["left"], union)
        for side in ("right", "left"):
            assert not (visible[side] & ~whole[side]).any()
            assert visible[side].sum() > 500
        occluded += int((whole["left"] & ~visible["left"]).sum())
    # the right hand is above the left one: cameras above see it cover part of the left
    assert occluded > 1000
    models = {side: m.hand_model for side, m in masker.sides.items()}
    cached = TwoHandMasker(models, cache=MaskCache(tmp_path / "masks"))
    view = capture.views[0]
    np.testing.assert_array_equal(cached.mask(view), masker.mask(view))
    np.testing.assert_array_equal(cached.mask(view), masker.mask(view))  # from the cache
    assert sorted(p.name[:5] for p in (tmp_path / "masks").rglob("*.png")) == ["left_", "right"]
    with pytest.raises(DataError, match="missing"):
        TwoHandMasker({"right": masker.sides["right"].hand_model})
    with pytest.raises(DataError, match="a right-hand view has no left hand"):
        side_view(side_view(view, "right"), "left")


def test_crop_covers_both_hands_and_filters_apply(
    tiny_two_hand_capture: Path, masker: TwoHandMasker
) -> None:
    capture = InterHandCapture(tiny_two_hand_capture, hand="both", seqs=[TRAIN_SEQS["clap"]])
    views = capture.views
    for view, vertices in zip(views, masker.posed_vertices(views), strict=True):
        assert vertices.shape == (2 * 778, 3)
        image = capture.load_image(view)
        crop = prepare_view(image, view.camera, CropConfig(out_size=128), mask=masker.mask(view))
        uv, _ = crop.camera.project(vertices)
        # every vertex of both hands projects inside the crop
        assert (uv >= 0).all() and (uv[:, 0] <= 128).all() and (uv[:, 1] <= 128).all()
        assert crop.mask is not None and crop.mask.sum() > 0
    # the filters see the union mask: a threshold above one hand's area but below both
    areas = [int(masker.mask(v).sum()) for v in views]
    config = FrameFilterConfig(min_mask_px=min(areas) + 1, border_margin_px=None)
    kept = filter_views(views, capture.load_image, masker.mask, config, capture.selection_report)
    assert len(kept) == len(views) - areas.count(min(areas))
    assert capture.selection_report.count("after frame filters") == len(kept)
