"""Synthetic captures of two interacting hands (``handnerf synth --hand both``).

The right and left procedural (or MANO) hands of one subject interact in InterHand2.6M's
``_dh_`` sequences, written in the same on-disk layout as a one-hand capture
(:mod:`handnerf.synth.writer`): every frame is ``hand_type: 'interacting'``, each hand has
its own entry in ``MANO_NeuralAnnot.json`` and its own 21 rows in ``joint_3d.json``, and
data.json's bbox covers both hands. The training sequences are one per interaction:

* :data:`INTERACTIONS` ``palms_touch``: palms pressed together (a prayer), fingers up;
* ``interlock``: palms facing, fingers spread and half curled, the left hand shifted by
  half a finger spacing so that the fingers slide between each other until they touch;
* ``occlusion``: both palms down, the right hand a few centimetres above the left one,
  covering part of it from every camera above;
* ``clap``: palms facing, opening and closing (gap from ~7 cm to contact).

A separate novel-pose sequence (other finger poses, every interaction) is for evaluation.
Hands never interpenetrate: each frame places the moving hand along its approach axis so
that the smallest distance between the two posed surfaces is at least :data:`CONTACT_GAP_M`
(sampled on a barycentric lattice of both meshes, libigl point-to-mesh distances).
The images show the union of both meshes (occlusion between the hands included); the
ground-truth mask under ``gt_masks/`` is the union of both hands.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from handnerf.errors import DataError
from handnerf.hand.sides import mirror_points, mirror_pose
from handnerf.synth.annotations import (
    JOINT_DECIMALS,
    NUM_KEYPOINTS,
    CapturePaths,
    FramePlan,
    add_image_records,
    rounded,
    write_annotation_files,
)
from handnerf.synth.frames import Scene, render_frames
from handnerf.synth.presets import SynthPreset
from handnerf.synth.rig import RigCamera, make_dome
from handnerf.synth.writer import (
    CaptureJob,
    SynthSummary,
    albedo_for,
    open_capture_folder,
    real_rig_effects,
    summarize,
    write_synth_marker,
)

#: The training interactions, in the order their sequences are numbered.
INTERACTIONS: tuple[str, ...] = ("palms_touch", "interlock", "occlusion", "clap")
#: Sequence names, InterHand's ``_dh_`` (double hand) naming.
TRAIN_SEQS: dict[str, str] = {
    "palms_touch": "0266_dh_palms_touch",
    "interlock": "0267_dh_interlock",
    "occlusion": "0268_dh_occlusion",
    "clap": "0269_dh_clap",
}
NOVEL_SEQ = "0270_dh_novel_pose"
#: The smallest distance (m) left between the two posed surfaces of a touching pair.
CONTACT_GAP_M = 0.002
#: The right hand's gap above the left one in ``occlusion`` frames (m).
OCCLUSION_GAP_M = 0.025
#: Widest opening of a clap (m).
CLAP_OPEN_M = 0.07

# World rotations of the right hand (rest frame: fingers -x, palm normal -y): palms facing
# each other (right palm towards +x, fingers up +z), and palm down (palm -z, fingers +y).
_PALMS_FACING = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
_PALM_DOWN = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


@dataclass(frozen=True)
class Interaction:
    """How the two hands of one frame meet.

    Attributes:
        orient: (3, 3) world rotation of the right hand (the left one gets its mirror).
        axis: (3,) unit approach axis; the left hand moves along ``-axis`` towards the right.
        gap: smallest surface distance (m) the left hand stops at.
        lateral: (3,) offset (m) of the left hand across the axis.
        finger_pose: a key pose name of :mod:`handnerf.hand.poses` for both hands.
    """

    orient: np.ndarray
    axis: np.ndarray
    gap: float
    lateral: np.ndarray
    finger_pose: str


def interaction_at(kind: str, phase: float, novel: bool = False) -> Interaction:
    """The interaction ``kind`` (one of :data:`INTERACTIONS`) at ``phase`` in [0, 1] of its
    sequence; ``novel`` uses the novel-pose finger poses."""
    x = np.array([1.0, 0.0, 0.0])
    zero = np.zeros(3)
    if kind == "palms_touch":
        return Interaction(_PALMS_FACING, x, CONTACT_GAP_M, zero, "three" if novel else "flat")
    if kind == "interlock":
        # Half the spacing of two fingers (~19 mm): each finger faces a gap of the other hand.
        lateral = np.array([0.0, 0.0095, -0.01])
        return Interaction(_PALMS_FACING, x, CONTACT_GAP_M, lateral, "claw" if novel else "spread")
    if kind == "occlusion":
        lateral = np.array([-0.03 + 0.06 * phase, 0.02, 0.0])
        pose = "victory" if novel else "relaxed"
        return Interaction(_PALM_DOWN, np.array([0.0, 0.0, -1.0]), OCCLUSION_GAP_M, lateral, pose)
    if kind == "clap":
        # Open, closed, open, closed over the sequence (two claps, ending in contact).
        gap = CONTACT_GAP_M + CLAP_OPEN_M * (0.5 + 0.5 * np.cos(3.0 * np.pi * phase))
        return Interaction(_PALMS_FACING, x, gap, zero, "ok" if novel else "relaxed")
    raise DataError(f"unknown two-hand interaction {kind!r}; known: {', '.join(INTERACTIONS)}")


# --------------------------------------------------------------------------- placement


def surface_points(vertices: np.ndarray, faces: np.ndarray, n: int = 4) -> np.ndarray:
    """(F * L, 3) points of a regular barycentric lattice of order ``n`` on every triangle
    of the (V, 3) mesh with (F, 3) ``faces`` (L = (n + 1)(n + 2) / 2)."""
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = i + j <= n
    bary = np.stack([n - i[keep] - j[keep], i[keep], j[keep]], axis=-1) / n  # (L, 3)
    return np.einsum("lc,fcd->fld", bary, vertices[faces]).reshape(-1, 3)


def surface_gap(
    vertices_a: np.ndarray, vertices_b: np.ndarray, faces: np.ndarray, n: int = 4
) -> float:
    """Smallest distance (m) between two meshes sharing ``faces``: lattice points of each
    (see :func:`surface_points`) against the other's triangles, both ways."""
    import igl

    gaps = []
    for source, target in ((vertices_a, vertices_b), (vertices_b, vertices_a)):
        points = surface_points(source, faces, n)
        squared, _, _ = igl.point_mesh_squared_distance(points, target, faces)
        gaps.append(float(np.sqrt(np.min(squared))))
    return min(gaps)


