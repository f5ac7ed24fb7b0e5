"""Settings of the inverse-LBS deformer (``DeformerConfig``) and their checks.

Apart from :mod:`handnerf.model.deformer` so that the query side
(:mod:`handnerf.model.frame_deformation`) and the lookup backends
(:mod:`handnerf.model.neighbour_search`) read the same settings without importing the
deformer that builds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from handnerf.config import choice
from handnerf.errors import ConfigError

BACKENDS = ("auto", "kdtree", "cdist", "grid")
BLEND_SCHEMES = ("inverse_distance", "gaussian", "nearest", "surface")
NEAR_MODES = ("vertex", "mesh")


@dataclass
class DeformerConfig:
    """Settings of :class:`~handnerf.model.deformer.InverseLBSDeformer` (its ``Config``)."""

    k_neighbors: int = 4
    """Posed vertices whose skinning weights are blended per sample."""
    max_distance: float = 0.015
    """Samples farther than this (metres) from the nearest posed vertex are empty."""
    blend: str = choice("inverse_distance", BLEND_SCHEMES)
    """Neighbour weighting: ``inverse_distance``, ``gaussian``, ``nearest`` or ``surface``
    (barycentric weights of the closest point on the posed mesh; needs ``faces``)."""
    idw_power: float = 2.0
    """Exponent p of inverse-distance weights 1 / d^p."""
    gaussian_sigma: float = 0.004
    """Standard deviation (metres) of Gaussian neighbour weights."""
    backend: str = choice("auto", BACKENDS)
    """Neighbour lookup: ``auto``, ``kdtree`` (CPU), ``cdist`` or ``grid``."""
    grid_voxel_size: float = 0.002
    """Voxel edge (metres) of the ``grid`` backend."""
    kdtree_workers: int = -1
    """Threads of scipy's cKDTree queries (-1: torch's CPU thread count)."""
    near: str = choice("vertex", NEAR_MODES)
    """What ``max_distance`` is measured to: the nearest posed ``vertex``, or the closest
    point of the posed ``mesh`` (right on coarse meshes such as real MANO, whose large
    triangles hold surface points up to 12 mm from every vertex; needs
    ``blend="surface"``)."""
    correctives: bool = False
    """Undo pose correctives (MANO's ``posedirs``): anchor each sample's canonical
    position at its closest surface point (needs ``blend="surface"`` and the canonical
    vertices in ``prepare_frames``)."""


def check_config(cfg: DeformerConfig) -> None:
    """Raise :class:`ConfigError` for an unknown option or an out-of-range number."""
    where = "deformer config"
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"{where}: backend must be one of {BACKENDS}, got {cfg.backend!r}")
    if cfg.blend not in BLEND_SCHEMES:
        raise ConfigError(f"{where}: blend must be one of {BLEND_SCHEMES}, got {cfg.blend!r}")
    if cfg.near not in NEAR_MODES:
        raise ConfigError(f"{where}: near must be one of {NEAR_MODES}, got {cfg.near!r}")
    if not isinstance(cfg.correctives, bool):
        raise ConfigError(f"{where}: correctives must be true or false, got {cfg.correctives!r}")
    if (cfg.near == "mesh" or cfg.correctives) and cfg.blend != "surface":
        raise ConfigError(
            f"{where}: near=mesh and correctives=true work on the closest point of the mesh; "
            f"they need blend='surface', got {cfg.blend!r}"
        )
    if cfg.k_neighbors < 1:
        raise ConfigError(f"{where}: k_neighbors must be >= 1, got {cfg.k_neighbors}")
    for name in ("max_distance", "gaussian_sigma", "grid_voxel_size", "idw_power"):
        value = getattr(cfg, name)
        if not np.isfinite(value) or value <= 0:
            raise ConfigError(f"{where}: {name} must be a positive number, got {value}")
