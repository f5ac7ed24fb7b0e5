"""Training losses: photometric, perceptual (on patches), mask and opacity sharpening."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from handnerf.config import choice
from handnerf.errors import ConfigError


@dataclass
class LossConfig:
    photometric: str = choice("huber", ("l1", "huber", "mse"))
    huber_delta: float = 0.1
    w_photometric: float = 1.0
    w_lpips: float = 0.1
    lpips_net: str = "vgg"  # the network LPIPS is trained with (LiveHand: VGG)
    lpips_start_step: int = 200
    w_mask: float = 0.1
    w_sharpen: float = 0.01
    #: L2 prior keeping the MANO corrections (train.refine_pose) near the given fit.
    w_pose_prior: float = 1e-4


def photometric_loss(pred: Tensor, target: Tensor, kind: str, delta: float = 0.1) -> Tensor:
    """Mean colour error of ``pred`` vs ``target`` (..., 3)."""
    if kind == "l1":
        return (pred - target).abs().mean()
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind == "huber":
        return F.huber_loss(pred, target, delta=delta)
    raise ConfigError(f"loss.photometric must be one of l1, huber, mse; got {kind!r}")


def mask_loss(opacity: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy between rendered opacity (R,) and the hand mask (R,) in {0,1}."""
    return F.binary_cross_entropy(opacity.clamp(1e-4, 1 - 1e-4), mask.float())


def sharpen_loss(opacity: Tensor) -> Tensor:
    """Pushes each ray's opacity to 0 or 1 (no semi-transparent fog around the hand)."""
    o = opacity.clamp(1e-4, 1 - 1e-4)
    return -(o * torch.log(o) + (1 - o) * torch.log(1 - o)).mean()
