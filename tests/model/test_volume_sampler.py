"""Samplers and volume rendering against a closed-form scene: a ball of constant density.

For a ray at distance b from the centre of a ball of radius r and density sigma, the chord
is L = 2 sqrt(r^2 - b^2) and the opacity 1 - exp(-sigma L) exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

from handnerf.errors import ConfigError, ParameterError
from handnerf.model.sampler import (
    NerfaccSampler,
    OccupiedFn,
    SampleBatch,
    SamplerConfig,
    TorchSampler,
    make_sampler,
    ray_aabb_intersect,
)
from handnerf.model.volume import (
    DeferredColor,
    render_batched,
    render_packed,
    render_samples,
    visible_samples,
)
from tests.host_syncs import count_host_syncs

CENTRE = torch.tensor([0.01, -0.02, 0.3])
RADIUS = 0.05
SIGMA = 30.0  # per metre: sigma * max chord = 3, opacities spread over (0, 0.95)
COLOUR = torch.tensor([0.9, 0.4, 0.1])
BACKGROUND = torch.tensor([0.0, 0.5, 1.0])


def ball_rays(n_rays: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays from a camera at the origin towards points around the ball (some miss it)."""
    gen = torch.Generator().manual_seed(seed)
    offsets = (torch.rand(n_rays, 3, generator=gen) * 2 - 1) * torch.tensor([0.09, 0.09, 0.0])
    origins = torch.zeros(n_rays, 3)
    dirs = torch.nn.functional.normalize(CENTRE + offsets - origins, dim=-1)
    return origins, dirs, torch.zeros(n_rays, dtype=torch.long)


def frame_aabbs() -> torch.Tensor:
    """Frame 0: a box around the ball; frame 1: a box far away (nothing hits it)."""
    margin = 0.01
    ball_box = torch.cat([CENTRE - RADIUS - margin, CENTRE + RADIUS + margin])
    return torch.stack([ball_box, torch.tensor([5.0, 5.0, 5.0, 6.0, 6.0, 6.0])])