def place_pair(
    right: np.ndarray, left: np.ndarray, faces: np.ndarray, how: Interaction
) -> tuple[np.ndarray, np.ndarray]:
    """World shifts (3,), (3,) of the right and left posed meshes (V, 3) that bring the
    left hand along ``-how.axis`` to ``how.gap`` from the right one (never closer), with the
    pair's bounding box centred at the origin.

    The left hand starts clear of the right one along the axis and closes in by steps no
    larger than the current gap minus the target: a step of ``s`` shrinks the distance by
    at most ``s``, so the surfaces never cross.
    """
    axis = how.axis / np.linalg.norm(how.axis)
    # Line the boxes' centres up across the axis first, so that closing in meets the hand.
    apart = 0.5 * (right.min(0) + right.max(0) - left.min(0) - left.max(0))
    across = apart - (apart @ axis) * axis
    start = float((right @ axis).max() - (left @ axis).min()) + how.gap + 0.01
    offset = axis * start + across + how.lateral
    gap = surface_gap(right, left + offset, faces)
    for _ in range(64):
        step = gap - how.gap
        if step < 2e-4:
            break
        closer = offset - axis * step
        closer_gap = surface_gap(right, left + closer, faces)
        if closer_gap >= gap:  # past the other hand without meeting it: stay where it was
            break
        offset, gap = closer, closer_gap
    both = np.concatenate([right, left + offset])
    centre = 0.5 * (both.min(axis=0) + both.max(axis=0))
    return -centre, offset - centre


# --------------------------------------------------------------------------- sequences


@dataclass
class TwoHandFrames:
    """Both hands posed for all frames (``N`` frames, float64 numpy, per side)."""

    plans: list[FramePlan]
    pose: dict[str, np.ndarray]  # side -> (N, 48): global orientation + relative pose
    transl: dict[str, np.ndarray]  # side -> (N, 3) metres
    betas: np.ndarray  # (10,), the subject's (both hands)
    vertices: dict[str, np.ndarray]  # side -> (N, V, 3)
    keypoints: dict[str, np.ndarray]  # side -> (N, 21, 3)
    canonical_vertices: dict[str, np.ndarray]  # side -> (V, 3)


