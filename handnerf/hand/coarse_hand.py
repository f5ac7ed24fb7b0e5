"""The procedural hand at MANO's resolution: 778 vertices, MANO-like triangles, correctives.

Real MANO is a coarse mesh (778 vertices, edges of 8 mm on average and up to 24 mm, the
largest triangles on the back and the palm) whose posed vertices include pose-corrective
offsets of a few millimetres. A toolkit tested only on the dense, corrective-free
procedural hand never meets those conditions (empty discs in the middle of big triangles,
inverse skinning that is off at bent joints), so this module builds a license-free hand
that has them, from the procedural hand's own signed distance field, never from MANO:

* **mesh**: the dense marching-cubes hand is decimated by edge collapses ordered by
  length relative to a sizing field (fine on the fingers, about 2.3x coarser on the palm,
  the back and the wrist), down to exactly 778 vertices; edge flips and a sizing-weighted
  tangential relaxation then even out the triangles, and every vertex is projected back
  onto the zero level of :func:`~handnerf.hand.procedural.hand_sdf_mm`. The surface stays
  closed (778 vertices, 1552 faces; MANO's 1538 leave the wrist open).
* **rig**: skinning weights, joint regressor, shape blend shapes and fingertips come
  from :func:`~handnerf.hand.rig.right_hand_core`, exactly as for the dense hand.
* **pose blend shapes** (MANO's ``lrotmin`` convention: offsets are ``posedirs`` times
  ``(R_j - I)`` flattened for joints 1-15): at every finger joint the back of the joint
  bulges outwards along the normal and the palm side creases inwards, in proportion to
  the flexion ``sin(angle)`` plus a little of ``1 - cos(angle)`` so that a strongly bent
  joint still shows a knuckle. The size is a few millimetres, like MANO's.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import numpy as np

from handnerf.hand import joint_layout, procedural, rig

#: Bump when the generated geometry or file content changes (names the cache folder).
VERSION: int = 1
NUM_VERTICES: int = 778
#: Target edge length on the palm, back and wrist relative to the fingers.
COARSE_RATIO: float = 2.0
# Corrective amplitudes (mm per unit of sin(flexion)) for MCP, PIP, DIP (thumb: CMC, MCP,
# IP): the knuckle on the back and the crease on the palm side.
_BULGE_MM = (3.0, 2.6, 2.0)
_CREASE_MM = (2.5, 2.0, 1.5)
_MIN_ANGLE_DEG = 12.0


def sizing_mm(points_mm: np.ndarray) -> np.ndarray:
    """Relative target edge length (fingers 1, palm/back/wrist ``COARSE_RATIO``), (N,).

    Fingers are fine from a little before their base knuckle on; the joints and tips are
    finer still, because that is where the surface bends most when posed.
    """
    finger_of_vertex, arc, chains = rig.chain_membership(points_mm)
    size = np.empty(len(points_mm))
    for finger, chain in enumerate(chains):
        mask = finger_of_vertex == finger
        joint_arcs = np.cumsum(np.linalg.norm(np.diff(chain, axis=0), axis=1))
        # the thumb's metacarpal is part of the (coarse) thenar; its MCP starts the finger
        base = joint_arcs[1] if finger == 0 else joint_arcs[0]
        s = arc[mask]
        fine = rig.smoothstep((s - (base - 14.0)) / 22.0)
        near_joint = np.zeros_like(s)
        for joint_arc in joint_arcs[1:]:
            near_joint = np.maximum(near_joint, np.exp(-0.5 * ((s - joint_arc) / 5.0) ** 2))
        size[mask] = COARSE_RATIO + (1.0 - 0.15 * near_joint - COARSE_RATIO) * fine
    return size


def project_to_surface(points_mm: np.ndarray, iterations: int = 6) -> np.ndarray:
    """Points moved onto the zero level of the procedural SDF by Newton steps, (N, 3)."""
    points = np.array(points_mm, dtype=np.float64, copy=True)
    step = 0.05
    offsets = np.eye(3) * step
    for _ in range(iterations):
        value = procedural.hand_sdf_mm(points)
        gradient = np.stack(
            [
                (procedural.hand_sdf_mm(points + o) - procedural.hand_sdf_mm(points - o))
                / (2 * step)
                for o in offsets
            ],
            axis=1,
        )
        norm2 = np.maximum((gradient**2).sum(axis=1, keepdims=True), 1e-6)
        points -= value[:, None] * gradient / norm2
    return points


# Plain-float vector helpers: the collapse and flip loops test one triangle at a time, where
# numpy's per-call overhead (cross, norm) costs ten times the arithmetic.
Vec = tuple[float, float, float]


def _sub(p: Vec, q: Vec) -> Vec:
    return (p[0] - q[0], p[1] - q[1], p[2] - q[2])


def _dot(p: Vec, q: Vec) -> float:
    return p[0] * q[0] + p[1] * q[1] + p[2] * q[2]


def _unit_normal(a: Vec, b: Vec, c: Vec) -> Vec:
    u, v = _sub(b, a), _sub(c, a)
    n = (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])
    length = max(math.sqrt(_dot(n, n)), 1e-12)
    return (n[0] / length, n[1] / length, n[2] / length)


def _min_angle(a: Vec, b: Vec, c: Vec) -> float:
    """Smallest interior angle of a triangle, degrees."""
    smallest = 180.0
    for p, q, r in ((a, b, c), (b, c, a), (c, a, b)):
        u, v = _sub(q, p), _sub(r, p)
        cos = _dot(u, v) / max(math.sqrt(_dot(u, u) * _dot(v, v)), 1e-12)
        smallest = min(smallest, math.degrees(math.acos(min(1.0, max(-1.0, cos)))))
    return smallest


class _Mesh:
    """A closed triangle mesh with per-vertex face sets, for collapses and flips."""

    def __init__(self, verts: np.ndarray, faces: np.ndarray) -> None:
        self.points: list[Vec] = [tuple(map(float, v)) for v in verts]  # type: ignore[misc]
        self.faces = [list(map(int, f)) for f in faces]
        self.face_alive = [True] * len(self.faces)
        self.vert_faces: list[set[int]] = [set() for _ in range(len(self.points))]
        for face_id, face in enumerate(self.faces):
            for v in face:
                self.vert_faces[v].add(face_id)
        self.vert_alive = np.ones(len(self.points), dtype=bool)

    def neighbours(self, v: int) -> set[int]:
        return {u for f in self.vert_faces[v] for u in self.faces[f]} - {v}

    def edges(self) -> list[tuple[int, int]]:
        return sorted(
            {
                (min(f[i], f[(i + 1) % 3]), max(f[i], f[(i + 1) % 3]))
                for f, alive in zip(self.faces, self.face_alive, strict=True)
                if alive
                for i in range(3)
            }
        )

    def try_collapse(self, a: int, b: int) -> bool:
        """Merge ``b`` into ``a`` at the edge midpoint if the mesh stays a valid surface."""
        shared = self.vert_faces[a] & self.vert_faces[b]
        common = self.neighbours(a) & self.neighbours(b)
        # link condition (stays manifold) and no vertex left with only two neighbours
        if len(shared) != 2 or len(common) != 2:
            return False
        if any(len(self.vert_faces[c]) <= 3 for c in common):
            return False
        pa, pb = self.points[a], self.points[b]
        point = (0.5 * (pa[0] + pb[0]), 0.5 * (pa[1] + pb[1]), 0.5 * (pa[2] + pb[2]))
        for face_id in (self.vert_faces[a] | self.vert_faces[b]) - shared:
            corners = [self.points[v] for v in self.faces[face_id]]
            moved = [point if v in (a, b) else self.points[v] for v in self.faces[face_id]]
            if _dot(_unit_normal(*corners), _unit_normal(*moved)) < 0.5:
                return False  # folds over
            if _min_angle(*moved) < min(_MIN_ANGLE_DEG, _min_angle(*corners)):
                return False  # creates a sliver
        self.points[a] = point
        for face_id in shared:
            self.face_alive[face_id] = False
            for v in self.faces[face_id]:
                self.vert_faces[v].discard(face_id)
        for face_id in self.vert_faces[b]:
            self.faces[face_id] = [a if v == b else v for v in self.faces[face_id]]
            self.vert_faces[a].add(face_id)
        self.vert_faces[b] = set()
        self.vert_alive[b] = False
        return True

    def try_flip(self, a: int, b: int) -> bool:
        """Flip edge ``ab`` to the other diagonal when that raises the smallest angle."""
        shared = list(self.vert_faces[a] & self.vert_faces[b])
        if len(shared) != 2:
            return False
        f0, f1 = (self.faces[i] for i in shared)
        c = next(v for v in f0 if v not in (a, b))
        d = next(v for v in f1 if v not in (a, b))
        if d in self.neighbours(c) or min(len(self.vert_faces[v]) for v in (a, b)) <= 3:
            return False
        # orient so that f0 runs a -> b -> c; then f1 runs b -> a -> d
        if (f0.index(b) - f0.index(a)) % 3 != 1:
            a, b = b, a
        p = self.points
        new0, new1 = [a, d, c], [d, b, c]
        n0, n1 = _unit_normal(p[a], p[b], p[c]), _unit_normal(p[b], p[a], p[d])
        # the two triangles must be nearly coplanar, or swapping diagonals changes the shape
        if _dot(n0, n1) < 0.8:
            return False
        for face in (new0, new1):
            normal = _unit_normal(*(p[v] for v in face))
            if min(_dot(normal, n0), _dot(normal, n1)) < 0.7:
                return False
        old_quality = min(_min_angle(p[a], p[b], p[c]), _min_angle(p[b], p[a], p[d]))
        new_quality = min(_min_angle(*(p[v] for v in new0)), _min_angle(*(p[v] for v in new1)))
        if new_quality <= old_quality + 1.0:
            return False
        for face_id, face in zip(shared, (new0, new1), strict=True):
            for v in self.faces[face_id]:
                self.vert_faces[v].discard(face_id)
            self.faces[face_id] = face
            for v in face:
                self.vert_faces[v].add(face_id)
        return True

    def compact(self) -> tuple[np.ndarray, np.ndarray]:
        """Live vertices (V, 3) and faces (F, 3) with consecutive ids."""
        new_id = np.cumsum(self.vert_alive) - 1
        faces = np.array([f for f, alive in zip(self.faces, self.face_alive, strict=True) if alive])
        return np.array(self.points)[self.vert_alive], new_id[faces]


def decimate(
    verts: np.ndarray, faces: np.ndarray, sizing: np.ndarray, num_vertices: int
) -> tuple[np.ndarray, np.ndarray]:
    """Collapse the shortest edges relative to ``sizing`` (V,) until ``num_vertices`` remain.

    Collapsing the edge that is shortest *for its place* first makes the surviving edge
    lengths proportional to the sizing field: the result is adaptive, not uniform.
    """
    mesh = _Mesh(verts, faces)
    size = np.array(sizing, dtype=np.float64, copy=True)
    stamp = [0] * len(verts)
    remaining = len(verts)

    def entry(a: int, b: int) -> tuple[float, int, int, int, int]:
        offset = _sub(mesh.points[a], mesh.points[b])
        length = math.sqrt(_dot(offset, offset))
        return (2.0 * length / (size[a] + size[b]), a, b, stamp[a], stamp[b])

    while remaining > num_vertices:
        heap = [entry(a, b) for a, b in mesh.edges()]
        heapq.heapify(heap)
        collapsed = 0
        while heap and remaining > num_vertices:
            _, a, b, stamp_a, stamp_b = heapq.heappop(heap)
            if stamp_a != stamp[a] or stamp_b != stamp[b] or not mesh.vert_alive[b]:
                continue
            merged_size = 0.5 * (size[a] + size[b])
            if not mesh.try_collapse(a, b):
                continue
            size[a] = merged_size
            stamp[a] += 1
            remaining -= 1
            collapsed += 1
            for c in mesh.neighbours(a):
                heapq.heappush(heap, entry(a, c))
        if collapsed == 0:
            raise RuntimeError(f"decimation stalled at {remaining} vertices")
    return mesh.compact()


def relax(
    verts: np.ndarray, faces: np.ndarray, rounds: int = 6, step: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Flip edges to better triangles, then slide vertices within the surface.

    Each vertex moves towards the centroid of its neighbours weighted by ``1 / size`` of
    the connecting edge (the equilibrium of springs whose stiffness falls with the target
    length keeps edges proportional to :func:`sizing_mm`), only tangentially, and is then
    projected back onto the SDF's zero level.
    """
    import trimesh

    for _ in range(rounds):
        mesh = _Mesh(verts, faces)
        for a, b in mesh.edges():
            mesh.try_flip(a, b)
        verts, faces = mesh.compact()
        tri = trimesh.Trimesh(verts, faces, process=False)
        edges = tri.edges_unique
        size = sizing_mm(verts)
        weight = 2.0 / (size[edges[:, 0]] + size[edges[:, 1]])
        total = np.zeros_like(verts)
        norm = np.zeros(len(verts))
        for i, j in ((0, 1), (1, 0)):
            np.add.at(total, edges[:, i], weight[:, None] * verts[edges[:, j]])
            np.add.at(norm, edges[:, i], weight)
        move = total / norm[:, None] - verts
        normals = tri.vertex_normals
        move -= (move * normals).sum(axis=1, keepdims=True) * normals
        verts = project_to_surface(verts + step * move)
    return verts, faces


