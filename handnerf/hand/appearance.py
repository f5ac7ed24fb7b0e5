"""Skin albedo of the procedural hand: tone, creases, palm lines, nails, variation, pores.

:func:`skin_albedo` is a pure, deterministic function of a point on the canonical (flat,
rest-pose) hand surface. The synthetic renderer calls it at ray-hit points mapped back to
the canonical hand; the procedural model file stores it sampled at the vertices
(``vertex_colors``).

Usage::

    hand = build_procedural_hand("right")          # or any MANO-format dict
    rgb = skin_albedo(points_canonical, hand)        # (N, 3) in [0, 1]

``hand`` needs ``J`` (16, 3); it may also carry ``v_template`` + ``fingertip_vertex_ids``
(tip positions; MANO's usual tip vertices are assumed otherwise) and
``handnerf_procedural['seed']`` (varies tone and the detail pattern). For a shaped hand,
pass a dict with the shaped ``J`` / ``v_template``. Left hands are recognised from the
joints (fingers along +x) and handled as the mirror of the right.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np

from handnerf.errors import ParameterError

# thumb, index, middle, ring, pinky (the order of ``fingertip_vertex_ids``)
_CHAINS = ((13, 14, 15), (1, 2, 3), (4, 5, 6), (10, 11, 12), (7, 8, 9))
_MANO_TIP_IDS = (745, 317, 444, 556, 673)

_SKIN_DORSAL = np.array([0.80, 0.60, 0.49])
_SKIN_PALMAR = np.array([0.90, 0.68, 0.60])
_NAIL = np.array([0.93, 0.76, 0.74])
_NAIL_WHITE = np.array([0.97, 0.93, 0.88])
_CREASE = np.array([0.55, 0.36, 0.31])


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _hash_lattice(cells: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer lattice cell (..., 3)."""
    c = cells.astype(np.uint64)
    h = (
        c[..., 0] * np.uint64(73856093)
        ^ c[..., 1] * np.uint64(19349663)
        ^ c[..., 2] * np.uint64(83492791)
        ^ np.uint64(seed * 2654435761 % (2**32))
    )
    h ^= h >> np.uint64(13)
    h *= np.uint64(0x5BD1E995)
    h ^= h >> np.uint64(15)
    return (h & np.uint64(0xFFFFFF)).astype(np.float64) / float(0x1000000)


def value_noise(points: np.ndarray, cell: float, seed: int) -> np.ndarray:
    """Trilinear value noise in [0, 1] with lattice spacing ``cell`` (metres); (N,)."""
    scaled = points / cell
    base = np.floor(scaled)
    frac = scaled - base
    frac = frac * frac * (3.0 - 2.0 * frac)
    base = base.astype(np.int64) + (1 << 20)  # keep lattice indices positive
    result = np.zeros(len(points))
    for corner in np.ndindex(2, 2, 2):
        offset = np.array(corner)
        weight = np.prod(np.where(offset == 1, frac, 1.0 - frac), axis=1)
        result += weight * _hash_lattice(base + offset, seed)
    return result