def plan_two_hand_frames(preset: SynthPreset) -> list[tuple[FramePlan, str]]:
    """``(frame, interaction)`` of a two-hand capture: the novel-pose sequence first (each
    interaction in turn), then one training sequence per interaction, frame numbers
    increasing through the capture from the preset's first frames."""
    out: list[tuple[FramePlan, str]] = []
    for i, frame in enumerate(preset.novel_frame_ids()):
        out.append((FramePlan(NOVEL_SEQ, frame, "novel"), INTERACTIONS[i % len(INTERACTIONS)]))
    frame = preset.train_first_frame
    for kind in INTERACTIONS:
        for _ in range(preset.train_frames):
            out.append((FramePlan(TRAIN_SEQS[kind], frame, "train"), kind))
            frame += preset.frame_step
    return out


def _phases(planned: Sequence[tuple[FramePlan, str]]) -> list[float]:
    """Each frame's phase in [0, 1] within its sequence."""
    counts: dict[str, int] = {}
    for plan, _ in planned:
        counts[plan.seq_name] = counts.get(plan.seq_name, 0) + 1
    seen: dict[str, int] = {}
    phases = []
    for plan, _ in planned:
        index = seen.get(plan.seq_name, 0)
        seen[plan.seq_name] = index + 1
        phases.append(index / max(counts[plan.seq_name] - 1, 1))
    return phases


def pose_two_hands(
    models: dict[str, Any],
    planned: Sequence[tuple[FramePlan, str]],
    rng: np.random.Generator,
) -> TwoHandFrames:
    """Pose both hands of every planned frame and place them (see :func:`place_pair`).

    Finger poses are the interaction's key pose with a small random variation per hand,
    the pair turns about the world's vertical by up to ±0.6 rad over a sequence.
    """
    import torch
    from scipy.spatial.transform import Rotation

    from handnerf.hand import poses
    from handnerf.hand.hand_model import ManoParams

    n = len(planned)
    betas = rng.uniform(-1.0, 1.0, size=10)
    faces = models["right"].faces.numpy().astype(np.int64)
    pose = {side: np.zeros((n, 48)) for side in models}
    for i, ((plan, kind), phase) in enumerate(zip(planned, _phases(planned), strict=True)):
        how = interaction_at(kind, phase, novel=plan.kind == "novel")
        turn = Rotation.from_rotvec(
            [0.0, 0.0, 0.6 * np.sin(2.0 * np.pi * phase) + rng.normal(0, 0.1)]
        )
        orient = (turn * Rotation.from_matrix(how.orient)).as_rotvec()
        for side in models:
            angles = poses.KEY_POSES[how.finger_pose] + rng.normal(0.0, 0.04, size=(15, 3)) * (
                poses.ANGLE_LIMITS[..., 1] > poses.ANGLE_LIMITS[..., 0]
            )
            finger = poses.pose_from_angles(poses.clip_angles(angles), side)
            hands_mean = np.asarray(models[side].data.hands_mean, dtype=np.float64)
            pose[side][i, 3:] = poses.to_relative(finger, hands_mean)
            # The left hand is the right one's mirror image about the world's x = 0 plane.
            pose[side][i, :3] = orient if side == "right" else mirror_pose(orient)

    def forward(side: str, transl: np.ndarray) -> Any:
        params = ManoParams(
            global_orient=torch.as_tensor(pose[side][:, :3]),
            hand_pose=torch.as_tensor(pose[side][:, 3:]),
            betas=torch.as_tensor(np.repeat(betas[None], n, axis=0)),
            transl=torch.as_tensor(transl),
        )
        with torch.no_grad():
            return models[side](params)

    first = {side: forward(side, np.zeros((n, 3))).vertices.numpy() for side in models}
    transl = {side: np.zeros((n, 3)) for side in models}
    for i, ((plan, kind), phase) in enumerate(zip(planned, _phases(planned), strict=True)):
        how = interaction_at(kind, phase, novel=plan.kind == "novel")
        shift_r, shift_l = place_pair(first["right"][i], first["left"][i], faces, how)
        jitter = rng.normal(0.0, 0.004, size=3)
        transl["right"][i], transl["left"][i] = shift_r + jitter, shift_l + jitter
    out = {side: forward(side, transl[side]) for side in models}
    return TwoHandFrames(
        plans=[plan for plan, _ in planned],
        pose=pose,
        transl=transl,
        betas=betas,
        vertices={s: o.vertices.numpy().astype(np.float64) for s, o in out.items()},
        keypoints={s: o.keypoints.numpy().astype(np.float64) for s, o in out.items()},
        canonical_vertices={
            s: o.canonical_vertices[0].numpy().astype(np.float64) for s, o in out.items()
        },
    )


# --------------------------------------------------------------------------- annotations


