"""Mesh ray casting (:mod:`handnerf.geometry.raycast`): Embree hits, exact float64 refinement."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from handnerf.errors import HandnerfError
from handnerf.geometry.raycast import embree_intersector, first_hits, mesh_intersector

# One triangle in the z = 0 plane and a second one behind it (z = -1), same footprint.
VERTICES = np.array(
    [
        [0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.0, -1.0],
        [1.0, 0.0, -1.0],
        [0.0, 1.0, -1.0],
    ]
)
FACES = np.array([[0, 1, 2], [3, 4, 5]])


def test_mesh_intersector_is_embree_and_keeps_the_mesh_as_given() -> None:
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    caster = mesh_intersector(VERTICES, FACES)
    assert isinstance(caster, RayMeshIntersector)
    # process=False: the duplicate footprint is not merged, triangle ids stay the caller's
    assert len(caster.mesh.faces) == 2  # type: ignore[attr-defined]


def test_first_hits_are_exact_and_misses_are_marked() -> None:
    caster = mesh_intersector(VERTICES, FACES)
    triangles = VERTICES[FACES]  # (F, 3, 3)
    origins = np.array([[0.2, 0.3, 2.0], [0.2, 0.3, -0.5], [2.0, 2.0, 2.0]])
    directions = np.array([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    tri, t, bary = first_hits(caster, triangles, origins, directions)
    np.testing.assert_array_equal(tri, [0, 1, -1])  # the nearer triangle first
    np.testing.assert_allclose(t[:2], [2.0, 0.5], atol=1e-12)
    assert t[2] == np.inf
    np.testing.assert_allclose(bary[0], [0.5, 0.2, 0.3], atol=1e-12)
    np.testing.assert_allclose(bary[1], [0.5, 0.2, 0.3], atol=1e-12)
    np.testing.assert_array_equal(bary[2], 0.0)
    hits = origins[:2] + directions[:2] * t[:2, None]
    np.testing.assert_allclose(np.einsum("nk,nkc->nc", bary[:2], triangles[tri[:2]]), hits)


def test_embree_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import trimesh

    # a None entry makes the import fail, as when embreex is not installed
    monkeypatch.setitem(sys.modules, "trimesh.ray.ray_pyembree", None)
    mesh = trimesh.Trimesh(vertices=VERTICES, faces=FACES, process=False)
    with pytest.raises(HandnerfError, match="embreex"):
        embree_intersector(mesh)
