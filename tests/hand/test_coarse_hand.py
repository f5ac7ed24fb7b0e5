"""The procedural hand at MANO's resolution: topology, triangle sizes, pose correctives.

The reference numbers are those measured on the real right-hand MANO model
(docs: shared reference "What real MANO looks like to a ray"): 778 vertices, edges of
mean 7.9 / 90th percentile 14 / max 24 mm with the largest triangles on the back and the
palm, surface-to-nearest-vertex distances of mean 2.7 / p99 7.9 / max 11.8 mm, and pose
correctives of a few millimetres at bent joints.
"""

from __future__ import annotations

import argparse
import inspect
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch
import trimesh
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from handnerf.commands import hand as hand_command
from handnerf.errors import ParameterError
from handnerf.hand import appearance, coarse_hand, joint_layout, poses, procedural
from handnerf.hand.hand_model import HandModel, ManoParams
from handnerf.hand.mano_file import load_mano_folder

MM = 1e-3
# Bones whose skin is the palm, the back of the hand and the wrist (thumb metacarpal too).
PALM_BONES = (0, 13)


@pytest.fixture(scope="module")
def right() -> dict:
    return procedural.build_procedural_hand("right", resolution="mano")


@pytest.fixture(scope="module")
def left() -> dict:
    return procedural.build_procedural_hand("left", resolution="mano")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mano-resolution")
    return procedural.write_procedural_mano_dir(out, resolution="mano")


def _mesh(hand: dict) -> trimesh.Trimesh:
    return trimesh.Trimesh(hand["v_template"], hand["f"], process=False)


def _palm_faces(hand: dict) -> np.ndarray:
    """(F,) True where the face's skin is mostly driven by the palm / wrist bones."""
    face_weights = hand["weights"][hand["f"].astype(np.int64)].mean(axis=1)
    return face_weights[:, list(PALM_BONES)].sum(axis=1) > 0.5


def test_topology_is_mano_sized_closed_and_clean(right: dict, left: dict) -> None:
    for hand in (right, left):
        mesh = _mesh(hand)
        assert len(hand["v_template"]) == 778
        # MANO's 1538 faces leave the wrist open; this surface is closed: F = 2 V - 4
        assert len(hand["f"]) == 2 * 778 - 4
        assert mesh.is_watertight and mesh.is_winding_consistent
        assert mesh.euler_number == 2 and mesh.volume > 0
        # no degenerate, sliver or duplicate faces
        assert mesh.area_faces.min() > 1.0 * MM**2
        assert np.degrees(mesh.face_angles.min()) > 15.0
        assert len(np.unique(np.sort(hand["f"], axis=1), axis=0)) == len(hand["f"])
        assert len(np.unique(hand["f"])) == 778  # every vertex is used


def test_edge_lengths_are_mano_like(right: dict) -> None:
    edges = _mesh(right).edges_unique_length / MM
    assert 6.5 < edges.mean() < 9.0
    assert 11.0 < np.percentile(edges, 90) < 16.0
    assert 16.0 < edges.max() < 26.0
    assert np.median(edges) < edges.mean() - 0.5  # a long tail of big triangles


def test_largest_triangles_are_on_the_back_and_palm(right: dict) -> None:
    mesh = _mesh(right)
    palm = _palm_faces(right)
    areas = mesh.area_faces
    largest = np.argsort(areas)[-len(areas) // 20 :]
    assert palm[largest].mean() > 0.9
    assert np.median(areas[palm]) > 2.5 * np.median(areas[~palm])
    # both sides of the palm are coarse, not only one
    centroids = mesh.triangles_center[largest]
    assert np.any(centroids[:, 1] > right["J"][4, 1]) and np.any(centroids[:, 1] < right["J"][4, 1])


def test_surface_points_are_mano_far_from_vertices(right: dict) -> None:
    points, _ = trimesh.sample.sample_surface(_mesh(right), 40000, seed=0)
    distance = cKDTree(right["v_template"]).query(points)[0] / MM
    assert 2.3 < distance.mean() < 4.2
    assert 6.0 < np.percentile(distance, 99) < 10.5
    assert 8.0 < distance.max() < 14.0


def test_vertices_lie_on_the_designed_surface(right: dict) -> None:
    wrist = joint_layout.rest_joint_layout("right")[0] / MM  # the layout is scaled about it
    layout = wrist + (right["v_template"] / MM - wrist) / joint_layout.SCALE
    assert np.abs(procedural.hand_sdf_mm(layout)).max() < 0.05


def test_rig_is_consistent(right: dict) -> None:
    assert isinstance(right["J_regressor"], scipy.sparse.csc_matrix)
    np.testing.assert_allclose(right["J_regressor"] @ right["v_template"], right["J"], atol=1e-12)
    np.testing.assert_allclose(right["J"], joint_layout.rest_joint_layout("right"), atol=1e-3)
    weights = right["weights"]
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-9)
    assert weights.min() >= 0 and np.all(weights.max(axis=0) > 0.95)
    assert right["shapedirs"].shape == (778, 3, 10) and np.abs(2 * right["shapedirs"]).max() < 0.02
    # fingertips: beyond the last joint of their finger, along its distal bone
    joints = right["J"]
    for finger, chain in enumerate(procedural.FINGER_CHAINS):
        tip = right["v_template"][right["fingertip_vertex_ids"][finger]]
        bone = joints[chain[2]] - joints[chain[1]]
        reach = (tip - joints[chain[2]]) @ bone / np.linalg.norm(bone)
        assert 0.012 < reach < 0.032, (finger, reach)
    colors = right["vertex_colors"]
    assert colors.shape == (778, 3) and colors.dtype == np.float32
    np.testing.assert_allclose(
        colors, appearance.skin_albedo(right["v_template"], right), atol=1e-6
    )


