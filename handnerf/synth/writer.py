"""Write a synthetic capture in InterHand2.6M's exact on-disk layout.

::

    OUT/
      images/{split}/Capture{c}/{seq}/cam{ID}/image{FRAME:04d}.jpg
      gt_masks/{split}/Capture{c}/{seq}/cam{ID}/image{FRAME:04d}.png   (not in InterHand)
      annotations/skeleton.txt
      annotations/{split}/InterHand2.6M_{split}_data.json
      annotations/{split}/InterHand2.6M_{split}_camera.json            (millimetres)
      annotations/{split}/InterHand2.6M_{split}_joint_3d.json          (millimetres)
      annotations/{split}/InterHand2.6M_{split}_MANO_NeuralAnnot.json  (trans in metres)
      synth.json                                                       (how it was made)
      exact_mano.json      (only with MANO noise: the parameters the images show)

Every file is written to a temporary name and renamed into place, so an interrupted run
never leaves a truncated image under its final name; ``synth.json`` is written last and
marks a finished capture. The same ``(preset, seed, hand model)`` gives identical files.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from handnerf.data.interhand import SYNTH_MARKER
from handnerf.errors import DataError
from handnerf.synth.annotations import (
    JOINT_DECIMALS,
    NUM_KEYPOINTS,
    CapturePaths,
    FramePlan,
    add_image_records,
    atomic_write_json,
    rounded,
    write_annotation_files,
)
from handnerf.synth.frames import Scene, render_frames
from handnerf.synth.presets import SynthPreset
from handnerf.synth.raycast import AlbedoFn, Lighting
from handnerf.synth.rig import RigCamera, cut_by_border, make_dome, with_white_balance

#: Bumped when the layout or content of a synthetic capture changes.
SYNTH_FORMAT_VERSION = 1
#: With ``mano_noise_*`` > 0: the exact MANO parameters the images were rendered from, in
#: MANO_NeuralAnnot.json's layout, at the capture root (recorded in synth.json).
EXACT_MANO = "exact_mano.json"
#: Largest wrist rotation (radians) away from MANO's rest orientation in a sequence.
GLOBAL_TURN_RAD = 1.3

# --------------------------------------------------------------------------- plan


@dataclass
class SynthSummary:
    """What :func:`synthesize_capture` produced."""

    root: Path
    n_cameras: int
    n_frames: int
    n_images: int
    seconds: float
    hand_source: str
    sequences: dict[str, int]


# --------------------------------------------------------------------------- hand


@dataclass
class _PosedSequence:
    """MANO parameters and the posed hand for all frames (``N`` frames, float64 numpy)."""

    global_orient: np.ndarray  # (N, 3)
    hand_pose_relative: np.ndarray  # (N, 45)
    betas: np.ndarray  # (10,)
    transl: np.ndarray  # (N, 3) metres
    vertices: np.ndarray  # (N, V, 3) metres
    canonical_vertices: np.ndarray  # (V, 3)
    keypoints: np.ndarray  # (N, 21, 3) metres, InterHand order


def _pose_hand(
    model: Any,
    plans: Sequence[FramePlan],
    preset: SynthPreset,
    rngs: dict[str, np.random.Generator],
) -> _PosedSequence:
    """Sample shape, finger poses and global orientations; centre each hand at the origin."""
    import torch

    from handnerf.hand import poses
    from handnerf.hand.hand_model import ManoParams

    hands_mean = np.asarray(model.data.hands_mean, dtype=np.float64)
    betas = rngs["shape"].uniform(-1.0, 1.0, size=10)
    n = len(plans)
    # Sequences are generated on a 30 fps timeline and sampled every `frame_step` frames,
    # like InterHand's 5 fps release: a short capture still sweeps through many key poses.
    step = preset.frame_step
    finger_abs = np.zeros((n, 45))
    global_orient = np.zeros((n, 3))
    for kind in ("novel", "train"):
        rows = [i for i, p in enumerate(plans) if p.kind == kind]
        if not rows:
            continue
        dense = len(rows) * step
        sequence = poses.rom_sequence(rngs[kind], dense, preset.side, kind=kind)
        finger_abs[rows] = np.asarray(sequence, dtype=np.float64)[::step]
        # Wide wrist turns so that over a sequence the rig sees palm, back and sides.
        orient = poses.global_orient_sequence(
            rngs["orient"], dense, max_angle=GLOBAL_TURN_RAD, frames_per_key=4 * step
        )
        global_orient[rows] = np.asarray(orient, dtype=np.float64)[::step]
    hand_pose = np.asarray(poses.to_relative(finger_abs, hands_mean), dtype=np.float64)

    def forward(transl: np.ndarray) -> Any:
        params = ManoParams(
            global_orient=torch.as_tensor(global_orient),
            hand_pose=torch.as_tensor(hand_pose),
            betas=torch.as_tensor(np.repeat(betas[None], n, axis=0)),
            transl=torch.as_tensor(transl),
        )
        with torch.no_grad():
            return model(params)

    first = forward(np.zeros((n, 3)))
    verts = first.vertices.numpy()
    # Centre the hand's bounding box at the world origin (where the rig looks), a few mm off.
    centre = 0.5 * (verts.min(axis=1) + verts.max(axis=1))
    transl = -centre + rngs["orient"].normal(0.0, 0.004, size=(n, 3))
    out = forward(transl)
    return _PosedSequence(
        global_orient=global_orient,
        hand_pose_relative=hand_pose,
        betas=betas,
        transl=transl,
        vertices=out.vertices.numpy().astype(np.float64),
        canonical_vertices=out.canonical_vertices[0].numpy().astype(np.float64),
        keypoints=out.keypoints.numpy().astype(np.float64),
    )


def albedo_for(model: Any, canonical_vertices: np.ndarray) -> AlbedoFn:
    """The skin albedo of the shaped canonical hand (a picklable function of canonical points)."""
    from handnerf.hand.appearance import skin_albedo

    data = model.data
    hand = {
        "J": np.asarray(data.J_regressor, dtype=np.float64) @ canonical_vertices,
        "v_template": canonical_vertices,
        "fingertip_vertex_ids": np.asarray(data.fingertip_vertex_ids, dtype=np.int64),
        "handnerf_procedural": data.procedural,
    }
    return functools.partial(skin_albedo, hand=hand)


def real_rig_effects(
    cameras: list[RigCamera], preset: SynthPreset, rngs: dict[str, np.random.Generator]
) -> tuple[list[RigCamera], list[str]]:
    """The preset's white-balance errors and border-cut cameras; returns the cameras and
    the ids of the border-cut ones."""
    if preset.white_balance_spread > 0.0:
        cameras = [
            with_white_balance(c, rngs["colour"], preset.white_balance_spread) for c in cameras
        ]
    chosen = sorted(
        int(i) for i in rngs["border"].choice(len(cameras), preset.border_cut_cameras, False)
    )
    for index in chosen:
        cameras[index] = cut_by_border(cameras[index], rngs["border"])
    return cameras, [cameras[i].cam_id for i in chosen]


# --------------------------------------------------------------------------- annotations


def _joint_rows(keypoints: np.ndarray, side: str) -> tuple[list[list[float]], list[list[int]]]:
    """42x3 world_coord (mm) and 42x[valid] with the captured hand's rows filled."""
    world = np.zeros((2 * NUM_KEYPOINTS, 3))
    valid = np.zeros((2 * NUM_KEYPOINTS, 1), dtype=int)
    rows = slice(0, NUM_KEYPOINTS) if side == "right" else slice(NUM_KEYPOINTS, 2 * NUM_KEYPOINTS)
    world[rows] = keypoints * 1000.0
    valid[rows] = 1
    return rounded(world, JOINT_DECIMALS), valid.tolist()


