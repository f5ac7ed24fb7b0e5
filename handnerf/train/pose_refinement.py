"""Per-frame MANO pose refinement, learnt jointly with the radiance field.

InterHand2.6M's MANO parameters are fits, off by degrees and millimetres; trusting them
blurs the avatar. With ``train.refine_pose`` each training frame gets a learnable
correction of its global orientation (3), 15 joint rotations (45) and translation (3),
zero-initialised, with its own learning rate (``optim.pose_lr``, after
``train.pose_refine_start`` steps of the field alone) and an L2 prior towards the given
fit (``loss.w_pose_prior``). The corrections start from a fit of the training views'
silhouettes (:mod:`handnerf.train.silhouette_fit`, ``train.pose_silhouette_steps``), which
takes out most of the error before the field exists.

**Parametrisation.** The corrections are *added* to the axis-angle vectors. MANO (smplx)
takes axis-angle, so composing rotations would need a log map back (singular at pi) per
step; for corrections of a few degrees the two differ at second order, and an additive
delta matches the fit-error model (Gaussian per axis-angle component) that the prior
penalises. Translation is learnt in units of :data:`TRANSL_UNIT` so that one step of Adam
moves a millimetre about as far as a degree (the optimiser's steps are per-parameter
sized, so the unit sets the balance between the two).

**Gradient.** The deformer's lookup (nearest posed vertices, closest triangles) is a
no-grad search on the posed mesh. Its result, per sample, is a set of neighbour vertices
and blend weights; the canonical position is the inverse of the blended bone transform
``A = sum_k w_k sum_j W[v_k, j] T_j(theta)`` applied to the sample. :func:`canonical_with_pose_grad`
rebuilds that inverse from bone transforms of a differentiable MANO pass, keeping the
searched neighbours and weights fixed (they are piecewise constant in the pose to first
order), and adds it as a straight-through term: the value stays the deformer's exact one,
the gradient reaches the corrections through the bones.

**What follows the refined pose.** The avatar's posed frames (lookup structures, shell,
boxes, normals, self-shadow visibility) and the jittered rays' MANO silhouettes are
rebuilt from the refined parameters every ``train.pose_refresh_every`` steps (1: every
step); the checkpoint carries the corrections and the refined parameters, which
evaluation uses for the training frames.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from handnerf.hand.hand_model import HandModel, ManoParams
from handnerf.model.blend_math import inverse_3x3
from handnerf.model.deformer import DeformResult

#: Metres per unit of the learnt translation correction (see the module docstring):
#: a 1 mm correction costs the prior about what a 1 degree one does.
TRANSL_UNIT = 0.05


class PoseCorrections(nn.Module):
    """Zero-initialised additive corrections of ``n_frames`` frames' MANO parameters.

    orient (T,3) and hand_pose (T,45) in radians of axis-angle; transl (T,3) in units of
    :data:`TRANSL_UNIT` metres.
    """

    def __init__(self, n_frames: int) -> None:
        super().__init__()
        self.orient = nn.Parameter(torch.zeros(n_frames, 3))
        self.hand_pose = nn.Parameter(torch.zeros(n_frames, 45))
        self.transl = nn.Parameter(torch.zeros(n_frames, 3))

    def apply(self, mano: ManoParams) -> ManoParams:
        """``mano`` (T frames) with the corrections added (differentiable w.r.t. them)."""
        device = self.orient.device
        return ManoParams(
            global_orient=mano.global_orient.to(device) + self.orient,
            hand_pose=mano.hand_pose.to(device) + self.hand_pose,
            betas=mano.betas.to(device),
            transl=mano.transl.to(device) + TRANSL_UNIT * self.transl,
        )

    def prior(self) -> Tensor:
        """Mean over frames of the squared corrections (rad^2, translation in its unit)."""
        total = self.orient.square().sum(1) + self.hand_pose.square().sum(1)
        return (total + self.transl.square().sum(1)).mean()


def canonical_with_pose_grad(
    points: Tensor,
    result: DeformResult,
    bones: Tensor,
    skinning_weights: Tensor,
    num_vertices: int,
) -> Tensor:
    """The canonical positions (N,3) of ``result``, with a gradient w.r.t. ``bones``.

    Args:
        points: (N,3) posed samples ``result`` was computed for.
        result: the deformer's result (kNN backends: ``neighbor_ids`` (N,k) global vertex
            ids ``frame * V + vertex`` and ``neighbor_weights`` (N,k)).
        bones: (T,J,4,4) canonical -> posed bone transforms of the refined pose, with grad.
        skinning_weights: (V,J).
        num_vertices: V.

    Returns ``result.canonical`` in value; its gradient is that of the inverse blended
    transform ``A(bones)^-1 (x - t(bones))`` at fixed neighbours and weights.
    """
    ids, weights = result.neighbor_ids, result.neighbor_weights
    if ids is None or weights is None or not len(points):
        return result.canonical
    frame = ids[:, 0] // num_vertices
    vertex = ids % num_vertices
    # Per-sample bone weights: the neighbours' skinning weights, blended.
    w_bone = torch.einsum("nk,nkj->nj", weights.to(bones.dtype), skinning_weights[vertex])
    affine = torch.einsum("nj,njrc->nrc", w_bone, bones[frame][:, :, :3, :])  # (N,3,4)
    inverse, _ = inverse_3x3(affine[:, :, :3])
    x = points.detach().to(bones.dtype)
    canonical = torch.einsum("nij,nj->ni", inverse, x - affine[:, :, 3])
    return result.canonical + (canonical - canonical.detach()).to(result.canonical.dtype)


def soft_shell_with_pose_grad(
    points: Tensor,
    result: DeformResult,
    vertices: Tensor,
    reach: float,
    softness: float,
) -> Tensor:
    """A density factor (N,) of 1, with the gradient of a soft shell edge w.r.t. ``vertices``.

    The deformer's shell is hard: a sample farther than ``reach`` from the posed mesh is
    empty, so nothing tells the pose that the image has hand just beyond it. Here the
    distance is rebuilt as a function of the posed vertices, ``d = |x - sum_k w_k V[id_k]|``
    with the closest triangle ``id`` and barycentrics ``w`` of the exact search held fixed,
    and the factor is ``s(d) = sigmoid((reach - d) / softness)`` in gradient, 1 in value
    (a straight-through term): where the photometric loss wants more density at a sample
    near the shell edge, the mesh is pulled towards it; where less, pushed away.

    Args:
        points: (N,3) posed samples of ``result``.
        result: the deformer's result (mesh modes: ``neighbor_ids`` (N,k) global vertex
            ids ``frame * V + vertex``, ``neighbor_weights`` (N,k) barycentrics).
        vertices: (T,V,3) posed vertices of the refined pose, with grad.
        reach: the deformer's max distance (m); softness: the sigmoid's width (m).
    """
    ids, weights = result.neighbor_ids, result.neighbor_weights
    if ids is None or weights is None or not len(points):
        return torch.ones(len(points), device=points.device)
    flat = vertices.reshape(-1, 3)
    closest = torch.einsum("nk,nkc->nc", weights.to(flat.dtype), flat[ids])
    distance = (points.detach().to(flat.dtype) - closest).norm(dim=-1)
    soft = torch.sigmoid((reach - distance) / softness)
    return 1.0 + (soft - soft.detach())


class PoseRefiner:
    """Owns the corrections of the training frames and poses them for the avatar.

    ``avatar``: a :class:`~handnerf.model.avatar.HandAvatar`; ``mano``: the given fits of
    the T training frames; ``shell_softness`` (m): the width of the soft shell edge whose
    gradient reaches the pose (:func:`soft_shell_with_pose_grad`; 0: none).
    """

    def __init__(
        self,
        avatar: Any,
        mano: ManoParams,
        frame_keys: list[tuple[str, int]],
        device: torch.device,
        shell_softness: float = 0.0,
    ) -> None:
        self.avatar = avatar
        self.shell_softness = shell_softness
        self.frame_keys = list(frame_keys)
        self.base = mano.to(device)
        self.corrections = PoseCorrections(len(mano)).to(device)
        self.device = device
        #: The corrections the current posed frames were built with (between refreshes
        #: they lag the learnt ones); saved so a resumed fit rebuilds the same frames.
        self.posed_with: dict[str, Tensor] = _snapshot(self.corrections)

    @property
    def hand_model(self) -> HandModel:
        return self.avatar.hand_model

    def subject_mano(self, corrected: bool = True) -> ManoParams:
        """The frames' parameters (corrected or as given) with the avatar's shared betas."""
        mano = self.corrections.apply(self.base) if corrected else self.base
        betas = self.avatar.betas.to(self.device)[None].expand(len(mano), -1)
        return ManoParams(mano.global_orient, mano.hand_pose, betas, mano.transl)

    @torch.no_grad()
    def refined(self, corrections: dict[str, Tensor] | None = None) -> ManoParams:
        """The refined parameters (T frames), detached, with the frames' own betas;
        ``corrections``: a snapshot of them to use instead of the current ones."""
        module = self.corrections
        if corrections is not None:
            module = PoseCorrections(len(self.base)).to(self.device)
            module.load_state_dict(corrections)
        return _map(module.apply(self.base), lambda x: x.detach().clone())

    def pose_frames(self, snapshot: bool = False) -> Any:
        """The avatar's :class:`PosedFrames` of the refined pose (no gradient); with
        ``snapshot`` of the corrections they were last built with (resume)."""
        if not snapshot:
            self.posed_with = _snapshot(self.corrections)
        return self.avatar.pose_frames(self.refined(self.posed_with))

    def attach_gradient(self, frames: Any) -> None:
        """Give ``frames`` this step's differentiable bone transforms (one MANO pass)."""
        hand = self.hand_model
        mano = self.subject_mano()
        hand_device = hand.faces.device
        out = hand(_map(mano, lambda x: x.to(hand_device)))
        bones = out.bone_transforms.to(self.device).float()
        weights = hand.skinning_weights.to(self.device).float()
        n_vertices = int(weights.shape[0])

        def hook(points: Tensor, result: DeformResult) -> Tensor:
            return canonical_with_pose_grad(points, result, bones, weights, n_vertices)

        frames.pose_gradient = hook
        if self.shell_softness > 0:
            vertices = out.vertices.to(self.device).float()
            reach = float(self.avatar.cfg.deformer.max_distance)
            softness = self.shell_softness

            def shell(points: Tensor, result: DeformResult) -> Tensor:
                return soft_shell_with_pose_grad(points, result, vertices, reach, softness)

            frames.shell_gradient = shell

    def prior(self) -> Tensor:
        return self.corrections.prior()

    def state_dict(self) -> dict[str, Any]:
        """The corrections and the refined parameters of each (seq, frame) (plain tensors
        and lists: weights_only-safe)."""
        refined = self.refined()
        return {
            **{k: v.detach().cpu() for k, v in self.corrections.state_dict().items()},
            "posed_with": {k: v.cpu() for k, v in self.posed_with.items()},
            "frame_keys": [[seq, int(frame)] for seq, frame in self.frame_keys],
            "betas": refined.betas.cpu(),
            "refined_global_orient": refined.global_orient.cpu(),
            "refined_hand_pose": refined.hand_pose.cpu(),
            "refined_transl": refined.transl.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        own = {k: state[k] for k in self.corrections.state_dict()}
        self.corrections.load_state_dict(own)
        self.posed_with = {k: v.to(self.device) for k, v in state["posed_with"].items()}


def silhouette_band(masks: Tensor, width: int) -> Tensor:
    """(N,H,W) bool: the pixels within ``width`` px of the edge of ``masks`` (N,H,W) bool,
    on either side (``width`` 0: none).

    A mask drawn from a MANO fit that is off by a few millimetres is wrong exactly there:
    inside it, pixels of background; outside it, pixels of hand. Trusting it would pin the
    refined pose to the given one (measured: no recovery at all). The trainer holds those
    rays to the image's own silhouette instead (``train.pose_band_masks=image``,
    :class:`handnerf.train.rays.RaySampler`'s ``band_coverage``), or, with ``none``, to the
    raw image over the capture's black background with no mask (:func:`held_targets`).
    """
    if width <= 0:
        return torch.zeros_like(masks, dtype=torch.bool)
    m = masks.float().unsqueeze(1)
    size = 2 * width + 1
    grown = torch.nn.functional.max_pool2d(m, size, stride=1, padding=width)
    shrunk = -torch.nn.functional.max_pool2d(-m, size, stride=1, padding=width)
    return (grown > 0.5)[:, 0] & ~(shrunk > 0.5)[:, 0]


def held_targets(
    rgb: Tensor, mask: Tensor, uncertain: Tensor | None, background: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """What a batch of R rays should render, with the band of uncertain masks.

    rgb (R,3) image colours, mask (R,) bool, uncertain (R,) bool or None, background
    (R,3). Returns the target (R,3) (the image inside the mask, the background outside;
    in the band the raw image), the background to composite over (black in the band: the
    capture's) and which rays the mask loss may hold (R,) bool.
    """
    m = mask.float().unsqueeze(-1)
    target = rgb * m + background * (1 - m)
    if uncertain is None:
        return target, background, torch.ones_like(mask, dtype=torch.bool)
    band = uncertain[:, None]
    # Near the given silhouette the image, not the mask, says where the hand is.
    background = torch.where(band, torch.zeros_like(background), background)
    return torch.where(band, rgb, target), background, ~uncertain


def pose_param_groups(refiner: PoseRefiner | None, lr: float) -> list[dict[str, Any]]:
    """The optimiser's parameter group of the corrections (none without refinement)."""
    if refiner is None:
        return []
    return [{"params": list(refiner.corrections.parameters()), "lr": lr, "name": "pose"}]


def pose_schedules(
    refiner: PoseRefiner | None, schedule: Callable[[int], float], cfg: Any
) -> list[Callable[[int], float]]:
    """The corrections' learning-rate factor: 0 for ``cfg.pose_refine_start`` steps (the
    field first learns the given poses), then ``schedule`` (the field's decay)."""
    if refiner is None:
        return []
    start = int(cfg.pose_refine_start)
    return [lambda step: 0.0 if step < start else schedule(step)]


def refined_mano_of(state: dict[str, Any]) -> dict[tuple[str, int], ManoParams] | None:
    """``(seq, frame) -> ManoParams`` (1 row) of a checkpoint's refined training frames."""
    pose = state.get("pose_refinement")
    if not isinstance(pose, dict):
        return None
    keys = [(str(s), int(f)) for s, f in pose["frame_keys"]]
    betas = pose["betas"]
    return {
        key: ManoParams(
            global_orient=pose["refined_global_orient"][i : i + 1],
            hand_pose=pose["refined_hand_pose"][i : i + 1],
            betas=betas[i : i + 1],
            transl=pose["refined_transl"][i : i + 1],
        )
        for i, key in enumerate(keys)
    }


def _snapshot(corrections: PoseCorrections) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in corrections.state_dict().items()}


def _map(mano: ManoParams, fn: Callable[[Tensor], Tensor]) -> ManoParams:
    return ManoParams(fn(mano.global_orient), fn(mano.hand_pose), fn(mano.betas), fn(mano.transl))
