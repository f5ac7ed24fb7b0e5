"""The hand avatar: sampler -> deformer -> canonical field -> volume renderer.

``HandAvatar`` owns the learnable parts (the canonical :class:`HashGridField` and its
:class:`CanonicalOccupancyGrid`) and composes them with the fixed MANO skinning:

1. :meth:`HandAvatar.pose_frames` runs MANO once per frame and prepares the
   :class:`InverseLBSDeformer` lookup structures (with per-vertex normals and
   :class:`VertexVisibility`), the posed bounding boxes, and a coarse
   posed-space "shell" grid of voxels near the posed surface.
2. :meth:`HandAvatar.render_rays` asks the sampler for samples inside each posed box a
   :class:`RayBundle` ray crosses;
   a sample is evaluated only if it lies in the shell, is within the deformer's distance of
   the surface, and its canonical position is occupied. Those samples go to the field with
   their blended posed normal and self-shadow visibility (pose-dependent shading) and the
   view direction; the volume renderer composites them, with the per-camera colour affine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from handnerf.errors import ConfigError
from handnerf.hand.hand_model import HandModel, HandOutput, ManoParams
from handnerf.model.deformer import DeformResult, FrameDeformation, InverseLBSDeformer
from handnerf.model.deformer_config import DeformerConfig
from handnerf.model.field import FieldConfig, HashGridField
from handnerf.model.frame_deformation import fp32_geometry
from handnerf.model.occupancy import CanonicalOccupancyGrid, OccupancyConfig
from handnerf.model.rays import RayBundle
from handnerf.model.sampler import NerfaccSampler, SampleBatch, SamplerConfig, make_sampler
from handnerf.model.surface_search import surface_lattice
from handnerf.model.visibility import PosedMesh, VertexVisibility, VisibilityConfig
from handnerf.model.volume import DeferredColor, render_samples, visible_samples


@dataclass
class AvatarConfig:
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    #: Samples farther than 8 mm from the posed mesh are empty: the hand's radiance lives
    #: in a thin shell around MANO (a wider one only adds samples to evaluate). Judged by
    #: the distance to the posed triangles, with skinning weights at the closest point and
    #: pose correctives undone: right on real MANO's coarse mesh (large triangles).
    deformer: DeformerConfig = dataclasses.field(
        default_factory=lambda: DeformerConfig(
            max_distance=0.008, blend="surface", near="mesh", correctives=True
        )
    )
    occupancy: OccupancyConfig = dataclasses.field(default_factory=OccupancyConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    #: Self-shadowing: per-vertex visibility of world directions on the posed mesh, blended
    #: into every sample and given to the colour MLP (n_directions=0: off).
    visibility: VisibilityConfig = dataclasses.field(default_factory=VisibilityConfig)
    #: Padding (m) of the canonical box around the canonical mesh and of each posed box.
    canonical_margin: float = 0.02
    posed_margin: float = 0.015
    #: Resolution of the per-frame posed shell grid that pre-filters samples cheaply.
    shell_resolution: int = 96
    #: Early ray termination when rendering without gradients (validation, render, eval):
    #: samples whose transmittance, from the density of every sample, is below this get
    #: no colour (their weight is below it too). 0: off. Measured (docs/benchmarks.md,
    #: "Early ray termination"): 1.9x faster demo-model renders; in training the extra
    #: density pass costs more than it saves, so training evaluates every sample.
    early_stop_eps: float = 1e-4
    #: Training colours only the samples whose weight (from the densities, computed
    #: first) exceeds this; each of the others would change its pixel by at most that
    #: much. About a quarter of the evaluated samples pass on a trained demo avatar, and the
    #: colour (its grid, the blended visibility and rotation, the MLP) is most of a sample's
    #: cost. 0: every evaluated sample is coloured (as before).
    train_color_min_weight: float = 1e-5


@dataclass
class PosedFrames:
    """A set of posed frames ready for rendering (training frames, or a novel-pose sequence).

    aabbs (T,6) posed boxes; shell (T,S,S,S) bool voxels near the posed surface;
    deformation: the deformer's lookup structures.
    """

    aabbs: Tensor
    shell: Tensor
    deformation: FrameDeformation
    vertices: Tensor  # (T,V,3)
    #: ``(points (N,3), result) -> canonical (N,3)``: the canonical positions the field
    #: sees, with a gradient w.r.t. the pose (pose refinement); None: ``result.canonical``.
    pose_gradient: Callable[[Tensor, DeformResult], Tensor] | None = None
    #: ``(points (N,3), result) -> (N,)``: a factor of the density, 1 in value, whose
    #: gradient w.r.t. the pose is that of a soft shell edge (pose refinement); None: none.
    shell_gradient: Callable[[Tensor, DeformResult], Tensor] | None = None
    #: Inference's per-vertex light mix of the visibility, and the logits' version it is of.
    _lights: tuple[tuple[int, int], Tensor] | None = dataclasses.field(
        default=None, init=False, repr=False
    )

    def __len__(self) -> int:
        return int(self.aabbs.shape[0])

    def vertex_lights(self, field: HashGridField) -> Tensor | None:
        """(T * V, lights) ``field.mix_lights`` of every posed vertex's visibility (None
        without visibility), computed once per version of the field's light logits."""
        visibility = self.deformation.vertex_attributes
        if visibility is None:
            return None
        logits = field.light_logits
        # torch's in-place version counter: an optimiser step or a load changes it.
        key = (0, 0) if logits is None else (id(logits), logits._version)
        if self._lights is None or self._lights[0] != key:
            with torch.no_grad():
                self._lights = (key, field.mix_lights(visibility))
        return self._lights[1]