# --------------------------------------------------------------------------- main


def open_capture_folder(out_dir: str | Path, preset: SynthPreset) -> CapturePaths:
    """Create the capture root ``out_dir`` (a file there is a :class:`DataError`) and return
    the preset's InterHand paths under it."""
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: synth output exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    return CapturePaths(root=root, split=preset.split, capture=preset.capture)


def summarize(
    paths: CapturePaths,
    cameras: list[RigCamera],
    plans: Sequence[FramePlan],
    n_images: int,
    start: float,
    hand_source: str,
) -> SynthSummary:
    """The :class:`SynthSummary` of a capture written since ``start`` (perf_counter)."""
    sequences: dict[str, int] = {}
    for plan in plans:
        sequences[plan.seq_name] = sequences.get(plan.seq_name, 0) + 1
    return SynthSummary(
        root=paths.root,
        n_cameras=len(cameras),
        n_frames=len(plans),
        n_images=n_images,
        seconds=time.perf_counter() - start,
        hand_source=hand_source,
        sequences=sequences,
    )


def write_synth_marker(
    paths: CapturePaths,
    preset_record: dict[str, Any],
    seed: int,
    data: Any,
    hand_model: dict[str, Any],
    about_hands: dict[str, Any],
    betas: np.ndarray,
    lighting: Lighting,
    cameras: list[RigCamera],
    border_cut: list[int],
    masks_note: str,
    extra: dict[str, Any],
) -> str:
    """Write ``synth.json`` (outside the InterHand layout: how the capture was made) and
    return the hand's source (``"procedural"`` or the MANO folder). ``data``: the hand
    model's :class:`MANO data <handnerf.hand.mano_file.ManoData>`; ``hand_model``: its
    ``sha256`` and ``side`` entries; ``about_hands``: keys written after it (two hands);
    ``masks_note`` is appended to the masks' path pattern; ``extra`` comes last."""
    from handnerf import __version__

    hand_source = "procedural" if data.is_procedural else str(data.source)
    atomic_write_json(
        paths.root / SYNTH_MARKER,
        {
            "format_version": SYNTH_FORMAT_VERSION,
            "handnerf_version": __version__,
            "preset": preset_record,
            "seed": int(seed),
            "hand_model": {"source": hand_source, "procedural": data.procedural, **hand_model},
            **about_hands,
            "betas": betas.tolist(),
            "lighting": dataclasses.asdict(lighting),
            # Outside the InterHand layout: a real capture's gains are unknown, so a method
            # that uses them here would not transfer.
            "camera_gains": {c.cam_id: c.gain.tolist() for c in cameras},
            "border_cut_cameras": border_cut,
            "background": [0, 0, 0],
            "masks": "gt_masks/{split}/Capture{capture}/{seq}/cam{ID}/image{FRAME:04d}.png"
            + masks_note,
            **extra,
        },
    )
    return hand_source


