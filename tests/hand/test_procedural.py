"""The procedural hand: MANO file format, geometry, skinning, shapes, caching, albedo."""

from __future__ import annotations

import pickle
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import smplx
import torch
import trimesh

from handnerf.errors import ParameterError
from handnerf.hand import appearance, joint_layout, mano_file, poses, procedural

MANO_KEYS = {
    "v_template", "f", "weights", "J_regressor", "kintree_table", "posedirs", "shapedirs",
    "hands_components", "hands_mean", "hands_coeffs", "J", "bs_style", "bs_type",
}  # fmt: skip


@pytest.fixture(scope="module")
def right() -> dict:
    return procedural.build_procedural_hand("right")


@pytest.fixture(scope="module")
def left() -> dict:
    return procedural.build_procedural_hand("left")


def _mano(hand: dict):
    model = smplx.MANO(
        model_path=None,
        data_struct=types.SimpleNamespace(**hand),
        is_rhand=hand[procedural.PROCEDURAL_KEY]["side"] == "right",
        use_pca=False,
        flat_hand_mean=True,
    )

    def forward(pose: np.ndarray, betas: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        pose = np.atleast_2d(pose)
        b = np.zeros((len(pose), 10)) if betas is None else np.atleast_2d(betas)
        out = model(
            hand_pose=torch.tensor(pose, dtype=torch.float32),
            betas=torch.tensor(b, dtype=torch.float32),
            global_orient=torch.zeros(len(pose), 3),
        )
        return out.vertices.detach().numpy(), out.joints.detach().numpy()

    return forward


def test_build_is_deterministic(right: dict) -> None:
    procedural._CORE_CACHE.clear()  # rebuild the geometry from scratch
    again = procedural.build_procedural_hand("right")
    assert again.keys() == right.keys()
    for key, value in right.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(again[key], value, err_msg=key)
        elif scipy.sparse.issparse(value):
            assert (again[key] != value).nnz == 0
        else:
            assert again[key] == value


def test_keys_shapes_and_dtypes(right: dict) -> None:
    assert MANO_KEYS <= right.keys()
    num_verts = len(right["v_template"])
    assert 2000 <= num_verts <= 4500
    assert right["v_template"].shape == (num_verts, 3)
    assert right["f"].dtype == np.uint32 and right["f"].shape[1] == 3
    assert right["weights"].shape == (num_verts, 16)
    assert isinstance(right["J_regressor"], scipy.sparse.csc_matrix)
    assert right["J_regressor"].shape == (16, num_verts)
    np.testing.assert_array_equal(
        right["kintree_table"][0], [4294967295, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
    )
    assert right["posedirs"].shape == (num_verts, 3, 135) and right["posedirs"].dtype == np.float32
    assert right["shapedirs"].shape == (num_verts, 3, 10)
    comps = right["hands_components"]
    assert comps.shape == (45, 45)
    np.testing.assert_allclose(comps @ comps.T, np.eye(45), atol=1e-10)
    assert right["hands_mean"].shape == (45,) and right["J"].shape == (16, 3)
    assert right["bs_style"] == "lbs" and right["bs_type"] == "lrotmin"
    marker = right[procedural.PROCEDURAL_KEY]
    assert marker["generator"] == "handnerf.hand.procedural" and "NOT MANO" in marker["note"]
    assert marker["version"] == procedural.VERSION
    assert right["fingertip_vertex_ids"].shape == (5,)
    colors = right["vertex_colors"]
    assert colors.shape == (num_verts, 3) and colors.dtype == np.float32


def test_mesh_is_watertight_with_outward_normals(right: dict, left: dict) -> None:
    for hand in (right, left):
        mesh = trimesh.Trimesh(hand["v_template"], hand["f"], process=False)
        assert mesh.is_watertight and mesh.is_winding_consistent
        assert mesh.euler_number == 2  # a closed surface of genus 0
        assert mesh.volume > 0  # positive volume: normals point outwards


def test_joints_regressed_and_weights_normalised(right: dict) -> None:
    np.testing.assert_allclose(right["J_regressor"] @ right["v_template"], right["J"], atol=1e-12)
    np.testing.assert_allclose(right["J"], joint_layout.rest_joint_layout("right"), atol=3e-3)
    weights = right["weights"]
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-9)
    assert weights.min() >= 0
    # every bone drives some vertices on its own, with smooth blends in between
    assert np.all(weights.max(axis=0) > 0.95)
    assert np.mean((weights.max(axis=1) > 0.1) & (weights.max(axis=1) < 0.9)) > 0.05


def test_mano_rest_frame_and_size(right: dict) -> None:
    v, joints = right["v_template"], right["J"]
    tips = v[right["fingertip_vertex_ids"]]  # thumb, index, middle, ring, pinky
    assert np.all(tips[1:, 0] < joints[0, 0] - 0.11)  # fingers along -x from the wrist
    assert np.all(np.diff(tips[1:, 2]) < 0)  # index on +z through pinky on -z
    assert tips[0, 2] > tips[1, 2]  # the thumb is beyond the index on +z
    assert 0.175 < np.linalg.norm(tips[2] - joints[0]) < 0.195


def test_fist_bends_fingers_towards_the_palm(right: dict) -> None:
    forward = _mano(right)
    verts, _ = forward(np.stack([poses.key_pose("flat"), poses.key_pose("fist")]))
    tips = right["fingertip_vertex_ids"][1:]
    flat_tips, fist_tips = verts[0, tips], verts[1, tips]
    np.testing.assert_allclose(verts[0], right["v_template"], atol=1e-5)
    assert np.all(fist_tips[:, 1] < flat_tips[:, 1] - 0.005)  # curled to the palm side (-y)
    wrist = right["J"][0]
    assert np.all(
        np.linalg.norm(fist_tips - wrist, axis=1) < 0.7 * np.linalg.norm(flat_tips - wrist, axis=1)
    )


def test_shape_blend_shapes_act_as_named(right: dict) -> None:
    forward = _mano(right)
    betas = np.zeros((5, 10))
    betas[1, 1], betas[2, 1] = 2.0, -2.0  # finger length
    betas[3, 3], betas[4, 3] = 2.0, -2.0  # palm width
    verts, joints = forward(np.zeros((5, 45)), betas)
    tip = right["fingertip_vertex_ids"][2]
    finger_length = np.linalg.norm(verts[:, tip] - joints[:, 4], axis=1)
    assert finger_length[1] > finger_length[0] * 1.05 > finger_length[2] * 1.1
    palm_width = np.linalg.norm(joints[:, 1] - joints[:, 7], axis=1)
    assert palm_width[3] > palm_width[0] * 1.03 > palm_width[4] * 1.06
    # plausible at |beta| = 2: nothing moves more than 2 cm
    assert np.abs(2 * right["shapedirs"]).max() < 0.02


def test_left_is_the_mirror_of_the_right(right: dict, left: dict) -> None:
    mirror = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_array_equal(left["v_template"], right["v_template"] * mirror)
    np.testing.assert_array_equal(left["f"], right["f"][:, ::-1])
    np.testing.assert_array_equal(left["weights"], right["weights"])
    np.testing.assert_allclose(left["J"], right["J"] * mirror, atol=1e-15)
    np.testing.assert_array_equal(left["shapedirs"][:, 0], -right["shapedirs"][:, 0])
    np.testing.assert_array_equal(left["shapedirs"][:, 1:], right["shapedirs"][:, 1:])
    np.testing.assert_allclose(
        left["hands_mean"].reshape(15, 3), right["hands_mean"].reshape(15, 3) * [1, -1, -1]
    )
    # MANO's left-hand fix must not fire on a correct mirror
    assert np.abs(left["shapedirs"][:, 0] - right["shapedirs"][:, 0]).sum() >= 1
    np.testing.assert_allclose(left["vertex_colors"], right["vertex_colors"], atol=1e-6)


def _allowed_only(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _allowed_only(v) for k, v in value.items())
    return isinstance(value, np.ndarray | scipy.sparse.csc_matrix | str | int | float)


def test_written_folder_is_mano_format(tmp_path: Path) -> None:
    folder = procedural.write_procedural_mano_dir(tmp_path / "mano", seed=3)
    with open(folder / "MANO_RIGHT.pkl", "rb") as handle:
        assert handle.read(2) == b"\x80\x02"  # pickle protocol 2, like MANO's files
    data = pickle.loads((folder / "MANO_LEFT.pkl").read_bytes())
    assert _allowed_only(data)
    assert data[procedural.PROCEDURAL_KEY]["seed"] == 3
    assert sorted(p.name for p in folder.iterdir()) == ["MANO_LEFT.pkl", "MANO_RIGHT.pkl"]
    hands = mano_file.load_mano_folder(folder)
    assert hands["right"].is_procedural and hands["left"].is_procedural
    np.testing.assert_array_equal(hands["left"].shapedirs, data["shapedirs"])


def test_procedural_mano_dir_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANDNERF_CACHE", str(tmp_path / "cache"))
    folder = procedural.procedural_mano_dir()
    # The default is the MANO-resolution hand.
    assert folder == tmp_path / "cache" / f"procedural_hand_mano_v{procedural.hand_version('mano')}"
    assert (folder / "MANO_RIGHT.pkl").is_file() and (folder / "MANO_LEFT.pkl").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]  # no leftovers
    stamp = (folder / "MANO_RIGHT.pkl").stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated a cached procedural hand")

    monkeypatch.setattr(procedural, "write_procedural_mano_dir", fail)
    assert procedural.procedural_mano_dir() == folder
    assert (folder / "MANO_RIGHT.pkl").stat().st_mtime_ns == stamp


