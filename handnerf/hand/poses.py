"""Plausible hand poses and range-of-motion-like pose sequences, MANO's convention.

A pose is the 45-d axis-angle of MANO's 15 finger joints (1-3 index, 4-6 middle, 7-9
pinky, 10-12 ring, 13-15 thumb), each relative to its parent in MANO's rest frame, where
the fingers point along -x and the palm faces -y (see :mod:`handnerf.hand.procedural`).
Poses here are built from anatomical angles per joint, ``angles[j] = (flex, abd, twist)``
in radians:

* fingers: ``flex`` about the finger's flexion axis ``d x (-y)`` (positive curls towards
  the palm), ``abd`` about +y (positive moves the finger towards the thumb), no twist;
* thumb CMC (joint 13): ``flex`` = palmar abduction / opposition (thumb leaves the palm
  plane towards the palm side), ``abd`` = flexion across the palm towards the pinky
  (about -y), ``twist`` = rotation about the thumb's own axis (negative pronates);
* thumb MCP / IP (14, 15): ``flex`` about the thumb's flexion axis.

The three axes of a joint are orthonormal, so ``pose = sum(angle * axis)`` and
``angle = pose . axis`` invert each other exactly (:func:`pose_from_angles`,
:func:`angles_from_pose`). Left-hand poses are the x-mirror: (a_x, -a_y, -a_z).
"""

from __future__ import annotations

import functools

import numpy as np

from handnerf.errors import ParameterError
from handnerf.hand.joint_layout import rest_joint_layout
from handnerf.hand.sides import check_side, mirror_pose

NUM_JOINTS = 15

#: Anatomical limits (radians), (15, 3, 2): [joint-1, (flex, abd, twist), (lo, hi)].
ANGLE_LIMITS = np.zeros((NUM_JOINTS, 3, 2))
for _mcp, _pip, _dip in ((0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11)):
    ANGLE_LIMITS[_mcp] = [[-0.35, 1.6], [-0.4, 0.4], [0.0, 0.0]]
    ANGLE_LIMITS[_pip] = [[-0.05, 1.85], [0.0, 0.0], [0.0, 0.0]]
    ANGLE_LIMITS[_dip] = [[-0.1, 1.35], [0.0, 0.0], [0.0, 0.0]]
ANGLE_LIMITS[12] = [[-0.45, 1.3], [-0.5, 0.9], [-0.9, 0.3]]
ANGLE_LIMITS[13] = [[-0.3, 1.0], [0.0, 0.0], [0.0, 0.0]]
ANGLE_LIMITS[14] = [[-0.3, 1.4], [0.0, 0.0], [0.0, 0.0]]

# Finger order inside a pose (joint-1 // 3): index, middle, pinky, ring, thumb.
_FINGER_ROWS = {"index": (0, 1, 2), "middle": (3, 4, 5), "pinky": (6, 7, 8), "ring": (9, 10, 11)}
_THUMB_ROWS = (12, 13, 14)


def joint_axes(side: str = "right") -> np.ndarray:
    """Per-joint orthonormal axes (flex, abd, twist) in MANO's rest frame; (15, 3, 3)."""
    return _joint_axes(check_side(side)).copy()


@functools.lru_cache(maxsize=2)
def _joint_axes(side: str) -> np.ndarray:
    joints = rest_joint_layout("right")
    palm_normal = np.array([0.0, -1.0, 0.0])
    axes = np.zeros((NUM_JOINTS, 3, 3))
    for chain_start in (1, 4, 7, 10, 13):
        chain = [chain_start, chain_start + 1, chain_start + 2]
        direction = joints[chain[2]] - joints[chain[0]]
        direction[1] = 0.0  # axes in the palm plane keep the triple orthonormal
        direction /= np.linalg.norm(direction)
        flex = np.cross(direction, palm_normal)
        for joint_id in chain:
            if chain_start == 13 and joint_id == 13:
                # CMC: opposition about the in-plane axis, across-palm flexion about -y
                axes[joint_id - 1] = [flex, palm_normal, direction]
            else:
                axes[joint_id - 1] = [flex, -palm_normal, direction]
    if side == "left":
        axes = mirror_pose(axes.reshape(NUM_JOINTS, 9)).reshape(NUM_JOINTS, 3, 3)
    axes.setflags(write=False)
    return axes