def plan_frames(preset: SynthPreset) -> list[FramePlan]:
    """The frames of a preset: the novel-pose sequence first (InterHand order), then training."""
    plans = [FramePlan(preset.novel_seq, f, "novel") for f in preset.novel_frame_ids()]
    plans += [FramePlan(preset.train_seq, f, "train") for f in preset.train_frame_ids()]
    return plans


@dataclass(frozen=True)
class CaptureJob:
    """A capture to write, as :func:`synthesize_capture` was asked for it (``workers`` and
    ``lighting`` resolved, ``start`` its perf_counter time); the one-hand writer here and
    the two-hand one (:mod:`handnerf.synth.two_hands`) both work from it."""

    out_dir: str | Path
    preset: SynthPreset
    seed: int
    mano_dir: str | Path | None
    procedural: str | None
    workers: int
    lighting: Lighting
    progress: Callable[[int], None] | None
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def hand_model(self, side: str) -> Any:
        """The ``side`` hand's :class:`~handnerf.hand.hand_model.HandModel` in float64."""
        import torch

        from handnerf.hand.hand_model import HandModel

        return HandModel.from_folder(
            self.mano_dir, side, dtype=torch.float64, procedural=self.procedural
        )


def synthesize_capture(
    out_dir: str | Path,
    preset: SynthPreset,
    seed: int = 0,
    mano_dir: str | Path | None = None,
    workers: int | None = None,
    lighting: Lighting | None = None,
    procedural: str | None = None,
    progress: Callable[[int], None] | None = None,
    both_hands: bool = False,
) -> SynthSummary:
    """Render and write a synthetic capture under ``out_dir``.

    Args:
        out_dir: capture root (created; existing files of a previous run are overwritten).
        preset: sizes of the capture (see :mod:`handnerf.synth.presets`).
        seed: seeds rig, shape, poses and orientations; same seed, same files.
        mano_dir: MANO folder (``MANO_RIGHT.pkl``/``MANO_LEFT.pkl``); ``None`` = procedural hand.
        procedural: without ``mano_dir``, the procedural hand's resolution (``"mano"`` or
            ``"dense"``; None: the default, ``"mano"``).
        workers: render processes (``None``: the preset's default).
        lighting: the world-fixed light (``None``: :class:`Lighting` defaults).
        progress: called with the number of images finished after each frame.
        both_hands: two interacting hands (:mod:`handnerf.synth.two_hands`; the preset's
            ``side``, ``train_seq`` and ``novel_seq`` are not used, its MANO noise must be 0)
            instead of the preset's ``side``.

    Raises:
        DataError: ``out_dir`` exists and is not a folder.
        ModelFileError: ``mano_dir`` is not a usable MANO folder.
    """
    job = CaptureJob(
        out_dir,
        preset,
        seed,
        mano_dir,
        procedural,
        workers=preset.workers if workers is None else workers,
        lighting=lighting or Lighting(),
        progress=progress,
    )
    if both_hands:
        from handnerf.synth.two_hands import write_two_hand_capture  # it builds on this module

        return write_two_hand_capture(job)
    return _write_one_hand_capture(job)