def _surface_point(hand: dict, finger: int, along: float, side: float) -> np.ndarray:
    """Vertex nearest a point on the distal phalanx, on its back (+1) or pad (-1)."""
    chain = appearance._CHAINS[finger]
    joints, v = hand["J"], hand["v_template"]
    tip = v[hand["fingertip_vertex_ids"][finger]]
    probe = joints[chain[2]] + along * (tip - joints[chain[2]]) + [0.0, side * 0.02, 0.0]
    return v[np.argmin(np.linalg.norm(v - probe, axis=1))]


def test_albedo_has_nails_creases_and_variation(right: dict) -> None:
    colors = appearance.skin_albedo(right["v_template"], right)
    assert colors.min() >= 0 and colors.max() <= 1
    np.testing.assert_allclose(colors, right["vertex_colors"], atol=1e-6)
    for finger in (1, 2, 3):
        nail = appearance.skin_albedo(_surface_point(right, finger, 0.65, +1)[None], right)
        pad = appearance.skin_albedo(_surface_point(right, finger, 0.65, -1)[None], right)
        assert np.abs(nail - pad).max() > 0.05
    # within the back of the palm: slow variation and pores, never a flat colour
    palm_back = right["v_template"][
        (right["weights"][:, 0] > 0.99) & (right["v_template"][:, 1] > right["J"][4, 1] + 0.005)
    ]
    assert (
        len(palm_back) > 50 and appearance.skin_albedo(palm_back, right).std(axis=0).min() > 0.005
    )
    # a flexion crease: walking along the index finger's pad across its DIP joint
    dip, pip = right["J"][3], right["J"][2]
    axis = (dip - pip) / np.linalg.norm(dip - pip)
    steps = np.linspace(-0.004, 0.004, 81)
    walk = dip + steps[:, None] * axis + [0.0, -0.007, 0.0]
    luminance = appearance.skin_albedo(walk, right).mean(axis=1)
    assert luminance[np.abs(steps) < 0.001].min() < luminance[np.abs(steps) > 0.003].mean() - 0.08
    # deterministic, and the seed changes the pattern
    np.testing.assert_array_equal(
        appearance.skin_albedo(palm_back, right), appearance.skin_albedo(palm_back, right)
    )
    other = dict(
        right, **{procedural.PROCEDURAL_KEY: dict(right[procedural.PROCEDURAL_KEY], seed=7)}
    )
    assert (
        np.abs(
            appearance.skin_albedo(palm_back, other) - appearance.skin_albedo(palm_back, right)
        ).max()
        > 0.01
    )


def test_bad_input_is_rejected(right: dict) -> None:
    with pytest.raises(ParameterError, match="side"):
        procedural.build_procedural_hand("middle")
    with pytest.raises(ParameterError, match="points_canonical"):
        appearance.skin_albedo(np.zeros((4, 2)), right)
    with pytest.raises(ParameterError, match="'J'"):
        appearance.skin_albedo(np.zeros((4, 3)), {"v_template": right["v_template"]})
