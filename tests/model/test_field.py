"""HashGridField: shapes, positivity, AABB handling, parameter groups, gradients, state."""

from __future__ import annotations

import math

import pytest
import torch

from handnerf.errors import ConfigError, ParameterError
from handnerf.model.field import (
    INFERENCE_ROWS,
    CameraColorAffine,
    FieldConfig,
    HashGridField,
    relu_mlp,
    spherical_harmonics,
    trunc_exp,
)
from handnerf.model.sampler import TorchSampler
from handnerf.model.volume import render_samples

AABB = [-0.1, -0.05, -0.02, 0.1, 0.05, 0.02]


def small_config(**overrides: object) -> FieldConfig:
    # The rotation-conditioned colour path; the normal path has its own test below.
    cfg = FieldConfig(
        hidden_dim=32,
        color_hidden_dim=32,
        use_world_normal=False,
        use_pose_rotation=True,
    )
    cfg.encoding.n_levels = 4
    cfg.encoding.log2_hashmap_size = 12
    cfg.encoding.base_resolution = 8
    cfg.encoding.backend = "torch"
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator))
    return q * torch.sign(torch.linalg.det(q))[:, None, None]


def inside_points(n: int, generator: torch.Generator) -> torch.Tensor:
    lo, hi = torch.tensor(AABB[:3]), torch.tensor(AABB[3:])
    return lo + (hi - lo) * torch.rand(n, 3, generator=generator)


def test_output_shapes_ranges_and_small_initial_density() -> None:
    gen = torch.Generator().manual_seed(0)
    field = HashGridField(small_config(), aabb=AABB, n_cameras=3)
    x = inside_points(500, gen)
    with torch.no_grad():
        sigma, rgb = field(x, random_rotations(500, gen), torch.randn(500, 3, generator=gen))
    assert sigma.shape == (500,) and rgb.shape == (500, 3)
    assert sigma.dtype == torch.float32 and rgb.dtype == torch.float32
    assert (sigma > 0).all() and torch.isfinite(sigma).all()
    assert ((rgb > 0) & (rgb < 1)).all()
    # Starts nearly empty at the sampling scale: alpha over a 1 mm step is below 5 %
    # (100 * exp(-1) = 37 /m -> 3.7 %), yet within reach of an opaque hand.
    alpha_1mm = 1 - torch.exp(-sigma * 0.001)
    assert float(alpha_1mm.max()) < 0.05
    with torch.no_grad():
        assert torch.allclose(field.density(x), sigma)


def test_density_is_zero_outside_the_canonical_box() -> None:
    field = HashGridField(small_config(), aabb=AABB, n_cameras=3)
    outside = torch.tensor([[0.2, 0.0, 0.0], [0.0, -0.06, 0.0], [0.0, 0.0, 0.03], [1e3, 1e3, 1e3]])
    assert (field.density(outside) == 0).all()
    assert (field.density(torch.zeros(1, 3)) > 0).all()


def test_rotation_layouts_agree_and_colour_depends_on_pose() -> None:
    gen = torch.Generator().manual_seed(1)
    field = HashGridField(small_config(), aabb=AABB, n_cameras=3)
    x, view = inside_points(64, gen), torch.randn(64, 3, generator=gen)
    rot = random_rotations(64, gen)
    sigma_a, rgb_a = field(x, rot, view)
    sigma_b, rgb_b = field(x, rot.reshape(64, 9), view)
    assert torch.equal(rgb_a, rgb_b) and torch.equal(sigma_a, sigma_b)
    _, rgb_c = field(x, random_rotations(64, gen), view)
    assert not torch.allclose(rgb_a, rgb_c)
    # Density ignores pose and view.
    sigma_d, _ = field(x, random_rotations(64, gen), torch.randn(64, 3, generator=gen))
    assert torch.equal(sigma_a, sigma_d)

    blind = HashGridField(
        small_config(use_pose_rotation=False, view_sh_degree=0), aabb=AABB, n_cameras=3
    )
    _, rgb_1 = blind(x, rot, view)
    _, rgb_2 = blind(x, random_rotations(64, gen), torch.randn(64, 3, generator=gen))
    assert torch.equal(rgb_1, rgb_2)