def _posed(model: HandModel, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posed vertices, pure LBS of the shaped template, and the global bone rotations."""
    params = ManoParams.zeros(1)
    params = ManoParams(
        global_orient=params.global_orient.double(),
        hand_pose=torch.tensor(pose - model.data.hands_mean, dtype=torch.float64)[None],
        betas=params.betas.double(),
        transl=params.transl.double(),
    )
    out = model(params)
    transforms = out.bone_transforms[0].numpy()
    weights = model.data.weights
    canonical = out.canonical_vertices[0].numpy()
    blended = np.einsum("vk,kij->vij", weights, transforms)
    lbs = np.einsum("vij,vj->vi", blended[:, :3, :3], canonical) + blended[:, :3, 3]
    return out.vertices[0].numpy(), lbs, blended[:, :3, :3]


def _corrective(data, pose: np.ndarray) -> np.ndarray:
    """posedirs times the lrotmin feature (R_j - I) of the 15 finger joints, (V, 3)."""
    rotations = Rotation.from_rotvec(pose.reshape(15, 3)).as_matrix()
    feature = (rotations - np.eye(3)).reshape(135)
    return data.posedirs @ feature


def test_posed_vertices_are_lbs_plus_the_corrective(folder: Path) -> None:
    hands = load_mano_folder(folder)
    assert hands["right"].is_procedural and hands["right"].procedural["resolution"] == "mano"
    model = HandModel(hands["right"], dtype=torch.float64)
    flat = poses.key_pose("flat")
    posed, lbs, _ = _posed(model, flat)
    np.testing.assert_allclose(posed, lbs, atol=1e-10)  # no corrective at the rest pose
    np.testing.assert_allclose(posed, hands["right"].v_template, atol=1e-10)

    fist = poses.key_pose("fist")
    posed, lbs, rotation = _posed(model, fist)
    expected = np.einsum("vij,vj->vi", rotation, _corrective(hands["right"], fist))
    np.testing.assert_allclose(posed - lbs, expected, atol=1e-9)
    displacement = np.linalg.norm(posed - lbs, axis=1) / MM
    assert 3.0 < displacement.max() < 8.0
    assert (displacement > 1.0).sum() > 50  # at every bent joint, not at one vertex
    # the mean (relaxed) pose already carries a small corrective
    posed, lbs, _ = _posed(model, hands["right"].hands_mean)
    assert 0.5 < np.linalg.norm(posed - lbs, axis=1).max() / MM < 4.0


def test_correctives_bulge_the_knuckle_and_crease_the_palm(right: dict) -> None:
    # sizes like MANO's (abs max 6.3 mm per unit of R - I)
    assert 0.5 * MM < np.abs(right["posedirs"]).max() < 6.3 * MM
    normals = _mesh(right).vertex_normals
    joints = right["J"]
    angles = np.zeros((15, 3))
    for joint in (2, 5, 11):  # PIP of index, middle, ring: flexion only
        angles[joint - 1, 0] = 1.2
    rotations = Rotation.from_rotvec(poses.pose_from_angles(angles).reshape(15, 3)).as_matrix()
    offsets = right["posedirs"] @ (rotations - np.eye(3)).reshape(135)
    outward = (offsets * normals).sum(axis=1)
    for joint in (2, 5, 11):
        near = np.linalg.norm(right["v_template"] - joints[joint], axis=1) < 0.013
        back = near & (right["v_template"][:, 1] > joints[joint, 1] + 0.004)
        palm = near & (right["v_template"][:, 1] < joints[joint, 1] - 0.004)
        assert outward[back].max() > 1.0 * MM and outward[back].min() > -0.1 * MM
        assert outward[palm].min() < -1.0 * MM and outward[palm].max() < 0.1 * MM
    # a joint's corrective stays at that joint: the unbent pinky does not move
    pinky = right["weights"][:, 7:10].sum(axis=1) > 0.5
    assert np.abs(offsets[pinky]).max() == 0.0


def test_left_hand_poses_as_the_mirror(folder: Path) -> None:
    hands = load_mano_folder(folder)
    right = HandModel(hands["right"], dtype=torch.float64)
    left = HandModel(hands["left"], dtype=torch.float64)
    fist = poses.key_pose("fist")
    posed_right, _, _ = _posed(right, fist)
    posed_left, _, _ = _posed(left, poses.key_pose("fist", "left"))
    np.testing.assert_allclose(posed_left, posed_right * [-1.0, 1.0, 1.0], atol=1e-9)


def test_selectable_and_cached_separately(right: dict, tmp_path: Path) -> None:
    assert inspect.signature(procedural.build_procedural_hand).parameters["resolution"].default == (
        "dense"
    )
    folder = procedural.procedural_mano_dir(tmp_path / "cache", resolution="mano")
    assert folder.name == f"procedural_hand_mano_v{coarse_hand.VERSION}"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]
    data = pickle.loads((folder / "MANO_RIGHT.pkl").read_bytes())
    np.testing.assert_array_equal(data["v_template"], right["v_template"])
    np.testing.assert_array_equal(data["posedirs"], right["posedirs"])
    assert data[procedural.PROCEDURAL_KEY]["resolution"] == "mano"
    with pytest.raises(ParameterError, match="resolution"):
        procedural.build_procedural_hand("right", resolution="fine")


def test_command_writes_the_mano_resolution(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    hand_command.configure(parser)
    args = parser.parse_args(["--out", str(tmp_path / "hand"), "--resolution", "mano"])
    assert hand_command.run(args) == 0
    assert "mano procedural hand" in capsys.readouterr().out
    hands = load_mano_folder(tmp_path / "hand")
    assert hands["left"].v_template.shape == (778, 3)
    assert np.abs(hands["left"].posedirs).max() > 0