def closed_form(origins: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    to_centre = CENTRE.to(origins.device) - origins
    along = (to_centre * dirs).sum(-1)
    b2 = (to_centre**2).sum(-1) - along**2
    chord = 2 * torch.sqrt((RADIUS**2 - b2).clamp(min=0))
    opacity = 1 - torch.exp(-SIGMA * chord)
    rgb = opacity[:, None] * COLOUR.to(origins.device) + (1 - opacity)[:, None] * BACKGROUND.to(
        origins.device
    )
    return rgb, opacity


def in_ball(points: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    return (points - CENTRE.to(points.device)).norm(dim=-1) < RADIUS + margin


def occupied_fn_for(frame_ids: torch.Tensor) -> OccupiedFn:
    def occupied(points: torch.Tensor, ray_ids: torch.Tensor) -> torch.Tensor:
        # Frame 1 has no hand; frame 0 holds the ball (with a skin of margin, as a real
        # occupancy grid is conservative).
        return in_ball(points, margin=0.003) & (frame_ids[ray_ids] == 0)

    return occupied


def radiance(points: torch.Tensor, ray_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sigma = SIGMA * in_ball(points).float()
    return sigma, COLOUR.to(points.device).expand(points.shape[0], 3)


# -- ray / box ---------------------------------------------------------------------------
def test_ray_aabb_intersect_on_hand_written_rays() -> None:
    box = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    s3, s2 = math.sqrt(3), math.sqrt(2)
    origins = torch.tensor(
        [
            [-1.0, 0.5, 0.5],  # straight through along x
            [0.5, 0.5, 0.5],  # starts inside
            [-1.0, 2.0, 0.5],  # parallel to the y slab, outside it
            [2.0, 0.5, 0.5],  # box behind the origin
            [-1.0, -1.0, -1.0],  # diagonal
            [-1.0, -0.5, 0.5],  # clips an edge region
            [-1.0, -2.5, 0.5],  # passes beside the box (y < 0 while x in [0, 1])
        ]
    )
    dirs = torch.nn.functional.normalize(
        torch.tensor(
            [
                [1.0, 0, 0],
                [0, 0, 1.0],
                [1.0, 0, 0],
                [1.0, 0, 0],
                [1.0, 1, 1],
                [1.0, 1, 0],
                [1.0, 1, 0],
            ]
        ),
        dim=-1,
    )
    near, far, hit = ray_aabb_intersect(origins, dirs, box)
    assert hit.tolist() == [True, True, False, False, True, True, False]
    expected_near = torch.tensor([1.0, 0.0, 0.0, 0.0, s3, s2, 0.0])
    expected_far = torch.tensor([2.0, 0.5, 0.0, 0.0, 2 * s3, 1.5 * s2, 0.0])
    assert torch.allclose(near, expected_near, atol=1e-6)
    assert torch.allclose(far, expected_far, atol=1e-6)
    # Per-ray boxes: rays 0, 1 against the box lifted 10 m in z; only ray 1 (along z) hits.
    lifted = box + torch.tensor([0.0, 0, 10, 0, 0, 10])
    near2, far2, hit2 = ray_aabb_intersect(origins[:2], dirs[:2], torch.stack([lifted, lifted]))
    assert hit2.tolist() == [False, True]
    assert torch.allclose(near2, torch.tensor([0.0, 9.5])) and torch.allclose(
        far2, torch.tensor([0.0, 10.5])
    )


# -- torch sampler -------------------------------------------------------------------------
def test_torch_sampler_layout_and_masks() -> None:
    origins, dirs, frame_ids = ball_rays(50)
    frame_ids[::5] = 1  # these rays look for a frame whose box they miss
    sampler = TorchSampler(n_samples=16)
    calls: list[int] = []

    def occupied(points: torch.Tensor, ray_ids: torch.Tensor) -> torch.Tensor:
        calls.append(points.shape[0])
        return occupied_fn_for(frame_ids)(points, ray_ids)

    batch = sampler.sample(origins, dirs, frame_ids, frame_aabbs(), occupied, stratified=False)
    assert batch.t_starts.shape == batch.t_ends.shape == batch.mask.shape == (50, 16)
    assert not batch.packed
    near, far, hit = ray_aabb_intersect(origins, dirs, frame_aabbs()[frame_ids])
    # Frame 1's box is far away; some frame-0 rays pass beside the ball's box too.
    assert not hit[::5].any() and 20 < int(hit.sum()) < 40
    # Only rays that hit their box are asked about, 16 samples each.
    assert calls == [int(hit.sum()) * 16]
    assert not batch.mask[~hit].any() and batch.mask[hit].any()
    assert torch.equal(batch.t_starts[~hit], torch.zeros(int((~hit).sum()), 16))
    # Bins tile [near, far] contiguously; eval samples are the bin centres.
    assert torch.allclose(batch.t_starts[:, 0], near) and torch.allclose(batch.t_ends[:, -1], far)
    assert torch.equal(batch.t_ends[:, :-1], batch.t_starts[:, 1:])
    width = (far - near) / 16
    assert torch.allclose(batch.t_ends - batch.t_starts, width[:, None].expand(50, 16), atol=1e-6)
    points, ray_ids = batch.eval_points(origins, dirs)
    assert points.shape == (batch.n_evaluated, 3) and in_ball(points, margin=0.003).all()
    assert (frame_ids[ray_ids] == 0).all()

    jittered = sampler.sample(origins, dirs, frame_ids, frame_aabbs(), None, stratified=True)
    assert torch.allclose(jittered.t_starts[:, 0], near) and torch.allclose(
        jittered.t_ends[:, -1], far
    )
    assert (jittered.t_ends >= jittered.t_starts).all()
    assert not torch.allclose(jittered.t_starts[hit], batch.t_starts[hit])
    assert torch.equal(jittered.mask, hit[:, None].expand(50, 16))


def test_torch_sampler_renders_the_ball_like_the_closed_form() -> None:
    origins, dirs, frame_ids = ball_rays(250)
    frame_ids[::7] = 1
    expected_rgb, expected_opacity = closed_form(origins, dirs)
    expected_rgb[::7], expected_opacity[::7] = BACKGROUND, 0.0
    assert (expected_opacity > 0.5).any() and (expected_opacity[frame_ids == 0] == 0).any()

    sampler = TorchSampler(n_samples=256)
    occupied = occupied_fn_for(frame_ids)
    batch = sampler.sample(origins, dirs, frame_ids, frame_aabbs(), occupied, stratified=False)
    out = render_samples(batch, origins, dirs, radiance, background=BACKGROUND)
    assert out["rgb"].shape == (250, 3) and out["opacity"].shape == (250,)
    assert out["weights"].shape == (250, 256)
    assert torch.allclose(out["opacity"], expected_opacity, atol=0.01)
    assert torch.allclose(out["rgb"], expected_rgb, atol=0.01)
    # The field was asked only about samples near the ball: a small share of all samples.
    assert 0 < int(out["n_evaluated"]) < 0.5 * 250 * 256
    # Depth of an opaque-ish ray lies inside the ball along the ray.
    hit = out["opacity"] > 0.3
    depth_points = origins[hit] + dirs[hit] * out["depth"][hit, None]
    assert in_ball(depth_points).all()

    # Stratified renders agree on average (jitter is unbiased up to the bin size).
    stratified = torch.stack(
        [
            render_samples(
                sampler.sample(origins, dirs, frame_ids, frame_aabbs(), occupied, stratified=True),
                origins,
                dirs,
                radiance,
                background=BACKGROUND,
            )["opacity"]
            for _ in range(3)
        ]
    ).mean(0)
    assert torch.allclose(stratified, expected_opacity, atol=0.01)


def test_packed_rendering_matches_batched_on_cpu() -> None:
    origins, dirs, frame_ids = ball_rays(100, seed=3)
    batch = TorchSampler(64).sample(
        origins, dirs, frame_ids, frame_aabbs(), occupied_fn_for(frame_ids), False
    )
    gen = torch.Generator().manual_seed(5)
    sigmas = torch.rand(100, 64, generator=gen) * 50 * batch.mask
    rgbs = torch.rand(100, 64, 3, generator=gen)
    dense = render_batched(sigmas, rgbs, batch.t_starts, batch.t_ends, background=BACKGROUND)
    ray_ids, sample_ids = torch.nonzero(batch.mask, as_tuple=True)
    packed = render_packed(
        sigmas[batch.mask],
        rgbs[batch.mask],
        batch.t_starts[batch.mask],
        batch.t_ends[batch.mask],
        ray_ids,
        100,
        background=BACKGROUND,
    )
    for key in ("rgb", "opacity", "depth"):
        assert torch.allclose(dense[key], packed[key], atol=1e-5), key
    assert torch.allclose(packed["weights"], dense["weights"][ray_ids, sample_ids], atol=1e-6)


def test_background_compositing_and_colour_correction() -> None:
    t = torch.linspace(0, 1, 9)
    t_starts, t_ends = t[:-1].expand(4, 8), t[1:].expand(4, 8)
    sigmas = torch.zeros(4, 8)
    sigmas[2:] = 1e4  # rays 2, 3 are opaque
    rgbs = torch.full((4, 8, 3), 0.25)
    per_ray_bg = torch.rand(4, 3)
    out = render_batched(sigmas, rgbs, t_starts, t_ends, background=per_ray_bg)
    assert torch.equal(out["opacity"][:2], torch.zeros(2))
    assert torch.equal(out["rgb"][:2], per_ray_bg[:2]), "opacity 0 -> exactly the background"
    assert torch.allclose(out["rgb"][2:], torch.full((2, 3), 0.25), atol=1e-5)
    assert torch.equal(out["depth"][:2], torch.zeros(2))
    black = render_batched(sigmas, rgbs, t_starts, t_ends)
    assert torch.equal(black["rgb"][:2], torch.zeros(2, 3))
    # Colour correction acts before compositing: an empty ray keeps its background.
    corrected = render_batched(
        sigmas,
        rgbs,
        t_starts,
        t_ends,
        background=per_ray_bg,
        color_correction=lambda rgb, opacity: 2 * rgb + 0.1 * opacity[:, None],
    )
    assert torch.equal(corrected["rgb"][:2], per_ray_bg[:2])
    assert torch.allclose(corrected["rgb"][2:], torch.full((2, 3), 0.6), atol=1e-4)
    with pytest.raises(ParameterError, match="background"):
        render_batched(sigmas, rgbs, t_starts, t_ends, background=torch.zeros(4))
    with pytest.raises(ParameterError):
        render_batched(sigmas, rgbs[:, :, :2], t_starts, t_ends)


def test_rays_with_nothing_to_evaluate_render_background_without_calling_the_field() -> None:
    origins, dirs, frame_ids = ball_rays(10)
    frame_ids[:] = 1
    batch = TorchSampler(8).sample(
        origins, dirs, frame_ids, frame_aabbs(), occupied_fn_for(frame_ids)
    )

    def never(points: torch.Tensor, ray_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise AssertionError("the field must not run without samples")

    out = render_samples(batch, origins, dirs, never, background=BACKGROUND)
    assert torch.equal(out["rgb"], BACKGROUND.expand(10, 3)) and int(out["n_evaluated"]) == 0


def test_sampler_input_validation_and_selection() -> None:
    origins, dirs, frame_ids = ball_rays(4)
    sampler = TorchSampler(8)
    with pytest.raises(ParameterError, match="frame_ids"):
        sampler.sample(origins, dirs, frame_ids + 2, frame_aabbs())
    with pytest.raises(ParameterError, match="frame_aabbs"):
        sampler.sample(origins, dirs, frame_ids, torch.zeros(2, 4))
    with pytest.raises(ParameterError, match="occupied_fn"):
        sampler.sample(
            origins, dirs, frame_ids, frame_aabbs(), lambda p, r: torch.ones(3, dtype=torch.bool)
        )
    with pytest.raises(ConfigError):
        TorchSampler(0)
    with pytest.raises(ConfigError, match="kind"):
        make_sampler(SamplerConfig(kind="magic"), "cpu")
    assert isinstance(make_sampler(SamplerConfig(), "cpu"), TorchSampler)
    with pytest.raises(ConfigError, match="nerfacc"):
        make_sampler(SamplerConfig(kind="nerfacc"), "cpu")
    with pytest.raises(ParameterError, match="nerfacc's kernels"):
        NerfaccSampler().sample(origins, dirs, frame_ids, frame_aabbs())


def test_avatar_switches_its_sampler(request: pytest.FixtureRequest) -> None:
    """``HandAvatar.use_sampler``: a kind the device cannot run is refused at once and
    leaves the avatar as it was; one it can run serves from then on. The config the
    avatar was built from is not modified."""
    from handnerf.hand.hand_model import HandModel
    from handnerf.model.avatar import HandAvatar
    from handnerf.train.config import FitConfig

    cfg = FitConfig().model
    avatar = HandAvatar(cfg, HandModel.from_folder(None, "right"), torch.zeros(10), 2)
    assert isinstance(avatar.sampler, TorchSampler)
    with pytest.raises(ConfigError, match=r"sampler\.kind=nerfacc"):
        avatar.use_sampler("nerfacc")
    assert isinstance(avatar.sampler, TorchSampler) and avatar.cfg.sampler.kind == "auto"
    request.getfixturevalue("nerfacc_standin")
    avatar.use_sampler("nerfacc")
    assert isinstance(avatar.sampler, NerfaccSampler) and avatar.cfg.sampler.kind == "nerfacc"
    assert avatar.backends()["sampler"] == "nerfacc"
    avatar.use_sampler("torch")
    assert isinstance(avatar.sampler, TorchSampler) and avatar.cfg.sampler.kind == "torch"
    assert cfg.sampler.kind == "auto"


# -- nerfacc sampler and packed rendering: CUDA, and on the CPU through the stand-in ------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="nerfacc's kernels need CUDA")
#: "cpu": nerfacc's kernels stood in for by tests/nerfacc_standin.py; "cuda": the real ones.
KERNEL_DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, needs_cuda])]


def kernel_device(device: str, request: pytest.FixtureRequest) -> torch.device:
    """``device``, with nerfacc's kernels stood in for when it is the CPU."""
    if device == "cpu":
        request.getfixturevalue("nerfacc_standin")
    return torch.device(device)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_nerfacc_sampler_matches_torch_sampler_and_closed_form(
    device: str, request: pytest.FixtureRequest
) -> None:
    device_ = kernel_device(device, request)
    origins, dirs, frame_ids = ball_rays(2000)
    frame_ids[::7] = 1  # rays of a frame whose box they miss: no samples at all
    origins, dirs, frame_ids = origins.to(device_), dirs.to(device_), frame_ids.to(device_)
    boxes = frame_aabbs().to(device_)
    background = BACKGROUND.to(device_)
    occupied = occupied_fn_for(frame_ids)
    sampler = make_sampler(
        SamplerConfig(kind="nerfacc", step_size=5e-4, posed_resolution=64), device_
    )
    assert isinstance(sampler, NerfaccSampler)
    packed = sampler.sample(
        origins, dirs, frame_ids, boxes, occupied, stratified=False, cache_key=0
    )
    assert packed.packed and packed.ray_indices is not None
    assert (packed.ray_indices[1:] >= packed.ray_indices[:-1]).all(), "sorted by ray"
    assert not torch.isin(packed.ray_indices, torch.nonzero(frame_ids == 1)[:, 0]).any()
    steps = packed.t_ends - packed.t_starts
    assert torch.allclose(steps, torch.full_like(steps, 5e-4), atol=1e-6), "fixed steps"
    out_packed = render_samples(packed, origins, dirs, radiance, background=background)
    dense = TorchSampler(512).sample(origins, dirs, frame_ids, boxes, occupied, stratified=False)
    out_dense = render_samples(dense, origins, dirs, radiance, background=background)
    _, expected_opacity = closed_form(origins, dirs)
    expected_opacity[::7] = 0.0
    assert torch.allclose(out_packed["opacity"], out_dense["opacity"], atol=0.01)
    assert torch.allclose(out_packed["rgb"], out_dense["rgb"], atol=0.01)
    assert torch.allclose(out_packed["opacity"], expected_opacity, atol=0.01)
    # Cached posed grids are reused for the same key and rebuilt for a new one.
    calls: list[int] = []

    def counting(points: torch.Tensor, ray_ids: torch.Tensor) -> torch.Tensor:
        calls.append(points.shape[0])
        return occupied(points, ray_ids)

    sampler.refine = False
    sampler.sample(origins, dirs, frame_ids, boxes, counting, stratified=True, cache_key=0)
    assert calls == []
    sampler.sample(origins, dirs, frame_ids, boxes, counting, stratified=True, cache_key=1)
    assert sum(calls) == 2 * 64**3


def test_nerfacc_sampler_marches_a_batch_of_many_frames_in_one_call(nerfacc_standin) -> None:
    """Rays of several frames: one traverse_grids call, each ray only in its own frame's
    grid (here the frames' balls sit at different places, each box around its own)."""
    n_frames = 5
    shifts = torch.stack([torch.tensor([0.03 * f, -0.02 * f, 0.01 * f]) for f in range(n_frames)])
    origins, dirs, _ = ball_rays(600, seed=4)
    frame_ids = torch.arange(600) % n_frames
    origins = origins + shifts[frame_ids]  # each frame's camera moved with its ball
    margin = 0.01
    boxes = torch.cat([CENTRE + shifts - RADIUS - margin, CENTRE + shifts + RADIUS + margin], 1)

    def occupied(points: torch.Tensor, ray_ids: torch.Tensor) -> torch.Tensor:
        return in_ball(points - shifts[frame_ids[ray_ids]], margin=0.003)

    def shifted_radiance(points: torch.Tensor, ray_ids: torch.Tensor):
        return radiance(points - shifts[frame_ids[ray_ids]], ray_ids)

    sampler = NerfaccSampler(step_size=5e-4, posed_resolution=48)
    packed = sampler.sample(origins, dirs, frame_ids, boxes, occupied, stratified=True)
    assert nerfacc_standin.calls["traverse_grids"] == 1
    out = render_samples(packed, origins, dirs, shifted_radiance)
    _, expected = closed_form(origins - shifts[frame_ids], dirs)
    assert float(expected.max()) > 0.9 and float((expected == 0).float().mean()) > 0.1
    assert torch.allclose(out["opacity"], expected, atol=0.02)


def test_nerfacc_sampler_host_syncs_do_not_grow_with_the_frames_in_a_batch(
    nerfacc_standin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With its grids cached, a batch from 12 frames waits on the device as often as one
    from 2 (one unique, one box check, one marching call), not once per frame."""
    origins, dirs, _ = ball_rays(600, seed=8)
    boxes = frame_aabbs()[:1].expand(12, 6).contiguous()
    sampler = NerfaccSampler(step_size=1e-3, posed_resolution=16, refine=False)
    syncs = []
    for n_frames in (2, 12):
        frame_ids = torch.arange(600) % n_frames
        occupied = occupied_fn_for(torch.zeros_like(frame_ids))
        sampler.sample(origins, dirs, frame_ids, boxes, occupied, cache_key=0)  # grids built
        with count_host_syncs(monkeypatch) as counts:
            sampler.sample(origins, dirs, frame_ids, boxes, occupied, cache_key=0)
        syncs.append(sum(counts.values()))
    assert syncs[0] == syncs[1], syncs


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_packed_rendering_with_nerfacc_kernels_matches_batched_with_gradients(
    device: str, request: pytest.FixtureRequest
) -> None:
    device_ = kernel_device(device, request)
    origins, dirs, frame_ids = ball_rays(100, seed=3)
    batch = TorchSampler(64).sample(
        origins, dirs, frame_ids, frame_aabbs(), occupied_fn_for(frame_ids), False
    )
    gen = torch.Generator().manual_seed(5)
    sigmas = (torch.rand(100, 64, generator=gen) * 50 * batch.mask).to(device_)
    rgbs = torch.rand(100, 64, 3, generator=gen).to(device_)
    mask, t_starts, t_ends = (x.to(device_) for x in (batch.mask, batch.t_starts, batch.t_ends))
    ray_ids, sample_ids = torch.nonzero(mask, as_tuple=True)
    leaves = []
    outs = []
    for packed in (False, True):
        s = (
            sigmas[mask].clone().requires_grad_(True)
            if packed
            else sigmas.clone().requires_grad_(True)
        )
        c = rgbs[mask].clone().requires_grad_(True) if packed else rgbs.clone().requires_grad_(True)
        if packed:
            out = render_packed(
                s, c, t_starts[mask], t_ends[mask], ray_ids, 100, background=BACKGROUND.to(device_)
            )
        else:
            out = render_batched(s, c, t_starts, t_ends, background=BACKGROUND.to(device_))
        # A loss touching every output, so every gradient path is compared.
        (out["rgb"].square().sum() + out["opacity"].sum() + 0.1 * out["depth"].sum()).backward()
        leaves.append((s, c))
        outs.append(out)
    dense, packed_out = outs
    for key in ("rgb", "opacity", "depth"):
        assert torch.allclose(dense[key], packed_out[key], atol=1e-5), key
    assert torch.allclose(packed_out["weights"], dense["weights"][ray_ids, sample_ids], atol=1e-6)
    (ds, dc), (ps, pc) = leaves
    assert (
        ds.grad is not None and ps.grad is not None and dc.grad is not None and pc.grad is not None
    )
    assert float(ps.grad.abs().max()) > 1e-3, "the densities get a gradient"
    assert torch.allclose(ps.grad, ds.grad[mask], rtol=1e-4, atol=1e-6)
    assert torch.allclose(pc.grad, dc.grad[mask], rtol=1e-4, atol=1e-6)
    if device == "cpu":
        standin = request.getfixturevalue("nerfacc_standin")
        assert standin.calls["exclusive_sum"] == 2, "forward and backward ran nerfacc's scan"


def ball_batches(
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, SampleBatch, SampleBatch]:
    """200 rays at the ball and their samples in both layouts: origins, dirs (200,3), the
    torch sampler's batched samples and nerfacc's packed ones."""
    origins, dirs, frame_ids = ball_rays(200, seed=seed)
    boxes = frame_aabbs()
    occupied = occupied_fn_for(frame_ids)
    dense = TorchSampler(128).sample(origins, dirs, frame_ids, boxes, occupied, stratified=False)
    packed = NerfaccSampler(step_size=5e-4, posed_resolution=48).sample(
        origins, dirs, frame_ids, boxes, occupied, stratified=False
    )
    return origins, dirs, dense, packed


def test_visible_samples_drop_only_what_is_hidden(nerfacc_standin) -> None:
    """Early termination keeps every sample with transmittance >= eps, in both layouts,
    and the render of the kept samples differs by less than eps per ray."""
    origins, dirs, dense, packed = ball_batches(seed=6)

    def opaque(points: torch.Tensor, ray_ids: torch.Tensor):
        return 40 * radiance(points, ray_ids)[0], radiance(points, ray_ids)[1]

    eps = 1e-3
    for batch in (dense, packed):
        points, ray_ids = batch.eval_points(origins, dirs)
        sigma, _ = opaque(points, ray_ids)
        keep = visible_samples(batch, sigma, eps)
        assert 0.05 < float(keep.float().mean()) < 0.5, "an opaque ball hides most of itself"
        full = render_samples(batch, origins, dirs, opaque, background=BACKGROUND)
        cut = render_samples(batch.select(keep), origins, dirs, opaque, background=BACKGROUND)
        assert float((full["rgb"] - cut["rgb"]).abs().max()) < 2 * eps
        assert int(cut["n_evaluated"]) == int(keep.sum())


def test_deferred_colour_is_computed_only_where_it_shows(nerfacc_standin) -> None:
    """A radiance that defers its colour: with ``color_min_weight`` 0 the render and its
    gradients equal the direct one's; above it, only samples over that weight are coloured
    and each pixel moves by at most the weight dropped on its ray."""
    origins, dirs, dense, packed = ball_batches(seed=7)
    gen = torch.Generator().manual_seed(8)
    for batch in (dense, packed):
        _check_deferred_colour(batch, origins, dirs, gen)


def _check_deferred_colour(
    batch: SampleBatch, origins: torch.Tensor, dirs: torch.Tensor, gen: torch.Generator
) -> None:
    points, _ = batch.eval_points(origins, dirs)
    # An opaque ball with a colour per sample, and learnable scales for a gradient.
    colours = torch.rand(points.shape[0], 3, generator=gen)
    scale = torch.ones(2, requires_grad=True)
    coloured: list[torch.Tensor] = []

    def direct(p: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return scale[0] * 40 * radiance(p, r)[0], scale[1] * colours

    def color_of(rows: torch.Tensor) -> torch.Tensor:
        coloured.append(rows)
        return scale[1] * colours[rows]

    def deferred(p: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, DeferredColor]:
        return scale[0] * 40 * radiance(p, r)[0], color_of

    full = render_samples(batch, origins, dirs, direct, background=BACKGROUND)
    (full_grad,) = torch.autograd.grad(full["rgb"].sum(), scale)
    same = render_samples(batch, origins, dirs, deferred, background=BACKGROUND)
    (same_grad,) = torch.autograd.grad(same["rgb"].sum(), scale)
    assert torch.allclose(same["rgb"], full["rgb"], atol=1e-6)
    assert torch.allclose(same_grad, full_grad, rtol=1e-5)
    weights = full["weights"] if batch.packed else full["weights"][batch.mask]
    visible = weights > 0
    assert len(coloured[-1]) == int(visible.sum()), "min weight 0: every weighted sample"

    min_weight = 1e-3
    cut = render_samples(
        batch, origins, dirs, deferred, background=BACKGROUND, color_min_weight=min_weight
    )
    kept = coloured[-1]
    assert torch.equal(kept, torch.nonzero(weights.detach() > min_weight).squeeze(1))
    assert 0.05 < len(kept) / int(visible.sum()) < 0.6, "an opaque ball hides most of itself"
    dropped = weights.detach().clone()
    dropped[kept] = 0.0
    assert batch.ray_indices is not None or batch.mask is not None
    ray_ids = (
        batch.ray_indices if batch.ray_indices is not None else torch.nonzero(batch.mask)[:, 0]
    )
    bound = torch.zeros(len(origins)).index_add(0, ray_ids.long(), dropped)
    diff = (cut["rgb"] - full["rgb"]).abs().amax(dim=1)
    assert (diff <= bound + 1e-6).all()
    assert torch.equal(cut["opacity"], full["opacity"])


def test_sample_batch_eval_points_packed_layout() -> None:
    origins = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]])
    dirs = torch.tensor([[0.0, 0, 1], [0.0, 1, 0]])
    batch = SampleBatch(
        torch.tensor([0.0, 1.0, 2.0]),
        torch.tensor([1.0, 2.0, 4.0]),
        2,
        ray_indices=torch.tensor([0, 0, 1]),
    )
    points, ray_ids = batch.eval_points(origins, dirs)
    assert torch.equal(points, torch.tensor([[0.0, 0, 0.5], [0.0, 0, 1.5], [1.0, 3.0, 0]]))
    assert ray_ids.tolist() == [0, 0, 1] and batch.n_evaluated == 3