def test_colour_depends_on_world_normal_and_requires_it() -> None:
    gen = torch.Generator().manual_seed(4)
    field = HashGridField(
        small_config(use_world_normal=True, use_pose_rotation=False), aabb=AABB, n_cameras=3
    )
    x, view = inside_points(32, gen), torch.randn(32, 3, generator=gen)
    rot = random_rotations(32, gen)
    n1 = torch.nn.functional.normalize(torch.randn(32, 3, generator=gen), dim=-1)
    n2 = torch.nn.functional.normalize(torch.randn(32, 3, generator=gen), dim=-1)
    sigma_1, rgb_1 = field(x, rot, view, n1)
    sigma_2, rgb_2 = field(x, random_rotations(32, gen), view, n2)
    assert torch.equal(sigma_1, sigma_2)  # density ignores shading inputs
    assert not torch.allclose(rgb_1, rgb_2)
    _, rgb_3 = field(x, random_rotations(32, gen), view, n1)
    assert torch.equal(rgb_1, rgb_3)  # rotation unused when only the normal is on
    with pytest.raises(ParameterError, match="normal"):
        field(x, rot, view)


def test_colour_depends_on_visibility_and_requires_its_shape() -> None:
    gen = torch.Generator().manual_seed(6)
    field = HashGridField(
        small_config(use_world_normal=False, use_pose_rotation=False),
        aabb=AABB,
        n_cameras=3,
        n_visibility=8,
    )
    x, view, rot = (
        inside_points(32, gen),
        torch.randn(32, 3, generator=gen),
        random_rotations(32, gen),
    )
    lit = torch.ones(32, 8)
    shadowed = lit.clone()
    shadowed[:, 3] = 0.0
    sigma_1, rgb_1 = field(x, rot, view, visibility=lit)
    sigma_2, rgb_2 = field(x, rot, view, visibility=shadowed)
    assert torch.equal(sigma_1, sigma_2)  # a shadow changes colour, never geometry
    assert not torch.allclose(rgb_1, rgb_2)
    with pytest.raises(ParameterError, match="visibility"):
        field(x, rot, view)
    with pytest.raises(ParameterError, match="visibility"):
        field(x, rot, view, visibility=lit[:, :7])
    with pytest.raises(ConfigError, match="n_visibility"):
        HashGridField(small_config(), aabb=AABB, n_cameras=3, n_visibility=-1)


def test_visibility_lights_mix_the_directions_convexly() -> None:
    gen = torch.Generator().manual_seed(7)
    cfg = small_config(use_world_normal=False, use_pose_rotation=False, visibility_lights=2)
    field = HashGridField(cfg, aabb=AABB, n_cameras=3, n_visibility=8)
    assert field.light_logits is not None and field.light_logits.shape == (8, 2)
    assert field.color_mlp[0].in_features == cfg.geo_feat_dim + 2 + cfg.view_sh_degree**2
    assert any(p is field.light_logits for p in field.param_groups()["mlp"])
    x, rot, view = (
        inside_points(32, gen),
        random_rotations(32, gen),
        torch.randn(32, 3, generator=gen),
    )
    # Light 0 gathers direction 1, light 1 directions 2 and 5 equally: the other five
    # directions then change nothing, and swapping 2 and 5 changes nothing either.
    with torch.no_grad():
        field.light_logits.fill_(-60.0)
        field.light_logits[1, 0] = 0.0
        field.light_logits[[2, 5], 1] = 0.0
    seen = (torch.rand(32, 8, generator=gen) > 0.5).float()
    _, rgb = field(x, rot, view, visibility=seen)
    others = seen.clone()
    others[:, [0, 3, 4, 6, 7]] = 1.0 - others[:, [0, 3, 4, 6, 7]]
    assert torch.allclose(field(x, rot, view, visibility=others)[1], rgb, atol=1e-6)
    swapped = seen.clone()
    swapped[:, [2, 5]] = seen[:, [5, 2]]
    assert torch.allclose(field(x, rot, view, visibility=swapped)[1], rgb, atol=1e-6)
    shadowed = seen.clone()
    shadowed[:, 1] = 1.0 - shadowed[:, 1]
    assert (field(x, rot, view, visibility=shadowed)[1] - rgb).abs().max() > 1e-4
    # Gradients reach the mix.
    field(x, rot, view, visibility=seen)[1].sum().backward()
    assert field.light_logits.grad is not None and field.light_logits.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="visibility_lights"):
        HashGridField(small_config(visibility_lights=-1), aabb=AABB, n_visibility=8)
    # Without visibilities there is nothing to mix: no lights, no parameter.
    assert HashGridField(small_config(visibility_lights=2), aabb=AABB).light_logits is None


