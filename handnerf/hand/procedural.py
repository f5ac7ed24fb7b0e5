"""The license-free procedural hand, written in MANO's own file format.

The real MANO model is licensed and users download it themselves; tests, the synthetic
capture and first runs need a hand that anyone may ship. :func:`build_procedural_hand`
returns a dict with exactly MANO's keys (``v_template``, ``f``, ``weights``,
``J_regressor``, ``kintree_table``, ``posedirs``, ``shapedirs``, ``hands_components``,
``hands_mean``, ``hands_coeffs``, ``J``, ``bs_style``, ``bs_type``) plus
``handnerf_procedural`` (generator metadata, the marker that says "not MANO"),
``fingertip_vertex_ids`` and ``vertex_colors``, so the same allow-listed loader and
``smplx.MANO`` read it exactly like ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl``.

MANO's rest frame (right hand), which this hand reproduces so that InterHand2.6M poses
(axis-angle relative to ``hands_mean``) bend these fingers the way they bend MANO's:

* the fingers point along **-x** from the wrist (MANO's template wrist joint sits at
  about (0.0957, 0.0064, 0.0062) m and the middle-finger joints at x = 0.001, -0.030,
  -0.053 m), the index finger is on **+z**, the pinky on **-z**, the thumb at +z and
  slightly -y;
* the palm faces **-y** (the back of the hand +y): MANO's ``hands_mean`` flexes every
  finger joint mainly about **+z** (e.g. index 0.42, 0.76, 0.19 rad), and a rotation about
  +z turns a -x finger towards -y;
* the left hand is the x-mirror of the right (an axis-angle pose mirrors as
  (a_x, a_y, a_z) -> (a_x, -a_y, -a_z)).

Sources: MANO's rest joints and ``hands_mean`` as hard-coded in public hand-avatar code
(e.g. HandAvatar/LiveHand InterHand loaders' ``th_hands_mean_right``, manopth wrappers'
``t_mano = [0.09566994, 0.00638343, 0.0061863]``), gmntu/mobilehand issue #12 (MANO right
hand "palm towards the Y axis", fingers in the x-z plane) and manopth issue #25 (left
hand: rotations mirrored). The joint layout (:mod:`handnerf.hand.joint_layout`) is those
rest joints rounded to the millimetre and scaled by 1.08 about the wrist (wrist to middle
tip about 18.2 cm); side names and mirroring are :mod:`handnerf.hand.sides`.

Geometry: a signed distance field (palm slab, thenar pad, wrist, tapered finger tubes,
smooth unions) meshed with scikit-image marching cubes and Taubin-smoothed with trimesh.
The rig (skinning weights, joint regressor, shape blend shapes) is
:mod:`handnerf.hand.rig`. Pose blend shapes are zero: posed vertices are exactly linear
blend skinning of the template.

``resolution="mano"`` re-meshes the same surface at MANO's resolution (778 vertices,
MANO-like triangle sizes) and adds pose blend shapes; see :mod:`handnerf.hand.coarse_hand`.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from handnerf.files import atomic_path
from handnerf.files import cache_root as default_cache_dir
from handnerf.hand import poses
from handnerf.hand.joint_layout import JOINTS_MM
from handnerf.hand.sides import check_side, mirror_points, mirror_pose

#: Bump when the generated geometry or file content changes (names the cache folder).
VERSION: int = 1
GENERATOR: str = "handnerf.hand.procedural"
NOTE: str = "license-free procedural hand, NOT MANO"
PROCEDURAL_KEY: str = "handnerf_procedural"
#: Mesh resolutions: the dense marching-cubes hand and the 778-vertex MANO-like one.
RESOLUTIONS: tuple[str, ...] = ("dense", "mano")
#: The procedural hand used where no MANO folder is given: MANO's resolution, so that the
#: demo and the tests meet what real MANO brings (large triangles, pose correctives).
DEFAULT_RESOLUTION = "mano"

#: MANO's kinematic tree: 0 wrist, 1-3 index, 4-6 middle, 7-9 pinky, 10-12 ring, 13-15 thumb.
PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
#: Joint chains per finger in the order of ``fingertip_vertex_ids``: thumb, index, middle,
#: ring, pinky.
FINGER_CHAINS: tuple[tuple[int, int, int], ...] = (
    (13, 14, 15),
    (1, 2, 3),
    (4, 5, 6),
    (10, 11, 12),
    (7, 8, 9),
)
FINGER_NAMES: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky")

_MANO_ROOT_AS_STORED = 4294967295  # MANO stores the root's parent -1 as uint32
_NUM_POSE_BASIS = 135
_GRID_SPACING_MM = 3.8

# Distal phalanx length (last joint to the very tip), mm: thumb, index, middle, ring, pinky.
_DISTAL_MM = (25.0, 21.0, 23.0, 22.0, 19.0)
#: Finger tube radii (mm) at the chain's three joints and at the tip's centre, per finger.
FINGER_RADII_MM: tuple[tuple[float, ...], ...] = (
    (12.0, 10.6, 9.6, 8.8),
    (10.0, 8.8, 7.8, 7.1),
    (10.2, 9.0, 8.0, 7.3),
    (9.6, 8.5, 7.5, 6.9),
    (8.6, 7.6, 6.8, 6.2),
)
_FINGER_FLATTEN = 1.12  # fingers are a little wider than thick
_PALM_CENTRE_Y_MM = 1.5
_PALM_HALF_THICKNESS_MM = 12.0
_PALM_EDGE_RADIUS_MM = 8.0
# Palm outline in the x-z plane (mm), through the knuckles and along both sides.
_PALM_OUTLINE_MM = np.array(
    [
        [98.0, -15.0],
        [62.0, -42.0],
        [33.0, -44.5],
        [29.0, -37.0],
        [16.0, -20.5],
        [3.0, 3.0],
        [6.0, 18.0],
        [10.0, 27.0],
        [13.0, 35.0],
        [52.0, 31.0],
        [98.0, 22.0],
    ]
)


def _check_resolution(resolution: str) -> str:
    if resolution not in RESOLUTIONS:
        from handnerf.errors import ParameterError

        raise ParameterError(f"hand resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    return resolution


def hand_version(resolution: str = "dense") -> int:
    """File-content version of a resolution (``VERSION``, or ``coarse_hand.VERSION``)."""
    if _check_resolution(resolution) == "dense":
        return VERSION
    from handnerf.hand import coarse_hand

    return coarse_hand.VERSION


# ---------------------------------------------------------------------------------------
# Signed distance field (mm, unscaled layout)
# ---------------------------------------------------------------------------------------


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(k - np.abs(a - b), 0.0, None) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _smooth_max(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    return -_smooth_min(-a, -b, k)


def _tube_sdf(
    points: np.ndarray, start: np.ndarray, end: np.ndarray, r0: float, r1: float, flatten: float
) -> np.ndarray:
    """Approximate distance to a tapered capsule whose cross-section is squashed in y."""
    axis = end - start
    t = np.clip((points - start) @ axis / float(axis @ axis), 0.0, 1.0)
    offset = points - (start + t[:, None] * axis)
    offset[:, 1] *= flatten
    return np.linalg.norm(offset, axis=1) - (r0 + t * (r1 - r0))


def _polygon_sdf_2d(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from (N, 2) points to a simple (M, 2) polygon."""
    distance = np.full(len(points), np.inf)
    inside = np.zeros(len(points), dtype=bool)
    for i in range(len(polygon)):
        a, b = polygon[i], polygon[(i + 1) % len(polygon)]
        edge = b - a
        t = np.clip((points - a) @ edge / float(edge @ edge), 0.0, 1.0)
        distance = np.minimum(distance, np.linalg.norm(points - (a + t[:, None] * edge), axis=1))
        crosses = (a[1] > points[:, 1]) != (b[1] > points[:, 1])
        x_at = a[0] + (points[:, 1] - a[1]) * edge[0] / (edge[1] if edge[1] != 0 else 1e-12)
        inside ^= crosses & (points[:, 0] < x_at)
    return np.where(inside, -distance, distance)