def _segment_coords(
    points: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unclamped axial parameter t, axial distance to start (m) and perpendicular offset."""
    axis = end - start
    length = float(np.linalg.norm(axis))
    direction = axis / length
    axial = (points - start) @ direction
    offset = points - start - axial[:, None] * direction
    return axial / length, axial, offset


def _shifted(point: np.ndarray, dx: float, dz: float) -> np.ndarray:
    """``point`` moved within the palm plane (x, z), metres."""
    return point + np.array([dx, 0.0, dz])


def _tips(hand: Mapping[str, Any], joints: np.ndarray) -> np.ndarray:
    if "v_template" in hand:
        v = np.asarray(hand["v_template"], dtype=np.float64)
        ids = np.asarray(hand.get("fingertip_vertex_ids", _MANO_TIP_IDS), dtype=np.int64)
        if ids.shape == (5,) and len(v) > int(ids.max()):
            return v[ids]
    # no vertices: extend each last bone by 0.8 of its length
    return np.stack([joints[c[2]] + 0.8 * (joints[c[2]] - joints[c[1]]) for c in _CHAINS])


def skin_albedo(points_canonical: np.ndarray, hand: Mapping[str, Any]) -> np.ndarray:
    """Albedo of the hand's skin at canonical surface points.

    Args:
        points_canonical: (N, 3) points on (or within a few mm of) the canonical flat hand,
            metres, in the frame of ``hand`` (MANO's rest frame).
        hand: MANO-format dict (see module docstring); uses ``J``, optionally
            ``v_template`` / ``fingertip_vertex_ids`` / ``handnerf_procedural``.

    Returns:
        (N, 3) float64 RGB in [0, 1]. Deterministic for a given ``hand`` and seed.
    """
    points = np.asarray(points_canonical, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or not np.all(np.isfinite(points)):
        raise ParameterError(
            f"skin_albedo: points_canonical must be a finite (N, 3) array, got {points.shape}"
        )
    if "J" not in hand:
        raise ParameterError("skin_albedo: the hand dict has no field 'J' (16 joints)")
    joints = np.asarray(hand["J"], dtype=np.float64)
    if joints.shape != (16, 3):
        raise ParameterError(f"skin_albedo: field 'J' must be (16, 3), got {joints.shape}")
    tips = _tips(hand, joints)
    meta = hand.get("handnerf_procedural") or {}
    seed = int(meta.get("seed", 0)) if isinstance(meta, Mapping) else 0

    if joints[4, 0] > joints[0, 0]:  # fingers along +x: a left hand, mirror to the right
        points, joints, tips = (a * np.array([-1.0, 1.0, 1.0]) for a in (points, joints, tips))
    n = len(points)
    if n == 0:
        return np.zeros((0, 3))

    # Which finger each point sits on, and where along it.
    up = np.array([0.0, 1.0, 0.0])
    distance = np.full((n, 5), np.inf)
    for finger, chain in enumerate(_CHAINS):
        polyline = np.vstack([joints[list(chain)], tips[finger]])
        for a, b in itertools.pairwise(polyline):
            t, _, offset = _segment_coords(points, a, b)
            inside = (t >= 0.0) & (t <= 1.05)
            d = np.linalg.norm(offset, axis=1)
            distance[:, finger] = np.minimum(distance[:, finger], np.where(inside, d, np.inf))
    nearest = np.argmin(distance, axis=1)
    on_finger = np.isfinite(distance[np.arange(n), nearest]) & (
        distance[np.arange(n), nearest] < 0.016
    )

    # Palm side vs back: offset from the finger axis, or height against the palm's middle.
    palm_mid_y = float(np.mean(joints[[1, 4, 7, 10], 1]))
    palmar = _smoothstep(0.001, -0.006, points[:, 1] - palm_mid_y)
    rgb = _SKIN_DORSAL + palmar[:, None] * (_SKIN_PALMAR - _SKIN_DORSAL)
    darkness = np.zeros(n)
    nail = np.zeros(n)
    nail_white = np.zeros(n)

    for finger, chain in enumerate(_CHAINS):
        member = on_finger & (nearest == finger)
        if not np.any(member):
            continue
        p = points[member]
        j = joints[list(chain)]
        direction = tips[finger] - j[0]
        direction /= np.linalg.norm(direction)
        dorsal = up - (up @ direction) * direction
        if finger == 0:  # the thumb nail faces up and outwards (radial, +z)
            dorsal = dorsal + 0.9 * (np.array([0.0, 0.0, 1.0]) - direction[2] * direction)
        dorsal /= np.linalg.norm(dorsal)

        local_dark = np.zeros(len(p))
        for k, (a, b) in enumerate(((j[0], j[1]), (j[1], j[2]), (j[2], tips[finger]))):
            t, axial, offset = _segment_coords(p, a, b)
            radial = np.linalg.norm(offset, axis=1) + 1e-9
            facing = offset @ dorsal / radial  # +1 back of the finger, -1 pad
            pad_side = _smoothstep(-0.1, -0.6, facing)
            back_side = _smoothstep(0.2, 0.7, facing)
            if k >= 1:
                # flexion crease at the joint at this segment's start: a double line on
                # the pad side and fine wrinkles over the knuckle
                for shift in (-0.0011, 0.0011) if k == 1 else (0.0,):
                    local_dark += 0.35 * pad_side * np.exp(-(((axial - shift) / 0.00045) ** 2))
                ripple = 0.5 + 0.5 * np.cos(axial / 0.0011 * 2 * np.pi)
                local_dark += 0.12 * back_side * ripple * np.exp(-((axial / 0.0035) ** 2))
            else:
                # palmar digital crease at the base of the finger
                local_dark += 0.3 * pad_side * np.exp(-(((axial - 0.006) / 0.0006) ** 2))
            if k == 2:
                nail_mask = (
                    _smoothstep(0.36, 0.42, t)
                    * (1.0 - _smoothstep(0.93, 0.99, t))
                    * _smoothstep(0.35, 0.6, facing)
                )
                idx = np.flatnonzero(member)
                nail[idx] = np.maximum(nail[idx], nail_mask)
                white = np.maximum(
                    _smoothstep(0.86, 0.92, t), 1.0 - _smoothstep(0.42, 0.5, t)
                )  # free edge and lunula
                nail_white[idx] = np.maximum(nail_white[idx], nail_mask * white)
                cuticle = np.exp(-(((t - 0.39) / 0.02) ** 2)) * _smoothstep(0.3, 0.6, facing)
                local_dark += 0.15 * cuticle
        darkness[member] = np.maximum(darkness[member], local_dark)

    # Palm lines: heart, head and life lines as curves in the palm plane.
    palm = (~on_finger | (distance[np.arange(n), nearest] > 0.0125)) & (palmar > 0.5)
    if np.any(palm):
        index_mcp, middle_mcp, pinky_mcp, ring_mcp, wrist = joints[[1, 4, 7, 10, 0]]
        radial_z = np.array([0.0, 0.0, 1.0])
        lines = (
            (
                _shifted(pinky_mcp, 0.014, -0.012),
                _shifted(ring_mcp, 0.020, -0.004),
                _shifted(middle_mcp, 0.016, 0.014),
            ),
            (
                _shifted(index_mcp, 0.024, 0.012),
                _shifted(middle_mcp, 0.034, 0.0),
                _shifted(pinky_mcp, 0.034, -0.006),
            ),
            (
                _shifted(index_mcp, 0.022, 0.011),
                0.5 * (index_mcp + wrist) + 0.014 * radial_z,
                _shifted(wrist, -0.012, 0.016),
            ),
        )
        q = points[palm][:, [0, 2]]
        curve_t = np.linspace(0.0, 1.0, 120)[:, None]  # ~0.5 mm apart: lines stay unbroken
        palm_dark = np.zeros(len(q))
        for start, mid, end in lines:
            curve = (
                (1 - curve_t) ** 2 * start[[0, 2]]
                + 2 * (1 - curve_t) * curve_t * mid[[0, 2]]
                + curve_t**2 * end[[0, 2]]
            )
            gap = np.concatenate(
                [  # in chunks: renderers pass millions of hit points
                    np.min(np.linalg.norm(chunk[:, None, :] - curve[None], axis=2), axis=1)
                    for chunk in np.array_split(q, max(1, len(q) // 16384))
                ]
            )
            palm_dark += 0.4 * np.exp(-((gap / 0.0007) ** 2))
        idx = np.flatnonzero(palm)
        darkness[idx] = np.maximum(darkness[idx], palm_dark * palmar[idx])

    # Slow blotchy variation of tone and redness, then pores / fine noise.
    rng = np.random.default_rng(seed)
    waves = rng.normal(size=(6, 3))
    waves /= np.linalg.norm(waves, axis=1, keepdims=True)
    wavelengths = rng.uniform(0.02, 0.06, size=6)
    phases = rng.uniform(0, 2 * np.pi, size=6)
    slow = np.mean(np.sin(points @ (waves / wavelengths[:, None]).T * 2 * np.pi + phases), axis=1)
    tone_shift = rng.normal(0.0, 0.02, size=3)
    rgb = rgb * (1.0 + 0.06 * slow[:, None]) + tone_shift
    rgb[:, 0] += 0.02 * value_noise(points, 0.012, seed + 1)
    fine = value_noise(points, 0.0007, seed + 2) - 0.5
    medium = value_noise(points, 0.0022, seed + 3) - 0.5
    rgb = rgb * (1.0 + 0.06 * fine[:, None] + 0.04 * medium[:, None])

    rgb = rgb + np.clip(darkness, 0.0, 0.8)[:, None] * (_CREASE - rgb)
    nail_colour = _NAIL + nail_white[:, None] * (_NAIL_WHITE - _NAIL)
    rgb = rgb + nail[:, None] * (nail_colour * (1.0 + 0.02 * fine[:, None]) - rgb)
    return np.clip(rgb, 0.0, 1.0)
