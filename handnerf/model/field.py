"""The canonical radiance field: a hash grid for density, a small MLP for colour.

Density lives in the canonical (flat-pose) hand and does not depend on pose. Colour does:
a light fixed in the world shades a finger differently once it has turned, and another
finger may stand between it and the light. So next to the geometry features the colour
MLP sees the posed surface normal in world space, the sample's self-shadow visibility of
fixed world directions (:mod:`handnerf.model.visibility`), optionally the blended bone
rotation, and the world-space view direction in spherical harmonics.

A per-camera affine colour correction (:class:`CameraColorAffine`) absorbs what the field
cannot: the cameras of a real rig differ in white balance, gain and response, so one
radiance cannot match all of them at once; without a per-camera correction the field bakes
the disagreement into view-dependent colour and floaters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from handnerf.config import choice
from handnerf.errors import ConfigError, ParameterError
from handnerf.model.encoding import EncodingConfig, make_hash_grid

#: Above this, trunc_exp's gradient stops growing (exp(15) ~ 3.3e6): keeps early steps stable.
_TRUNC_EXP_GRAD_LIMIT = 15.0


class _TruncExp(torch.autograd.Function):
    """exp(x) whose backward clamps x, as in Instant-NGP's density activation.

    Computed and saved in float32 whatever the input: under fp16 autocast the MLP hands
    over float16, where exp overflows above x ~ 11.1, so the backward's exp(min(x, 15))
    would be inf and the GradScaler would silently skip the step.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        x32 = x.float()
        ctx.save_for_backward(x32)
        return torch.exp(x32)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x32,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad.float() * torch.exp(x32.clamp(max=_TRUNC_EXP_GRAD_LIMIT))


def trunc_exp(x: Tensor) -> Tensor:
    """exp with a clamped gradient; same shape as ``x``, float32."""
    return _TruncExp.apply(x)


