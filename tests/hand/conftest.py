"""Small MANO-format models for the hand tests.

``toy_mano`` builds a hand-like 16-joint model with a few hundred vertices in MANO's
own pickle layout (scipy CSC ``J_regressor``, uint32 faces, ``kintree_table`` with the
root stored as 2**32 - 1, optional chumpy ``shapedirs``) plus its exact x-mirror (the
left hand), so that tests exercise the same code paths as the licensed files.
"""

from __future__ import annotations

import pickle
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse

MANO_PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
# The last joint of each finger, in fingertip order thumb, index, middle, ring, pinky.
LAST_JOINT_OF_FINGER = [15, 3, 6, 12, 9]
VERTS_PER_JOINT = 18
MIRROR = np.array([-1.0, 1.0, 1.0])


def _rest_joints() -> np.ndarray:
    """(16, 3) a right hand in metres: palm in the x-y plane, fingers along +y."""
    joints = np.zeros((16, 3))
    # (first joint, knuckle x, knuckle y, segment direction) per finger
    fingers = {1: (0.025, 0.085), 4: (0.0, 0.09), 7: (-0.04, 0.075), 10: (-0.02, 0.085)}
    for first, (x, y) in fingers.items():
        for k in range(3):
            joints[first + k] = (x, y + 0.03 * k, 0.002 * k)
    for k in range(3):  # thumb, out to +x
        joints[13 + k] = (0.03 + 0.025 * k, 0.025 + 0.02 * k, 0.01)
    return joints


def make_mano_dict(seed: int = 0) -> dict[str, Any]:
    """A right-hand model in MANO's pickle layout, ``V = 16 * 18 + 5`` vertices."""
    rng = np.random.default_rng(seed)
    joints = _rest_joints()
    clusters = [joints[k] + rng.normal(0.0, 0.006, (VERTS_PER_JOINT, 3)) for k in range(16)]
    tip_dir = np.array([0.0, 0.022, 0.0])
    tips = np.stack([joints[j] + tip_dir for j in LAST_JOINT_OF_FINGER])
    v_template = np.concatenate([*clusters, tips])
    num_vertices = v_template.shape[0]
    tip_ids = np.arange(16 * VERTS_PER_JOINT, num_vertices)

    weights = np.zeros((num_vertices, 16))
    regressor = np.zeros((16, num_vertices))
    for k in range(16):
        rows = slice(k * VERTS_PER_JOINT, (k + 1) * VERTS_PER_JOINT)
        own = rng.uniform(0.5, 1.0, VERTS_PER_JOINT)
        parent = MANO_PARENTS[k] if k > 0 else 0
        weights[rows, k] += own
        weights[rows, parent] += 1.0 - own
        regressor[k, rows] = 1.0 / VERTS_PER_JOINT
    for tip, joint in zip(tip_ids, LAST_JOINT_OF_FINGER, strict=True):
        weights[tip, joint] = 1.0

    faces = np.array(
        [
            [k * VERTS_PER_JOINT + i, k * VERTS_PER_JOINT + i + 1, k * VERTS_PER_JOINT + i + 2]
            for k in range(16)
            for i in range(VERTS_PER_JOINT - 2)
        ],
        dtype=np.uint32,
    )
    components, _ = np.linalg.qr(rng.normal(size=(45, 45)))
    kintree = np.array([MANO_PARENTS, list(range(16))], dtype=np.int64)
    kintree[0, 0] = 2**32 - 1
    return {
        "v_template": v_template,
        "f": faces,
        "weights": weights,
        "J_regressor": scipy.sparse.csc_matrix(regressor),
        "kintree_table": kintree,
        "posedirs": rng.normal(0.0, 0.002, (num_vertices, 3, 135)),
        "shapedirs": rng.normal(0.0, 0.004, (num_vertices, 3, 10)),
        "hands_components": components,
        "hands_mean": rng.normal(0.0, 0.15, 45),
        "hands_coeffs": rng.normal(size=(20, 45)),
        "J": joints,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "fingertip_vertex_ids": tip_ids,
    }


def mirror_pose(pose: np.ndarray) -> np.ndarray:
    """Axis-angle vectors (..., 3k) of the x-mirrored rotations: M R M = R((x, -y, -z))."""
    shaped = np.asarray(pose).reshape(*np.shape(pose)[:-1], -1, 3)
    return (shaped * np.array([1.0, -1.0, -1.0])).reshape(np.shape(pose))