def _write_one_hand_capture(job: CaptureJob) -> SynthSummary:
    """The capture of the preset's ``side`` hand (with its MANO noise, if any)."""
    preset, seed, lighting = job.preset, job.seed, job.lighting
    paths = open_capture_folder(job.out_dir, preset)
    root = paths.root

    # New streams go last: spawn(n)'s first children do not depend on n, so captures made
    # without the newer options stay byte-identical.
    names = ("rig", "shape", "train", "novel", "orient", "border", "colour", "mano_noise")
    streams = np.random.SeedSequence(seed).spawn(len(names))
    rngs = {
        name: np.random.default_rng(stream) for name, stream in zip(names, streams, strict=True)
    }
    model = job.hand_model(preset.side)
    plans = plan_frames(preset)
    posed = _pose_hand(model, plans, preset, rngs)
    cameras = make_dome(rngs["rig"], preset.n_cameras, landscape_every=preset.landscape_every)
    cameras, border_cut = real_rig_effects(cameras, preset, rngs)
    albedo = albedo_for(model, posed.canonical_vertices)
    faces = model.faces.numpy().astype(np.int64)

    scene = Scene(posed.canonical_vertices, faces, albedo, lighting)
    n_images = render_frames(
        plans, posed.vertices, scene, cameras, preset, paths, job.workers, job.progress
    )

    noisy = preset.mano_noise_deg > 0 or preset.mano_noise_mm > 0
    exact = _mano_json(preset, plans, posed.global_orient, posed.hand_pose_relative, posed)
    annotated = (
        _mano_json(preset, plans, *_perturbed_mano(posed, preset, rngs["mano_noise"]))
        if noisy
        else exact
    )
    _write_annotations(paths, preset, plans, cameras, posed, annotated)
    if noisy:
        # Outside the InterHand layout (a real capture has no exact fit): for tests only.
        atomic_write_json(root / EXACT_MANO, exact)
    preset_record = dataclasses.asdict(preset)
    if not noisy:  # captures made before the option keep their synth.json byte-identical
        for key in ("mano_noise_deg", "mano_noise_mm"):
            preset_record.pop(key)
    hand_source = write_synth_marker(
        paths,
        preset_record,
        seed,
        model.data,
        {"sha256": model.data.sha256, "side": preset.side},
        {},
        posed.betas,
        lighting,
        cameras,
        border_cut,
        "",
        {"exact_mano": EXACT_MANO} if noisy else {},
    )
    return summarize(paths, cameras, plans, n_images, job.start, hand_source)


