"""The procedural hand's rig: skinning weights, joint regressor, shape blend shapes.

Everything here is computed from a right-hand mesh in the procedural layout (millimetres,
unscaled, see :mod:`handnerf.hand.procedural`) and the designed bone chains, so the dense
marching-cubes hand and its MANO-resolution re-meshing (:mod:`handnerf.hand.coarse_hand`)
are rigged the same way. Skinning weights follow the arc length along each finger's bone
chain with smooth blends at the joints; shape blend shapes are per-bone affine
deformations blended by the same weights, so joints regressed from the shaped mesh move
with the bones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from handnerf.hand.joint_layout import JOINTS_MM, scaled_mm
from handnerf.hand.procedural import FINGER_CHAINS, FINGER_RADII_MM, PARENTS, chain_points_mm

NUM_BETAS: int = 10


def closest_on_chain(points: np.ndarray, chain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def chain_membership(verts_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Nearest finger chain per vertex, arc length along it, and the chain polylines."""
    chains = chain_points_mm()
    distances, arcs = [], []
    for finger, chain in enumerate(chains):
        distance, arc = closest_on_chain(verts_mm, chain)
        # The thumb's metacarpal chain starts deep in the palm; prefer fingers there.
        distances.append(distance + (3.0 if finger == 0 else 0.0))
        arcs.append(arc)
    finger_of_vertex = np.argmin(np.stack(distances, axis=1), axis=1)
    arc = np.stack(arcs, axis=1)[np.arange(len(verts_mm)), finger_of_vertex]
    return finger_of_vertex, arc, chains


def skinning_weights(verts_mm: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 16) weights: along each chain palm -> proximal -> middle -> distal, blended."""
    import scipy.sparse

    finger_of_vertex, arc, chains = chain_membership(verts_mm)
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
        ramps += [smoothstep((s - (joint_arcs[k] - half[k])) / (2 * half[k])) for k in range(3)]
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


def joint_regressor(verts_mm: np.ndarray) -> Any:
    """Sparse (16, V) rows: a ring of vertices per joint, weighted to hit the joint."""
    import scipy.sparse

    finger_of_vertex, _, chains = chain_membership(verts_mm)
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    half_width = 2.5
    while True:  # coarse meshes need a wider slab to find a full ring of vertices
        wrist_ring = np.flatnonzero(np.abs(verts_mm[:, 0] - JOINTS_MM[0, 0]) < half_width)
        wrist_ring = wrist_ring[np.abs(verts_mm[wrist_ring, 2] - 3.0) < 40.0]
        if len(wrist_ring) >= 12:
            break
        half_width += 1.0
    rows.append((wrist_ring, _joint_weights(verts_mm[wrist_ring], JOINTS_MM[0])))
    # rows must follow the joint order; chains are visited thumb first
    rows_by_joint: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for finger, joint_ids in enumerate(FINGER_CHAINS):
        chain = chains[finger]
        joint_arcs = np.cumsum(np.linalg.norm(np.diff(chain, axis=0), axis=1))[:3]
        _, chain_arc = closest_on_chain(verts_mm, chain)
        for k, joint_id in enumerate(joint_ids):
            target = JOINTS_MM[joint_id]
            near_axis = np.linalg.norm(verts_mm - target, axis=1) < FINGER_RADII_MM[finger][k] + 6.0
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


def shape_blend_shapes(
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
    shapedirs = np.zeros((len(v_template), 3, NUM_BETAS))
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


def fingertip_vertex_ids(verts_mm: np.ndarray) -> np.ndarray:
    """(5,) vertex furthest along each distal bone: thumb, index, middle, ring, pinky."""
    finger_of_vertex, _, chains = chain_membership(verts_mm)
    ids = []
    for finger, chain in enumerate(chains):
        direction = chain[4] - chain[3]
        direction /= np.linalg.norm(direction)
        reach = (verts_mm - chain[3]) @ direction
        reach[finger_of_vertex != finger] = -np.inf
        ids.append(int(np.argmax(reach)))
    return np.array(ids, dtype=np.int64)


def right_hand_core(
    verts_mm: np.ndarray, faces: np.ndarray, weights: np.ndarray | None = None
) -> dict[str, Any]:
    """Seed-independent rig of a right-hand mesh given in the unscaled layout (mm).

    Joint regressor, shape blend shapes, fingertips and (unless ``weights`` (V, 16) are
    given) skinning weights are computed from the mesh itself, so any closed re-meshing
    of :func:`hand_sdf_mm` gets a consistent rig. Returns MANO's geometry keys in metres
    plus ``fingertip_vertex_ids``.
    """
    if weights is None:
        weights = skinning_weights(verts_mm, faces)
    regressor = joint_regressor(verts_mm)
    fingertips = fingertip_vertex_ids(verts_mm)
    v_template = scaled_mm(verts_mm) * 1e-3
    joints = np.asarray(regressor @ v_template)
    shapedirs = shape_blend_shapes(v_template, weights, joints)
    return {
        "v_template": v_template,
        "f": faces.astype(np.uint32),
        "weights": weights,
        "J_regressor": regressor,
        "J": joints,
        "shapedirs": shapedirs,
        "fingertip_vertex_ids": fingertips,
    }