def pose_from_angles(angles: np.ndarray, side: str = "right") -> np.ndarray:
    """Anatomical angles (15, 3) -> absolute axis-angle pose (45,)."""
    angles = np.asarray(angles, dtype=np.float64)
    if angles.shape != (NUM_JOINTS, 3):
        raise ParameterError(f"angles must have shape (15, 3), got {angles.shape}")
    return np.einsum("ja,jai->ji", angles, _joint_axes(check_side(side))).reshape(45)


def angles_from_pose(pose: np.ndarray, side: str = "right") -> np.ndarray:
    """Absolute axis-angle pose (45,) -> anatomical angles (15, 3) (exact inverse)."""
    pose = _check_pose(pose, "pose")
    return np.einsum("ji,jai->ja", pose.reshape(NUM_JOINTS, 3), _joint_axes(check_side(side)))


def clip_angles(angles: np.ndarray) -> np.ndarray:
    """Angles (15, 3) clipped to :data:`ANGLE_LIMITS`."""
    return np.clip(angles, ANGLE_LIMITS[..., 0], ANGLE_LIMITS[..., 1])


def _check_pose(pose: np.ndarray, name: str) -> np.ndarray:
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape[-1:] != (45,):
        raise ParameterError(f"{name} must end in 45 values (15 joints x 3), got {pose.shape}")
    if not np.all(np.isfinite(pose)):
        raise ParameterError(f"{name} contains NaN or inf")
    return pose


def to_relative(pose_abs: np.ndarray, hands_mean: np.ndarray) -> np.ndarray:
    """Absolute pose (..., 45) -> InterHand/MANO's pose relative to ``hands_mean`` (45,)."""
    return _check_pose(pose_abs, "pose_abs") - _check_pose(hands_mean, "hands_mean")


def to_absolute(pose_rel: np.ndarray, hands_mean: np.ndarray) -> np.ndarray:
    """Pose relative to ``hands_mean`` (..., 45) -> absolute pose."""
    return _check_pose(pose_rel, "pose_rel") + _check_pose(hands_mean, "hands_mean")


# ---------------------------------------------------------------------------------------
# Named key poses (right-hand anatomical angles)
# ---------------------------------------------------------------------------------------


def _finger(mcp: float, pip: float, dip: float, abd: float = 0.0) -> np.ndarray:
    return np.array([[mcp, abd, 0.0], [pip, 0.0, 0.0], [dip, 0.0, 0.0]])


def _thumb(opp: float, across: float, twist: float, mcp: float, ip: float) -> np.ndarray:
    return np.array([[opp, across, twist], [mcp, 0.0, 0.0], [ip, 0.0, 0.0]])


def _hand(
    index: np.ndarray, middle: np.ndarray, pinky: np.ndarray, ring: np.ndarray, thumb: np.ndarray
) -> np.ndarray:
    return np.concatenate([index, middle, pinky, ring, thumb])


_CURLED = _finger(1.45, 1.7, 1.0)
_STRAIGHT = _finger(0.0, 0.05, 0.05)
_THUMB_OVER = _thumb(0.25, 0.6, -0.8, 0.5, 0.25)

