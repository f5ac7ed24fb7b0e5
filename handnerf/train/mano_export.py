"""Hand a fit's refined MANO parameters back to other tools (``handnerf export``).

A fit with ``train.refine_pose=true`` learns per-frame corrections of the given MANO fits
and one subject shape; its checkpoint holds the refined parameters of every training
frame. They are written in ``MANO_NeuralAnnot.json``'s schema (see
:mod:`handnerf.data.mano_annotations`), for the run's capture and hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from handnerf.data.mano_annotations import write_mano_annotations
from handnerf.errors import CheckpointError
from handnerf.train.checkpoint import LATEST, load_checkpoint
from handnerf.train.config import saved_fit_config
from handnerf.train.pose_refinement import refined_mano_of

#: Written into the run folder unless another path is given.
DEFAULT_NAME = "refined_MANO_NeuralAnnot.json"


@dataclass
class ExportSummary:
    path: Path
    capture: int
    hand: str
    n_frames: int
    sequences: list[str]


def export_refined_mano(
    run_dir: Path, out: Path | None = None, checkpoint: Path | None = None
) -> ExportSummary:
    """Write the refined MANO parameters of ``run_dir``'s training frames.

    Raises:
        CheckpointError: the checkpoint is missing or unreadable, or the fit did not refine
            the pose (``train.refine_pose=false``: there is nothing better than the input).
    """
    run_dir = Path(run_dir)
    path = Path(checkpoint) if checkpoint is not None else run_dir / "checkpoints" / LATEST
    state = load_checkpoint(path)
    cfg = saved_fit_config(state, path)
    refined = refined_mano_of(state)
    if not refined:
        raise CheckpointError(
            f"{path}: this fit did not refine the MANO fits (train.refine_pose=false), so "
            "there is nothing to export; fit with train.refine_pose=true"
        )
    frames = {frame: params for (_, frame), params in refined.items()}
    target = Path(out) if out is not None else run_dir / DEFAULT_NAME
    write_mano_annotations(target, cfg.data.capture, cfg.data.hand, frames)
    return ExportSummary(
        path=target,
        capture=cfg.data.capture,
        hand=cfg.data.hand,
        n_frames=len(frames),
        sequences=sorted({seq for seq, _ in refined}),
    )