def mano_resolution_mesh_mm(
    dense_verts: np.ndarray, dense_faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The right hand's 778-vertex closed mesh (mm) re-meshed from the dense one."""
    dense_verts = project_to_surface(dense_verts)
    verts, faces = decimate(dense_verts, dense_faces, sizing_mm(dense_verts), NUM_VERTICES)
    verts, faces = relax(project_to_surface(verts), faces)
    return verts, faces.astype(np.int64)


def transfer_weights(
    points: np.ndarray, source_verts: np.ndarray, source_faces: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Per-vertex ``weights`` of a source mesh, interpolated at the closest surface points."""
    import trimesh

    source = trimesh.Trimesh(source_verts, source_faces, process=False)
    closest, _, face_ids = trimesh.proximity.closest_point(source, points)
    corners = source_faces[face_ids]
    bary = trimesh.triangles.points_to_barycentric(source_verts[corners], closest)
    bary = np.clip(bary, 0.0, None)
    bary /= bary.sum(axis=1, keepdims=True)
    out = np.einsum("nk,nkj->nj", bary, weights[corners])
    return out / out.sum(axis=1, keepdims=True)


def pose_blend_shapes(
    v_template: np.ndarray, faces: np.ndarray, weights: np.ndarray, joints: np.ndarray
) -> np.ndarray:
    """(V, 3, 135) float32 pose correctives of the right hand (metres per unit of R - I).

    For joint ``j`` with flexion axis ``n`` (:func:`handnerf.hand.poses.joint_axes`), the
    signed flexion ``sin(angle)`` is the ``n`` component of the axial vector of
    ``(R - I) - (R - I)^T`` over two, and ``1 - cos(angle)`` is ``-trace(R - I) / 2``; both
    are linear in ``R - I``, which is what ``posedirs`` multiplies.
    """
    import trimesh

    from handnerf.hand import poses

    normals = trimesh.Trimesh(v_template, faces, process=False).vertex_normals
    flex_axes = poses.joint_axes("right")[:, 0]
    radii_m = 1e-3 * joint_layout.SCALE * np.array(procedural.FINGER_RADII_MM)
    posedirs = np.zeros((len(v_template), 3, 135))
    for finger, chain in enumerate(procedural.FINGER_CHAINS):
        for level, joint in enumerate(chain):
            parent = procedural.PARENTS[joint]
            child = chain[level + 1] if level < 2 else None
            bone = joints[child] if child is not None else 2 * joints[joint] - joints[parent]
            bone = bone - joints[joint]
            bone /= np.linalg.norm(bone)
            flex = flex_axes[joint - 1]
            towards_palm = np.cross(flex, bone)  # where the child bone swings on flexion
            towards_palm /= np.linalg.norm(towards_palm)
            offset = v_template - joints[joint]
            axial = offset @ bone
            radial = offset - axial[:, None] * bone
            side = (radial @ towards_palm) / np.maximum(np.linalg.norm(radial, axis=1), 1e-9)
            sigma = 0.6 * radii_m[finger][level]
            # only this joint's skin: vertices driven by the joint's two bones
            local = weights[:, joint] + weights[:, parent] > 0.5
            bump = np.exp(-0.5 * (axial / sigma) ** 2) * local
            amount = (
                1e-3
                * bump
                * (
                    _BULGE_MM[level] * np.clip(-side, 0.0, None)
                    - _CREASE_MM[level] * np.clip(side, 0.0, None)
                )
            )
            # (R - I)[r, c] coefficients of sin(angle) about ``flex`` and of 1 - cos(angle)
            odd = np.zeros((3, 3))
            odd[2, 1], odd[1, 2] = 0.5 * flex[0], -0.5 * flex[0]
            odd[0, 2], odd[2, 0] = 0.5 * flex[1], -0.5 * flex[1]
            odd[1, 0], odd[0, 1] = 0.5 * flex[2], -0.5 * flex[2]
            even = -0.5 * np.eye(3)
            feature = (odd + 0.5 * even).reshape(9)
            columns = slice(9 * (joint - 1), 9 * joint)
            posedirs[:, :, columns] = (amount[:, None] * normals)[:, :, None] * feature
    return posedirs.astype(np.float32)


def mano_resolution_core() -> dict[str, Any]:
    """Seed-independent right hand at MANO's resolution, with its pose blend shapes."""
    dense_verts, dense_faces = procedural.mesh_right_mm()
    verts_mm, faces = mano_resolution_mesh_mm(dense_verts, dense_faces)
    # the dense hand's weights, sampled: smoothing them on the coarse mesh would blur them
    # over three times the distance (its edges are longer)
    dense_weights = rig.skinning_weights(dense_verts, dense_faces)
    weights = transfer_weights(verts_mm, dense_verts, dense_faces, dense_weights)
    core = rig.right_hand_core(verts_mm, faces, weights)
    core["posedirs"] = pose_blend_shapes(core["v_template"], faces, core["weights"], core["J"])
    return core