def chain_points_mm() -> list[np.ndarray]:
    """Per finger (thumb first): (5, 3) polyline wrist/base, three joints, tip centre."""
    chains = []
    for finger, joint_ids in enumerate(FINGER_CHAINS):
        joints = JOINTS_MM[list(joint_ids)]
        direction = joints[2] - joints[1]
        direction /= np.linalg.norm(direction)
        tip_centre = joints[2] + direction * (_DISTAL_MM[finger] - FINGER_RADII_MM[finger][3])
        chains.append(np.vstack([JOINTS_MM[0], joints, tip_centre]))
    return chains


def hand_sdf_mm(points: np.ndarray) -> np.ndarray:
    """Signed distance (mm, negative inside) of the right hand in the unscaled layout."""
    chains = chain_points_mm()
    q = points[:, [0, 2]]
    d2d = _polygon_sdf_2d(q, _PALM_OUTLINE_MM) + _PALM_EDGE_RADIUS_MM
    dy = np.abs(points[:, 1] - _PALM_CENTRE_Y_MM) - (_PALM_HALF_THICKNESS_MM - _PALM_EDGE_RADIUS_MM)
    outside = np.linalg.norm(np.stack([np.maximum(d2d, 0), np.maximum(dy, 0)], axis=1), axis=1)
    palm = outside + np.minimum(np.maximum(d2d, dy), 0.0) - _PALM_EDGE_RADIUS_MM

    # Wrist: an elliptical stump cut flat a little beyond the wrist joint.
    wrist = _tube_sdf(
        points, np.array([80.0, 3.0, 3.0]), np.array([130.0, 3.0, 3.0]), 25.0, 23.0, 1.45
    )
    wrist = _smooth_max(wrist, points[:, 0] - 117.0, 6.0)
    hand = _smooth_min(palm, wrist, 10.0)

    # Dorsal knuckle bumps and the thenar / hypothenar pads.
    for joint_id, radius in ((1, 8.5), (4, 8.8), (10, 8.2), (7, 7.4)):
        centre = JOINTS_MM[joint_id] + np.array([4.0, 3.0, 0.0])
        hand = _smooth_min(hand, np.linalg.norm(points - centre, axis=1) - radius, 5.0)
    thumb = chains[0]
    thenar = _tube_sdf(points, np.array([88.0, -3.0, 12.0]), thumb[1], 14.0, 12.0, 1.15)
    hand = _smooth_min(hand, thenar, 10.0)
    hypothenar = _tube_sdf(
        points, np.array([82.0, -4.0, -18.0]), np.array([40.0, -5.0, -34.0]), 11.0, 9.5, 1.2
    )
    hand = _smooth_min(hand, hypothenar, 8.0)

    for finger, chain in enumerate(chains):
        radii = FINGER_RADII_MM[finger]
        tube = np.full(len(points), np.inf)
        for seg in range(3):
            tube = np.minimum(
                tube,
                _tube_sdf(
                    points,
                    chain[seg + 1],
                    chain[seg + 2],
                    radii[seg],
                    radii[seg + 1],
                    _FINGER_FLATTEN,
                ),
            )
        hand = _smooth_min(hand, tube, 7.0 if finger == 0 else 5.0)
    return hand