def two_hand_mano_json(capture: int, frames: TwoHandFrames) -> dict[str, Any]:
    """``{capture: {frame: {'right': {pose, shape, trans}, 'left': {...}}}}``."""
    mano: dict[str, Any] = {}
    for i, plan in enumerate(frames.plans):
        mano[str(plan.frame_idx)] = {
            side: {
                "pose": frames.pose[side][i].tolist(),
                "shape": frames.betas.tolist(),
                "trans": frames.transl[side][i].tolist(),
            }
            for side in ("right", "left")
        }
    return {str(capture): mano}


def _write_two_hand_annotations(
    paths: CapturePaths, preset: SynthPreset, cameras: Sequence[RigCamera], frames: TwoHandFrames
) -> None:
    """data, camera, joint_3d and MANO JSONs of a two-hand capture, and skeleton.txt."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    joints: dict[str, Any] = {}
    joint_valid = [[1]] * (2 * NUM_KEYPOINTS)
    for i, plan in enumerate(frames.plans):
        world = np.concatenate([frames.keypoints["right"][i], frames.keypoints["left"][i]])
        joints[str(plan.frame_idx)] = {
            "world_coord": rounded(world * 1000.0, JOINT_DECIMALS),
            "joint_valid": joint_valid,
            "hand_type": "interacting",
            "hand_type_valid": 1,
        }
        points = np.concatenate([frames.vertices["right"][i], frames.vertices["left"][i], world])
        add_image_records(
            images, annotations, paths, preset, plan, cameras, points, joint_valid, "interacting"
        )
    mano = two_hand_mano_json(preset.capture, frames)
    write_annotation_files(paths, cameras, images, annotations, {str(preset.capture): joints}, mano)


# --------------------------------------------------------------------------- main


def write_two_hand_capture(job: CaptureJob) -> SynthSummary:
    """Render and write a two-hand capture (``synthesize_capture(..., both_hands=True)``):
    both hands, :data:`TRAIN_SEQS` and :data:`NOVEL_SEQ`. MANO noise is not supported
    (the preset's must be 0)."""
    preset, seed, lighting = job.preset, job.seed, job.lighting
    if preset.mano_noise_deg > 0 or preset.mano_noise_mm > 0:
        raise DataError(f"synth preset {preset.name!r}: MANO noise is one-hand only")
    paths = open_capture_folder(job.out_dir, preset)
    names = ("rig", "poses", "border", "colour")
    streams = np.random.SeedSequence([seed, 2]).spawn(len(names))
    rngs = {name: np.random.default_rng(s) for name, s in zip(names, streams, strict=True)}
    models = {side: job.hand_model(side) for side in ("right", "left")}
    planned = plan_two_hand_frames(preset)
    frames = pose_two_hands(models, planned, rngs["poses"])
    cameras = make_dome(rngs["rig"], preset.n_cameras, landscape_every=preset.landscape_every)
    cameras, border_cut = real_rig_effects(cameras, preset, rngs)

    # One scene of both meshes: rays see whichever hand is in front. The left hand's skin
    # is the right one's mirrored (its canonical points mirrored into the right hand's).
    faces = models["right"].faces.numpy().astype(np.int64)
    n_right = frames.vertices["right"].shape[1]
    union_faces = np.concatenate([faces, faces + n_right])
    canonical = np.concatenate(
        [frames.canonical_vertices["right"], mirror_points(frames.canonical_vertices["left"])]
    )
    albedo = albedo_for(models["right"], frames.canonical_vertices["right"])
    vertices = np.concatenate([frames.vertices["right"], frames.vertices["left"]], axis=1)
    scene = Scene(canonical, union_faces, albedo, lighting)
    n_images = render_frames(
        frames.plans, vertices, scene, cameras, preset, paths, job.workers, job.progress
    )

    _write_two_hand_annotations(paths, preset, cameras, frames)
    preset_record = dataclasses.asdict(preset)
    for key in ("mano_noise_deg", "mano_noise_mm", "side", "train_seq", "novel_seq"):
        preset_record.pop(key)
    hand_source = write_synth_marker(
        paths,
        preset_record,
        seed,
        models["right"].data,
        {"sha256": {s: m.data.sha256 for s, m in models.items()}, "side": "both"},
        {
            "hand": "both",
            "sequences": {
                "train": [TRAIN_SEQS[k] for k in INTERACTIONS],
                "novel": NOVEL_SEQ if preset.novel_frames else None,
            },
            "contact_gap_m": CONTACT_GAP_M,
        },
        frames.betas,
        lighting,
        cameras,
        border_cut,
        " (both hands)",
        {},
    )
    return summarize(paths, cameras, frames.plans, n_images, job.start, hand_source)