def mirror_mano_dict(right: dict[str, Any], buggy: bool = False) -> dict[str, Any]:
    """The left hand as the exact x-mirror of ``right``.

    ``buggy=True`` reproduces the released MANO_LEFT's error: ``shapedirs[:, 0, :]``
    left equal to the right hand's instead of mirrored.
    """
    left = dict(right)
    left["v_template"] = right["v_template"] * MIRROR
    shapedirs = right["shapedirs"].copy()
    if not buggy:
        shapedirs[:, 0, :] *= -1
    left["shapedirs"] = shapedirs
    # pose feature (R - I)[a, b] of joint j sits at j*9 + 3a + b; mirroring R flips it by
    # m_a m_b and the resulting vertex offset by m_c
    signs = np.einsum("c,a,b->cab", MIRROR, MIRROR, MIRROR).reshape(3, 9)
    left["posedirs"] = right["posedirs"] * np.tile(signs, (1, 15))[None]
    left["hands_mean"] = mirror_pose(right["hands_mean"])
    left["hands_components"] = mirror_pose(right["hands_components"])
    left["f"] = right["f"][:, ::-1].copy()
    left["J"] = right["J"] * MIRROR
    return left


@dataclass
class FakeChumpy:
    """Classes pickled under chumpy's module names, as the released files reference them."""

    Ch: type
    Select: type


def _fake_chumpy() -> FakeChumpy:
    class Ch:
        pass

    class Select:
        pass

    Ch.__module__, Ch.__qualname__, Ch.__name__ = "chumpy.ch", "Ch", "Ch"
    Select.__module__, Select.__qualname__ = "chumpy.reordering", "Select"
    Select.__name__ = "Select"
    return FakeChumpy(Ch=Ch, Select=Select)


def write_mano_pickle(
    path: Path, data: dict[str, Any], protocol: int = 2, chumpy_shapedirs: bool = False
) -> Path:
    """Pickle ``data`` like MANO does; ``chumpy_shapedirs`` wraps shapedirs as chumpy does."""
    data = dict(data)
    fake = _fake_chumpy()
    modules = {
        "chumpy": types.ModuleType("chumpy"),
        "chumpy.ch": types.ModuleType("chumpy.ch"),
        "chumpy.reordering": types.ModuleType("chumpy.reordering"),
    }
    modules["chumpy.ch"].Ch = fake.Ch  # type: ignore[attr-defined]
    modules["chumpy.reordering"].Select = fake.Select  # type: ignore[attr-defined]
    if chumpy_shapedirs:
        shapedirs = data["shapedirs"]
        num_vertices = shapedirs.shape[0]
        rng = np.random.default_rng(1)
        # like the release: a 20-component Ch of which Select keeps the first 10
        full = np.concatenate([shapedirs, rng.normal(size=(num_vertices, 3, 10))], axis=2)
        wrapped = fake.Ch()
        wrapped.__dict__.update({"x": full, "_dirty_vars": set(), "_itr": None})
        select = fake.Select()
        select.__dict__.update(
            {
                "a": wrapped,
                "idxs": np.arange(full.size).reshape(full.shape)[:, :, :10].ravel(),
                "preferred_shape": shapedirs.shape,
            }
        )
        data["shapedirs"] = select
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        path.write_bytes(pickle.dumps(data, protocol=protocol))
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own ``$HANDNERF_CACHE``; ~/.cache is never touched."""
    cache = tmp_path / "handnerf-cache"
    monkeypatch.setenv("HANDNERF_CACHE", str(cache))
    yield cache


@pytest.fixture
def toy_right() -> dict[str, Any]:
    return make_mano_dict(seed=0)


@pytest.fixture
def toy_folder(tmp_path: Path, toy_right: dict[str, Any]) -> Path:
    """A MANO folder whose left hand is the exact mirror of its right."""
    folder = tmp_path / "mano"
    folder.mkdir()
    write_mano_pickle(folder / "MANO_RIGHT.pkl", toy_right, chumpy_shapedirs=True)
    write_mano_pickle(folder / "MANO_LEFT.pkl", mirror_mano_dict(toy_right), chumpy_shapedirs=True)
    return folder


@pytest.fixture(scope="session")
def procedural_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole session, so the procedural hand is generated only once."""
    return tmp_path_factory.mktemp("procedural-cache")


@pytest.fixture
def procedural_folder(procedural_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The license-free procedural hand's folder.

    Points ``$HANDNERF_CACHE`` at the session's shared cache for the rest of the test so
    ``load_mano_folder(None)`` finds the generated folder and its conversions.
    """
    from handnerf.hand.procedural import procedural_mano_dir

    monkeypatch.setenv("HANDNERF_CACHE", str(procedural_cache))
    return Path(procedural_mano_dir())


@pytest.fixture(scope="session")
def mano_tools() -> types.SimpleNamespace:
    """The builders above, for tests (conftest modules are not importable by name)."""
    return types.SimpleNamespace(
        make=make_mano_dict,
        mirror=mirror_mano_dict,
        mirror_pose=mirror_pose,
        write=write_mano_pickle,
        fake_chumpy=_fake_chumpy,
        last_joint_of_finger=LAST_JOINT_OF_FINGER,
    )