def shaded_field(gen_seed: int = 0, **overrides: object) -> HashGridField:
    cfg = small_config(use_world_normal=True, use_pose_rotation=False, color_model="shaded")
    n_visibility = int(overrides.pop("n_visibility", 4))  # type: ignore[call-overload]
    for key, value in overrides.items():
        setattr(cfg, key, value)
    field = HashGridField(cfg, aabb=AABB, n_cameras=3, n_visibility=n_visibility)
    # Random (not near-zero) grid features, so the albedo differs between points.
    with torch.no_grad():
        gen = torch.Generator().manual_seed(gen_seed)
        grids = [field.encoding, field.color_encoding]
        for p in (p for grid in grids if grid is not None for p in grid.parameters()):
            p.copy_(torch.rand(p.shape, generator=gen) * 2 - 1)
    return field


def test_shaded_colour_starts_as_albedo_times_a_shading_shared_by_every_point() -> None:
    gen = torch.Generator().manual_seed(8)
    field = shaded_field()
    x = inside_points(64, gen)
    rot = random_rotations(64, gen)
    view = torch.randn(64, 3, generator=gen)
    vis = torch.rand(64, 4, generator=gen)
    n1 = torch.nn.functional.normalize(torch.randn(1, 3, generator=gen), dim=-1).expand(64, 3)
    n2 = torch.nn.functional.normalize(torch.randn(1, 3, generator=gen), dim=-1).expand(64, 3)
    vis_1 = vis[:1].expand(64, 4)
    with torch.no_grad():
        sigma_1, rgb_1 = field(x, rot, view, n1, vis_1)
        sigma_2, rgb_2 = field(x, rot, view, n2, vis_1)
        _, rgb_other_view = field(x, rot, torch.randn(64, 3, generator=gen), n1, vis_1)
    assert torch.equal(sigma_1, sigma_2)
    assert ((rgb_1 > 0) & (rgb_1 < 1)).all()
    # Zero residual at the start: the view direction plays no part yet ...
    torch.testing.assert_close(rgb_1, rgb_other_view, rtol=1e-5, atol=1e-6)
    # ... and changing the normal scales every point's colour by the same per-channel factor.
    ratio = rgb_2 / rgb_1
    assert float(ratio.std(dim=0).max()) < 1e-4
    assert float((ratio[0] - 1).abs().max()) > 1e-3  # the normal does change the shading
    assert float(rgb_1.std(dim=0).min()) > 2e-4  # and the albedo differs between points


def test_shaded_colour_learns_every_part_and_stays_in_range() -> None:
    gen = torch.Generator().manual_seed(9)
    field = shaded_field()
    assert field.albedo_mlp is not None and field.shading_mlp is not None
    groups = field.param_groups()
    grouped = sorted(id(p) for ps in groups.values() for p in ps)
    assert grouped == sorted(id(p) for p in field.parameters())
    x, rot, view = (
        inside_points(64, gen),
        random_rotations(64, gen),
        torch.randn(64, 3, generator=gen),
    )
    normal = torch.nn.functional.normalize(torch.randn(64, 3, generator=gen), dim=-1)
    vis = torch.rand(64, 4, generator=gen)
    # One step away from the zero residual, then every colour part gets gradient.
    for step in range(2):
        field.zero_grad()
        _, rgb = field(x, rot, view, normal, vis)
        ((rgb - 0.9) ** 2).mean().backward()
        if step == 0:
            with torch.no_grad():
                for p in field.color_mlp.parameters():
                    p.sub_(1.0 * p.grad.sign())
    for name, module in (
        ("albedo", field.albedo_mlp),
        ("shading", field.shading_mlp),
        ("residual", field.color_mlp),
    ):
        total = sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)
        assert total > 0, f"no gradient reached the {name} MLP"
    with torch.no_grad():
        for p in field.parameters():
            p.mul_(50.0)  # extreme weights: still a colour, never NaN
        _, rgb = field(x, rot, view, normal, vis)
    assert torch.isfinite(rgb).all() and ((rgb >= 0) & (rgb <= 1)).all()


def test_shaded_colour_config_errors() -> None:
    with pytest.raises(ConfigError, match="color_model"):
        HashGridField(small_config(color_model="pbr"), aabb=AABB, n_cameras=3)
    with pytest.raises(ConfigError, match="shaded"):
        HashGridField(
            small_config(color_model="shaded"), aabb=AABB, n_cameras=3
        )  # no normal, no visibility
    with pytest.raises(ConfigError, match="shaded"):
        HashGridField(
            small_config(color_model="shaded", use_world_normal=True, geo_feat_dim=0), aabb=AABB
        )


