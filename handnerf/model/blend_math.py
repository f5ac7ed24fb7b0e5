"""Rigid-transform arithmetic of linear blend skinning: quaternion conversions and blends,
and closed-form inverses of blended 3x3 and 3x4 maps (used by :mod:`handnerf.model.deformer`).
"""

from __future__ import annotations

import numpy as np
import torch

# A blended 3x3 part with a smaller |det| has no trustworthy inverse (bones blended
# against each other); such samples are marked invalid.
MIN_DETERMINANT = 1e-6


def invert_affine(affine: torch.Tensor) -> torch.Tensor:
    """(M, 12) row-major 3x4 affine maps -> their (M, 12) inverses (identity where singular)."""
    matrix = affine.reshape(-1, 3, 4)
    inverse, invertible = inverse_3x3(matrix[:, :, :3])
    eye = torch.eye(3, dtype=affine.dtype, device=affine.device).expand_as(inverse)
    inverse = torch.where(invertible[:, None, None], inverse, eye)
    translation = -torch.einsum("mij,mj->mi", inverse, matrix[:, :, 3])
    return torch.cat([inverse, translation[:, :, None]], dim=2).reshape(-1, 12)


def matrix_to_quaternion(rotations: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices → (..., 4) unit quaternions (w, x, y, z)."""
    from scipy.spatial.transform import Rotation

    flat = rotations.reshape(-1, 3, 3).cpu().double().numpy()
    xyzw = Rotation.from_matrix(flat).as_quat() if len(flat) else np.zeros((0, 4))
    wxyz = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1)
    return torch.from_numpy(wxyz).to(rotations).reshape(*rotations.shape[:-2], 4)


def quaternion_to_matrix(quaternions: torch.Tensor) -> torch.Tensor:
    """(N, 4) unit quaternions (w, x, y, z) → (N, 3, 3) rotation matrices.

    Written out rather than imported: kornia's equivalent costs seconds of import time
    for a dozen multiply-adds.
    """
    w, x, y, z = quaternions.unbind(dim=1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=1,
    ).reshape(-1, 3, 3)


def blend_bone_quaternions(bone_quaternions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-vertex blended rotation (F, V, 4) from bone quaternions (F, J, 4), weights (F, V, J)."""
    dominant = weights.argmax(dim=2)  # (F, V)
    reference = torch.gather(bone_quaternions, 1, dominant[..., None].expand(-1, -1, 4))
    sign = torch.sign(torch.einsum("fvc,fjc->fvj", reference, bone_quaternions))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    blended = torch.einsum("fvj,fjc->fvc", weights * sign, bone_quaternions)
    return blended / blended.norm(dim=2, keepdim=True).clamp_min(1e-12)


def blend_quaternions(quaternions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, 4) blend of neighbour quaternions (N, k, 4) with weights (N, k)."""
    sign = torch.sign((quaternions * quaternions[:, :1]).sum(dim=2))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return ((weights * sign)[..., None] * quaternions).sum(dim=1)


def inverse_3x3(linear: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverses (N, 3, 3) of ``linear`` (N, 3, 3) and whether each is invertible (N,) (the
    others come back as adjugates, meaningless).

    Closed form (adjugate / determinant): one fused pass per sample, much cheaper than a
    batched LU on the CPU and exact for a non-rigid blend.
    """
    c0 = torch.cross(linear[:, 1], linear[:, 2], dim=1)
    c1 = torch.cross(linear[:, 2], linear[:, 0], dim=1)
    c2 = torch.cross(linear[:, 0], linear[:, 1], dim=1)
    determinant = (linear[:, 0] * c0).sum(dim=1)
    invertible = determinant.abs() > MIN_DETERMINANT
    safe_det = torch.where(invertible, determinant, torch.ones_like(determinant))
    return torch.stack([c0, c1, c2], dim=2) / safe_det[:, None, None], invertible