KEY_POSES: dict[str, np.ndarray] = {
    "flat": np.zeros((NUM_JOINTS, 3)),
    "relaxed": _hand(
        _finger(0.25, 0.35, 0.2, 0.04),
        _finger(0.3, 0.4, 0.2),
        _finger(0.45, 0.5, 0.25, -0.08),
        _finger(0.38, 0.45, 0.22, -0.04),
        _thumb(0.45, 0.15, -0.25, 0.1, 0.2),
    ),
    "fist": _hand(_CURLED, _CURLED, _CURLED, _CURLED, _THUMB_OVER),
    "spread": _hand(
        _finger(-0.1, 0.0, 0.0, 0.3),
        _finger(-0.1, 0.0, 0.0, 0.02),
        _finger(-0.1, 0.0, 0.0, -0.38),
        _finger(-0.1, 0.0, 0.0, -0.18),
        _thumb(-0.3, -0.45, 0.0, -0.1, -0.1),
    ),
    "pinch": _hand(
        _finger(0.75, 1.1, 0.66, -0.05),
        _finger(0.5, 0.6, 0.3),
        _finger(0.7, 0.8, 0.4),
        _finger(0.6, 0.7, 0.35),
        _thumb(0.7, 0.5, -0.6, 0.0, 0.3),
    ),
    "point": _hand(_STRAIGHT, _CURLED, _CURLED, _CURLED, _THUMB_OVER),
    # novel-pose set: not visited by the 'train' cycle
    "ok": _hand(
        _finger(0.8, 1.1, 0.7, -0.05),
        _finger(0.1, 0.1, 0.05, -0.05),
        _finger(0.2, 0.15, 0.1, -0.3),
        _finger(0.15, 0.1, 0.05, -0.15),
        _thumb(0.7, 0.5, -0.6, 0.05, 0.35),
    ),
    "victory": _hand(
        _finger(0.0, 0.05, 0.05, 0.25),
        _finger(0.0, 0.05, 0.05, -0.15),
        _CURLED,
        _CURLED,
        _THUMB_OVER,
    ),
    "thumbs_up": _hand(_CURLED, _CURLED, _CURLED, _CURLED, _thumb(-0.1, -0.3, 0.0, 0.0, 0.0)),
    "claw": _hand(
        _finger(0.1, 1.3, 1.0, 0.2),
        _finger(0.1, 1.3, 1.0),
        _finger(0.1, 1.3, 1.0, -0.3),
        _finger(0.1, 1.3, 1.0, -0.15),
        _thumb(0.6, -0.1, -0.3, 0.4, 0.8),
    ),
    "horns": _hand(_STRAIGHT, _CURLED, _finger(0.0, 0.05, 0.05, -0.2), _CURLED, _THUMB_OVER),
    "three": _hand(
        _finger(0.0, 0.05, 0.05, 0.2),
        _STRAIGHT,
        _CURLED,
        _finger(0.0, 0.05, 0.05, -0.2),
        _THUMB_OVER,
    ),
}

#: Key-pose cycles per sequence kind.
SEQUENCE_KINDS: dict[str, tuple[str, ...]] = {
    "train": ("relaxed", "fist", "relaxed", "spread", "pinch", "relaxed", "point", "flat"),
    "novel": ("ok", "victory", "thumbs_up", "claw", "horns", "three"),
}


def relaxed_pose(side: str = "right") -> np.ndarray:
    """The gently curled rest pose used as the procedural hand's ``hands_mean``; (45,)."""
    return pose_from_angles(KEY_POSES["relaxed"], side)


def key_pose(name: str, side: str = "right") -> np.ndarray:
    """A named key pose (see :data:`KEY_POSES`) as an absolute pose (45,)."""
    if name not in KEY_POSES:
        raise ParameterError(f"unknown key pose {name!r}; known: {sorted(KEY_POSES)}")
    return pose_from_angles(KEY_POSES[name], side)


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------


def sample_hand_angles(rng: np.random.Generator) -> np.ndarray:
    """Random plausible anatomical angles (15, 3) within :data:`ANGLE_LIMITS`.

    Curl is shared between fingers (a synergy) and coupled along each finger
    (DIP follows PIP); spread shrinks as the fingers curl.
    """
    angles = np.zeros((NUM_JOINTS, 3))
    shared_curl = rng.beta(1.2, 1.5)
    spread = rng.uniform(-0.3, 1.0)
    spread_direction = {"index": 0.8, "middle": 0.05, "ring": -0.5, "pinky": -1.0}
    for name, (mcp, pip, dip) in _FINGER_ROWS.items():
        curl = float(np.clip(shared_curl + rng.normal(0.0, 0.25), -0.15, 1.0))
        angles[mcp, 0] = curl * 1.45 + rng.normal(0.0, 0.1)
        angles[pip, 0] = curl * 1.65 + rng.normal(0.0, 0.12)
        angles[dip, 0] = 0.65 * angles[pip, 0] + rng.normal(0.0, 0.08)
        angles[mcp, 1] = spread * (1.0 - max(curl, 0.0)) * spread_direction[
            name
        ] * 0.35 + rng.normal(0.0, 0.04)
    opposition = rng.uniform(-0.2, 1.15)
    cmc, mcp, ip = _THUMB_ROWS
    angles[cmc] = [
        opposition,
        rng.uniform(-0.4, 0.8) * (0.5 + 0.5 * shared_curl),
        -0.55 * max(opposition, 0.0) + rng.normal(0.0, 0.1),
    ]
    angles[mcp, 0] = rng.uniform(-0.2, 0.9)
    angles[ip, 0] = rng.uniform(-0.2, 1.2)
    return clip_angles(angles)


