"""The deformer's mesh modes on a coarse hand: large triangles, strongly bent joints and
pose correctives of a few millimetres (the conditions of real MANO, which is not shipped).

The coarse hand is built here (a palm ellipsoid and five three-bone finger tubes, 16 bones
like MANO), independent of the procedural hand of :mod:`handnerf.hand`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from handnerf.errors import ConfigError, ParameterError
from handnerf.model.deformer import FrameDeformation, InverseLBSDeformer
from handnerf.model.deformer_config import DeformerConfig
from handnerf.model.surface_search import TriangleScan, TriangleTrees

FINGER_Y = (-0.044, -0.022, 0.0, 0.022, 0.044)
FINGER_RADIUS = 0.0075
FINGER_START, FINGER_END = 0.104, 0.18
JOINTS_X = (0.112, 0.134, 0.156)  # knuckle, middle and end joints of every finger
PALM_CENTRE = (0.045, 0.0, 0.0)
PALM_AXES = (0.05, 0.056, 0.015)
MAX_DISTANCE = 0.008  # the avatar's shell
BENDS = (0.8, 1.2, 0.9)  # radians at the three joints of every finger: strongly bent
CORRECTIVE = 0.004  # metres of bulge per radian of bend at a joint


@dataclass
class CoarseHand:
    canonical: torch.Tensor  # (V, 3) canonical vertices, without correctives
    faces: torch.Tensor  # (T, 3) long
    weights: torch.Tensor  # (V, 16) skinning weights
    transforms: torch.Tensor  # (16, 4, 4) canonical -> posed bone transforms
    correctives: torch.Tensor  # (V, 3) pose-corrective displacement, canonical frame
    posed: torch.Tensor  # (V, 3) LBS of canonical + correctives

    @property
    def normals(self) -> torch.Tensor:
        """(V, 3) area-weighted unit normals of the posed mesh."""
        a, b, c = (self.posed[self.faces[:, i]] for i in range(3))
        face_normals = torch.cross(b - a, c - a, dim=1)
        normals = torch.zeros_like(self.posed)
        for i in range(3):
            normals.index_add_(0, self.faces[:, i], face_normals)
        return torch.nn.functional.normalize(normals, dim=1)


def _smoothstep(x: torch.Tensor, centre: float, half_width: float) -> torch.Tensor:
    t = ((x - centre + half_width) / (2 * half_width)).clamp(0.0, 1.0)
    return t * t * (3 - 2 * t)


def _palm(lat: int = 10, lon: int = 16) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """A UV ellipsoid: few, large triangles (edges up to ~25 mm) like MANO's back of hand."""
    rows = []
    for i in range(1, lat):
        theta = math.pi * i / lat
        for j in range(lon):
            phi = 2 * math.pi * j / lon
            rows.append(
                (math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta))
            )
    rows += [(0.0, 0.0, 1.0), (0.0, 0.0, -1.0)]
    unit = torch.tensor(rows, dtype=torch.float64)
    vertices = torch.tensor(PALM_CENTRE, dtype=torch.float64) + unit * torch.tensor(
        PALM_AXES, dtype=torch.float64
    )
    faces = []
    top, bottom = len(rows) - 2, len(rows) - 1
    for i in range(lat - 2):
        for j in range(lon):
            a, b = i * lon + j, i * lon + (j + 1) % lon
            faces += [(a, a + lon, b), (b, a + lon, b + lon)]
    for j in range(lon):
        faces.append((top, j, (j + 1) % lon))
        last = (lat - 2) * lon
        faces.append((bottom, last + (j + 1) % lon, last + j))
    return vertices, faces


def _finger(
    y: float, rings: int = 9, around: int = 10
) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """A closed tube along +x in front of the palm (no surface buried in another)."""
    x = torch.linspace(FINGER_START, FINGER_END - 0.006, rings, dtype=torch.float64)
    angle = torch.arange(around, dtype=torch.float64) * (2 * math.pi / around)
    xx, aa = torch.meshgrid(x, angle, indexing="ij")
    ring_vertices = torch.stack(
        [xx, y + FINGER_RADIUS * torch.cos(aa), FINGER_RADIUS * torch.sin(aa)], dim=-1
    ).reshape(-1, 3)
    caps = torch.tensor([[FINGER_END, y, 0.0], [FINGER_START - 0.004, y, 0.0]], dtype=torch.float64)
    faces = []
    for ring in range(rings - 1):
        for step in range(around):
            a = ring * around + step
            b = ring * around + (step + 1) % around
            faces += [(a, b, a + around), (b, b + around, a + around)]
    tip_id = rings * around
    last = (rings - 1) * around
    faces += [(last + step, last + (step + 1) % around, tip_id) for step in range(around)]
    faces += [((step + 1) % around, step, tip_id + 1) for step in range(around)]
    return torch.cat([ring_vertices, caps]), faces