class _DeformCache:
    """Remembers the deformation of the last occupancy query, so the field's evaluation of the
    same samples (the accepted subset, in the same order) does not deform them twice.
    ``refined``: the result already carries the surface blend (``refine_to_surface``)."""

    def __init__(self) -> None:
        self.points: Tensor | None = None
        self.result: DeformResult | None = None
        self.refined = False

    def store(self, points: Tensor, keep: Tensor, result: DeformResult, keep_idx: Tensor) -> None:
        self.points = points[keep]
        self.result = result.subset(keep_idx)
        self.refined = False

    def replace(self, points: Tensor, result: DeformResult, refined: bool) -> None:
        self.points, self.result, self.refined = points, result, refined

    def lookup(self, points: Tensor) -> DeformResult | None:
        if (
            self.points is not None
            and self.points.shape == points.shape
            and torch.equal(self.points, points)
        ):
            return self.result
        return None


class HandAvatar(nn.Module):
    def __init__(
        self,
        cfg: AvatarConfig,
        hand_model: HandModel,
        betas: Tensor,
        n_cameras: int,
        device: torch.device | str = "cpu",
    ):
        """``device``: where the avatar will run (move it there with ``.to(device)``); it
        decides the device-dependent backends (the hash grid's ``auto``)."""
        super().__init__()
        self.cfg = cfg
        # Kept out of the module tree on purpose: a checkpoint must not carry the (licensed)
        # MANO model, only what was learned. The hand model stays on the CPU.
        self._hand = (hand_model,)
        self.register_buffer("betas", betas.detach().float().reshape(10).clone())
        with torch.no_grad():
            canon = hand_model.canonical_vertices(self.betas[None].to(hand_model.faces.device))[
                0
            ].cpu()
        self.register_buffer("canonical_vertices", canon, persistent=False)
        lo = canon.min(0).values - cfg.canonical_margin
        hi = canon.max(0).values + cfg.canonical_margin
        aabb = torch.cat([lo, hi])
        self.visibility = VertexVisibility(cfg.visibility)
        self.field = HashGridField(
            cfg.field,
            aabb=aabb,
            n_cameras=n_cameras,
            n_visibility=cfg.visibility.n_directions,
            device=device,
        )
        self.occupancy = CanonicalOccupancyGrid(aabb, cfg.occupancy)
        self.occupancy.init_from_points(canon)
        self.deformer = InverseLBSDeformer(cfg.deformer)
        if cfg.field.use_world_normal and cfg.deformer.backend == "grid":
            raise ConfigError(
                "model.deformer.backend=grid gives no surface normals; use kdtree/cdist/auto or "
                "set model.field.use_world_normal=false"
            )
        self._sampler: Any = None
        self._cache = _DeformCache()

    # ------------------------------------------------------------------ parts
    @property
    def hand_model(self) -> HandModel:
        return self._hand[0]

    @property
    def sampler(self) -> Any:
        if self._sampler is None:
            self._sampler = make_sampler(self.cfg.sampler, self.betas.device)
        return self._sampler

    def use_sampler(self, kind: str) -> None:
        """Sample with ``kind`` ("auto", "torch" or "nerfacc") from now on, e.g. to compare
        nerfacc's marching with the torch sampler on one fitted avatar. A kind that cannot
        run on the avatar's device raises :class:`ConfigError` here, not at the next render."""
        sampler_cfg = dataclasses.replace(self.cfg.sampler, kind=kind)
        sampler = make_sampler(sampler_cfg, self.betas.device)
        self.cfg = dataclasses.replace(self.cfg, sampler=sampler_cfg)
        self._sampler = sampler

    def backends(self) -> dict[str, str]:
        return {
            "encoding": str(self.field.encoding.backend_name),
            "sampler": "nerfacc" if isinstance(self.sampler, NerfaccSampler) else "torch",
            "deformer": self.deformer.resolve_backend(self.betas.device),
            "device": str(self.betas.device),
        }

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return self.field.param_groups()

    # ------------------------------------------------------------------ frames
    def _posed_hand(self, mano: ManoParams) -> HandOutput:
        """MANO's output for ``mano`` (T frames) posed with the subject's shape, on the hand
        model's device."""
        # Every frame is posed with the subject's shape: the canonical field lives in that
        # shape's canonical space (per-frame fits of InterHand2.6M jitter their betas).
        hand_device = self.hand_model.faces.device
        mano = ManoParams(
            global_orient=mano.global_orient.to(hand_device),
            hand_pose=mano.hand_pose.to(hand_device),
            betas=self.betas.to(hand_device, mano.betas.dtype)[None].expand(len(mano), -1).clone(),
            transl=mano.transl.to(hand_device),
        )
        return self.hand_model(mano)

    @torch.no_grad()
    def posed_mesh(self, mano: ManoParams) -> PosedMesh:
        """The posed MANO mesh of ``mano`` (T frames) with the subject's shape, as
        :meth:`pose_frames` poses it: vertices (T,V,3) float32 and faces (F,3), on the
        avatar's device (e.g. the other hand's shadow caster in a two-hand avatar)."""
        device = self.betas.device
        verts = self._posed_hand(mano).vertices.to(device).float()
        return PosedMesh(verts, self.hand_model.faces.to(device))

    @torch.no_grad()
    def pose_frames(self, mano: ManoParams, occluders: PosedMesh | None = None) -> PosedFrames:
        """Run MANO for ``mano`` (T frames) and prepare everything rendering them needs.

        ``occluders``: another mesh posed in the same T frames (e.g. the other hand's
        :meth:`posed_mesh`) that also shadows this hand in its self-shadow visibility;
        None: the hand's own mesh alone."""
        device = self.betas.device
        out = self._posed_hand(mano)
        verts = out.vertices.to(device).float()
        bones = out.bone_transforms.to(device).float()
        weights = self.hand_model.skinning_weights.to(device).float()
        faces = self.hand_model.faces.to(device)
        normals = vertex_normals(verts, faces)
        visibility = (
            self.visibility(verts, normals, faces, occluders).to(device)
            if self.visibility.enabled
            else None
        )
        deformation = self.deformer.prepare_frames(
            verts,
            bones,
            weights,
            vertex_normals=normals,
            vertex_attributes=visibility,
            faces=faces,
            canonical_vertices=self.canonical_vertices.to(device),
        )
        margin = self.cfg.posed_margin
        aabbs = torch.cat([verts.amin(1) - margin, verts.amax(1) + margin], dim=-1)
        # Judged by the distance to the mesh, a sample in the middle of a large triangle is
        # near the surface though far from every vertex: seed the shell with the triangles.
        seed_faces = faces if self.cfg.deformer.near == "mesh" else None
        shell = self._shell_grids(verts, aabbs, seed_faces)
        return PosedFrames(aabbs=aabbs, shell=shell, deformation=deformation, vertices=verts)

    def _shell_grids(self, verts: Tensor, aabbs: Tensor, faces: Tensor | None = None) -> Tensor:
        """(T,S,S,S) voxels within the deformer's max distance of some posed vertex (T,V,3)
        per frame, or with ``faces`` (F,3) of some point of the posed triangles."""
        res = self.cfg.shell_resolution
        t = verts.shape[0]
        size = (aabbs[:, 3:] - aabbs[:, :3]) / res  # (T,3)
        grid = torch.zeros(t, res, res, res, dtype=torch.float32, device=verts.device)
        for frame in range(t):
            # One frame at a time: a coarse mesh's lattice is ~10^5 points per frame.
            seeds = verts[frame : frame + 1]
            if faces is not None:
                seeds = surface_lattice(seeds, faces, float(size[frame].amin()))
            rel = (seeds[0] - aabbs[frame, :3]) / size[frame]
            idx = rel.floor().long().clamp(0, res - 1)
            flat = idx[:, 0] * res * res + idx[:, 1] * res + idx[:, 2]
            grid[frame].view(-1).scatter_(0, flat, 1.0)
        # Dilate by the deformer's reach, per axis (the voxels are not cubes). A cube
        # dilation is separable: three 1-D max-pools cost 3k instead of k^3 per voxel.
        reach = torch.ceil(self.cfg.deformer.max_distance / size.amin(0)).long() + 1
        grid = grid[:, None]
        for axis in range(3):
            k = [1, 1, 1]
            pad = [0, 0, 0]
            k[axis] = 2 * int(reach[axis]) + 1
            pad[axis] = int(reach[axis])
            grid = torch.nn.functional.max_pool3d(grid, tuple(k), stride=1, padding=tuple(pad))
        return grid[:, 0] > 0

    # ------------------------------------------------------------------ occupancy
    def in_shell(self, frames: PosedFrames, points: Tensor, frame_ids: Tensor) -> Tensor:
        """(M,) bool: the (M,3) posed ``points`` of frames ``frame_ids`` (M,) lie in their
        frame's box and in a voxel of its shell grid (a cheap test, no deformation)."""
        res = self.cfg.shell_resolution
        box = frames.aabbs[frame_ids]
        rel = (points - box[:, :3]) / (box[:, 3:] - box[:, :3]) * res
        idx = rel.floor().long()
        inside = ((idx >= 0) & (idx < res)).all(-1)
        idx = idx.clamp(0, res - 1)
        return inside & frames.shell[frame_ids, idx[:, 0], idx[:, 1], idx[:, 2]]

    def near_surface(
        self, frames: PosedFrames, points: Tensor, frame_ids: Tensor
    ) -> tuple[Tensor, Tensor, DeformResult]:
        """Which posed ``points`` (N,3) of frames ``frame_ids`` (N,) lie in their frame's
        shell: (N,) bool, their indices (K,), and their deformation (K rows; the
        distance-weighted blend: the samples kept get the closest-triangle weights of
        ``blend="surface"`` in :meth:`radiance`)."""
        keep = self.in_shell(frames, points, frame_ids)
        keep_idx = torch.nonzero(keep).squeeze(1)
        result = frames.deformation.deform(points[keep_idx], frame_ids[keep_idx], surface=False)
        return keep, keep_idx, result

    def deform_occupied(
        self, frames: PosedFrames, points: Tensor, frame_ids: Tensor, orient: bool = True
    ) -> tuple[Tensor, DeformResult]:
        """Deform (M,3) posed ``points`` (frames ``frame_ids`` (M,)) and test them: (M,) bool,
        near the posed surface and in an occupied canonical cell, and the deformation
        (M rows). The distance-weighted blend decides (``surface=False``); the samples kept
        get the closest-triangle weights of ``blend="surface"`` in :meth:`radiance`.
        ``orient=False`` leaves out the rotation and normal (see :meth:`sample_color`) and
        skips the blend of samples out of the deformer's reach (canonical: the point).
        The geometry runs in float32 whatever the autocast."""
        with fp32_geometry(points.device):
            result = frames.deformation.deform(
                points, frame_ids, surface=False, orient=orient, reach_only=not orient
            )
        return result.valid & self.occupancy.query(result.canonical), result

    def _occupied_fn(self, frames: PosedFrames, frame_ids: Tensor):
        def occupied(points: Tensor, ray_ids: Tensor) -> Tensor:
            with fp32_geometry(points.device):
                return occupied_fp32(points, ray_ids)

        def occupied_fp32(points: Tensor, ray_ids: Tensor) -> Tensor:
            keep, keep_idx, result = self.near_surface(frames, points, frame_ids[ray_ids])
            occ = result.valid & self.occupancy.query(result.canonical)
            keep[keep_idx] = occ
            self._cache.store(points, keep, result, torch.nonzero(occ).squeeze(1))
            return keep

        return occupied

    def occupancy_grids(self) -> list[CanonicalOccupancyGrid]:
        """The avatar's canonical occupancy grids (one; a two-hand avatar has one per hand)."""
        return [self.occupancy]

    @torch.no_grad()
    def update_occupancy(self, step: int) -> bool:
        return self.occupancy.update(step, self.field.density, n=1)

    # ------------------------------------------------------------------ rendering
    def render_rays(
        self,
        frames: PosedFrames,
        rays: RayBundle,
        background: Tensor,
        training: bool = False,
    ) -> dict[str, Tensor]:
        """Render R ``rays`` of ``frames`` (each of its ``frame_ids``, seen by its ``camera_ids``).

        Returns rgb (R,3) composited over ``background`` (R,3)|(3,), opacity (R,), depth (R,).
        ``training``: stratified (jittered) samples along each ray (unless
        ``model.sampler.stratified`` is false).
        """
        origins, dirs = rays.origins, rays.directions
        frame_ids, camera_ids = rays.frame_ids, rays.camera_ids
        occupied_fn = self._occupied_fn(frames, frame_ids)
        samples = self.sampler.sample(
            origins,
            dirs,
            frame_ids,
            frames.aabbs,
            occupied_fn=occupied_fn,
            stratified=training and self.cfg.sampler.stratified,
            cache_key=(id(frames), self.occupancy.version),
        )
        eps = self.cfg.early_stop_eps
        if eps > 0 and not torch.is_grad_enabled() and samples.n_evaluated:
            samples = self._drop_hidden(frames, samples, origins, dirs, frame_ids, eps)

        min_weight = self.cfg.train_color_min_weight if training else 0.0

        def radiance(points: Tensor, ray_ids: Tensor) -> tuple[Tensor, Tensor | DeferredColor]:
            if min_weight <= 0:
                cached = self._cache.lookup(points)
                return self.radiance(
                    frames, points, frame_ids[ray_ids], dirs[ray_ids], cached, self._cache.refined
                )
            with fp32_geometry(points.device):
                result = self._deformed(frames, points, frame_ids[ray_ids])
            sigma, geo = self.sample_density(frames, points, result)

            def color_of(rows: Tensor) -> Tensor:
                part = result.subset(rows)
                return self.sample_color(frames, part, geo[rows], dirs[ray_ids[rows]])

            return sigma, color_of

        def correct(rgb: Tensor, opacity: Tensor) -> Tensor:
            return self.field.apply_camera_affine(rgb, opacity, camera_ids)

        out = render_samples(
            samples, origins, dirs, radiance, background, correct, color_min_weight=min_weight
        )
        self._cache = _DeformCache()
        return out

    def _deformed(self, frames: PosedFrames, points: Tensor, frame_ids: Tensor) -> DeformResult:
        """The surface-blended deformation of ``points`` (N,3) of ``frame_ids`` (N,), from the
        occupancy query's cache when it holds these very points."""
        result = self._cache.lookup(points)
        if result is None:
            return frames.deformation.deform(points, frame_ids)
        if self._cache.refined:
            return result
        return frames.deformation.refine_to_surface(points, result)

    def _drop_hidden(
        self,
        frames: PosedFrames,
        samples: SampleBatch,
        origins: Tensor,
        dirs: Tensor,
        frame_ids: Tensor,
        eps: float,
    ) -> SampleBatch:
        """Early ray termination: the densities of all ``samples`` first, then only those
        still visible (transmittance >= ``eps``) go on to the colour."""
        points, ray_ids = samples.eval_points(origins, dirs)
        with fp32_geometry(points.device):
            result = self._deformed(frames, points, frame_ids[ray_ids])
        sigma = self.field.density(result.canonical)
        keep = visible_samples(samples, sigma, eps)
        self._cache.replace(points[keep], result.subset(keep), refined=True)
        return samples.select(keep)

    def radiance(
        self,
        frames: PosedFrames,
        points: Tensor,
        frame_ids: Tensor,
        dirs: Tensor,
        result: DeformResult | None = None,
        refined: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Density (M,) and colour (M,3) of posed ``points`` (M,3) of frames ``frame_ids``
        (M,) seen along unit ``dirs`` (M,3) (before any camera affine); ``result``: their
        deformation from the occupancy query (refined to the surface here unless
        ``refined``), None to deform them now."""
        with fp32_geometry(points.device):
            if result is None:
                result = frames.deformation.deform(points, frame_ids)
            elif not refined:
                result = frames.deformation.refine_to_surface(points, result)
        sigma, geo = self.sample_density(frames, points, result)
        return sigma, self.sample_color(frames, result, geo, dirs)

    def sample_density(
        self, frames: PosedFrames, points: Tensor, result: DeformResult
    ) -> tuple[Tensor, Tensor]:
        """The first half of :meth:`radiance`: density (M,) and geometry features (M,G) of
        the (M,3) posed ``points`` with their finished deformation ``result`` (from
        ``deform``, or :meth:`deform_occupied` then ``refine_to_surface``)."""
        canonical = result.canonical
        shell = None
        with fp32_geometry(points.device):
            if frames.pose_gradient is not None:
                canonical = frames.pose_gradient(points, result)
            if frames.shell_gradient is not None:
                shell = frames.shell_gradient(points, result)
        sigma, geo = self.field.density_and_features(canonical)
        if shell is not None:
            # Value 1, gradient only: the soft shell's pose gradient (train.pose_shell_softness).
            sigma = sigma * shell.to(sigma.dtype)
        return sigma, geo

    def sample_color(
        self, frames: PosedFrames, result: DeformResult, geo: Tensor, view_dirs: Tensor
    ) -> Tensor:
        """The second half of :meth:`radiance`: colour (M,3) of samples with deformation
        ``result`` and features ``geo`` (M,G) from :meth:`sample_density`, seen along
        ``view_dirs`` (M,3). The normal (and the rotation, if the field takes it) are
        blended here if the deformation left them out (``orient=False``), and so is the
        self-shadow visibility: the costly inputs of the colour, needed only where a sample
        is seen. The geometry runs in float32 whatever the autocast."""
        mixed = not torch.is_grad_enabled() and frames.deformation.vertex_attributes is not None
        with fp32_geometry(geo.device):
            rotation = self.field.cfg.use_pose_rotation
            result = frames.deformation.orient(result, rotation=rotation)
            # Inference: the lights are a linear mix of the directions, and so is the blend,
            # so each vertex's mix is blended (lights wide) instead of its directions.
            lights = frames.vertex_lights(self.field) if mixed else None
            visibility = frames.deformation.blend_attributes(result, lights)
        return self.field.color(
            geo, result.rotation, view_dirs, result.normal, visibility, lights_mixed=mixed
        )


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals (T,V,3) of meshes (T,V,3) with faces (F,3)."""
    faces = faces.long()
    a, b, c = (vertices[:, faces[:, i]] for i in range(3))
    face_normals = torch.cross(b - a, c - a, dim=-1)  # length = 2 x area
    normals = torch.zeros_like(vertices)
    for i in range(3):
        normals.index_add_(1, faces[:, i], face_normals)
    return torch.nn.functional.normalize(normals, dim=-1)