def mesh_right_mm() -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes mesh of the SDF, smoothed; vertices (V, 3) mm, faces (F, 3)."""
    import trimesh
    from skimage import measure

    lo = np.array([-100.0, -34.0, -74.0])
    hi = np.array([125.0, 36.0, 104.0])
    spacing = _GRID_SPACING_MM
    axes = [np.arange(lo[i], hi[i] + spacing, spacing) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    sdf = hand_sdf_mm(grid.reshape(-1, 3)).reshape(grid.shape[:3])
    verts, faces, _, _ = measure.marching_cubes(sdf, level=0.0, spacing=(spacing,) * 3)
    verts = verts + lo
    mesh = trimesh.Trimesh(verts, faces, process=True)
    mesh.remove_unreferenced_vertices()
    if mesh.volume < 0:
        mesh.invert()
    trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=-0.53, iterations=12)
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


# ---------------------------------------------------------------------------------------
# Assembling the MANO-format dict
# ---------------------------------------------------------------------------------------


def mirror_posedirs(posedirs: np.ndarray) -> np.ndarray:
    """Pose blend shapes (V, 3, 135) of the x-mirrored hand.

    The feature ``(R_j - I)[a, b]`` sits at ``9 j + 3 a + b``; mirroring ``R`` flips it by
    ``m_a m_b`` and the vertex offset's coordinate ``c`` by ``m_c`` (``m = (-1, 1, 1)``).
    """
    mirror = np.array([-1.0, 1.0, 1.0])
    signs = np.einsum("c,a,b->cab", mirror, mirror, mirror).reshape(3, 9)
    return (posedirs * np.tile(signs, (1, _NUM_POSE_BASIS // 9))[None]).astype(posedirs.dtype)


def _right_hand_core(resolution: str) -> dict[str, Any]:
    if resolution == "dense":
        from handnerf.hand.rig import right_hand_core

        core = right_hand_core(*mesh_right_mm())
        core["posedirs"] = np.zeros((len(core["v_template"]), 3, _NUM_POSE_BASIS), np.float32)
        return core
    from handnerf.hand import coarse_hand

    return coarse_hand.mano_resolution_core()


_CORE_CACHE: dict[str, Any] = {}


def build_procedural_hand(side: str, seed: int = 0, resolution: str = "dense") -> dict[str, Any]:
    """The procedural hand as a MANO-format dict (what ``MANO_{RIGHT,LEFT}.pkl`` holds).

    Args:
        side: ``"right"`` or ``"left"`` (the left is the exact x-mirror of the right).
        seed: varies the skin appearance (tone and detail pattern); geometry is fixed.
        resolution: ``"dense"`` (about 3600 vertices, no pose blend shapes) or ``"mano"``
            (778 vertices with MANO-like triangle sizes and non-zero pose blend shapes,
            see :mod:`handnerf.hand.coarse_hand`).

    Returns:
        Dict with MANO's keys (``v_template`` (V, 3) m, ``f`` (F, 3) uint32, ``weights``
        (V, 16), ``J_regressor`` csc (16, V), ``kintree_table`` (2, 16), ``posedirs``
        (V, 3, 135) float32 (zeros for ``"dense"``), ``shapedirs`` (V, 3, 10), ``hands_components`` (45, 45),
        ``hands_mean`` (45,), ``hands_coeffs`` (64, 45), ``J`` (16, 3), ``bs_style``,
        ``bs_type``) plus ``handnerf_procedural``, ``fingertip_vertex_ids`` (5,) and
        ``vertex_colors`` (V, 3) float32.
    """
    import scipy.sparse

    from handnerf.hand import appearance

    side = check_side(side)
    _check_resolution(resolution)
    if resolution not in _CORE_CACHE:
        _CORE_CACHE[resolution] = _right_hand_core(resolution)
    core = _CORE_CACHE[resolution]

    hands_mean = poses.relaxed_pose("right")
    rng = np.random.default_rng(12345)
    samples = np.stack([poses.sample_hand_pose(rng, "right") for _ in range(2048)])
    relative = samples - hands_mean
    _, _, components = np.linalg.svd(relative - relative.mean(axis=0), full_matrices=False)
    signs = np.sign(components[np.arange(45), np.argmax(np.abs(components), axis=1)])
    components = components * signs[:, None]
    coeffs = relative[:64] @ components.T

    v_template = core["v_template"].copy()
    faces = core["f"].copy()
    shapedirs = core["shapedirs"].copy()
    regressor = core["J_regressor"].copy()
    posedirs = core["posedirs"].copy()
    if side == "left":
        v_template = mirror_points(v_template)
        faces = faces[:, ::-1].copy()
        posedirs = mirror_posedirs(posedirs)
        shapedirs[:, 0, :] *= -1.0
        hands_mean = mirror_pose(hands_mean)
        components = mirror_pose(components)
        coeffs = coeffs.copy()
    joints = np.asarray(regressor @ v_template)

    kintree = np.array([[_MANO_ROOT_AS_STORED, *PARENTS[1:]], list(range(16))], dtype=np.int64)
    marker: dict[str, Any] = {
        "version": hand_version(resolution),
        "generator": GENERATOR,
        "seed": int(seed),
        "note": NOTE,
        "side": side,
    }
    if resolution != "dense":  # the dense hand's files stay byte-identical to before
        marker["resolution"] = resolution
    hand: dict[str, Any] = {
        "v_template": v_template,
        "f": faces,
        "weights": core["weights"].copy(),
        "J_regressor": scipy.sparse.csc_matrix(regressor),
        "kintree_table": kintree,
        "posedirs": posedirs,
        "shapedirs": shapedirs,
        "hands_components": components,
        "hands_mean": hands_mean,
        "hands_coeffs": coeffs,
        "J": joints,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        PROCEDURAL_KEY: marker,
        "fingertip_vertex_ids": core["fingertip_vertex_ids"].copy(),
    }
    hand["vertex_colors"] = appearance.skin_albedo(v_template, hand).astype(np.float32)
    return hand


def _write_pickle_atomic(data: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        pickle.dump(data, handle, protocol=2)


def write_procedural_mano_dir(out_dir: Path, seed: int = 0, resolution: str = "dense") -> Path:
    """Write ``MANO_RIGHT.pkl`` and ``MANO_LEFT.pkl`` (each atomically) into ``out_dir``.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for side, name in (("right", "MANO_RIGHT.pkl"), ("left", "MANO_LEFT.pkl")):
        _write_pickle_atomic(build_procedural_hand(side, seed, resolution), out_dir / name)
    return out_dir


def procedural_mano_dir(
    cache_dir: Path | None = None, resolution: str = DEFAULT_RESOLUTION
) -> Path:
    """The cached procedural MANO folder of a resolution.

    ``"mano"`` (the default) is ``<cache>/procedural_hand_mano_v{coarse_hand.VERSION}``,
    ``"dense"`` ``<cache>/procedural_hand_v{VERSION}``.

    Generated once (seed 0) into a temporary folder that is renamed into place, so two
    processes racing here both end up with one complete folder.
    """
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    _check_resolution(resolution)
    infix = "" if resolution == "dense" else f"{resolution}_"
    target = base / f"procedural_hand_{infix}v{hand_version(resolution)}"
    if (target / "MANO_RIGHT.pkl").is_file() and (target / "MANO_LEFT.pkl").is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=base, prefix=f".{target.name}."))
    try:
        write_procedural_mano_dir(staging, seed=0, resolution=resolution)
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process won the race (or left a broken folder behind).
            if (
                not (target / "MANO_RIGHT.pkl").is_file()
                or not (target / "MANO_LEFT.pkl").is_file()
            ):
                shutil.rmtree(target, ignore_errors=True)
                os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
