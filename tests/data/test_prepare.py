"""``handnerf prepare``: cache equals the in-memory path, resumes, refuses foreign specs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from handnerf.data.cache import PreparedCache, read_record, view_stem
from handnerf.data.crops import CropConfig, crop_hand
from handnerf.data.interhand import InterHandCapture
from handnerf.data.masks import ManoMasker, mask_iou
from handnerf.data.prepare import PrepareSpec, prepare_cache, refine_mask
from handnerf.errors import DataError, SelectionError

TRAIN_SEQ = "ROM04_RT_Occlusion"
NOVEL_SEQ = "ROM03_RT_No_Occlusion"
CROP = CropConfig(mode="crop", scale=1.3, out_size=48)


def spec(**changes: Any) -> PrepareSpec:
    base: dict[str, Any] = {
        "seqs": (TRAIN_SEQ, NOVEL_SEQ),
        "crop": CROP,
        "filters": None,
    }
    return PrepareSpec(**{**base, **changes})


@pytest.fixture(scope="module")
def tiny_cache(tiny_capture: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "cache"
    prepare_cache(tiny_capture, out, spec(), workers=1, progress=False)
    return out


def test_cache_matches_the_in_memory_reader(tiny_capture: Path, tiny_cache: Path) -> None:
    from handnerf.hand.hand_model import HandModel

    cache = PreparedCache(tiny_cache)
    hand_model = HandModel.from_folder(None, "right")
    masker = ManoMasker(hand_model)
    assert cache.sequences == [NOVEL_SEQ, TRAIN_SEQ]
    for seq in (TRAIN_SEQ, NOVEL_SEQ):
        capture = InterHandCapture(tiny_capture, seqs=[seq])
        entries = cache.entries(seq)
        assert sorted(e.view.key for e in entries) == sorted(v.key for v in capture.views)
        by_key = {v.key: v for v in capture.views}
        for entry in entries:
            view = by_key[entry.view.key]
            for name in ("K", "R", "t"):
                np.testing.assert_array_equal(
                    getattr(entry.view.camera, name), getattr(view.camera, name)
                )
            for name in ("pose", "shape", "trans"):
                np.testing.assert_array_equal(entry.view.mano[name], view.mano[name])
            np.testing.assert_array_equal(entry.view.keypoints_world, view.keypoints_world)
            image = capture.load_image(view)
            mask = masker.mask(view)
            expected = crop_hand(image, view.camera, mask=mask, scale=1.3, out_size=48)
            stored = cache.read(entry)
            assert stored.mask is not None and expected.mask is not None
            assert mask_iou(stored.mask, expected.mask) > 0.98
            np.testing.assert_allclose(stored.camera.K, expected.camera.K, atol=1e-9)
            if stored.box == expected.box:
                np.testing.assert_array_equal(stored.image, expected.image)
    index = json.loads((tiny_cache / "index.json").read_text())
    assert index["source"]["files"]["data"]["size"] > 0
    assert index["spec"]["seqs"] == [TRAIN_SEQ, NOVEL_SEQ]
    assert "selected views" in index["selection_report"]


def test_fit_data_from_cache_equals_fit_data_from_root(
    tiny_capture: Path, tiny_cache: Path
) -> None:
    import torch

    from handnerf.train.config import DataConfig
    from handnerf.train.fit_data import load_fit_data, sequence_mano

    cfg = DataConfig(crop_size=48, crop_scale=1.3, holdout_every=3)
    direct = load_fit_data(tiny_capture, cfg, progress=False)
    cached = load_fit_data(tiny_cache, cfg, progress=False)
    assert cached.camera_names == direct.camera_names
    assert cached.holdout_cameras == direct.holdout_cameras
    for name in ("train", "val", "novel_pose"):
        a, b = getattr(cached, name), getattr(direct, name)
        assert a.frame_keys == b.frame_keys
        assert [v.key for v in a.views] == [v.key for v in b.views]
        torch.testing.assert_close(a.mano.hand_pose, b.mano.hand_pose)
        torch.testing.assert_close(a.mano.transl, b.mano.transl)
        torch.testing.assert_close(a.stack.K, b.stack.K)
        torch.testing.assert_close(a.stack.R, b.stack.R)
        assert torch.equal(a.stack.camera_ids, b.stack.camera_ids)
        assert torch.equal(a.stack.frame_ids, b.stack.frame_ids)
        agree = (a.stack.masks == b.stack.masks).float().mean()
        assert agree > 0.99
    # A different crop size re-cuts the cached crops.
    small = load_fit_data(tiny_cache, DataConfig(crop_size=32, holdout_every=3), progress=False)
    assert small.train.stack.images.shape[1:3] == (32, 32)
    mano = sequence_mano(tiny_cache, cfg, NOVEL_SEQ)
    torch.testing.assert_close(mano.hand_pose, direct.novel_pose.mano.hand_pose)  # type: ignore[union-attr]
    with pytest.raises(SelectionError, match="capture"):
        load_fit_data(tiny_cache, DataConfig(capture=3, crop_size=48), progress=False)


def test_repeated_run_does_nothing(tiny_capture: Path, tiny_cache: Path) -> None:
    index = tiny_cache / "index.json"
    before = index.stat().st_mtime_ns
    summary = prepare_cache(tiny_capture, tiny_cache, spec(), workers=1, progress=False)
    assert summary.already_complete and summary.computed == 0
    assert index.stat().st_mtime_ns == before


def test_other_options_into_the_same_cache_are_refused(
    tiny_capture: Path, tiny_cache: Path
) -> None:
    with pytest.raises(DataError, match="other options"):
        prepare_cache(tiny_capture, tiny_cache, spec(stride=2), workers=1, progress=False)


def test_interrupted_run_resumes_and_never_trusts_partial_files(
    tiny_capture: Path, tiny_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    seen: list[dict[str, Any]] = []

    def interrupt(record: dict[str, Any]) -> None:
        seen.append(record)
        if len(seen) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_cache(tiny_capture, out, spec(), workers=1, progress=False, on_view=interrupt)
    assert not (out / "index.json").exists()
    with pytest.raises(DataError, match="incomplete"):
        PreparedCache(out)
    # What a kill mid-write leaves: a temporary file, and a view whose PNG exists but whose
    # record (written last) does not; and a record whose image was lost.
    complete = PreparedCache(tiny_cache)
    pending = [e for e in complete.entries(TRAIN_SEQ) if read_record(out, *_key(e)) is None]
    half = out / f"{view_stem(*_key(pending[0]))}.png"
    half.parent.mkdir(parents=True, exist_ok=True)
    half.write_bytes(b"\x89PNG truncated")
    (half.parent / f".{half.name}.abc.tmp").write_bytes(b"junk")
    done = seen[0]
    (out / f"{view_stem(done['seq'], done['camera'], done['frame'])}.png").unlink()

    summary = prepare_cache(tiny_capture, out, spec(), workers=1, progress=False)
    assert summary.reused == 3
    assert summary.computed == summary.n_views - 3
    assert not list(out.rglob(".*.tmp"))
    resumed = PreparedCache(out)
    for entry, reference in zip(
        resumed.entries(TRAIN_SEQ), complete.entries(TRAIN_SEQ), strict=True
    ):
        assert entry.view.key == reference.view.key
        a, b = resumed.read(entry), complete.read(reference)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)


def _key(entry: Any) -> tuple[str, str, int]:
    return entry.view.seq_name, entry.view.camera_id, entry.view.frame_idx


def test_parallel_workers_and_filters(interhand_root: Path, tmp_path: Path) -> None:
    serial = prepare_cache(
        interhand_root,
        tmp_path / "a",
        spec(seqs=None, crop=CropConfig(mode="full", full_scale=0.5)),
        workers=1,
        progress=False,
    )
    parallel = prepare_cache(
        interhand_root,
        tmp_path / "b",
        spec(seqs=None, crop=CropConfig(mode="full", full_scale=0.5)),
        workers=2,
        progress=False,
    )
    assert serial.n_kept == parallel.n_kept == serial.n_views
    a, b = PreparedCache(tmp_path / "a"), PreparedCache(tmp_path / "b")
    for x, y in zip(a.entries(TRAIN_SEQ), b.entries(TRAIN_SEQ), strict=True):
        np.testing.assert_array_equal(a.read(x).mask, b.read(y).mask)
        assert a.read(x).image.shape[:2] == (
            round(x.view.camera.height / 2),
            round(x.view.camera.width / 2),
        )
    # HandAvatar's filters drop every one of these 40x60 px views (bbox under 80 px).
    with pytest.raises(SelectionError, match="dropped by the frame filters"):
        prepare_cache(
            interhand_root,
            tmp_path / "c",
            spec(seqs=None, filters=_filters()),
            workers=1,
            progress=False,
        )


def _filters() -> Any:
    from handnerf.data.filters import FrameFilterConfig

    return FrameFilterConfig()


def test_filter_counts_are_recorded(tiny_capture: Path, tiny_cache: Path, tmp_path: Path) -> None:
    from handnerf.data.filters import FrameFilterConfig

    # A min-mask-area threshold at the median of the tiny capture's (uncropped) masks.
    index = json.loads((tiny_cache / "index.json").read_text())
    areas = sorted(v["mask_px"] for v in index["views"])
    assert areas[0] < areas[-1]
    threshold = areas[len(areas) // 2]
    filters = FrameFilterConfig(
        min_bbox_px=None,
        border_margin_px=None,
        min_max_intensity=None,
        drop_grayscale=False,
        min_mask_px=threshold,
    )
    out = tmp_path / "filtered"
    summary = prepare_cache(tiny_capture, out, spec(filters=filters), workers=1, progress=False)
    dropped = sum(1 for a in areas if a < threshold)
    assert dropped > 0
    assert summary.filter_counts == {f"mask under {threshold} px": dropped}
    assert summary.n_kept == summary.n_views - dropped
    report = PreparedCache(out).selection_report
    assert f"filter: mask under {threshold} px" in report
    assert "after frame filters" in report


def test_grabcut_refinement_recovers_a_shifted_silhouette() -> None:
    rng = np.random.default_rng(0)
    height, width = 200, 160
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (60, 70, 90)
    true = np.zeros((height, width), np.uint8)
    cv2.ellipse(true, (80, 100), (40, 60), 15, 0, 360, 1, -1)
    cv2.rectangle(true, (76, 30), (86, 50), 1, -1)  # a "finger"
    image[true.astype(bool)] = (210, 160, 130)
    image = np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)
    shifted = np.roll(np.roll(true, 5, axis=1), -4, axis=0).astype(bool)
    refined = refine_mask(image, shifted, band_px=10)
    before, after = mask_iou(shifted, true), mask_iou(refined, true)
    assert before < 0.9
    assert after > 0.97 > before
    # An empty or tiny seed is returned unchanged rather than failing.
    empty = np.zeros_like(shifted)
    assert not refine_mask(image, empty).any()


def test_cli_bad_selection_and_protocols(
    interhand_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from handnerf.cli import build_parser, main
    from handnerf.commands.prepare import build_spec

    code = main(
        [
            "prepare",
            "--interhand",
            str(interhand_root),
            "--seq",
            "NOPE",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "sequences: ROM03_RT_No_Occlusion, ROM04_RT_Occlusion" in err
    assert "Traceback" not in err
    assert not (tmp_path / "x" / "prepare.json").exists()
    protocols = sorted((Path(__file__).parents[2] / "configs" / "protocols").glob("*.yaml"))
    assert {p.stem for p in protocols} >= {"handavatar", "handnerf", "livehand"}
    for protocol in protocols:
        args = build_parser().parse_args(
            ["prepare", "--interhand", "R", "--out", "O", "--protocol", str(protocol)]
        )
        built = build_spec(args)
        assert built.split in ("train", "test") and built.seqs
    args = build_parser().parse_args(
        [
            "prepare",
            "--interhand",
            "R",
            "--out",
            "O",
            "--protocol",
            str(protocols[0]),
            "--scale",
            "0.25",
        ]
    )
    assert build_spec(args).crop == CropConfig(mode="full", full_scale=0.25)


def test_interhand_root_of_a_cache_is_its_source(tiny_capture: Path, tiny_cache: Path) -> None:
    from handnerf.data.cache import interhand_root

    assert interhand_root(tiny_cache) == tiny_capture.resolve()
    assert interhand_root(tiny_capture) == tiny_capture


def test_stored_masks_map_back_onto_the_source_image(tiny_capture: Path, tiny_cache: Path) -> None:
    """``source_mask`` undoes the crop: the MANO silhouette again, and padding marked."""
    from handnerf.hand.hand_model import HandModel

    cache = PreparedCache(tiny_cache)
    masker = ManoMasker(HandModel.from_folder(None, "right"))
    for entry in cache.entries(TRAIN_SEQ)[:4]:
        back = cache.source_mask(entry)
        source = entry.view.camera
        assert back.shape == (source.height, source.width)
        # 48 px crops of ~250 px boxes: edges come back ~5 px coarse.
        assert mask_iou(back, masker.mask(entry.view)) > 0.9
        stored = cache.read(entry)
        x0, y0, w, h = entry.box
        inside = x0 >= 0 and y0 >= 0 and x0 + w <= source.width and y0 + h <= source.height
        assert (stored.valid is None) == inside


def test_stored_crops_mark_their_padding(interhand_root: Path, tmp_path: Path) -> None:
    """Crops past the image border come back with ``valid`` False on the padding."""
    out = tmp_path / "cache"
    # Boxes three times the hand's size reach past these small images.
    wide = CropConfig(mode="crop", scale=3.0, out_size=32)
    prepare_cache(interhand_root, out, spec(seqs=None, crop=wide), workers=1, progress=False)
    cache = PreparedCache(out)
    padded = black = 0
    for seq in cache.sequences:
        for entry in cache.entries(seq):
            crop = cache.read(entry)
            source = entry.view.camera
            x0, y0, w, h = entry.box
            size = entry.camera.width
            centres = (np.arange(size) + 0.5) * w / size
            u, v = np.meshgrid(x0 + centres, y0 + (np.arange(size) + 0.5) * h / size)
            outside = (u < 0) | (v < 0) | (u >= source.width) | (v >= source.height)
            if crop.valid is None:
                assert not outside.any()
                continue
            padded += 1
            assert not (crop.valid & outside).any()
            # A pixel whose whole footprint is past the border is black padding.
            step_u, step_v = w / size / 2, h / size / 2
            beyond = (
                (u + step_u <= 0)
                | (v + step_v <= 0)
                | (u - step_u >= source.width)
                | (v - step_v >= source.height)
            )
            assert not crop.image[beyond].any()
            black += int(np.count_nonzero(beyond))
            assert crop.valid.any()
    assert padded > 0 and black > 0


@pytest.mark.parametrize("generator_changed", [False, True])
def test_a_cache_prepared_on_another_machine_serves_the_same_procedural_hand(
    tiny_cache: Path, tmp_path: Path, generator_changed: bool
) -> None:
    """Prepared there, the procedural hand had other bytes (another sha256) but the same
    generator: its masks serve this fit. Another generator's masks do not."""
    import shutil

    from handnerf.errors import DataError
    from handnerf.train.config import DataConfig
    from handnerf.train.fit_data import load_fit_data

    copy = tmp_path / "cache"
    shutil.copytree(tiny_cache, copy)
    index = json.loads((copy / "index.json").read_text())
    assert "generator" in index["hand"]
    index["hand"]["sha256"] = "0" * 64
    if generator_changed:
        index["hand"]["generator"] += " (another)"
    (copy / "index.json").write_text(json.dumps(index))
    cfg = DataConfig(crop_size=48, crop_scale=1.3, holdout_every=3)
    if generator_changed:
        with pytest.raises(DataError, match="made with another hand model"):
            load_fit_data(copy, cfg, progress=False)
    else:
        assert load_fit_data(copy, cfg, progress=False).train.views
