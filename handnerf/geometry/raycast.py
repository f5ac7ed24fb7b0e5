"""Ray casting against triangle meshes: Embree (``embreex``) through trimesh.

Used by the synthetic renderer (:mod:`handnerf.synth.raycast`), the self-shadowing of the
model (:mod:`handnerf.model.visibility`) and the exact training silhouettes
(:mod:`handnerf.train.silhouette`).
"""

from __future__ import annotations

import numpy as np

from handnerf.errors import HandnerfError


def embree_intersector(mesh: object) -> object:
    """Trimesh's Embree intersector for ``mesh``; refuses the slow pure-numpy fallback."""
    try:
        from trimesh.ray.ray_pyembree import RayMeshIntersector
    except ImportError as exc:  # embreex missing or broken: trimesh would silently go slow
        raise HandnerfError(
            "ray casting the hand mesh needs Embree (package 'embreex'); "
            f"importing trimesh.ray.ray_pyembree failed: {exc}"
        ) from exc
    return RayMeshIntersector(mesh)


def mesh_intersector(vertices: np.ndarray, faces: np.ndarray) -> object:
    """Embree intersector of the triangle mesh (V, 3) ``vertices``, (F, 3) ``faces``.

    The mesh is taken as is (``process=False``): merging or reordering vertices would break
    the caller's vertex and triangle ids.
    """
    import trimesh

    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    return embree_intersector(mesh)


def first_hits(
    intersector: object, triangles: np.ndarray, origins: np.ndarray, directions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First hits of rays (N, 3): (N,) triangle index or -1, (N,) distance, (N, 3) barycentrics.

    ``intersector`` is an :func:`embree_intersector` of the mesh whose (F, 3, 3) corner
    positions are ``triangles``; misses get distance ``inf`` and zero barycentrics.
    Embree answers which triangle; the exact distance and barycentrics are recomputed
    here in float64 (Möller-Trumbore on the hit triangle) for smooth interpolation.
    """
    first = intersector.intersects_first(origins, directions)  # type: ignore[attr-defined]
    tri = np.asarray(first, dtype=np.int64)
    n = len(origins)
    t = np.full(n, np.inf)
    bary = np.zeros((n, 3))
    hit = tri >= 0
    if hit.any():
        corners = triangles[tri[hit]]
        o, d = origins[hit], directions[hit]
        e1 = corners[:, 1] - corners[:, 0]
        e2 = corners[:, 2] - corners[:, 0]
        p = np.cross(d, e2)
        det = np.einsum("ij,ij->i", e1, p)
        det = np.where(np.abs(det) < 1e-18, 1e-18, det)
        s = o - corners[:, 0]
        u = np.einsum("ij,ij->i", s, p) / det
        q = np.cross(s, e1)
        v = np.einsum("ij,ij->i", d, q) / det
        t[hit] = np.einsum("ij,ij->i", e2, q) / det
        # Embree's float32 hit can sit a hair outside the triangle; clamp to it.
        uv = np.clip(np.stack([u, v], axis=-1), 0.0, 1.0)
        total = uv.sum(axis=-1, keepdims=True)
        uv = np.where(total > 1.0, uv / total, uv)
        bary[hit] = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=-1)
    return tri, t, bary
