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
hand: rotations mirrored). The joint layout below is those rest joints rounded to the
millimetre and scaled by 1.08 about the wrist (wrist to middle tip about 18.2 cm).

Geometry: a signed distance field (palm slab, thenar pad, wrist, tapered finger tubes,
smooth unions) meshed with scikit-image marching cubes and Taubin-smoothed with trimesh.
Skinning weights follow the arc length along each finger's bone chain with smooth blends
at the joints; shape blend shapes are per-bone affine deformations blended by the same
weights, so joints regressed from the shaped mesh move with the bones. Pose blend shapes
are zero: posed vertices are exactly linear blend skinning of the template.
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

#: Bump when the generated geometry or file content changes (names the cache folder).
VERSION: int = 1
GENERATOR: str = "handnerf.hand.procedural"
NOTE: str = "license-free procedural hand, NOT MANO"
PROCEDURAL_KEY: str = "handnerf_procedural"

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
_SCALE = 1.08
_NUM_BETAS = 10
_NUM_POSE_BASIS = 135
_GRID_SPACING_MM = 3.8

# Rest joints in millimetres, MANO's frame, before scaling (see module docstring).
_JOINTS_MM = np.array(
    [
        [95.0, 6.0, 6.0],  # 0 wrist
        [8.0, 1.0, 27.0],  # 1 index MCP
        [-25.0, 5.0, 29.0],
        [-47.0, 4.0, 29.0],
        [1.0, 5.0, 3.0],  # 4 middle MCP
        [-30.0, 7.0, -3.0],
        [-53.0, 5.5, -7.0],
        [27.0, -3.5, -37.0],  # 7 pinky MCP
        [10.0, -3.5, -49.5],
        [-6.0, -4.0, -60.0],
        [14.0, 2.5, -20.5],  # 10 ring MCP
        [-14.5, 4.5, -25.5],
        [-38.0, 3.0, -33.0],
        [71.5, -9.0, 32.0],  # 13 thumb CMC
        [52.0, -8.0, 55.5],
        [30.0, -13.5, 70.0],
    ]
)
# Distal phalanx length (last joint to the very tip), mm: thumb, index, middle, ring, pinky.
_DISTAL_MM = (25.0, 21.0, 23.0, 22.0, 19.0)
# Tube radii at the chain's three joints and at the tip's centre, mm.
_RADII_MM = (
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


def rest_joint_layout(side: str = "right") -> np.ndarray:
    """Designed rest joints in metres, MANO's frame; the regressed ``J`` is within ~1 mm.

    Returns:
        (16, 3) joint positions (left: x-mirrored).
    """
    side = _check_side(side)
    joints = _scaled_mm(_JOINTS_MM) * 1e-3
    return _mirror_points(joints) if side == "left" else joints


def _check_side(side: str) -> str:
    if side not in ("right", "left"):
        from handnerf.errors import ParameterError

        raise ParameterError(f"hand side must be 'right' or 'left', got {side!r}")
    return side


def _scaled_mm(points_mm: np.ndarray) -> np.ndarray:
    wrist = _JOINTS_MM[0]
    return wrist + _SCALE * (np.asarray(points_mm, dtype=np.float64) - wrist)


def _mirror_points(points: np.ndarray) -> np.ndarray:
    mirrored = np.array(points, dtype=np.float64, copy=True)
    mirrored[..., 0] *= -1.0
    return mirrored


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


def _chain_points_mm() -> list[np.ndarray]:
    """Per finger (thumb first): (5, 3) polyline wrist/base, three joints, tip centre."""
    chains = []
    for finger, joint_ids in enumerate(FINGER_CHAINS):
        joints = _JOINTS_MM[list(joint_ids)]
        direction = joints[2] - joints[1]
        direction /= np.linalg.norm(direction)
        tip_centre = joints[2] + direction * (_DISTAL_MM[finger] - _RADII_MM[finger][3])
        chains.append(np.vstack([_JOINTS_MM[0], joints, tip_centre]))
    return chains


def _hand_sdf_mm(points: np.ndarray) -> np.ndarray:
    """Signed distance (mm, negative inside) of the right hand in the unscaled layout."""
    chains = _chain_points_mm()
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
        centre = _JOINTS_MM[joint_id] + np.array([4.0, 3.0, 0.0])
        hand = _smooth_min(hand, np.linalg.norm(points - centre, axis=1) - radius, 5.0)
    thumb = chains[0]
    thenar = _tube_sdf(points, np.array([88.0, -3.0, 12.0]), thumb[1], 14.0, 12.0, 1.15)
    hand = _smooth_min(hand, thenar, 10.0)
    hypothenar = _tube_sdf(
        points, np.array([82.0, -4.0, -18.0]), np.array([40.0, -5.0, -34.0]), 11.0, 9.5, 1.2
    )
    hand = _smooth_min(hand, hypothenar, 8.0)

    for finger, chain in enumerate(chains):
        radii = _RADII_MM[finger]
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


def _mesh_right_mm() -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes mesh of the SDF, smoothed; vertices (V, 3) mm, faces (F, 3)."""
    import trimesh
    from skimage import measure

    lo = np.array([-100.0, -34.0, -74.0])
    hi = np.array([125.0, 36.0, 104.0])
    spacing = _GRID_SPACING_MM
    axes = [np.arange(lo[i], hi[i] + spacing, spacing) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    sdf = _hand_sdf_mm(grid.reshape(-1, 3)).reshape(grid.shape[:3])
    verts, faces, _, _ = measure.marching_cubes(sdf, level=0.0, spacing=(spacing,) * 3)
    verts = verts + lo
    mesh = trimesh.Trimesh(verts, faces, process=True)
    mesh.remove_unreferenced_vertices()
    if mesh.volume < 0:
        mesh.invert()
    trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=-0.53, iterations=12)
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


# ---------------------------------------------------------------------------------------
# Skinning, joint regressor, shape blend shapes
# ---------------------------------------------------------------------------------------


def _closest_on_chain(points: np.ndarray, chain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance to a polyline and arc length of the closest point; both (N,)."""
    best_distance = np.full(len(points), np.inf)
    best_arc = np.zeros(len(points))
    arc0 = 0.0
    for i in range(len(chain) - 1):
        a, b = chain[i], chain[i + 1]
        axis = b - a
        length = float(np.linalg.norm(axis))
        t = np.clip((points - a) @ axis / (length * length), 0.0, 1.0)
        distance = np.linalg.norm(points - (a + t[:, None] * axis), axis=1)
        better = distance < best_distance
        best_distance = np.where(better, distance, best_distance)
        best_arc = np.where(better, arc0 + t * length, best_arc)
        arc0 += length
    return best_distance, best_arc


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _chain_membership(verts_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Nearest finger chain per vertex, arc length along it, and the chain polylines."""
    chains = _chain_points_mm()
    distances, arcs = [], []
    for finger, chain in enumerate(chains):
        distance, arc = _closest_on_chain(verts_mm, chain)
        # The thumb's metacarpal chain starts deep in the palm; prefer fingers there.
        distances.append(distance + (3.0 if finger == 0 else 0.0))
        arcs.append(arc)
    finger_of_vertex = np.argmin(np.stack(distances, axis=1), axis=1)
    arc = np.stack(arcs, axis=1)[np.arange(len(verts_mm)), finger_of_vertex]
    return finger_of_vertex, arc, chains


def _skinning_weights(verts_mm: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 16) weights: along each chain palm -> proximal -> middle -> distal, blended."""
    import scipy.sparse

    finger_of_vertex, arc, chains = _chain_membership(verts_mm)
    num_verts = len(verts_mm)
    weights = np.zeros((num_verts, 16))
    # Half-widths (mm) of the blend zones at the chain's three joints.
    blend = {0: (13.0, 6.0, 5.0)}
    for finger, joint_ids in enumerate(FINGER_CHAINS):
        chain = chains[finger]
        joint_arcs = np.cumsum(np.linalg.norm(np.diff(chain, axis=0), axis=1))[:3]
        half = blend.get(finger, (8.0, 5.0, 4.0))
        mask = finger_of_vertex == finger
        s = arc[mask]
        # Cumulative "past joint k" ramps; consecutive differences telescope to sum 1.
        ramps = [np.ones_like(s)]
        ramps += [_smoothstep((s - (joint_arcs[k] - half[k])) / (2 * half[k])) for k in range(3)]
        ramps.append(np.zeros_like(s))
        bones = (0, *joint_ids)
        for level, bone in enumerate(bones):
            weights[mask, bone] += ramps[level] - ramps[level + 1]

    # A few rounds of neighbour averaging remove the seams where finger membership flips.
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    adjacency = scipy.sparse.coo_matrix(
        (np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(num_verts, num_verts)
    ).tocsr()
    adjacency = ((adjacency + adjacency.T) > 0).astype(np.float64)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    averaging = scipy.sparse.diags(1.0 / degree) @ adjacency
    for _ in range(4):
        weights = 0.5 * weights + 0.5 * (averaging @ weights)
    weights[weights < 1e-6] = 0.0
    return weights / weights.sum(axis=1, keepdims=True)


def _joint_regressor(verts_mm: np.ndarray) -> Any:
    """Sparse (16, V) rows: a ring of vertices per joint, weighted to hit the joint."""
    import scipy.sparse

    finger_of_vertex, _, chains = _chain_membership(verts_mm)
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    wrist_ring = np.flatnonzero(np.abs(verts_mm[:, 0] - _JOINTS_MM[0, 0]) < 2.5)
    wrist_ring = wrist_ring[np.abs(verts_mm[wrist_ring, 2] - 3.0) < 40.0]
    rows.append((wrist_ring, _joint_weights(verts_mm[wrist_ring], _JOINTS_MM[0])))
    # rows must follow the joint order; chains are visited thumb first
    rows_by_joint: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for finger, joint_ids in enumerate(FINGER_CHAINS):
        chain = chains[finger]
        joint_arcs = np.cumsum(np.linalg.norm(np.diff(chain, axis=0), axis=1))[:3]
        _, chain_arc = _closest_on_chain(verts_mm, chain)
        for k, joint_id in enumerate(joint_ids):
            target = _JOINTS_MM[joint_id]
            near_axis = np.linalg.norm(verts_mm - target, axis=1) < _RADII_MM[finger][k] + 6.0
            width = 2.0
            while True:
                band = np.abs(chain_arc - joint_arcs[k]) < width
                ring = np.flatnonzero(band & ((finger_of_vertex == finger) | near_axis))
                if len(ring) >= 12:
                    w = _joint_weights(verts_mm[ring], target)
                    # widen until the joint lies well inside the ring (thumb base)
                    if np.linalg.norm(w @ verts_mm[ring] - target) < 0.3 or width > 12:
                        break
                width += 1.0
            rows_by_joint[joint_id] = (ring, w)
    rows += [rows_by_joint[j] for j in range(1, 16)]
    data, row_ids, col_ids = [], [], []
    for joint_id, (ids, w) in enumerate(rows):
        data.append(w)
        row_ids.append(np.full(len(ids), joint_id))
        col_ids.append(ids)
    return scipy.sparse.csc_matrix(
        (np.concatenate(data), (np.concatenate(row_ids), np.concatenate(col_ids))),
        shape=(16, len(verts_mm)),
    )


def _joint_weights(ring: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Weights closest to uniform whose weighted mean of ``ring`` (K, 3) is ``target``."""
    count = len(ring)
    uniform = np.full(count, 1.0 / count)
    constraints = np.vstack([ring.T, np.ones((1, count))])  # (4, K)
    residual = np.append(target, 1.0) - constraints @ uniform
    correction = (
        constraints.T @ np.linalg.lstsq(constraints @ constraints.T, residual, rcond=None)[0]
    )
    weights = np.clip(uniform + correction, 0.0, None)
    return weights / weights.sum()


def _shape_blend_shapes(
    v_template: np.ndarray, weights: np.ndarray, joints: np.ndarray
) -> np.ndarray:
    """(V, 3, 10) shape directions (metres per unit beta), right hand.

    Each direction is a set of per-bone linear maps ``A_k`` (about the bone's joint) and
    joint displacements ``dJ_k`` that follow the kinematic tree; a vertex moves by
    ``sum_k w_k (dJ_k + A_k (v - J_k))``, so skin and regressed joints move together.
    """
    finger_bones = [j for chain in FINGER_CHAINS for j in chain]
    bone_dir = np.zeros((16, 3))
    for joint_id in range(1, 16):
        children = [c for c, p in enumerate(PARENTS) if p == joint_id]
        if children:
            direction = joints[children[0]] - joints[joint_id]
        else:
            direction = joints[joint_id] - joints[PARENTS[joint_id]]
        bone_dir[joint_id] = direction / np.linalg.norm(direction)
    eye = np.eye(3)
    ex, ey, ez = eye

    def along(k: int) -> np.ndarray:
        return np.outer(bone_dir[k], bone_dir[k])

    def across(k: int) -> np.ndarray:
        return eye - along(k)

    thumb, index, middle, ring, pinky = (list(c) for c in FINGER_CHAINS)
    modes: list[dict[int, np.ndarray]] = [
        {k: 0.045 * eye for k in range(16)},  # 0 overall size
        {k: 0.06 * along(k) for k in index + middle + ring + pinky}  # 1 finger length
        | {k: 0.03 * along(k) for k in thumb},
        {k: 0.07 * across(k) for k in finger_bones},  # 2 finger width
        {0: 0.06 * np.outer(ez, ez)},  # 3 palm width
        {0: 0.05 * np.outer(ex, ex)},  # 4 palm length
        {k: 0.08 * np.outer(ey, ey) for k in range(16)},  # 5 hand thickness
        {k: 0.07 * along(k) for k in thumb},  # 6 thumb length
        {k: 0.06 * along(k) for k in pinky} | {k: 0.03 * along(k) for k in ring},  # 7 ulnar
        {k: 0.04 * along(k) for k in index} | {k: -0.04 * along(k) for k in ring},  # 8 2D:4D
        {k: 0.08 * across(k) for k in (3, 6, 9, 12, 15)}  # 9 fingertip fullness
        | {k: 0.04 * across(k) for k in (2, 5, 8, 11, 14)},
    ]
    shapedirs = np.zeros((len(v_template), 3, _NUM_BETAS))
    for mode, maps in enumerate(modes):
        linear = np.zeros((16, 3, 3))
        for bone, matrix in maps.items():
            linear[bone] = matrix
        joint_shift = np.zeros((16, 3))
        for joint_id in range(1, 16):
            parent = PARENTS[joint_id]
            joint_shift[joint_id] = joint_shift[parent] + linear[parent] @ (
                joints[joint_id] - joints[parent]
            )
        # per-vertex, per-bone displacement, blended by the skinning weights
        local = v_template[:, None, :] - joints[None, :, :]  # (V, 16, 3)
        per_bone = joint_shift[None] + np.einsum("kij,vkj->vki", linear, local)
        shapedirs[:, :, mode] = np.einsum("vk,vki->vi", weights, per_bone)
    return shapedirs


def _fingertip_vertex_ids(verts_mm: np.ndarray) -> np.ndarray:
    """(5,) vertex furthest along each distal bone: thumb, index, middle, ring, pinky."""
    finger_of_vertex, _, chains = _chain_membership(verts_mm)
    ids = []
    for finger, chain in enumerate(chains):
        direction = chain[4] - chain[3]
        direction /= np.linalg.norm(direction)
        reach = (verts_mm - chain[3]) @ direction
        reach[finger_of_vertex != finger] = -np.inf
        ids.append(int(np.argmax(reach)))
    return np.array(ids, dtype=np.int64)


# ---------------------------------------------------------------------------------------
# Assembling the MANO-format dict
# ---------------------------------------------------------------------------------------


def _mirror_pose(pose: np.ndarray) -> np.ndarray:
    mirrored = np.array(pose, dtype=np.float64, copy=True).reshape(*pose.shape[:-1], -1, 3)
    mirrored[..., 1:] *= -1.0
    return mirrored.reshape(pose.shape)


def _right_hand_core() -> dict[str, Any]:
    """Seed-independent geometry of the right hand (metres)."""
    verts_mm, faces = _mesh_right_mm()
    weights = _skinning_weights(verts_mm, faces)
    regressor = _joint_regressor(verts_mm)
    fingertips = _fingertip_vertex_ids(verts_mm)
    v_template = _scaled_mm(verts_mm) * 1e-3
    joints = np.asarray(regressor @ v_template)
    shapedirs = _shape_blend_shapes(v_template, weights, joints)
    return {
        "v_template": v_template,
        "f": faces.astype(np.uint32),
        "weights": weights,
        "J_regressor": regressor,
        "J": joints,
        "shapedirs": shapedirs,
        "fingertip_vertex_ids": fingertips,
    }


_CORE_CACHE: dict[str, Any] = {}


def build_procedural_hand(side: str, seed: int = 0) -> dict[str, Any]:
    """The procedural hand as a MANO-format dict (what ``MANO_{RIGHT,LEFT}.pkl`` holds).

    Args:
        side: ``"right"`` or ``"left"`` (the left is the exact x-mirror of the right).
        seed: varies the skin appearance (tone and detail pattern); geometry is fixed.

    Returns:
        Dict with MANO's keys (``v_template`` (V, 3) m, ``f`` (F, 3) uint32, ``weights``
        (V, 16), ``J_regressor`` csc (16, V), ``kintree_table`` (2, 16), ``posedirs``
        (V, 3, 135) float32 zeros, ``shapedirs`` (V, 3, 10), ``hands_components`` (45, 45),
        ``hands_mean`` (45,), ``hands_coeffs`` (64, 45), ``J`` (16, 3), ``bs_style``,
        ``bs_type``) plus ``handnerf_procedural``, ``fingertip_vertex_ids`` (5,) and
        ``vertex_colors`` (V, 3) float32.
    """
    import scipy.sparse

    from handnerf.hand import appearance, poses

    side = _check_side(side)
    if "right" not in _CORE_CACHE:
        _CORE_CACHE["right"] = _right_hand_core()
    core = _CORE_CACHE["right"]

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
    if side == "left":
        v_template = _mirror_points(v_template)
        faces = faces[:, ::-1].copy()
        shapedirs[:, 0, :] *= -1.0
        hands_mean = _mirror_pose(hands_mean)
        components = _mirror_pose(components)
        coeffs = coeffs.copy()
    joints = np.asarray(regressor @ v_template)

    kintree = np.array([[_MANO_ROOT_AS_STORED, *PARENTS[1:]], list(range(16))], dtype=np.int64)
    marker = {
        "version": VERSION,
        "generator": GENERATOR,
        "seed": int(seed),
        "note": NOTE,
        "side": side,
    }
    hand: dict[str, Any] = {
        "v_template": v_template,
        "f": faces,
        "weights": core["weights"].copy(),
        "J_regressor": scipy.sparse.csc_matrix(regressor),
        "kintree_table": kintree,
        "posedirs": np.zeros((len(v_template), 3, _NUM_POSE_BASIS), dtype=np.float32),
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


def write_procedural_mano_dir(out_dir: Path, seed: int = 0) -> Path:
    """Write ``MANO_RIGHT.pkl`` and ``MANO_LEFT.pkl`` (each atomically) into ``out_dir``.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for side, name in (("right", "MANO_RIGHT.pkl"), ("left", "MANO_LEFT.pkl")):
        _write_pickle_atomic(build_procedural_hand(side, seed=seed), out_dir / name)
    return out_dir


def default_cache_dir() -> Path:
    """``$HANDNERF_CACHE``, or ``~/.cache/handnerf``."""
    return Path(os.environ.get("HANDNERF_CACHE") or "~/.cache/handnerf").expanduser()


def procedural_mano_dir(cache_dir: Path | None = None) -> Path:
    """The cached procedural MANO folder ``<cache>/procedural_hand_v{VERSION}``.

    Generated once (seed 0) into a temporary folder that is renamed into place, so two
    processes racing here both end up with one complete folder.
    """
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = base / f"procedural_hand_v{VERSION}"
    if (target / "MANO_RIGHT.pkl").is_file() and (target / "MANO_LEFT.pkl").is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=base, prefix=f".{target.name}."))
    try:
        write_procedural_mano_dir(staging, seed=0)
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
