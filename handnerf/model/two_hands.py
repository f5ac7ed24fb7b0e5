"""Two interacting hands in one avatar: a :class:`HandAvatar` per side, one volume render.

:class:`TwoHandAvatar` holds the right and the left hand of one subject, each with its own
canonical field and occupancy grid, each posed by its own MANO parameters. Rays are sampled
in the box around both posed hands. Every sample belongs to the hand whose posed surface is
closest (the deformer's closest point on each posed MANO mesh, or nearest vertex outside the
mesh modes): a sample between touching fingers of the two hands goes to the finger it is
nearest, so neither hand's density can reach into the other's space. A sample is then
evaluated only by its own hand (shell, distance, occupancy), and the samples of both hands
along a ray are composited together: where one hand is in front of the other, it occludes
it. ``only='right'`` or ``'left'`` renders one hand alone (the other's samples are empty).
Each hand's self-shadow visibility is cast against both posed hands
(``model.visibility.other_hand``), so one hand's shadow on the other moves with the pose.

The per-camera colour correction is one per camera, whichever hand a pixel shows: the
right hand's field holds it (the left one's is unused).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from handnerf.errors import ParameterError
from handnerf.hand.hand_model import HandModel, ManoParams
from handnerf.model.avatar import AvatarConfig, HandAvatar, PosedFrames
from handnerf.model.deformer import DeformResult
from handnerf.model.occupancy import CanonicalOccupancyGrid
from handnerf.model.rays import RayBundle
from handnerf.model.visibility import PosedMesh
from handnerf.model.volume import render_samples

#: The hands of a two-hand avatar, in the order of their index in an assignment.
SIDES: tuple[str, ...] = ("right", "left")


@dataclass
class TwoHandPosedFrames:
    """Both hands of T frames posed: ``hands[side]`` each hand's :class:`PosedFrames`,
    ``aabbs`` (T,6) the boxes around both posed hands."""

    hands: dict[str, PosedFrames]
    aabbs: Tensor

    def __len__(self) -> int:
        return int(self.aabbs.shape[0])

    @property
    def vertices(self) -> Tensor:
        """(T, V_right + V_left, 3) posed vertices of both hands, right first."""
        return torch.cat([self.hands[side].vertices for side in SIDES], dim=1)


@dataclass
class Assignment:
    """Which hand each of N posed samples belongs to.

    Attributes:
        owner: (N,) long, index into :data:`SIDES` of the closest posed surface, -1 where
            no hand's shell holds the sample.
        in_reach: ``side -> (K,)`` indices of the samples that ``side`` owns and that lie
            within its deformer's reach.
        results: ``side -> DeformResult`` of those K samples (distance-weighted blend).
    """

    owner: Tensor
    in_reach: dict[str, Tensor]
    results: dict[str, DeformResult]


class TwoHandAvatar(nn.Module):
    """The right and left :class:`HandAvatar` of one subject, rendered together.

    Args:
        cfg: one :class:`AvatarConfig` for both hands.
        hand_models: ``{'right': HandModel, 'left': HandModel}``.
        betas: ``{side: (10,)}`` each hand's shape (a subject's two hands share theirs in
            InterHand's fits, but are not forced to).
        n_cameras: cameras of the capture (per-camera colour correction).
    """

    def __init__(
        self,
        cfg: AvatarConfig,
        hand_models: dict[str, HandModel],
        betas: dict[str, Tensor],
        n_cameras: int,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        missing = [side for side in SIDES if side not in hand_models or side not in betas]
        if missing:
            raise ParameterError(f"TwoHandAvatar: no hand model or betas for {missing}")
        self.cfg = cfg
        self.hands = nn.ModuleDict(
            {
                side: HandAvatar(cfg, hand_models[side], betas[side], n_cameras, device=device)
                for side in SIDES
            }
        )
        self._cache: tuple[Tensor, Assignment] | None = None

    def hand(self, side: str) -> HandAvatar:
        """The :class:`HandAvatar` of ``side``."""
        if side not in SIDES:
            raise ParameterError(f"hand side must be one of {SIDES}, got {side!r}")
        return self.hands[side]  # type: ignore[return-value]

    @property
    def sampler(self):  # type: ignore[no-untyped-def]
        return self.hand("right").sampler

    @property
    def betas(self) -> Tensor:
        """(10,) the right hand's shape; its device is the avatar's (as ``HandAvatar.betas``)."""
        return self.hand("right").betas

    def alone(self, side: str) -> OneHandOfTwo:
        """``side`` rendered without the other hand, for :func:`~handnerf.model.renderer.render_camera`."""
        self.hand(side)  # checks the side
        return OneHandOfTwo(self, side)

    def backends(self) -> dict[str, str]:
        return self.hand("right").backends()

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Both hands' parameters by learning-rate group."""
        groups: dict[str, list[nn.Parameter]] = {}
        for side in SIDES:
            for name, params in self.hand(side).param_groups().items():
                groups.setdefault(name, []).extend(params)
        return groups

    def occupancy_grids(self) -> list[CanonicalOccupancyGrid]:
        """Each hand's canonical occupancy grid (right, left)."""
        return [self.hand(side).occupancy for side in SIDES]

    def update_occupancy(self, step: int) -> bool:
        return any([self.hand(side).update_occupancy(step) for side in SIDES])

    # ------------------------------------------------------------------ frames
    @torch.no_grad()
    def pose_frames(self, mano: dict[str, ManoParams]) -> TwoHandPosedFrames:
        """Pose both hands of T frames (``mano[side]`` T rows each).

        With ``model.visibility.other_hand`` (and self-shadowing on), each hand's
        visibility is cast against both posed meshes: the other hand's shadow on it (a
        palm under the other hand's fingers) is then explained by the pose, not baked into
        its canonical colour."""
        if len(mano["right"]) != len(mano["left"]):
            raise ParameterError(
                f"TwoHandAvatar.pose_frames: {len(mano['right'])} right-hand frames but "
                f"{len(mano['left'])} left-hand ones"
            )
        occluders: dict[str, PosedMesh | None] = dict.fromkeys(SIDES)
        if self.cfg.visibility.other_hand and self.cfg.visibility.n_directions > 0:
            meshes = {side: self.hand(side).posed_mesh(mano[side]) for side in SIDES}
            occluders = {side: meshes[_other(side)] for side in SIDES}
        hands = {side: self.hand(side).pose_frames(mano[side], occluders[side]) for side in SIDES}
        right, left = hands["right"].aabbs, hands["left"].aabbs
        aabbs = torch.cat(
            [torch.minimum(right[:, :3], left[:, :3]), torch.maximum(right[:, 3:], left[:, 3:])], -1
        )
        return TwoHandPosedFrames(hands=hands, aabbs=aabbs)

    # ------------------------------------------------------------------ assignment
    def assign(self, frames: TwoHandPosedFrames, points: Tensor, frame_ids: Tensor) -> Assignment:
        """Give each posed sample (N,3) of frames ``frame_ids`` (N,) to the hand whose posed
        surface is closest (see :class:`Assignment`)."""
        n = points.shape[0]
        best = torch.full((n,), float("inf"), device=points.device)
        owner = torch.full((n,), -1, dtype=torch.long, device=points.device)
        near: dict[str, tuple[Tensor, DeformResult]] = {}
        for index, side in enumerate(SIDES):
            _, keep_idx, result = self.hand(side).near_surface(
                frames.hands[side], points, frame_ids
            )
            distance = torch.full((n,), float("inf"), device=points.device)
            distance[keep_idx] = result.distance.to(distance.dtype)
            # Ties (a sample exactly between the hands) stay with the first side.
            closer = distance < best
            best = torch.where(closer, distance, best)
            owner = torch.where(closer, torch.full_like(owner, index), owner)
            near[side] = (keep_idx, result)
        in_reach: dict[str, Tensor] = {}
        results: dict[str, DeformResult] = {}
        for index, side in enumerate(SIDES):
            keep_idx, result = near[side]
            mine = owner[keep_idx] == index
            in_reach[side] = keep_idx[mine]
            results[side] = result.subset(mine)
        return Assignment(owner=owner, in_reach=in_reach, results=results)

    def deform(
        self, frames: TwoHandPosedFrames, points: Tensor, frame_ids: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Owner (N,) (index into :data:`SIDES`, -1: no hand), canonical position (N,3) in
        the owner's canonical space and validity (N,) of posed samples (N,3)."""
        assignment = self.assign(frames, points, frame_ids)
        canonical = torch.zeros_like(points)
        valid = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
        for side in SIDES:
            rows = assignment.in_reach[side]
            deformation = frames.hands[side].deformation
            result = deformation.refine_to_surface(points[rows], assignment.results[side])
            canonical[rows] = result.canonical.to(canonical.dtype)
            valid[rows] = result.valid
        return assignment.owner, canonical, valid

    # ------------------------------------------------------------------ rendering
    def render_rays(
        self,
        frames: TwoHandPosedFrames,
        rays: RayBundle,
        background: Tensor,
        training: bool = False,
        only: str | None = None,
    ) -> dict[str, Tensor]:
        """Render R ``rays`` of both hands of ``frames`` (as :meth:`HandAvatar.render_rays`);
        ``only``: ``'right'`` or ``'left'`` renders that hand alone."""
        if only is not None and only not in SIDES:
            raise ParameterError(f"render_rays: only must be one of {SIDES} or None, got {only!r}")
        origins, dirs = rays.origins, rays.directions
        frame_ids, camera_ids = rays.frame_ids, rays.camera_ids
        rendered = SIDES if only is None else (only,)

        def occupied(points: Tensor, ray_ids: Tensor) -> Tensor:
            assignment = self.assign(frames, points, frame_ids[ray_ids])
            keep = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
            for side in rendered:
                result = assignment.results[side]
                occ = result.valid & self.hand(side).occupancy.query(result.canonical)
                assignment.in_reach[side] = assignment.in_reach[side][occ]
                assignment.results[side] = result.subset(occ)
                keep[assignment.in_reach[side]] = True
            for side in SIDES:
                if side not in rendered:
                    assignment.in_reach[side] = assignment.in_reach[side][:0]
            self._cache = (points[keep], _reindexed(assignment, keep))
            return keep

        samples = self.sampler.sample(
            origins,
            dirs,
            frame_ids,
            frames.aabbs,
            occupied_fn=occupied,
            stratified=training,
            cache_key=(id(frames), only, *(self.hand(s).occupancy.version for s in SIDES)),
        )

        def radiance(points: Tensor, ray_ids: Tensor) -> tuple[Tensor, Tensor]:
            assignment = self._lookup(points)
            if assignment is None:  # samples the occupancy query did not see: assign now
                assignment = self.assign(frames, points, frame_ids[ray_ids])
            sigma = points.new_zeros(points.shape[0])
            rgb = points.new_zeros(points.shape[0], 3)
            for side in rendered:
                rows = assignment.in_reach[side]
                if rows.numel() == 0:
                    continue
                s, c = self.hand(side).radiance(
                    frames.hands[side],
                    points[rows],
                    frame_ids[ray_ids[rows]],
                    dirs[ray_ids[rows]],
                    assignment.results[side],
                )
                sigma = sigma.index_put((rows,), s.to(sigma.dtype))
                rgb = rgb.index_put((rows,), c.to(rgb.dtype))
            return sigma, rgb

        def correct(rgb: Tensor, opacity: Tensor) -> Tensor:
            return self.hand("right").field.apply_camera_affine(rgb, opacity, camera_ids)

        out = render_samples(samples, origins, dirs, radiance, background, correct)
        self._cache = None
        return out

    def _lookup(self, points: Tensor) -> Assignment | None:
        if self._cache is None:
            return None
        cached_points, assignment = self._cache
        if cached_points.shape == points.shape and torch.equal(cached_points, points):
            return assignment
        return None


def _other(side: str) -> str:
    """The hand of :data:`SIDES` that is not ``side``."""
    return SIDES[1 - SIDES.index(side)]


def _reindexed(assignment: Assignment, keep: Tensor) -> Assignment:
    """``assignment`` with its sample indices renumbered among the ``keep`` (N,) samples."""
    position = torch.cumsum(keep.long(), 0) - 1
    return Assignment(
        owner=assignment.owner[keep],
        in_reach={side: position[rows] for side, rows in assignment.in_reach.items()},
        results=assignment.results,
    )


class OneHandOfTwo:
    """One hand of a :class:`TwoHandAvatar` rendered alone: ``render_rays`` of the pair with
    ``only=side`` (samples still go to the closest hand, so the other hand's space stays
    empty instead of being filled by this one)."""

    def __init__(self, avatar: TwoHandAvatar, side: str) -> None:
        self.avatar = avatar
        self.side = side
        #: ``render_rays(frames, rays, background, training=False)`` of the pair, this side only.
        self.render_rays: Callable[..., dict[str, Tensor]] = functools.partial(
            avatar.render_rays, only=side
        )

    @property
    def betas(self) -> Tensor:
        return self.avatar.betas
