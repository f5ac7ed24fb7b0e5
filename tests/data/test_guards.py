"""Guards: the procedural hand only for synthetic captures; novel poses never seen in training."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from handnerf.data.interhand import SYNTH_MARKER
from handnerf.data.prepare import PrepareSpec, prepare_cache
from handnerf.errors import NovelPoseSequenceError, ProceduralHandError
from handnerf.train.config import DataConfig
from handnerf.train.fit_data import load_fit_data

SPLIT = "test"
TRAIN_SEQ = "ROM04_RT_Occlusion"


def test_preparing_a_real_capture_with_the_procedural_hand_is_refused(
    released: Any, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    spec = PrepareSpec(split=released.split, seqs=(released.two_hand_seq,), filters=None)
    with pytest.raises(ProceduralHandError, match=r"no synth\.json.*pass --mano-dir DIR"):
        prepare_cache(released.root, out, spec, workers=1, progress=False)
    assert not out.exists()


def test_fitting_a_real_capture_with_the_procedural_hand_is_refused(released: Any) -> None:
    cfg = DataConfig(split=released.split, train_seq=released.two_hand_seq, novel_pose_seq=None)
    with pytest.raises(ProceduralHandError, match=r"to fit it.*pass --mano-dir DIR"):
        load_fit_data(released.root, cfg, progress=False)


def test_only_synth_json_makes_a_capture_synthetic(interhand_root: Path, tmp_path: Path) -> None:
    """The same capture is prepared with synth.json and refused without it, also when the
    procedural hand is passed as a MANO folder; the CLI says so without a traceback."""
    from handnerf.hand.procedural import procedural_mano_dir

    spec = PrepareSpec(split=SPLIT, seqs=(TRAIN_SEQ,), cameras=("400002",), filters=None)
    summary = prepare_cache(interhand_root, tmp_path / "synthetic", spec, workers=1, progress=False)
    assert summary.n_kept > 0
    (interhand_root / SYNTH_MARKER).unlink()
    for mano_dir in (None, str(procedural_mano_dir())):
        with pytest.raises(ProceduralHandError, match=str(interhand_root)):
            prepare_cache(
                interhand_root,
                tmp_path / "real",
                PrepareSpec(split=SPLIT, seqs=(TRAIN_SEQ,), filters=None, mano_dir=mano_dir),
                workers=1,
                progress=False,
            )


def test_cli_refuses_the_procedural_hand_on_a_real_capture(
    released: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from handnerf.cli import main

    out = tmp_path / "cache"
    code = main(
        ["prepare", "--interhand", str(released.root), "--split", released.split, "--out", str(out)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--mano-dir" in err and "Traceback" not in err
    assert not out.exists()


def test_a_novel_pose_sequence_equal_to_the_training_one_is_refused(interhand_root: Path) -> None:
    cfg = DataConfig(split=SPLIT, train_seq=TRAIN_SEQ, novel_pose_seq=TRAIN_SEQ)
    with pytest.raises(NovelPoseSequenceError, match=f"data.novel_pose_seq='{TRAIN_SEQ}'"):
        load_fit_data(interhand_root, cfg, progress=False)


def test_evaluation_refuses_a_run_whose_novel_poses_were_trained_on(
    interhand_root: Path, tmp_path: Path
) -> None:
    """A run saved before the guard existed is refused at evaluation too."""
    from handnerf.evaluation.evaluate import select_views

    cfg = DataConfig(split=SPLIT, train_seq=TRAIN_SEQ, novel_pose_seq=TRAIN_SEQ)
    run = SimpleNamespace(cfg=SimpleNamespace(data=cfg), data_root=interhand_root, run_dir=tmp_path)
    with pytest.raises(NovelPoseSequenceError, match=TRAIN_SEQ):
        select_views(run, ("novel_pose",), None)  # type: ignore[arg-type]
    cfg.novel_pose_seq = "ROM03_RT_No_Occlusion"
    chosen = select_views(run, ("novel_pose",), None)  # type: ignore[arg-type]
    assert {item.view.seq_name for item in chosen} == {"ROM03_RT_No_Occlusion"}


def test_hand_type_validity_must_be_a_flag_when_present() -> None:
    from handnerf.data.records import parse_hand_type
    from handnerf.errors import DataError

    assert parse_hand_type({"hand_type": "right"}, "ann") == "right"  # absent: valid
    assert parse_hand_type({"hand_type": "right", "hand_type_valid": 0}, "ann") is None
    assert parse_hand_type({"hand_type": "left", "hand_type_valid": True}, "ann") == "left"
    with pytest.raises(DataError, match=r"ann\['hand_type_valid'\]"):
        parse_hand_type({"hand_type": "right", "hand_type_valid": None}, "ann")