def spherical_harmonics(dirs: Tensor, degree: int) -> Tensor:
    """Real spherical harmonics of unit directions, tiny-cuda-nn ordering.

    dirs (N,3) unit -> (N, degree**2); ``degree`` in 1..4 (bands 0..degree-1).
    """
    if not 1 <= degree <= 4:
        raise ConfigError(f"field.view_sh_degree must be 0 (off) or 1..4, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (xx - yy),
        ]
    if degree > 3:
        out += [
            0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * x * y * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


#: Rows per call of an MLP at inference. A chunk's hidden activations (64 wide: 2 MB) stay
#: in cache; a large batch's (tens of MB) go to memory and back between layers. Measured
#: on the demo's density MLP on 2 cores: 240k rows 22 ms in one call, 6 ms in chunks of
#: 8192; 100k rows 2.8 -> 2.2 ms; the same values there, bit for bit.
INFERENCE_ROWS = 8192


class ReluMLP(nn.Sequential):
    """A Linear-ReLU stack (made by :func:`relu_mlp`; a plain ``nn.Sequential`` otherwise:
    its state dict, indexing and slicing).

    Without gradients (inference) on the CPU it runs in chunks of :data:`INFERENCE_ROWS`
    rows: each row's result is the same, only faster (a GPU is better served by one large
    launch).
    """

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """x (N, n_in) -> (N, n_out)."""
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.shape[0] <= INFERENCE_ROWS:
            return super().forward(x)
        return torch.cat([super(ReluMLP, self).forward(part) for part in x.split(INFERENCE_ROWS)])


def relu_mlp(n_in: int, hidden: int, n_hidden_layers: int, n_out: int) -> ReluMLP:
    """Linear-ReLU stack: n_in -> hidden (x n_hidden_layers) -> n_out, no output activation."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return ReluMLP(*layers)


class CameraColorAffine(nn.Module):
    """Per-camera 3x3 colour matrix + bias, initialised to the identity.

    Applied to a ray's *premultiplied* rendered colour before the background is composited:
    ``M_c @ rgb + b_c * opacity``. Since the map is affine and the weights sum to the
    opacity, this equals correcting every sample's radiance, so the background (which the
    camera saw through its own pipeline in the ground truth, or which is synthetic) is left
    alone and an empty ray stays empty.
    """

    def __init__(self, n_cameras: int) -> None:
        super().__init__()
        if n_cameras < 1:
            raise ConfigError(f"field: n_cameras must be >= 1, got {n_cameras}")
        self.n_cameras = n_cameras
        self.matrix = nn.Parameter(torch.eye(3).repeat(n_cameras, 1, 1))
        self.bias = nn.Parameter(torch.zeros(n_cameras, 3))

    def forward(self, rgb: Tensor, opacity: Tensor, camera_ids: Tensor | None) -> Tensor:
        """rgb (R,3) premultiplied, opacity (R,), camera_ids (R,) long or None -> (R,3).

        ``camera_ids=None`` (a camera never seen in training) leaves the colour unchanged.
        """
        if camera_ids is None:
            return rgb
        camera_ids = camera_ids.long()
        if camera_ids.numel() and (
            int(camera_ids.min()) < 0 or int(camera_ids.max()) >= self.n_cameras
        ):
            raise ParameterError(
                f"camera_ids must lie in [0, {self.n_cameras}) (n_cameras), "
                f"got range [{int(camera_ids.min())}, {int(camera_ids.max())}]"
            )
        matrix = self.matrix[camera_ids]
        return (matrix @ rgb.unsqueeze(-1)).squeeze(-1) + self.bias[camera_ids] * opacity[:, None]


@dataclass
class FieldConfig:
    """Settings of :class:`HashGridField`."""

    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    hidden_dim: int = 64
    n_hidden_layers: int = 1
    geo_feat_dim: int = 15
    #: The colour's geometry features come from a hash grid of their own (same settings as
    #: ``encoding``) instead of the density MLP's extra outputs. Shared, the grid's entries
    #: near the surface serve the density's steep, fast-moving gradients first, and the
    #: colour learns small features (nails, creases) slowly: on the demo capture the
    #: colour at the surface is 1.1 dB better after 300 steps with a grid of its own, the
    #: nails 2.7 dB, and ``make demo`` 1.3 dB inside the mask (docs/benchmarks.md, "The
    #: avatar learns no nails"). Costs a second grid lookup per coloured sample.
    separate_color_grid: bool = True
    #: 0: the colour sees every self-shadow visibility (one per direction). N > 0: it sees
    #: N learnt lights instead, each a convex mix (softmax weights) of the directions'
    #: visibilities. Raw, a dense set of directions lets the colour MLP key a training
    #: pose's appearance on its whole visibility pattern, which does not carry to new
    #: poses; a light mixes directions but cannot single out a pattern, and with many
    #: directions it can gather those near a real light (a sharp cast shadow) or spread
    #: over all of them (ambient occlusion).
    visibility_lights: int = 4
    #: Initial pre-activation density: 100 * trunc_exp(-1) ~ 37 /m, i.e. alpha ~ 0.04 per
    #: mm-sized step, so training starts from nearly empty space, not from fog.
    density_bias_init: float = -1.0
    #: sigma = density_scale * trunc_exp(h). Canonical space is in metres, where a
    #: hand's opaque density is ~1e3 /m; the scale puts that within ~2 units of the
    #: initial pre-activation instead of ~8, so the field becomes opaque in tens of
    #: steps rather than thousands.
    density_scale: float = 100.0
    color_hidden_dim: int = 64
    n_color_hidden_layers: int = 2
    #: Colour sees the posed surface normal in world space (3 numbers): with a light
    #: fixed in the world, shading is mostly a function of albedo and this normal, so
    #: it generalises to poses whose rotations were never seen in training.
    use_world_normal: bool = True
    #: Colour also sees the blended bone rotation (9 numbers). Off by default: it
    #: fits training poses but extrapolates badly to novel ones (measured on the demo).
    use_pose_rotation: bool = False
    #: SH degree of the view direction (tcnn convention, degree**2 terms); 0 = off.
    view_sh_degree: int = 4
    #: How colour is formed. "mlp": one MLP maps every colour input to RGB. "shaded":
    #: RGB = albedo(canonical features) x shading(world normal, visibility), refined
    #: by a residual MLP of every input (zero at the start) in logit space. With a light
    #: fixed in the world, a canonical albedo times a world-space shading term is what
    #: the image is made of, so one shading function learned from every pixel serves
    #: every pose and view instead of each surface point learning its own.
    color_model: str = choice("mlp", ("mlp", "shaded"))
    #: Width of the shading MLP of ``color_model="shaded"``.
    shading_hidden_dim: int = 32
    use_camera_affine: bool = True
    #: Canonical AABB [xmin, ymin, zmin, xmax, ymax, zmax] in metres; normally set from
    #: the canonical hand mesh by the caller (``aabb=`` argument or :meth:`set_aabb`).
    aabb: list[float] = field(default_factory=lambda: [-0.15, -0.15, -0.15, 0.15, 0.15, 0.15])


class HashGridField(nn.Module):
    """Canonical density + pose-, view- and camera-aware colour.

    ``forward(x_canon (N,3) m, rot (N,3,3)|(N,9), view_dir (N,3), normal (N,3)) -> sigma (N,), rgb (N,3)``.
    """

    def __init__(
        self,
        cfg: FieldConfig | None = None,
        aabb: Tensor | Sequence[float] | None = None,
        n_cameras: int = 1,
        n_visibility: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        """``n_cameras``: cameras of the rig, one colour affine each; ``n_visibility``:
        self-shadow visibilities the colour also sees (see :mod:`handnerf.model.visibility`).
        Both come from the data and the avatar, not from the user's config. ``device``:
        where the field will run (it decides the hash grid's ``auto`` backend)."""
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else FieldConfig()
        self.n_visibility = n_visibility
        if cfg.view_sh_degree < 0 or cfg.view_sh_degree > 4:
            raise ConfigError(f"field.view_sh_degree must be 0..4, got {cfg.view_sh_degree}")
        if n_visibility < 0:
            raise ConfigError(f"field: n_visibility must be >= 0, got {n_visibility}")
        if cfg.geo_feat_dim < 0 or cfg.hidden_dim < 1 or cfg.color_hidden_dim < 1:
            raise ConfigError("field.hidden_dim, color_hidden_dim must be >= 1, geo_feat_dim >= 0")
        if cfg.color_model not in ("mlp", "shaded"):
            raise ConfigError(f"field.color_model must be mlp or shaded, got {cfg.color_model!r}")
        if cfg.visibility_lights < 0:
            raise ConfigError(
                f"field.visibility_lights must be >= 0 (0: off), got {cfg.visibility_lights}"
            )
        #: (n_visibility, lights) logits of each light's mix of directions, or None.
        self.light_logits: nn.Parameter | None = None
        n_vis_in = n_visibility
        if cfg.visibility_lights and n_visibility:
            # Small random logits: each light starts as a near-even mix (ambient occlusion)
            # and the colour MLP's different weights on the lights pull them apart.
            self.light_logits = nn.Parameter(
                0.01 * torch.randn(n_visibility, cfg.visibility_lights, device=device)
            )
            n_vis_in = cfg.visibility_lights
        #: Visibility numbers the colour MLP takes: the lights, else every direction.
        self.n_light_inputs = n_vis_in
        n_shading_in = (3 if cfg.use_world_normal else 0) + n_vis_in
        if cfg.color_model == "shaded" and (cfg.geo_feat_dim < 1 or n_shading_in == 0):
            raise ConfigError(
                "field.color_model=shaded needs geo_feat_dim >= 1 (albedo) and a world normal "
                "or visibility (shading)"
            )
        self.register_buffer("aabb", torch.zeros(6))
        self.set_aabb(aabb if aabb is not None else cfg.aabb)

        self.encoding = make_hash_grid(cfg.encoding, n_input_dims=3, device=device)
        n_enc = int(self.encoding.n_output_dims)
        # With a colour grid of its own the density MLP outputs the density alone.
        n_density_out = 1 if cfg.separate_color_grid else 1 + cfg.geo_feat_dim
        self.density_mlp = relu_mlp(n_enc, cfg.hidden_dim, cfg.n_hidden_layers, n_density_out)
        self.color_encoding: nn.Module | None = None
        self.color_feature_mlp: nn.Sequential | None = None
        if cfg.separate_color_grid:
            if cfg.geo_feat_dim < 1:
                raise ConfigError("field.separate_color_grid needs geo_feat_dim >= 1")
            self.color_encoding = make_hash_grid(cfg.encoding, n_input_dims=3, device=device)
            self.color_feature_mlp = relu_mlp(
                int(self.color_encoding.n_output_dims),
                cfg.hidden_dim,
                cfg.n_hidden_layers,
                cfg.geo_feat_dim,
            )
        with torch.no_grad():
            last = self.density_mlp[-1]
            assert isinstance(last, nn.Linear)
            last.bias[0] = cfg.density_bias_init

        n_color_in = (
            cfg.geo_feat_dim
            + (3 if cfg.use_world_normal else 0)
            + (9 if cfg.use_pose_rotation else 0)
            + n_vis_in
            + cfg.view_sh_degree**2
        )
        if n_color_in == 0:
            raise ConfigError("field: colour has no inputs (geo_feat_dim=0, no pose, no view)")
        self.color_mlp = relu_mlp(n_color_in, cfg.color_hidden_dim, cfg.n_color_hidden_layers, 3)
        self.albedo_mlp: nn.Sequential | None = None
        self.shading_mlp: nn.Sequential | None = None
        if cfg.color_model == "shaded":
            self.albedo_mlp = relu_mlp(cfg.geo_feat_dim, cfg.color_hidden_dim, 1, 3)
            self.shading_mlp = relu_mlp(n_shading_in, cfg.shading_hidden_dim, 1, 3)
            # The residual starts at zero: colour is albedo x shading until the data asks
            # for more (sheen, what the shading inputs cannot explain).
            last = self.color_mlp[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.camera_affine: CameraColorAffine | None = (
            CameraColorAffine(n_cameras) if cfg.use_camera_affine else None
        )

    @torch.no_grad()
    def set_aabb(self, aabb: Tensor | Sequence[float]) -> None:
        """Set the canonical AABB (6,) ``[min xyz, max xyz]`` in metres."""
        box = torch.as_tensor(aabb, dtype=torch.float32).reshape(-1)
        if box.shape != (6,) or not torch.isfinite(box).all() or not (box[3:] > box[:3]).all():
            raise ParameterError(
                f"field.aabb must be 6 finite numbers [min xyz, max xyz] with max > min, got {box.tolist()}"
            )
        self.aabb.copy_(box.to(self.aabb.device))

    def normalize(self, x_canon: Tensor) -> tuple[Tensor, Tensor]:
        """Canonical metres (N,3) -> positions in [0,1]^3 (N,3) (clamped) and inside mask (N,)."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        u = (x_canon - lo) / (hi - lo)
        inside = ((u >= 0) & (u <= 1)).all(dim=-1)
        return u.clamp(0.0, 1.0), inside

    def density_and_features(self, x_canon: Tensor) -> tuple[Tensor, Tensor]:
        """x_canon (N,3) metres -> sigma (N,) >= 0 and what :meth:`color` takes of the point
        (the first half of :meth:`forward`): the geometry features (N,geo_feat_dim), or with
        ``separate_color_grid`` the point's grid coordinates (N,3) in [0,1]."""
        if x_canon.ndim != 2 or x_canon.shape[-1] != 3:
            raise ParameterError(
                f"field: x_canon must have shape (N,3), got {tuple(x_canon.shape)}"
            )
        u, inside = self.normalize(x_canon.float())
        h = self.density_mlp(self.encoding(u).float())
        # Outside the canonical box there is no hand: zero density, not a clamped copy of
        # the boundary cell that would smear the border across space.
        sigma = torch.where(
            inside, self.cfg.density_scale * trunc_exp(h[:, 0]), torch.zeros_like(h[:, 0])
        )
        # A colour grid of its own is looked up in color(), only for the samples that get a
        # colour (inference colours the visible ones alone): hand it the grid coordinates.
        return sigma, (u if self.color_encoding is not None else h[:, 1:])

    def density(self, x_canon: Tensor) -> Tensor:
        """x_canon (N,3) metres -> sigma (N,) >= 0 (per metre)."""
        return self.density_and_features(x_canon)[0]

    def forward(
        self,
        x_canon: Tensor,
        rot: Tensor | None,
        view_dir: Tensor,
        normal: Tensor | None = None,
        visibility: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """x_canon (N,3) m, rot (N,3,3) or (N,9) canonical->posed, view_dir (N,3) world,
        normal (N,3) unit posed-surface normal in world space (needed with use_world_normal),
        visibility (N, n_visibility) in [0,1] (needed when n_visibility > 0).

        Returns sigma (N,) >= 0 and rgb (N,3) in [0,1].
        """
        sigma, geo = self.density_and_features(x_canon)
        return sigma, self.color(geo, rot, view_dir, normal, visibility)

    def color(
        self,
        geo: Tensor,
        rot: Tensor | None,
        view_dir: Tensor,
        normal: Tensor | None = None,
        visibility: Tensor | None = None,
        lights_mixed: bool = False,
    ) -> Tensor:
        """rgb (N,3) in [0,1] from the geometry features ``geo`` of
        :meth:`density_and_features` (with ``separate_color_grid``, the coordinates the colour
        grid's features are looked up at) and the other inputs of :meth:`forward` (the second
        half of it: inference computes colour only where a sample is visible). ``rot`` may
        be None unless ``use_pose_rotation``. ``lights_mixed``: ``visibility`` is already
        :meth:`mix_lights`' (N, lights), not (N, n_visibility) directions."""
        if self.color_encoding is not None and self.color_feature_mlp is not None:
            geo = self.color_feature_mlp(self.color_encoding(geo).float())
        n = geo.shape[0]
        inputs = [geo]
        shading_inputs: list[Tensor] = []
        if self.cfg.use_world_normal:
            if normal is None or normal.shape != (n, 3):
                got = None if normal is None else tuple(normal.shape)
                raise ParameterError(
                    f"field: normal must have shape ({n},3) with use_world_normal, got {got}"
                )
            inputs.append(normal.float())
            shading_inputs.append(inputs[-1])
        if self.cfg.use_pose_rotation:
            if rot is None or rot.shape not in ((n, 3, 3), (n, 9)):
                raise ParameterError(
                    f"field: rot must have shape ({n},3,3) or ({n},9), got "
                    f"{None if rot is None else tuple(rot.shape)}"
                )
            inputs.append(rot.reshape(n, 9).float())
        if self.n_visibility > 0:
            width = self.n_light_inputs if lights_mixed else self.n_visibility
            if visibility is None or visibility.shape != (n, width):
                got = None if visibility is None else tuple(visibility.shape)
                raise ParameterError(f"field: visibility must have shape ({n},{width}), got {got}")
            seen = visibility.float() if lights_mixed else self.mix_lights(visibility)
            # Centred: an unshadowed sample and a shadowed one differ in sign, not scale.
            inputs.append(seen * 2.0 - 1.0)
            shading_inputs.append(inputs[-1])
        if self.cfg.view_sh_degree > 0:
            if view_dir.shape != (n, 3):
                raise ParameterError(
                    f"field: view_dir must have shape ({n},3), got {tuple(view_dir.shape)}"
                )
            dirs = torch.nn.functional.normalize(view_dir.float(), dim=-1)
            inputs.append(spherical_harmonics(dirs, self.cfg.view_sh_degree))
        logits = self.color_mlp(torch.cat(inputs, dim=-1))
        if self.albedo_mlp is None or self.shading_mlp is None:
            return torch.sigmoid(logits)
        # Both factors lie in (0,1), so their product is a colour; the residual acts on its
        # logit, which keeps the result in (0,1) with a gradient everywhere (no clamp).
        albedo = torch.sigmoid(self.albedo_mlp(geo))
        shading = torch.sigmoid(self.shading_mlp(torch.cat(shading_inputs, dim=-1)))
        base = (albedo * shading).clamp(1e-6, 1.0 - 1e-6)
        return torch.sigmoid(torch.logit(base) + logits)

    def mix_lights(self, visibility: Tensor) -> Tensor:
        """(..., n_visibility) per-direction visibility -> (..., n_light_inputs): each
        learnt light's mix of the directions (the visibility itself without lights).
        Linear, so it commutes with blending: inference mixes each vertex's once."""
        seen = visibility.float()
        if self.light_logits is not None:
            seen = seen @ torch.softmax(self.light_logits.float(), dim=0)  # (..., lights)
        return seen

    def apply_camera_affine(
        self, rgb: Tensor, opacity: Tensor, camera_ids: Tensor | None
    ) -> Tensor:
        """Per-ray colour correction of premultiplied rgb (R,3) with opacity (R,) -> (R,3)."""
        if self.camera_affine is None:
            return rgb
        return self.camera_affine(rgb, opacity, camera_ids)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by learning-rate group: 'grid' (encoding), 'mlp', 'camera'."""
        grid = list(self.encoding.parameters())
        if self.color_encoding is not None:
            grid += list(self.color_encoding.parameters())
        mlp = [
            p
            for m in (
                self.density_mlp,
                self.color_feature_mlp,
                self.color_mlp,
                self.albedo_mlp,
                self.shading_mlp,
            )
            if m is not None
            for p in m.parameters()
        ]
        if self.light_logits is not None:
            mlp.append(self.light_logits)
        camera = list(self.camera_affine.parameters()) if self.camera_affine is not None else []
        return {"grid": grid, "mlp": mlp, "camera": camera}