def sample_hand_pose(rng: np.random.Generator, side: str = "right") -> np.ndarray:
    """A random plausible absolute hand pose (45,) for ``side``."""
    return pose_from_angles(sample_hand_angles(rng), side)


def _random_rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    # angle^3 uniform: rotation vectors uniform inside the ball of radius max_angle
    return axis * max_angle * rng.uniform() ** (1.0 / 3.0)


def sample_global_orient(
    rng: np.random.Generator, max_angle: float = np.pi, base: np.ndarray | None = None
) -> np.ndarray:
    """A wrist rotation (3,) axis-angle: ``base`` (default identity) times a random turn."""
    from scipy.spatial.transform import Rotation

    turn = Rotation.from_rotvec(_random_rotation(rng, max_angle))
    if base is not None:
        turn = turn * Rotation.from_rotvec(np.asarray(base, dtype=np.float64))
    return turn.as_rotvec()


def global_orient_sequence(
    rng: np.random.Generator,
    n_frames: int,
    max_angle: float = 0.7,
    base: np.ndarray | None = None,
    frames_per_key: int = 20,
) -> np.ndarray:
    """Smooth wrist rotations (n_frames, 3): slerp between random key orientations."""
    from scipy.spatial.transform import Rotation, Slerp

    if n_frames < 1:
        raise ParameterError(f"n_frames must be >= 1, got {n_frames}")
    n_keys = max(2, int(np.ceil(n_frames / frames_per_key)) + 1)
    keys = Rotation.from_rotvec(
        np.stack([sample_global_orient(rng, max_angle, base) for _ in range(n_keys)])
    )
    times = np.arange(n_keys) * frames_per_key
    frame_times = np.arange(n_frames, dtype=np.float64)
    # ease in/out between keys so the angular velocity is continuous
    key_index = np.floor(frame_times / frames_per_key)
    fraction = frame_times / frames_per_key - key_index
    eased = (key_index + 0.5 - 0.5 * np.cos(np.pi * fraction)) * frames_per_key
    return Slerp(times, keys)(np.clip(eased, 0, times[-1])).as_rotvec()


def rom_sequence(
    rng: np.random.Generator, n_frames: int, side: str = "right", kind: str = "train"
) -> np.ndarray:
    """A smooth range-of-motion-like sequence of absolute poses, (n_frames, 45).

    ``kind='train'`` cycles relaxed -> fist -> relaxed -> spread -> pinch -> relaxed ->
    point -> flat; ``kind='novel'`` visits other poses (ok, victory, thumbs-up, claw,
    horns, three) in a random order, for novel-pose evaluation. Each key pose gets a
    small random variation; transitions ease in and out (cosine).
    """
    if kind not in SEQUENCE_KINDS:
        raise ParameterError(f"unknown sequence kind {kind!r}; known: {sorted(SEQUENCE_KINDS)}")
    if n_frames < 1:
        raise ParameterError(f"n_frames must be >= 1, got {n_frames}")
    side = check_side(side)
    names = list(SEQUENCE_KINDS[kind])
    if kind == "novel":
        names = [names[i] for i in rng.permutation(len(names))]
        names = ["relaxed", *names]
    frames_per_key = int(np.clip(n_frames // len(names), 6, 30))
    n_keys = max(2, int(np.ceil((n_frames - 1) / frames_per_key)) + 1)
    keys = []
    for i in range(n_keys):
        angles = KEY_POSES[names[i % len(names)]]
        jitter = rng.normal(0.0, 0.05, size=angles.shape) * (
            ANGLE_LIMITS[..., 1] > ANGLE_LIMITS[..., 0]
        )
        keys.append(clip_angles(angles + jitter))
    keys_array = np.stack(keys)
    frame_times = np.arange(n_frames) / frames_per_key
    key_index = np.minimum(np.floor(frame_times).astype(int), n_keys - 2)
    fraction = np.clip(frame_times - key_index, 0.0, 1.0)
    eased = 0.5 - 0.5 * np.cos(np.pi * fraction)
    angles_seq = (
        keys_array[key_index] * (1.0 - eased)[:, None, None]
        + keys_array[key_index + 1] * eased[:, None, None]
    )
    axes = joint_axes(side)
    return np.einsum("fja,jai->fji", angles_seq, axes).reshape(n_frames, 45)
