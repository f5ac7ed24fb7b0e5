"""Tests of ``handnerf synth --hand both``: InterHand's two-hand layout, the interactions'
geometry (touching, never interpenetrating), and the MANO schema round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handnerf.errors import DataError
from handnerf.hand.hand_model import HandModel, ManoParams
from handnerf.synth.presets import get_preset
from handnerf.synth.two_hands import (
    CONTACT_GAP_M,
    INTERACTIONS,
    NOVEL_SEQ,
    OCCLUSION_GAP_M,
    TRAIN_SEQS,
    interaction_at,
    plan_two_hand_frames,
    surface_gap,
)
from handnerf.synth.writer import synthesize_capture

ANNOT = Path("annotations") / "test"


def _load(root: Path, what: str) -> dict:
    return json.loads((root / ANNOT / f"InterHand2.6M_test_{what}.json").read_text())


def _posed(root: Path) -> dict[str, dict[int, np.ndarray]]:
    """``{side: {frame: (V, 3) posed vertices}}`` from the capture's MANO_NeuralAnnot.json."""
    (mano,) = _load(root, "MANO_NeuralAnnot").values()
    out: dict[str, dict[int, np.ndarray]] = {}
    for side in ("right", "left"):
        model = HandModel.from_folder(None, side, dtype=torch.float64)
        frames = sorted(int(f) for f in mano)
        params = ManoParams.stack(
            [ManoParams.from_interhand(mano[str(f)][side], f"frame {f}") for f in frames]
        )
        with torch.no_grad():
            out[side] = dict(zip(frames, model(params).vertices.numpy(), strict=True))
    return out


def test_layout_names_and_hand_types(tiny_two_hand_capture: Path) -> None:
    data = _load(tiny_two_hand_capture, "data")
    joints = _load(tiny_two_hand_capture, "joint_3d")["0"]
    seqs = {img["seq_name"] for img in data["images"]}
    assert seqs == {*TRAIN_SEQS.values(), NOVEL_SEQ}
    assert all("_dh_" in s for s in seqs)
    # 4 interactions x 2 frames + 2 novel frames, 6 cameras
    assert len(data["images"]) == len(data["annotations"]) == 6 * (4 * 2 + 2)
    assert {a["hand_type"] for a in data["annotations"]} == {"interacting"}
    assert all(np.asarray(a["joint_valid"]).sum() == 42 for a in data["annotations"])
    assert {e["hand_type"] for e in joints.values()} == {"interacting"}
    frames = [img["frame_idx"] for img in data["images"]]
    by_seq: dict[str, set[int]] = {}
    for img in data["images"]:
        by_seq.setdefault(img["seq_name"], set()).add(img["frame_idx"])
    # InterHand numbers frames per capture: no two sequences share one
    assert sum(len(v) for v in by_seq.values()) == len(set(frames))
    synth = json.loads((tiny_two_hand_capture / "synth.json").read_text())
    assert synth["hand"] == "both" and synth["hand_model"]["side"] == "both"


def test_mano_round_trips_to_joint_3d(tiny_two_hand_capture: Path) -> None:
    """Each hand's MANO entry (InterHand schema) reposes to its own 21 joint_3d rows."""
    (mano,) = _load(tiny_two_hand_capture, "MANO_NeuralAnnot").values()
    joints = _load(tiny_two_hand_capture, "joint_3d")["0"]
    for side, rows in (("right", slice(0, 21)), ("left", slice(21, 42))):
        model = HandModel.from_folder(None, side, dtype=torch.float64)
        for frame, entry in mano.items():
            assert set(entry) == {"right", "left"}
            assert len(entry[side]["pose"]) == 48 and len(entry[side]["shape"]) == 10
            params = ManoParams.from_interhand(entry[side], f"frame {frame}")
            with torch.no_grad():
                keypoints = model(params).keypoints[0].numpy()
            world = np.asarray(joints[frame]["world_coord"])[rows] / 1000.0
            np.testing.assert_allclose(keypoints, world, atol=1e-6)


def test_hands_touch_without_interpenetrating(tiny_two_hand_capture: Path) -> None:
    posed = _posed(tiny_two_hand_capture)
    faces = HandModel.from_folder(None, "right").faces.numpy().astype(np.int64)
    data = _load(tiny_two_hand_capture, "data")
    seq_of = {img["frame_idx"]: img["seq_name"] for img in data["images"]}
    gaps: dict[str, list[float]] = {}
    for frame, right in posed["right"].items():
        gap = surface_gap(right, posed["left"][frame], faces, n=6)
        gaps.setdefault(seq_of[frame], []).append(gap)
    for seq, values in gaps.items():
        # a finer lattice than placement used: still never closer than the contact gap
        assert min(values) > CONTACT_GAP_M - 0.5e-3, seq
    for kind in ("palms_touch", "interlock"):
        assert max(gaps[TRAIN_SEQS[kind]]) < CONTACT_GAP_M + 1e-3, kind
    assert min(gaps[TRAIN_SEQS["occlusion"]]) == pytest.approx(OCCLUSION_GAP_M, abs=1e-3)
    clap = gaps[TRAIN_SEQS["clap"]]
    assert max(clap) > 0.05  # the clap opens (2 frames: open, then closed)
    assert min(clap) < CONTACT_GAP_M + 1e-3


def test_images_show_both_hands_in_the_bbox(tiny_two_hand_capture: Path) -> None:
    data = _load(tiny_two_hand_capture, "data")
    ann = {a["image_id"]: a for a in data["annotations"]}
    for img in data["images"][::7]:
        path = tiny_two_hand_capture / "gt_masks" / "test" / img["file_name"]
        mask = np.asarray(Image.open(path.with_suffix(".png"))) > 127
        rows, cols = np.nonzero(mask)
        x, y, w, h = ann[img["id"]]["bbox"]
        # the mask (both hands) lies inside the annotated bbox (1 px of anti-aliasing)
        assert cols.min() >= x - 1 and cols.max() <= x + w + 1
        assert rows.min() >= y - 1 and rows.max() <= y + h + 1


def test_plan_and_bad_input() -> None:
    preset = get_preset("tiny")
    planned = plan_two_hand_frames(preset)
    assert [k for p, k in planned if p.kind == "train"] == [
        k for k in INTERACTIONS for _ in range(preset.train_frames)
    ]
    with pytest.raises(DataError, match="unknown two-hand interaction 'hug'"):
        interaction_at("hug", 0.0)
    with pytest.raises(DataError, match="MANO noise is one-hand only"):
        synthesize_capture(
            "/nonexistent", preset.with_overrides(mano_noise_deg=1.0), both_hands=True
        )


def test_cli_refuses_mano_noise_with_both_hands(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from handnerf.cli import main

    status = main(
        [
            "synth",
            "--out",
            str(tmp_path / "c"),
            "--preset",
            "tiny",
            "--hand",
            "both",
            "--mano-noise",
            "1,1",
        ]
    )
    assert status == 2
    assert "--mano-noise is not supported with --hand both" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
