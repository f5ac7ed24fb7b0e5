"""Tests of the inverse-LBS deformer on a synthetic skinned finger and the procedural hand."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from handnerf.errors import ConfigError, ParameterError
from handnerf.hand.hand_model import HandModel, ManoParams
from handnerf.model.deformer import DeformResult, InverseLBSDeformer
from handnerf.model.deformer_config import DeformerConfig

FINGER_LENGTH = 0.09
FINGER_RADIUS = 0.008
JOINTS_X = (0.03, 0.06)


@dataclass
class Finger:
    """A three-bone cylinder "finger" along +x with smooth skinning weights."""

    vertices: torch.Tensor  # (V, 3) canonical
    faces: torch.Tensor  # (F, 3)
    weights: torch.Tensor  # (V, 3)


def _bone_weights(x: torch.Tensor) -> torch.Tensor:
    """(N,) positions along the finger → (N, 3) smooth partition-of-unity weights.

    Each joint blends its two bones with a smoothstep over ±8 mm (like MANO's knuckles);
    farther away a vertex belongs to one bone only.
    """
    half_width = 0.008

    def past(joint: float) -> torch.Tensor:
        t = ((x - joint + half_width) / (2 * half_width)).clamp(0.0, 1.0)
        return t * t * (3 - 2 * t)

    past_first, past_second = past(JOINTS_X[0]), past(JOINTS_X[1])
    return torch.stack([1 - past_first, past_first - past_second, past_second], dim=1)


def make_finger(rings: int = 31, around: int = 16) -> Finger:
    x = torch.linspace(0.0, FINGER_LENGTH, rings, dtype=torch.float64)
    angle = torch.arange(around, dtype=torch.float64) * (2 * math.pi / around)
    xx, aa = torch.meshgrid(x, angle, indexing="ij")
    vertices = torch.stack(
        [xx, FINGER_RADIUS * torch.cos(aa), FINGER_RADIUS * torch.sin(aa)], dim=-1
    ).reshape(-1, 3)
    faces = []
    for ring in range(rings - 1):
        for step in range(around):
            a = ring * around + step
            b = ring * around + (step + 1) % around
            faces += [(a, b, a + around), (b, b + around, a + around)]
    return Finger(
        vertices=vertices.float(),
        faces=torch.tensor(faces, dtype=torch.long),
        weights=_bone_weights(vertices[:, 0]).float(),
    )


def _rotation(axis: tuple[float, float, float], angle: float) -> torch.Tensor:
    axis_t = torch.tensor(axis, dtype=torch.float64)
    axis_t = axis_t / axis_t.norm()
    skew = torch.tensor(
        [[0, -axis_t[2], axis_t[1]], [axis_t[2], 0, -axis_t[0]], [-axis_t[1], axis_t[0], 0]],
        dtype=torch.float64,
    )
    return (
        torch.eye(3, dtype=torch.float64)
        + math.sin(angle) * skew
        + (1 - math.cos(angle)) * (skew @ skew)
    )


def _about(point: tuple[float, float, float], rotation: torch.Tensor) -> torch.Tensor:
    """4x4 rotation about ``point``."""
    transform = torch.eye(4, dtype=torch.float64)
    centre = torch.tensor(point, dtype=torch.float64)
    transform[:3, :3] = rotation
    transform[:3, 3] = centre - rotation @ centre
    return transform


def finger_pose(root_angle: float, bend1: float, bend2: float, shift: float) -> torch.Tensor:
    """(3, 4, 4) canonical → posed bone transforms of a kinematic chain."""
    root = _about((0.0, 0.0, 0.0), _rotation((0.3, 1.0, 0.2), root_angle))
    root[:3, 3] += torch.tensor([shift, 0.1, 0.4], dtype=torch.float64)
    middle = root @ _about((JOINTS_X[0], 0.0, 0.0), _rotation((0.0, 0.0, 1.0), bend1))
    tip = middle @ _about((JOINTS_X[1], 0.0, 0.0), _rotation((0.0, 0.2, 1.0), bend2))
    return torch.stack([root, middle, tip]).float()


def skin(points: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Forward LBS of (N, 3) canonical points with (N, J) weights and (J, 4, 4) transforms."""
    blended = torch.einsum("nj,jab->nab", weights.double(), transforms.double())
    homogeneous = torch.cat([points.double(), torch.ones(len(points), 1, dtype=torch.float64)], 1)
    return torch.einsum("nab,nb->na", blended, homogeneous)[:, :3].float()


def surface_samples(finger: Finger, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical points on random triangles and their barycentric-interpolated weights."""
    generator = torch.Generator().manual_seed(seed)
    face_ids = torch.randint(len(finger.faces), (count,), generator=generator)
    bary = torch.rand(count, 3, generator=generator)
    bary = -torch.log(bary)  # exponential → uniform on the simplex after normalising
    bary = bary / bary.sum(dim=1, keepdim=True)
    corners = finger.faces[face_ids]  # (N, 3)
    points = (bary[..., None] * finger.vertices[corners]).sum(dim=1)
    weights = (bary[..., None] * finger.weights[corners]).sum(dim=1)
    return points, weights


POSE_A = finger_pose(root_angle=0.7, bend1=0.6, bend2=0.5, shift=0.0)
POSE_B = finger_pose(root_angle=-0.4, bend1=0.3, bend2=0.8, shift=0.05)


def deform_one(
    finger: Finger, pose: torch.Tensor, points: torch.Tensor, **config: object
) -> DeformResult:
    deformer = InverseLBSDeformer(DeformerConfig(**config))  # type: ignore[arg-type]
    posed_vertices = skin(finger.vertices, finger.weights, pose)
    frames = deformer.prepare_frame(posed_vertices, pose, finger.weights)
    return frames.deform(points)


@pytest.fixture(scope="module")
def finger() -> Finger:
    return make_finger()


@pytest.mark.parametrize("backend", ["kdtree", "cdist", "grid"])
def test_posed_vertices_map_back_to_canonical(finger: Finger, backend: str) -> None:
    posed = skin(finger.vertices, finger.weights, POSE_A)
    result = deform_one(finger, POSE_A, posed, backend=backend)
    error = (result.canonical - finger.vertices).norm(dim=1)
    assert bool(result.valid.all())
    # A sample on a vertex takes that vertex's weights exactly (kNN backends): only float32
    # round-off remains. The grid interpolates transforms between nodes 2 mm apart, which
    # across a 35° joint bend is off by up to ~0.3 mm (measured).
    tolerance = 5e-4 if backend == "grid" else 2e-6
    assert float(error.max()) < tolerance
    assert float(result.distance.max()) < (2e-3 if backend == "grid" else 1e-5)


@pytest.mark.parametrize("blend", ["inverse_distance", "gaussian"])
def test_surface_points_map_back_within_tolerance(finger: Finger, blend: str) -> None:
    canonical, weights = surface_samples(finger, 3000, seed=1)
    posed = skin(canonical, weights, POSE_A)
    result = deform_one(finger, POSE_A, posed, backend="kdtree", blend=blend)
    error = (result.canonical - canonical).norm(dim=1)
    # The neighbour blend approximates the barycentric weights; a weight error δ moves a
    # point by about δ * (bend angle) * (distance to the joint axis) ≈ δ * 0.6 rad * 8 mm,
    # so δ ≲ 0.1 near the joints means < 0.5 mm (measured: mean 0.018 mm, max 0.42 mm with
    # inverse distance; Gaussian blending, which smooths vertices too, 0.04 / 0.65 mm).
    # Sharper bends fold the inner side of the joint onto itself, where inverse LBS is
    # ambiguous; these poses stay clear of that.
    assert bool(result.valid.all())
    assert float(error.mean()) < (5e-5 if blend == "inverse_distance" else 1e-4)
    assert float(error.max()) < (6e-4 if blend == "inverse_distance" else 1e-3)
    # The straight parts are skinned to a single bone: there every blend is exact.
    straight = (canonical[:, 0] < 0.02) | (canonical[:, 0] > 0.07)
    assert float(error[straight].max()) < 1e-5


def test_far_points_are_invalid_and_near_points_valid(finger: Finger) -> None:
    posed_vertices = skin(finger.vertices, finger.weights, POSE_A)
    centre = posed_vertices.mean(dim=0)
    generator = torch.Generator().manual_seed(2)
    directions = torch.nn.functional.normalize(torch.randn(200, 3, generator=generator), dim=1)
    far = centre + 0.2 * directions  # 20 cm away: well beyond the 9 cm finger
    near = posed_vertices[::7] + 0.002 * directions[: len(posed_vertices[::7])]
    for backend in ("kdtree", "cdist", "grid"):
        result = deform_one(finger, POSE_A, torch.cat([far, near]), backend=backend)
        assert not bool(result.valid[: len(far)].any()), backend
        assert bool(result.valid[len(far) :].all()), backend
        assert bool((result.distance[: len(far)] > 0.015).all()), backend


def test_max_distance_threshold_is_respected(finger: Finger) -> None:
    posed = skin(finger.vertices, finger.weights, POSE_A)
    generator = torch.Generator().manual_seed(3)
    points = posed[0] + 0.03 * (torch.rand(500, 3, generator=generator) - 0.5)
    result = deform_one(finger, POSE_A, points, backend="kdtree", max_distance=0.004)
    nearest = torch.cdist(points.double(), posed.double()).min(dim=1).values.float()
    # The kd-tree search stops at 2 x max_distance: farther samples report inf.
    in_reach = nearest <= 2 * 0.004
    assert in_reach.any() and (~in_reach).any()
    torch.testing.assert_close(result.distance[in_reach], nearest[in_reach], atol=1e-6, rtol=0)
    assert torch.isinf(result.distance[~in_reach]).all()
    assert torch.equal(result.valid, nearest <= 0.004)
    assert 0 < int(result.valid.sum()) < len(points)


def test_identity_transforms_give_identity_mapping(finger: Finger) -> None:
    identity = torch.eye(4).expand(3, 4, 4).clone()
    generator = torch.Generator().manual_seed(4)
    points = finger.vertices[::3] + 0.004 * torch.randn(
        len(finger.vertices[::3]), 3, generator=generator
    )
    for backend in ("kdtree", "cdist", "grid"):
        result = deform_one(finger, identity, points, backend=backend)
        torch.testing.assert_close(result.canonical, points, atol=1e-6, rtol=0)
        torch.testing.assert_close(
            result.rotation, torch.eye(3).expand(len(points), 3, 3), atol=1e-6, rtol=0
        )


def test_rotation_is_the_bone_rotation_away_from_joints(finger: Finger) -> None:
    posed = skin(finger.vertices, finger.weights, POSE_A)
    result = deform_one(finger, POSE_A, posed, backend="kdtree")
    rotations = result.rotation
    eye = torch.eye(3).expand_as(rotations)
    torch.testing.assert_close(rotations @ rotations.transpose(1, 2), eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        torch.linalg.det(rotations), torch.ones(len(posed)), atol=1e-5, rtol=0
    )
    base = finger.vertices[:, 0] < 0.005
    tip = finger.vertices[:, 0] > 0.085
    torch.testing.assert_close(
        rotations[base], POSE_A[0, :3, :3].expand(int(base.sum()), 3, 3), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        rotations[tip], POSE_A[2, :3, :3].expand(int(tip.sum()), 3, 3), atol=1e-4, rtol=0
    )


def test_batch_of_two_frames_matches_single_frames(finger: Finger) -> None:
    canonical, weights = surface_samples(finger, 1000, seed=5)
    poses = torch.stack([POSE_A, POSE_B])
    frame_ids = torch.randint(0, 2, (len(canonical),), generator=torch.Generator().manual_seed(6))
    posed = torch.where(
        frame_ids[:, None] == 0, skin(canonical, weights, POSE_A), skin(canonical, weights, POSE_B)
    )
    posed_vertices = torch.stack([skin(finger.vertices, finger.weights, p) for p in poses])
    for backend in ("kdtree", "cdist", "grid"):
        deformer = InverseLBSDeformer(DeformerConfig(backend=backend))
        frames = deformer.prepare_frames(posed_vertices, poses, finger.weights)
        batched = deformer(frames, posed, frame_ids)
        assert frames.num_frames == 2
        for frame in (0, 1):
            single = deformer.prepare_frame(posed_vertices[frame], poses[frame], finger.weights)
            mask = frame_ids == frame
            alone = single.deform(posed[mask])
            torch.testing.assert_close(batched.canonical[mask], alone.canonical, atol=1e-6, rtol=0)
            torch.testing.assert_close(batched.rotation[mask], alone.rotation, atol=1e-6, rtol=0)
            assert torch.equal(batched.valid[mask], alone.valid)
        limit = 2e-3 if backend == "grid" else 1.5e-3
        assert float((batched.canonical - canonical).norm(dim=1).max()) < limit, backend


def test_empty_input_gives_empty_result(finger: Finger) -> None:
    for backend in ("kdtree", "cdist", "grid"):
        result = deform_one(finger, POSE_A, torch.zeros(0, 3), backend=backend)
        assert result.canonical.shape == (0, 3)
        assert result.valid.shape == (0,) and result.valid.dtype == torch.bool
        assert result.rotation.shape == (0, 3, 3)
        assert result.distance.shape == (0,)


def test_cpu_backends_agree(finger: Finger) -> None:
    canonical, weights = surface_samples(finger, 2000, seed=7)
    generator = torch.Generator().manual_seed(8)
    posed = skin(canonical, weights, POSE_B) + 0.003 * torch.randn(
        len(canonical), 3, generator=generator
    )
    results = {b: deform_one(finger, POSE_B, posed, backend=b) for b in ("kdtree", "cdist", "grid")}
    kdtree, cdist, grid = results["kdtree"], results["cdist"], results["grid"]
    torch.testing.assert_close(cdist.canonical, kdtree.canonical, atol=1e-5, rtol=0)
    torch.testing.assert_close(cdist.distance, kdtree.distance, atol=1e-6, rtol=0)
    torch.testing.assert_close(cdist.rotation, kdtree.rotation, atol=1e-5, rtol=0)
    assert torch.equal(cdist.valid, kdtree.valid)
    # The grid interpolates the same field sampled every 2 mm.
    grid_error = (grid.canonical - kdtree.canonical).norm(dim=1)
    assert float(grid_error.mean()) < 2e-4
    assert float((grid.distance - kdtree.distance).abs().max()) < 2e-3


def test_output_has_no_graph_and_feeds_autograd(finger: Finger) -> None:
    posed = skin(finger.vertices, finger.weights, POSE_A).requires_grad_(True)
    result = deform_one(finger, POSE_A, posed, backend="kdtree")
    assert not result.canonical.requires_grad and result.canonical.grad_fn is None
    scale = torch.ones(3, requires_grad=True)
    (result.canonical * scale).sum().backward()
    assert scale.grad is not None


def test_bad_inputs_raise_named_errors(finger: Finger) -> None:
    deformer = InverseLBSDeformer()
    posed_vertices = skin(finger.vertices, finger.weights, POSE_A)
    with pytest.raises(ParameterError, match="posed_vertices"):
        deformer.prepare_frames(posed_vertices, POSE_A[None], finger.weights)
    with pytest.raises(ParameterError, match="bone_transforms"):
        deformer.prepare_frame(posed_vertices, POSE_A[:, :3], finger.weights)
    with pytest.raises(ParameterError, match="skinning_weights"):
        deformer.prepare_frame(posed_vertices, POSE_A, finger.weights[:, :2])
    nan_vertices = posed_vertices.clone()
    nan_vertices[3, 1] = float("nan")
    with pytest.raises(ParameterError, match="posed_vertices contains NaN"):
        deformer.prepare_frame(nan_vertices, POSE_A, finger.weights)
    frames = deformer.prepare_frames(
        torch.stack([posed_vertices] * 2), torch.stack([POSE_A] * 2), finger.weights
    )
    with pytest.raises(ParameterError, match="points"):
        frames.deform(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ParameterError, match="frame_ids is required"):
        frames.deform(torch.zeros(4, 3))
    with pytest.raises(ParameterError, match="frame_ids must lie"):
        frames.deform(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ConfigError, match="backend"):
        InverseLBSDeformer(DeformerConfig(backend="octree"))
    with pytest.raises(ConfigError, match="max_distance"):
        InverseLBSDeformer(DeformerConfig(max_distance=-1.0))
    with pytest.raises(ConfigError, match="blend"):
        InverseLBSDeformer(DeformerConfig(blend="linear"))


def test_auto_backend_on_cpu_is_exact(finger: Finger) -> None:
    deformer = InverseLBSDeformer()
    assert deformer.resolve_backend(torch.device("cpu")) in ("kdtree", "cdist", "grid")
    posed = skin(finger.vertices, finger.weights, POSE_A)
    frames = deformer.prepare_frame(posed, POSE_A, finger.weights)
    result = frames.deform(posed)
    assert float((result.canonical - finger.vertices).norm(dim=1).max()) < 1e-3


def test_procedural_hand_vertices_map_back_to_canonical() -> None:
    # The dense hand: no pose correctives, so plain inverse LBS is exact at its vertices.
    model = HandModel.from_folder(None, "right", procedural="dense")
    generator = torch.Generator().manual_seed(9)
    params = ManoParams(
        global_orient=0.5 * torch.randn(2, 3, generator=generator),
        hand_pose=0.3 * torch.randn(2, 45, generator=generator),
        betas=torch.zeros(2, 10),
        transl=torch.tensor([[0.0, 0.0, 0.5], [0.1, -0.05, 0.6]]),
    )
    with torch.no_grad():
        output = model(params)
    weights = model.skinning_weights.float()
    deformer = InverseLBSDeformer(DeformerConfig(backend="kdtree"))
    frames = deformer.prepare_frames(
        output.vertices.float(), output.bone_transforms.float(), weights
    )
    vertices = output.vertices.float().reshape(-1, 3)
    frame_ids = torch.arange(2).repeat_interleave(output.vertices.shape[1])
    result = frames.deform(vertices, frame_ids)
    expected = output.canonical_vertices.float().reshape(-1, 3)
    assert bool(result.valid.all())
    # The procedural hand has no pose blend shapes: posed vertices are exactly the LBS of
    # the canonical ones, so only float32 round-off (metre-scale translations) remains.
    assert float((result.canonical - expected).norm(dim=1).max()) < 1e-5


def test_blended_normals_follow_the_posed_surface() -> None:
    from handnerf.hand.hand_model import HandModel, ManoParams
    from handnerf.model.avatar import vertex_normals

    model = HandModel.from_folder(None, "right")
    generator = torch.Generator().manual_seed(5)
    params = ManoParams(
        global_orient=0.5 * torch.randn(1, 3, generator=generator),
        hand_pose=0.2 * torch.randn(1, 45, generator=generator),
        betas=torch.zeros(1, 10),
        transl=torch.zeros(1, 3),
    )
    with torch.no_grad():
        output = model(params)
    posed = output.vertices.float()
    normals = vertex_normals(posed, model.faces)
    deformer = InverseLBSDeformer(DeformerConfig(backend="kdtree"))
    frames = deformer.prepare_frames(
        posed,
        output.bone_transforms.float(),
        model.skinning_weights.float(),
        vertex_normals=normals,
    )
    # On a vertex the blend is that vertex's normal; 2 mm outside along it, nearly so.
    on = frames.deform(posed[0, ::7])
    assert on.normal is not None
    assert float((on.normal - normals[0, ::7]).norm(dim=1).max()) < 1e-3
    outside = frames.deform(posed[0, ::7] + 0.002 * normals[0, ::7])
    assert outside.normal is not None
    cosine = (outside.normal * normals[0, ::7]).sum(dim=1)
    assert float(cosine.median()) > 0.95
    # They agree with trimesh's (angle-weighted) vertex normals of the same mesh.
    import trimesh

    mesh = trimesh.Trimesh(posed[0].numpy(), model.faces.numpy(), process=False)
    reference = torch.from_numpy(mesh.vertex_normals.copy()).float()
    assert float((reference * normals[0]).sum(dim=1).median()) > 0.99
    # Without normals the result has none.
    assert (
        deformer.prepare_frames(
            posed, output.bone_transforms.float(), model.skinning_weights.float()
        )
        .deform(posed[0, :3])
        .normal
        is None
    )
    # Oriented later (the fast path's order), the same: the normal alone when asked.
    points = posed[0, ::7] + 0.002 * normals[0, ::7]
    late = frames.deform(points, orient=False)
    assert late.rotation is None and late.normal is None
    frames.orient(late, rotation=False)
    assert late.rotation is None and torch.equal(late.normal, outside.normal)
    frames.orient(late)
    assert torch.equal(late.rotation, outside.rotation)


def test_vertex_attributes_are_blended_like_the_skinning(finger: Finger) -> None:
    bones = POSE_A
    posed = skin(finger.vertices, finger.weights, bones)
    n = finger.vertices.shape[0]
    attributes = torch.rand(1, n, 5, generator=torch.Generator().manual_seed(2))
    deformer = InverseLBSDeformer(DeformerConfig(backend="kdtree"))
    frames = deformer.prepare_frames(
        posed[None], bones[None], finger.weights, vertex_attributes=attributes
    )
    on = frames.blend_attributes(frames.deform(posed[::5]))
    assert on is not None
    torch.testing.assert_close(on, attributes[0, ::5], atol=1e-4, rtol=0)
    # Between vertices: a convex blend of the neighbours' values.
    between = frames.blend_attributes(frames.deform(0.5 * (posed[:-1:7] + posed[1::7])))
    assert between is not None
    assert float(between.min()) >= 0.0 and float(between.max()) <= 1.0
    assert frames.blend_attributes(frames.deform(posed[:0])).shape == (0, 5)
    with pytest.raises(ParameterError, match="vertex_attributes"):
        deformer.prepare_frames(
            posed[None], bones[None], finger.weights, vertex_attributes=attributes[:, :-1]
        )
    grid = InverseLBSDeformer(DeformerConfig(backend="grid"))
    with pytest.raises(ConfigError, match="attributes"):
        grid.prepare_frames(posed[None], bones[None], finger.weights, vertex_attributes=attributes)


def test_closest_point_on_triangles_matches_trimesh() -> None:
    import trimesh

    from handnerf.model.deformer import closest_point_on_triangles

    generator = torch.Generator().manual_seed(11)
    corners = torch.randn(400, 3, 3, generator=generator, dtype=torch.float64)
    corners[:20, 2] = 0.5 * (corners[:20, 0] + corners[:20, 1])  # degenerate: a segment
    points = 1.5 * torch.randn(400, 3, generator=generator, dtype=torch.float64)
    bary, dist2 = closest_point_on_triangles(points, corners)
    closest = (bary[..., None] * corners).sum(-2)
    reference = torch.from_numpy(trimesh.triangles.closest_point(corners.numpy(), points.numpy()))
    torch.testing.assert_close(closest, reference, atol=1e-9, rtol=0)
    torch.testing.assert_close(dist2.sqrt(), (points - reference).norm(dim=1), atol=1e-9, rtol=0)
    assert bool((bary >= -1e-12).all()) and torch.allclose(bary.sum(-1), torch.ones(400).double())


def _hand_in_contact() -> tuple[object, object, torch.Tensor, torch.Tensor]:
    """The procedural hand in a closed, self-touching pose: (model, output, surface samples
    posed, their true canonical positions). The dense hand: its vertices are close enough
    for the vertex blend, and it has no pose correctives."""
    from handnerf.hand.hand_model import HandModel, ManoParams

    model = HandModel.from_folder(None, "right", procedural="dense")
    hand_pose = torch.zeros(1, 45)
    hand_pose[0, 2::3] = 1.2  # every finger joint curled about its bending axis: a fist
    params = ManoParams(
        global_orient=torch.zeros(1, 3),
        hand_pose=hand_pose,
        betas=torch.zeros(1, 10),
        transl=torch.zeros(1, 3),
    )
    with torch.no_grad():
        output = model(params)
    generator = torch.Generator().manual_seed(12)
    faces = model.faces.long()
    face_ids = torch.randint(len(faces), (6000,), generator=generator)
    bary = -torch.log(torch.rand(6000, 3, generator=generator))
    bary = bary / bary.sum(dim=1, keepdim=True)
    corners = faces[face_ids]
    posed = (bary[..., None] * output.vertices[0].float()[corners]).sum(1)
    canonical = (bary[..., None] * output.canonical_vertices[0].float()[corners]).sum(1)
    return model, output, posed, canonical


@pytest.mark.parametrize("backend", ["kdtree", "cdist"])
def test_surface_blend_maps_surface_points_back_where_nearest_vertices_mislead(
    backend: str,
) -> None:
    model, output, posed, canonical = _hand_in_contact()
    errors = {}
    for blend in ("inverse_distance", "surface"):
        deformer = InverseLBSDeformer(DeformerConfig(backend=backend, blend=blend))
        frames = deformer.prepare_frames(
            output.vertices.float(),  # type: ignore[attr-defined]
            output.bone_transforms.float(),  # type: ignore[attr-defined]
            model.skinning_weights.float(),  # type: ignore[attr-defined]
            faces=model.faces,  # type: ignore[attr-defined]
        )
        result = frames.deform(posed)
        errors[blend] = (result.canonical - canonical).norm(dim=1)
        if blend == "surface":
            assert result.neighbor_weights is not None and result.neighbor_ids is not None
            torch.testing.assert_close(
                result.neighbor_weights.sum(1), torch.ones(len(posed)), atol=1e-5, rtol=0
            )
    # Measured on this fist: inverse distance moves 6 % of the surface by over 1 mm (a
    # neighbour on the touching finger or across a crease), the closest triangle 0.25 %;
    # its barycentric weights are what forward skinning used, leaving a second-order
    # error at the sharply bent joints (mean 0.23 mm against 0.90 mm).
    far_idw = float((errors["inverse_distance"] > 1e-3).float().mean())
    far_surface = float((errors["surface"] > 1e-3).float().mean())
    assert far_idw > 0.005
    assert far_surface < 0.1 * far_idw
    assert float(errors["surface"].median()) < 1e-5
    assert float(errors["surface"].mean()) < 0.4 * float(errors["inverse_distance"].mean())


def test_refine_to_surface_finishes_a_distance_weighted_result() -> None:
    model, output, posed, _ = _hand_in_contact()
    deformer = InverseLBSDeformer(DeformerConfig(backend="kdtree", blend="surface"))
    frames = deformer.prepare_frames(
        output.vertices.float(),  # type: ignore[attr-defined]
        output.bone_transforms.float(),  # type: ignore[attr-defined]
        model.skinning_weights.float(),  # type: ignore[attr-defined]
        vertex_normals=torch.nn.functional.normalize(
            torch.randn(output.vertices.shape, generator=torch.Generator().manual_seed(3)),
            dim=-1,  # type: ignore[attr-defined]
        ),
        faces=model.faces,  # type: ignore[attr-defined]
    )
    points = posed + 0.003 * torch.randn(posed.shape, generator=torch.Generator().manual_seed(4))
    full = frames.deform(points)
    coarse = frames.deform(points, surface=False)
    assert not torch.equal(full.canonical, coarse.canonical)
    refined = frames.refine_to_surface(points, coarse)
    for name in ("canonical", "valid", "rotation", "normal", "neighbor_ids", "neighbor_weights"):
        torch.testing.assert_close(getattr(refined, name), getattr(full, name), atol=1e-6, rtol=0)
    # Other blends leave the result alone.
    plain = InverseLBSDeformer(DeformerConfig(backend="kdtree"))
    plain_frames = plain.prepare_frames(
        output.vertices.float(),  # type: ignore[attr-defined]
        output.bone_transforms.float(),  # type: ignore[attr-defined]
        model.skinning_weights.float(),  # type: ignore[attr-defined]
    )
    result = plain_frames.deform(points)
    assert plain_frames.refine_to_surface(points, result) is result


def test_surface_blend_needs_a_valid_mesh(finger: Finger) -> None:
    posed = skin(finger.vertices, finger.weights, POSE_A)
    surface = InverseLBSDeformer(DeformerConfig(backend="kdtree", blend="surface"))
    with pytest.raises(ConfigError, match="faces"):
        surface.prepare_frame(posed, POSE_A, finger.weights)
    with pytest.raises(ParameterError, match="faces"):
        surface.prepare_frames(posed[None], POSE_A[None], finger.weights, faces=finger.faces[:, :2])
    with pytest.raises(ParameterError, match="faces"):
        surface.prepare_frames(
            posed[None], POSE_A[None], finger.weights, faces=finger.faces + len(posed)
        )
    grid = InverseLBSDeformer(DeformerConfig(backend="grid", blend="surface"))
    with pytest.raises(ConfigError, match="grid"):
        grid.prepare_frames(posed[None], POSE_A[None], finger.weights, faces=finger.faces)
    # On the finger (no contact) it agrees with the skinning everywhere.
    canonical, weights = surface_samples(finger, 2000, seed=13)
    frames = surface.prepare_frames(posed[None], POSE_A[None], finger.weights, faces=finger.faces)
    result = frames.deform(skin(canonical, weights, POSE_A))
    assert float((result.canonical - canonical).norm(dim=1).max()) < 1e-4
    empty = frames.deform(posed[:0])
    assert empty.canonical.shape == (0, 3)
    assert empty.neighbor_ids is not None and result.neighbor_ids is not None
    assert empty.neighbor_ids.shape[1] == result.neighbor_ids.shape[1]
    # Degenerate triangles (a repeated corner) around every vertex have no plane: they
    # must not win over the real triangle a sample lies on.
    n = len(posed)
    slivers = torch.stack([torch.arange(n - 1), torch.arange(n - 1), torch.arange(1, n)], 1)
    padded = surface.prepare_frames(
        posed[None], POSE_A[None], finger.weights, faces=torch.cat([slivers, finger.faces])
    )
    again = padded.deform(skin(canonical, weights, POSE_A))
    assert float((again.canonical - canonical).norm(dim=1).max()) < 1e-4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(finger: Finger) -> None:
    canonical, weights = surface_samples(finger, 5000, seed=10)
    generator = torch.Generator().manual_seed(11)
    posed = skin(canonical, weights, POSE_A) + 0.003 * torch.randn(
        len(canonical), 3, generator=generator
    )
    posed_vertices = skin(finger.vertices, finger.weights, POSE_A)
    cpu = deform_one(finger, POSE_A, posed, backend="kdtree")
    for backend in ("auto", "cdist", "grid"):
        deformer = InverseLBSDeformer(DeformerConfig(backend=backend))
        frames = deformer.prepare_frame(posed_vertices.cuda(), POSE_A.cuda(), finger.weights.cuda())
        gpu = frames.deform(posed.cuda())
        error = (gpu.canonical.cpu() - cpu.canonical).norm(dim=1)
        if backend == "grid":
            assert float(error.mean()) < 2e-4
        else:
            assert float(error.max()) < 1e-5, backend
            assert torch.equal(gpu.valid.cpu(), cpu.valid)
            torch.testing.assert_close(gpu.rotation.cpu(), cpu.rotation, atol=1e-5, rtol=0)