def test_spherical_harmonics_are_orthonormal() -> None:
    # A Fibonacci lattice integrates these low-degree polynomials over the sphere closely.
    n = 20_000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (3 - math.sqrt(5)) * i
    r = torch.sqrt(1 - z**2)
    dirs = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)
    for degree in (1, 2, 3, 4):
        basis = spherical_harmonics(dirs, degree)
        assert basis.shape == (n, degree**2)
        gram = basis.T @ basis / n * 4 * math.pi
        assert torch.allclose(gram, torch.eye(degree**2, dtype=torch.float64), atol=1e-3)
    with pytest.raises(ConfigError):
        spherical_harmonics(dirs[:2], 5)


def test_trunc_exp_gradient_is_clamped() -> None:
    x = torch.tensor([0.0, 1.0, 50.0], requires_grad=True)
    trunc_exp(x).sum().backward()
    assert x.grad is not None
    assert torch.allclose(x.grad[:2], torch.exp(x.detach()[:2]))
    assert torch.isfinite(x.grad).all() and float(x.grad[2]) == pytest.approx(
        math.exp(15.0), rel=1e-4
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_trunc_exp_gradient_is_finite_at_and_above_the_clamp_in_every_precision(
    dtype: torch.dtype,
) -> None:
    """An fp16 pre-activation (the MLP's output under autocast) between 11.1 and 15 has a
    finite exp only in float32: the backward must not compute it in the input's dtype."""
    x = torch.tensor([11.5, 14.0, 15.0, 40.0], dtype=dtype, requires_grad=True)
    y = trunc_exp(x)
    assert y.dtype == torch.float32
    # A small upstream gradient, as a density's is: the product fits in float16.
    (1e-3 * y[:3].sum() + 1e-20 * y[3]).backward()
    assert x.grad is not None and x.grad.dtype == dtype
    assert torch.isfinite(x.grad).all()
    expected = 1e-3 * torch.exp(x.detach()[:3].double().clamp(max=15.0))
    assert torch.allclose(x.grad[:3].double(), expected, rtol=1e-2)


def test_camera_affine_starts_as_identity_and_rejects_unknown_cameras() -> None:
    affine = CameraColorAffine(2)
    rgb, opacity = torch.rand(5, 3), torch.rand(5)
    ids = torch.tensor([0, 1, 1, 0, 1])
    assert torch.equal(affine(rgb, opacity, ids), rgb)
    with torch.no_grad():
        affine.bias[1] = torch.tensor([0.1, 0.2, 0.3])
        affine.matrix[1] = 2 * torch.eye(3)
    out = affine(rgb, opacity, ids)
    assert torch.allclose(out[0], rgb[0])
    assert torch.allclose(out[1], 2 * rgb[1] + opacity[1] * torch.tensor([0.1, 0.2, 0.3]))
    # An empty ray stays empty: the bias scales with opacity.
    assert torch.equal(
        affine(torch.zeros(1, 3), torch.zeros(1), torch.tensor([1])), torch.zeros(1, 3)
    )
    assert torch.equal(affine(rgb, opacity, None), rgb)
    with pytest.raises(ParameterError, match="n_cameras"):
        affine(rgb, opacity, torch.tensor([0, 1, 2, 0, 1]))
    with pytest.raises(ConfigError):
        CameraColorAffine(0)


@pytest.mark.parametrize("separate_color_grid", [False, True])
def test_gradients_reach_every_parameter_group_through_rendering(
    separate_color_grid: bool,
) -> None:
    gen = torch.Generator().manual_seed(3)
    cfg = small_config(separate_color_grid=separate_color_grid)
    field = HashGridField(cfg, aabb=AABB, n_cameras=3)
    groups = field.param_groups()
    assert set(groups) == {"grid", "mlp", "camera"} and all(groups.values())
    all_ids = {id(p) for p in field.parameters()}
    grouped = [id(p) for ps in groups.values() for p in ps]
    assert sorted(grouped) == sorted(all_ids), "every parameter in exactly one group"

    n_rays = 64
    origins = torch.tensor([0.0, 0.0, -0.5]).expand(n_rays, 3).clone()
    targets = torch.cat(
        [torch.rand(n_rays, 2, generator=gen) * 0.1 - 0.05, torch.zeros(n_rays, 1)], -1
    )
    dirs = torch.nn.functional.normalize(targets - origins, dim=-1)
    frame_aabbs = torch.tensor([AABB])
    samples = TorchSampler(32).sample(
        origins, dirs, torch.zeros(n_rays, dtype=torch.long), frame_aabbs
    )
    rot = random_rotations(1, gen)[0]

    def radiance(points: torch.Tensor, ray_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return field(points, rot.expand(points.shape[0], 3, 3), dirs[ray_ids])

    cams = torch.randint(0, 3, (n_rays,), generator=gen)
    out = render_samples(
        samples,
        origins,
        dirs,
        radiance,
        background=torch.ones(3),
        color_correction=lambda rgb, op: field.apply_camera_affine(rgb, op, cams),
    )
    loss = ((out["rgb"] - 0.3) ** 2).mean() + out["opacity"].mean()
    loss.backward()
    for name, params in groups.items():
        total = sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)
        assert total > 0, f"no gradient reached group {name}"
    no_grad = [n for n, p in field.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, f"parameters without gradient: {no_grad}"


def test_separate_color_grid_splits_density_from_colour_features() -> None:
    gen = torch.Generator().manual_seed(5)
    field = HashGridField(small_config(separate_color_grid=True), aabb=AABB)
    assert field.color_encoding is not None and field.color_feature_mlp is not None
    assert field.density_mlp[-1].out_features == 1  # the density alone
    x, rot = inside_points(64, gen), random_rotations(64, gen)
    view = torch.randn(64, 3, generator=gen)
    sigma, rgb = field(x, rot, view)
    assert torch.equal(field.density(x), sigma)
    with torch.no_grad():
        field.color_encoding.params.add_(0.5 * torch.randn(field.color_encoding.params.shape))
    sigma2, rgb2 = field(x, rot, view)
    assert torch.equal(sigma2, sigma), "the colour grid must not move the density"
    assert (rgb2 - rgb).abs().max() > 1e-4
    with torch.no_grad():
        field.encoding.params.add_(0.5 * torch.randn(field.encoding.params.shape))
    sigma3, rgb3 = field(x, rot, view)
    assert torch.equal(rgb3, rgb2), "the density grid must not move the colour"
    assert (sigma3 - sigma2).abs().max() > 0
    with pytest.raises(ConfigError, match="separate_color_grid"):
        HashGridField(small_config(separate_color_grid=True, geo_feat_dim=0), aabb=AABB)


@pytest.mark.parametrize("separate_color_grid", [False, True])
def test_state_dict_round_trip_restores_outputs_and_aabb(separate_color_grid: bool) -> None:
    gen = torch.Generator().manual_seed(4)
    cfg = small_config(separate_color_grid=separate_color_grid)
    field = HashGridField(cfg, aabb=AABB, n_cameras=3)
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    clone = HashGridField(cfg, n_cameras=3)  # default aabb: must come back from the state dict
    clone.load_state_dict(field.state_dict())
    assert torch.equal(clone.aabb, torch.tensor(AABB))
    x, rot, view = (
        inside_points(32, gen),
        random_rotations(32, gen),
        torch.randn(32, 3, generator=gen),
    )
    for a, b in zip(field(x, rot, view), clone(x, rot, view), strict=True):
        assert torch.equal(a, b)


def test_bad_inputs_raise_handnerf_errors() -> None:
    field = HashGridField(small_config(), aabb=AABB, n_cameras=3)
    with pytest.raises(ParameterError, match="x_canon"):
        field(torch.zeros(4, 2), torch.eye(3).expand(4, 3, 3), torch.ones(4, 3))
    with pytest.raises(ParameterError, match="rot"):
        field(torch.zeros(4, 3), torch.eye(3).expand(5, 3, 3), torch.ones(4, 3))
    with pytest.raises(ParameterError, match="view_dir"):
        field(torch.zeros(4, 3), torch.eye(3).expand(4, 3, 3), torch.ones(3))
    with pytest.raises(ParameterError, match="aabb"):
        field.set_aabb([0, 0, 0, -1, 1, 1])
    with pytest.raises(ConfigError, match="view_sh_degree"):
        HashGridField(small_config(view_sh_degree=7))


def test_mlp_runs_inference_in_chunks_with_the_same_result() -> None:
    torch.manual_seed(0)
    mlp = relu_mlp(24, 64, 2, 3)
    x = torch.randn(2 * INFERENCE_ROWS + 5, 24)  # two whole chunks and a short one
    with torch.no_grad():
        chunked = mlp(x)
        whole = torch.nn.Sequential.forward(mlp, x)  # one call, as training runs it
    assert chunked.shape == (len(x), 3)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    # With gradients: one call, differentiable; checkpoints keep nn.Sequential's keys.
    assert mlp(x).requires_grad
    assert list(mlp.state_dict()) == [f"{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]
    # Still a Sequential to slice: the hidden layers alone.
    assert mlp[:-1](x).shape == (len(x), 64)