def _turn(
    point: tuple[float, float, float], axis: tuple[float, float, float], angle: float
) -> torch.Tensor:
    """(4, 4) rotation by ``angle`` about ``axis`` through ``point``."""
    from scipy.spatial.transform import Rotation

    rotvec = angle * torch.nn.functional.normalize(torch.tensor(axis, dtype=torch.float64), dim=0)
    transform = torch.eye(4, dtype=torch.float64)
    transform[:3, :3] = torch.from_numpy(Rotation.from_rotvec(rotvec.numpy()).as_matrix())
    centre = torch.tensor(point, dtype=torch.float64)
    transform[:3, 3] = centre - transform[:3, :3] @ centre
    return transform


def make_coarse_hand(bends: tuple[float, float, float] = BENDS) -> CoarseHand:
    """The coarse hand posed with every finger bent by ``bends`` (float32 outputs)."""
    palm, palm_faces = _palm()
    pieces, faces, finger_of = [palm], list(palm_faces), [torch.full((len(palm),), -1)]
    for finger, y in enumerate(FINGER_Y):
        vertices, finger_faces = _finger(y)
        offset = sum(len(p) for p in pieces)
        faces += [(a + offset, b + offset, c + offset) for a, b, c in finger_faces]
        pieces.append(vertices)
        finger_of.append(torch.full((len(vertices),), finger))
    canonical = torch.cat(pieces)
    owner = torch.cat(finger_of)
    x = canonical[:, 0]

    # Skinning: the palm on bone 0; finger f on bones 1+3f..3+3f, blended over +-8 mm
    # around each joint (its root on bone 0).
    weights = torch.zeros(len(canonical), 16, dtype=torch.float64)
    past = [_smoothstep(x, joint, 0.008) for joint in JOINTS_X]
    in_finger = owner >= 0
    weights[~in_finger, 0] = 1.0
    rows = torch.nonzero(in_finger).squeeze(1)
    first = 1 + 3 * owner[rows]
    weights[rows, 0] = 1 - past[0][rows]
    weights[rows, first] = past[0][rows] - past[1][rows]
    weights[rows, first + 1] = past[1][rows] - past[2][rows]
    weights[rows, first + 2] = past[2][rows]

    root = _turn((0.0, 0.0, 0.0), (0.3, 1.0, 0.2), 0.5)
    root[:3, 3] += torch.tensor([0.1, -0.05, 0.5], dtype=torch.float64)
    transforms = [root]
    for finger, y in enumerate(FINGER_Y):
        parent = root
        for joint, (joint_x, bend) in enumerate(zip(JOINTS_X, bends, strict=True)):
            # Slightly different axes per finger and joint, as in a real grip.
            axis = (0.05 * (finger - 2), 1.0, 0.1 * (joint - 1))
            parent = parent @ _turn((joint_x, y, 0.0), axis, bend)
            transforms.append(parent)
    bone_transforms = torch.stack(transforms)

    # Pose correctives: a bulge of up to ~5 mm around each bent finger joint (radial, with
    # a slide along the finger) and a dent of the palm under the knuckles.
    correctives = torch.zeros_like(canonical)
    finger_y = torch.tensor(FINGER_Y, dtype=torch.float64)[owner[rows]]
    radial = torch.stack(
        [torch.zeros_like(x[rows]), canonical[rows, 1] - finger_y, canonical[rows, 2]], 1
    )
    radial = torch.nn.functional.normalize(radial, dim=1)
    slide = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    for joint_x, bend in zip(JOINTS_X, bends, strict=True):
        bump = torch.exp(-(((x[rows] - joint_x) / 0.007) ** 2))[:, None]
        correctives[rows] += CORRECTIVE * bend * bump * (radial + 0.3 * slide)
    palm_rows = torch.nonzero(~in_finger).squeeze(1)
    under = torch.exp(-(((x[palm_rows] - 0.09) / 0.015) ** 2))
    correctives[palm_rows, 2] += 0.003 * bends[0] * under

    blended = torch.einsum("vj,jab->vab", weights, bone_transforms)
    rest = canonical + correctives
    posed = torch.einsum("vab,vb->va", blended[:, :3, :3], rest) + blended[:, :3, 3]
    return CoarseHand(
        canonical=canonical.float(),
        faces=torch.tensor(faces, dtype=torch.long),
        weights=weights.float(),
        transforms=bone_transforms.float(),
        correctives=correctives.float(),
        posed=posed.float(),
    )