def _perturbed_mano(
    posed: _PosedSequence, preset: SynthPreset, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, _PosedSequence]:
    """Global orientation (N,3), relative finger pose (N,45) and (via a copy of ``posed``)
    translation (N,3) with Gaussian fit errors of the preset's size added."""
    n = len(posed.transl)
    sigma = np.deg2rad(preset.mano_noise_deg)
    noise = rng.normal(0.0, 1.0, size=(n, 48 + 3))
    orient = posed.global_orient + sigma * noise[:, :3]
    hand_pose = posed.hand_pose_relative + sigma * noise[:, 3:48]
    transl = posed.transl + 1e-3 * preset.mano_noise_mm * noise[:, 48:]
    shifted = dataclasses.replace(posed, transl=transl)
    return orient, hand_pose, shifted


def _mano_json(
    preset: SynthPreset,
    plans: Sequence[FramePlan],
    global_orient: np.ndarray,
    hand_pose_relative: np.ndarray,
    posed: _PosedSequence,
) -> dict[str, Any]:
    """``{capture: {frame: {side: {pose, shape, trans}, other: None}}}`` (MANO_NeuralAnnot);
    orientation (N,3), relative pose (N,45); shape and translation come from ``posed``."""
    other = "left" if preset.side == "right" else "right"
    mano: dict[str, Any] = {}
    for i, plan in enumerate(plans):
        mano[str(plan.frame_idx)] = {
            preset.side: {
                "pose": np.concatenate([global_orient[i], hand_pose_relative[i]]).tolist(),
                "shape": posed.betas.tolist(),
                "trans": posed.transl[i].tolist(),
            },
            other: None,
        }
    return {str(preset.capture): mano}


def _write_annotations(
    paths: CapturePaths,
    preset: SynthPreset,
    plans: Sequence[FramePlan],
    cameras: Sequence[RigCamera],
    posed: _PosedSequence,
    mano: dict[str, Any],
) -> None:
    """The four InterHand annotation JSONs (``mano``: see :func:`_mano_json`) and skeleton.txt."""
    capture = str(preset.capture)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    joints: dict[str, Any] = {}
    for i, plan in enumerate(plans):
        world_coord, joint_valid = _joint_rows(posed.keypoints[i], preset.side)
        frame_key = str(plan.frame_idx)
        joints[frame_key] = {
            "world_coord": world_coord,
            "joint_valid": joint_valid,
            "hand_type": preset.side,
            "hand_type_valid": 1,
        }
        hand_points = np.concatenate([posed.vertices[i], posed.keypoints[i]], axis=0)
        add_image_records(
            images, annotations, paths, preset, plan, cameras, hand_points, joint_valid, preset.side
        )
    write_annotation_files(paths, cameras, images, annotations, {capture: joints}, mano)


def load_exact_mano(root: str | Path, frames: Sequence[int], side: str) -> Any:
    """The exact :class:`ManoParams` (one row per frame number of ``frames``) of a capture
    written with MANO noise; :class:`DataError` if it has none."""
    from handnerf.hand.hand_model import ManoParams

    path = Path(root) / EXACT_MANO
    if not path.is_file():
        raise DataError(f"{path}: missing (only captures synthesised with MANO noise have it)")
    (per_frame,) = json.loads(path.read_text()).values()
    return ManoParams.stack(
        [
            ManoParams.from_interhand(per_frame[str(f)][side], where=f"{path}: frame {f}")
            for f in frames
        ]
    )