def surface_samples(
    hand: CoarseHand, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Posed surface points (N, 3), their canonical twins (N, 3) (same barycentric point of
    the corrective-free canonical mesh), and row masks of the kinds of sample: uniform
    over the triangles, mid-triangle points of the largest triangles, and points of the
    triangles that span a bent joint."""
    generator = torch.Generator().manual_seed(seed)
    faces = hand.faces
    corners = hand.posed[faces]
    area = torch.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=1).norm(
        dim=1
    )
    longest = (corners.roll(-1, dims=1) - corners).norm(dim=2).amax(dim=1)
    uniform = torch.multinomial(area, 6000, replacement=True, generator=generator)
    largest = torch.argsort(longest, descending=True)[: len(faces) // 10]
    mixed = hand.weights[faces].amax(dim=2).amin(dim=1) < 0.9  # corners on different bones
    joint = torch.nonzero(mixed).squeeze(1)
    joint = joint[torch.randint(len(joint), (4000,), generator=generator)]
    face_ids = torch.cat([uniform, largest, largest, joint])
    bary = -torch.log(torch.rand(len(face_ids), 3, generator=generator, dtype=torch.float64))
    bary = (bary / bary.sum(dim=1, keepdim=True)).float()
    n_uniform, n_large = len(uniform), len(largest)
    bary[n_uniform : n_uniform + n_large] = 1.0 / 3.0  # centroids: farthest from the corners
    kinds = torch.zeros(len(face_ids), dtype=torch.long)
    kinds[n_uniform : n_uniform + 2 * n_large] = 1
    kinds[n_uniform + 2 * n_large :] = 2
    posed = (bary[..., None] * hand.posed[faces[face_ids]]).sum(dim=1)
    canonical = (bary[..., None] * hand.canonical[faces[face_ids]]).sum(dim=1)
    masks = {"uniform": kinds == 0, "largest": kinds == 1, "bent_joint": kinds == 2}
    return posed, canonical, masks


def prepare(hand: CoarseHand, **config: object) -> FrameDeformation:
    cfg = DeformerConfig(max_distance=MAX_DISTANCE, **config)  # type: ignore[arg-type]
    return InverseLBSDeformer(cfg).prepare_frames(
        hand.posed[None],
        hand.transforms[None],
        hand.weights,
        vertex_normals=hand.normals[None],
        faces=hand.faces,
        canonical_vertices=hand.canonical,
    )


MESH_MODE = {"blend": "surface", "near": "mesh", "correctives": True}


@pytest.fixture(scope="module")
def hand() -> CoarseHand:
    return make_coarse_hand()


@pytest.fixture(scope="module")
def samples(hand: CoarseHand) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    return surface_samples(hand)


def test_coarse_hand_has_the_conditions_of_real_mano(
    hand: CoarseHand, samples: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    edges = (hand.posed[hand.faces].roll(-1, dims=1) - hand.posed[hand.faces]).norm(dim=2)
    assert 500 < len(hand.canonical) < 1000
    assert float(edges.mean()) > 0.007 and float(edges.max()) > 0.02
    assert float(hand.correctives.norm(dim=1).max()) > 0.003
    posed, _, masks = samples
    assert all(int(mask.sum()) > 50 for mask in masks.values())
    nearest_vertex = torch.cdist(posed, hand.posed).amin(dim=1)
    # Surface points farther than the shell's 8 mm from every vertex: holes by vertex.
    assert float(nearest_vertex.max()) > MAX_DISTANCE


@pytest.mark.parametrize("backend", ["kdtree", "cdist"])
def test_surface_points_round_trip_with_mesh_distance_and_correctives(
    hand: CoarseHand,
    samples: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]],
    backend: str,
) -> None:
    posed, canonical, masks = samples
    result = prepare(hand, backend=backend, **MESH_MODE).deform(posed)
    assert bool(result.valid.all())
    assert float(result.distance.max()) < 1e-5
    error = (result.canonical - canonical).norm(dim=1)
    for kind, mask in masks.items():
        # Measured: 0.0003 mm at most (float32), every kind.
        assert float(error[mask].max()) < 5e-4, kind


def test_old_paths_fail_the_round_trip(
    hand: CoarseHand, samples: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    posed, canonical, masks = samples
    # Nearest vertex, no correctives (the default): mid-triangle points of the largest
    # triangles are empty, bent joints miss by millimetres.
    old = prepare(hand).deform(posed)
    assert not bool(old.valid[masks["largest"]].all())
    old_error = (old.canonical - canonical).norm(dim=1)
    assert float(old_error[masks["bent_joint"]].max()) > 2e-3
    # Distance to the mesh alone fills the holes but leaves the correctives in.
    mesh_only = prepare(hand, blend="surface", near="mesh").deform(posed)
    assert bool(mesh_only.valid.all())
    mesh_error = (mesh_only.canonical - canonical).norm(dim=1)
    assert float(mesh_error[masks["bent_joint"]].max()) > 2e-3
    # Correctives alone (distance still to the nearest vertex) leave the holes.
    corrected = prepare(hand, blend="surface", correctives=True).deform(posed)
    assert not bool(corrected.valid[masks["largest"]].all())
    kept = corrected.valid
    assert float((corrected.canonical - canonical).norm(dim=1)[kept].max()) < 5e-4


@pytest.mark.parametrize("backend", ["kdtree", "cdist"])
def test_distance_is_the_distance_to_the_mesh(hand: CoarseHand, backend: str) -> None:
    from handnerf.model.surface_search import closest_point_on_triangles

    generator = torch.Generator().manual_seed(5)
    posed, _, _ = surface_samples(hand, seed=1)
    picks = torch.randint(len(posed), (3000,), generator=generator)
    direction = torch.nn.functional.normalize(torch.randn(3000, 3, generator=generator), dim=1)
    points = posed[picks] + 0.012 * torch.rand(3000, 1, generator=generator) * direction
    corners = hand.posed[hand.faces].double()
    _, dist2 = closest_point_on_triangles(points.double()[:, None], corners[None])
    exact = dist2.amin(dim=1).sqrt().float()
    frames = prepare(hand, backend=backend, **MESH_MODE)
    # The whole mesh is searched: libigl's trees on the CPU (kdtree), the pure-PyTorch
    # scan (the GPU path) with cdist.
    expected_search = TriangleTrees if backend == "kdtree" else TriangleScan
    assert isinstance(frames.triangle_trees, expected_search)
    result = frames.deform(points)
    # The distance of the closest point of the whole mesh (float32 round-off).
    assert float((result.distance - exact).abs().max()) < 1e-5
    torch.testing.assert_close(result.valid, result.distance <= MAX_DISTANCE)
    assert bool(result.valid[exact < MAX_DISTANCE - 1e-3].all())
    assert not bool(result.valid[exact > MAX_DISTANCE + 1e-5].any())
    # The vertex distance would have called many of the near points empty.
    by_vertex = torch.cdist(points, hand.posed).amin(dim=1)
    assert int(((by_vertex > MAX_DISTANCE) & (exact < MAX_DISTANCE - 1e-3)).sum()) > 30


def test_normals_and_attributes_are_barycentric_at_the_closest_point(
    hand: CoarseHand, samples: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    posed, canonical, _ = samples
    cfg = DeformerConfig(max_distance=MAX_DISTANCE, **MESH_MODE)  # type: ignore[arg-type]
    attributes = torch.cat([hand.canonical, hand.normals], dim=1)
    frames = InverseLBSDeformer(cfg).prepare_frames(
        hand.posed[None],
        hand.transforms[None],
        hand.weights,
        vertex_normals=hand.normals[None],
        vertex_attributes=attributes[None],
        faces=hand.faces,
        canonical_vertices=hand.canonical,
    )
    result = frames.deform(posed)
    blended = frames.blend_attributes(result)
    assert blended is not None and result.normal is not None
    # The canonical vertices blended like any attribute give the sample's canonical
    # twin: the weights are its barycentric coordinates.
    torch.testing.assert_close(blended[:, :3], canonical, atol=1e-5, rtol=0)
    expected_normal = torch.nn.functional.normalize(blended[:, 3:], dim=1)
    torch.testing.assert_close(result.normal, expected_normal, atol=1e-5, rtol=0)


def test_off_surface_offsets_are_carried_back_by_the_bone_rotation(hand: CoarseHand) -> None:
    # Points 3 mm off the back and the front of the palm (one bone, no corrective there):
    # the canonical position is the surface point's canonical twin plus the offset
    # rotated back by the bone.
    posed, canonical, _ = surface_samples(hand, seed=2)
    palm = (canonical[:, 0] < 0.05) & (canonical[:, 2].abs() > 0.01)
    outward = torch.zeros(int(palm.sum()), 3)
    outward[:, 2] = 0.003 * torch.sign(canonical[palm, 2])
    rotation = hand.transforms[0, :3, :3]
    result = prepare(hand, **MESH_MODE).deform(posed[palm] + outward @ rotation.T)
    assert bool(result.valid.all())
    torch.testing.assert_close(result.canonical, canonical[palm] + outward, atol=2e-5, rtol=0)


def test_mesh_modes_ignore_the_cheap_occupancy_pass(
    hand: CoarseHand, samples: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    posed, _, _ = samples
    frames = prepare(hand, **MESH_MODE)
    full = frames.deform(posed)
    cheap = frames.deform(posed, surface=False)
    for name in ("canonical", "valid", "distance", "neighbor_ids", "neighbor_weights"):
        torch.testing.assert_close(getattr(cheap, name), getattr(full, name), atol=0, rtol=0)
    assert frames.refine_to_surface(posed, cheap) is cheap


def test_two_frames_match_single_frames(hand: CoarseHand) -> None:
    other = make_coarse_hand(bends=(0.2, 0.5, 0.3))
    posed_a, canonical_a, _ = surface_samples(hand, seed=3)
    posed_b, canonical_b, _ = surface_samples(other, seed=4)
    cfg = DeformerConfig(max_distance=MAX_DISTANCE, **MESH_MODE)  # type: ignore[arg-type]
    frames = InverseLBSDeformer(cfg).prepare_frames(
        torch.stack([hand.posed, other.posed]),
        torch.stack([hand.transforms, other.transforms]),
        hand.weights,
        faces=hand.faces,
        canonical_vertices=hand.canonical,
    )
    points = torch.cat([posed_a, posed_b])
    frame_ids = torch.cat([torch.zeros(len(posed_a)), torch.ones(len(posed_b))]).long()
    result = frames.deform(points, frame_ids)
    assert bool(result.valid.all())
    error = (result.canonical - torch.cat([canonical_a, canonical_b])).norm(dim=1)
    assert float(error.max()) < 5e-4
    single = prepare(other, **MESH_MODE).deform(posed_b)
    torch.testing.assert_close(result.canonical[len(posed_a) :], single.canonical)


def test_mesh_mode_configuration_errors(hand: CoarseHand) -> None:
    with pytest.raises(ConfigError, match="near"):
        InverseLBSDeformer(DeformerConfig(blend="surface", near="triangle"))
    for options in ({"near": "mesh"}, {"correctives": True}):
        with pytest.raises(ConfigError, match="blend='surface'"):
            InverseLBSDeformer(DeformerConfig(**options))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="correctives"):
        InverseLBSDeformer(DeformerConfig(blend="surface", correctives=1))  # type: ignore[arg-type]
    deformer = InverseLBSDeformer(DeformerConfig(**MESH_MODE))  # type: ignore[arg-type]
    args = (hand.posed[None], hand.transforms[None], hand.weights)
    with pytest.raises(ConfigError, match="canonical_vertices"):
        deformer.prepare_frames(*args, faces=hand.faces)
    with pytest.raises(ParameterError, match="canonical_vertices"):
        deformer.prepare_frames(*args, faces=hand.faces, canonical_vertices=hand.canonical[:-1])
    grid = InverseLBSDeformer(DeformerConfig(backend="grid", **MESH_MODE))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="grid"):
        grid.prepare_frames(*args, faces=hand.faces, canonical_vertices=hand.canonical)


def test_cover_radius_and_lattice_bound_the_surface(
    hand: CoarseHand, samples: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    from handnerf.model.surface_search import cover_radius, surface_lattice

    posed, _, _ = samples
    nearest_vertex = torch.cdist(posed, hand.posed).amin(dim=1)
    radius = cover_radius(hand.posed[None], hand.faces)
    assert float(nearest_vertex.max()) <= radius < 0.03
    spacing = 0.002
    lattice = surface_lattice(hand.posed[None], hand.faces, spacing)[0]
    assert float(torch.cdist(posed, lattice).amin(dim=1).max()) <= spacing


@pytest.mark.parametrize("exact_within", [None, MAX_DISTANCE])
def test_search_finds_the_closest_of_its_candidates(
    hand: CoarseHand, exact_within: float | None
) -> None:
    from handnerf.model.surface_search import (
        MeshTables,
        closest_point_on_triangles,
        closest_triangles,
    )

    generator = torch.Generator().manual_seed(7)
    posed, _, _ = surface_samples(hand, seed=6)
    posed = posed[torch.randperm(len(posed), generator=generator)[:2500]]  # brute force: N x T
    direction = torch.nn.functional.normalize(torch.randn(len(posed), 3, generator=generator), 1)
    # Up to 12 mm off the surface: beyond edges and corners, between fingers.
    points = posed + 0.012 * torch.rand(len(posed), 1, generator=generator) * direction
    tables = MeshTables.build(hand.posed[None], hand.faces)
    near = torch.cdist(points, hand.posed).topk(3, dim=1, largest=False).indices
    frame_ids = torch.zeros(len(points), dtype=torch.long)
    tri_ids, bary, dist2 = closest_triangles(tables, points, frame_ids, near, exact_within)
    # Float64 brute force over the same candidates: the triangles around the 3 vertices.
    candidates = torch.stack(
        [(hand.faces[None] == near[:, i, None, None]).any(dim=2) for i in range(3)]
    ).any(dim=0)  # (N, T)
    _, all_dist2 = closest_point_on_triangles(
        points.double()[:, None], hand.posed.double()[hand.faces][None]
    )
    expected = torch.where(candidates, all_dist2, torch.inf).amin(dim=1).sqrt()
    found = dist2.double().sqrt()
    within = expected <= (MAX_DISTANCE if exact_within is not None else torch.inf)
    assert float((found - expected)[within].abs().max()) < 1e-6
    # The weights are the closest point's barycentrics on the triangle returned.
    closest = (bary[..., None] * hand.posed[tri_ids]).sum(dim=1)
    torch.testing.assert_close((points - closest).norm(dim=1), dist2.sqrt(), atol=1e-6, rtol=0)


def test_cpu_trees_and_torch_twin_agree(
    hand: CoarseHand, samples: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    posed, _, _ = samples
    generator = torch.Generator().manual_seed(11)
    direction = torch.nn.functional.normalize(torch.randn(len(posed), 3, generator=generator), 1)
    points = posed + 0.01 * torch.rand(len(posed), 1, generator=generator) * direction
    trees = prepare(hand, backend="kdtree", **MESH_MODE).deform(points)
    twin = prepare(hand, backend="cdist", **MESH_MODE).deform(points)
    # Both search the whole mesh: the same closest points, up to float32 round-off.
    assert float((trees.distance - twin.distance).abs().max()) < 1e-6
    torch.testing.assert_close(trees.valid, twin.valid)
    both = trees.valid
    assert int(both.sum()) > 1000
    torch.testing.assert_close(trees.canonical[both], twin.canonical[both], atol=2e-5, rtol=0)
    # (Normals: float32 rounding where the closest point is on an edge.)
    torch.testing.assert_close(trees.normal[both], twin.normal[both], atol=1e-3, rtol=0)


def test_triangle_scan_chunks_change_the_launches_not_the_result(
    hand: CoarseHand, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan's chunk size (large on CUDA, where each chunk costs ~120 kernel launches)
    only splits the work: the closest triangles are the same for any size."""
    from handnerf.errors import ParameterError
    from handnerf.model import surface_search

    frames = prepare(hand, backend="cdist", **MESH_MODE)
    assert isinstance(frames.triangle_trees, TriangleScan) and frames.mesh is not None
    default = frames.triangle_trees
    assert default.chunk_pairs == surface_search.SCAN_CHUNK_PAIRS  # CPU tables
    generator = torch.Generator().manual_seed(3)
    points = hand.posed[torch.randint(len(hand.posed), (500,), generator=generator)]
    points = points + 0.01 * torch.randn(500, 3, generator=generator)
    frame_ids = torch.zeros(500, dtype=torch.long)
    n_triangles = len(hand.faces)
    calls: list[int] = []
    scan = TriangleScan._scan

    def counted(self: TriangleScan, pts: torch.Tensor, frame: int) -> torch.Tensor:
        calls.append(len(pts))
        return scan(self, pts, frame)

    monkeypatch.setattr(TriangleScan, "_scan", counted)
    results = {}
    for points_per_chunk in (7, 64, 500):
        calls.clear()
        search = TriangleScan(frames.mesh, chunk_pairs=points_per_chunk * n_triangles)
        results[points_per_chunk] = search.closest(points, frame_ids)
        assert calls == [min(points_per_chunk, 500 - s) for s in range(0, 500, points_per_chunk)]
    for result in (results[7], results[64]):
        for got, want in zip(result, results[500], strict=True):
            assert torch.equal(got, want)
    with pytest.raises(ParameterError, match="chunk_pairs"):
        TriangleScan(frames.mesh, chunk_pairs=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triangle_scan_on_cuda_takes_large_chunks_and_agrees_with_the_cpu(
    hand: CoarseHand,
) -> None:
    from handnerf.model import surface_search

    generator = torch.Generator().manual_seed(4)
    points = hand.posed + 0.01 * torch.randn(len(hand.posed), 3, generator=generator)
    on_cpu = prepare(hand, backend="cdist", **MESH_MODE)
    gpu_hand = CoarseHand(**{k: v.cuda() for k, v in vars(hand).items()})
    on_gpu = prepare(gpu_hand, backend="cdist", **MESH_MODE)
    assert isinstance(on_gpu.triangle_trees, TriangleScan)
    assert on_gpu.triangle_trees.chunk_pairs == surface_search.SCAN_CHUNK_PAIRS_CUDA
    cpu, gpu = on_cpu.deform(points), on_gpu.deform(points.cuda())
    assert float((cpu.distance - gpu.distance.cpu()).abs().max()) < 1e-6
    torch.testing.assert_close(cpu.valid, gpu.valid.cpu())


def _procedural_mano_resolution_fist() -> CoarseHand:
    """The package's MANO-resolution procedural hand (the default), posed in a fist by
    :class:`HandModel` (its pose correctives included), as a :class:`CoarseHand`."""
    from handnerf.hand import poses
    from handnerf.hand.hand_model import HandModel, ManoParams

    model = HandModel.from_folder(None, "right", dtype=torch.float64, procedural="mano")
    params = ManoParams(
        global_orient=torch.tensor([[0.3, -0.5, 0.2]], dtype=torch.float64),
        hand_pose=torch.as_tensor(poses.key_pose("fist"), dtype=torch.float64)[None],
        betas=torch.zeros(1, 10, dtype=torch.float64),
        transl=torch.tensor([[0.02, -0.01, 0.6]], dtype=torch.float64),
    )
    with torch.no_grad():
        out = model(params)
    weights = model.skinning_weights.double()
    blended = torch.einsum("vj,jab->vab", weights, out.bone_transforms[0])
    lbs = torch.einsum("vab,vb->va", blended[:, :3, :3], out.canonical_vertices[0])
    lbs = lbs + blended[:, :3, 3]
    return CoarseHand(
        canonical=out.canonical_vertices[0].float(),
        faces=model.faces.long(),
        weights=weights.float(),
        transforms=out.bone_transforms[0].float(),
        correctives=(out.vertices[0] - lbs).float(),  # posed frame (sizes only)
        posed=out.vertices[0].float(),
    )


@pytest.mark.parametrize("backend", ["kdtree", "cdist"])
def test_mano_resolution_hand_surface_points_round_trip(backend: str) -> None:
    fist = _procedural_mano_resolution_fist()
    assert len(fist.canonical) == 778
    # What makes it hard: correctives of millimetres, surface points far from vertices.
    assert float(fist.correctives.norm(dim=1).max()) > 0.003
    posed, canonical, masks = surface_samples(fist, seed=3)
    assert float(torch.cdist(posed, fist.posed).amin(dim=1).max()) > MAX_DISTANCE
    result = prepare(fist, backend=backend, **MESH_MODE).deform(posed)
    assert bool(result.valid.all())
    error = (result.canonical - canonical).norm(dim=1)
    for kind, mask in masks.items():
        assert int(mask.sum()) > 50, kind
        assert float(error[mask].max()) < 5e-4, kind
    # The old path (nearest vertex, no correctives) fails the same points.
    old = prepare(fist, backend=backend).deform(posed)
    old_error = torch.where(old.valid, (old.canonical - canonical).norm(dim=1), torch.inf)
    assert float((old_error > 5e-4).float().mean()) > 0.05
