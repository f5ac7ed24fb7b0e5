"""HandModel: posing through smplx, keypoints, bone transforms, canonical pose, mirroring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from handnerf.errors import ParameterError
from handnerf.hand.hand_model import CANONICAL_POSE, HandModel, HandOutput, ManoParams
from handnerf.hand.mano_file import load_mano_folder

MIRROR = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)


@pytest.fixture(scope="module")
def toy_models(tmp_path_factory, mano_tools):
    """float64 models of the toy hand (left = exact mirror of right), built once per module."""
    root = tmp_path_factory.mktemp("toy-models")
    right = mano_tools.make(seed=0)
    mano_tools.write(root / "MANO_RIGHT.pkl", right, chumpy_shapedirs=True)
    mano_tools.write(root / "MANO_LEFT.pkl", mano_tools.mirror(right), chumpy_shapedirs=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HANDNERF_CACHE", str(root / "cache"))
        models = load_mano_folder(root)
    return {side: HandModel(data, dtype=torch.float64) for side, data in models.items()}


def _assert_close(
    actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-12, rtol: float = 0.0
) -> None:
    """Like torch.testing.assert_close, whose first call costs ~10 s of imports on CPU."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    expected = expected.to(actual.dtype)
    error = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    assert bool((error <= bound).all()), f"max abs error {float(error.max()):.3e} > {atol:.1e}"


def _random_params(batch: int, seed: int = 0) -> ManoParams:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float) -> torch.Tensor:
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale

    return ManoParams(
        global_orient=rand(batch, 3, scale=1.5),
        hand_pose=rand(batch, 45, scale=0.6),
        betas=rand(batch, 10, scale=2.0),
        transl=rand(batch, 3, scale=0.5),
    )


def _mirror_params(params: ManoParams) -> ManoParams:
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=params.hand_pose.dtype)
    return ManoParams(
        global_orient=params.global_orient * flip,
        hand_pose=(params.hand_pose.reshape(-1, 15, 3) * flip).reshape(-1, 45),
        betas=params.betas.clone(),
        transl=params.transl * MIRROR.to(params.transl.dtype),
    )


def _skin(weights: torch.Tensor, transforms: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """x = sum_k w_k T_k x, for (V, 16) weights, (B, 16, 4, 4) transforms, (B, V, 3) points."""
    blended = torch.einsum("vk,bkij->bvij", weights, transforms)
    return torch.einsum("bvij,bvj->bvi", blended[..., :3, :3], points) + blended[..., :3, 3]


def test_shapes_dtypes_and_metres(toy_models):
    model = toy_models["right"]
    num_vertices = model.data.v_template.shape[0]
    out = model(_random_params(3))
    assert isinstance(out, HandOutput)
    assert out.vertices.shape == (3, num_vertices, 3)
    assert out.joints.shape == (3, 16, 3)
    assert out.keypoints.shape == (3, 21, 3)
    assert out.bone_transforms.shape == (3, 16, 4, 4)
    assert out.canonical_vertices.shape == (3, num_vertices, 3)
    assert model.faces.dtype == torch.long and model.faces.shape == model.data.faces.shape
    assert model.skinning_weights.shape == (num_vertices, 16)
    assert model.parents.tolist() == [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
    # the toy hand is ~15 cm; a millimetre mix-up would make it 1000x larger
    extent = (out.vertices - out.vertices.mean(1, keepdim=True)).abs().amax()
    assert 0.03 < float(extent) < 0.5


def test_translation_moves_everything_rigidly(toy_models):
    model = toy_models["right"]
    params = _random_params(2, seed=1)
    moved = ManoParams(params.global_orient, params.hand_pose, params.betas, params.transl + 0.25)
    a, b = model(params), model(moved)
    _assert_close(b.vertices, a.vertices + 0.25)
    _assert_close(b.joints, a.joints + 0.25)
    _assert_close(b.keypoints, a.keypoints + 0.25)
    _assert_close(b.canonical_vertices, a.canonical_vertices)


def test_joints_match_independent_forward_kinematics(toy_models):
    """Absolute rotations = hand_pose + hands_mean, chained along MANO's kinematic tree."""
    model = toy_models["right"]
    params = _random_params(2, seed=2)
    out = model(params)
    data = model.data
    for b in range(2):
        betas = params.betas[b].numpy()
        rest = data.J_regressor @ (data.v_template + data.shapedirs @ betas)
        pose = np.concatenate([params.global_orient[b].numpy(), params.hand_pose[b].numpy()])
        pose[3:] += data.hands_mean
        local = Rotation.from_rotvec(pose.reshape(16, 3)).as_matrix()
        world_rot = [local[0]]
        world_pos = [rest[0]]
        for k in range(1, 16):
            parent = data.parents[k]
            world_pos.append(world_pos[parent] + world_rot[parent] @ (rest[k] - rest[parent]))
            world_rot.append(world_rot[parent] @ local[k])
        expected = np.stack(world_pos) + params.transl[b].numpy()
        np.testing.assert_allclose(out.joints[b].numpy(), expected, atol=1e-7)
        # bone transforms carry each rest joint onto its posed position
        rest_h = np.concatenate([rest, np.ones((16, 1))], axis=1)
        moved = np.einsum("kij,kj->ki", out.bone_transforms[b].numpy(), rest_h)[:, :3]
        np.testing.assert_allclose(moved, expected, atol=1e-7)
        np.testing.assert_allclose(
            out.bone_transforms[b, :, :3, :3].numpy(), np.stack(world_rot), atol=1e-7
        )


def test_posed_vertices_are_skinned_canonical_vertices_without_pose_correctives(
    tmp_path, toy_right, mano_tools
):
    data = dict(toy_right)
    data["posedirs"] = np.zeros_like(data["posedirs"])
    folder = tmp_path / "mano"
    folder.mkdir()
    mano_tools.write(folder / "MANO_RIGHT.pkl", data)
    mano_tools.write(folder / "MANO_LEFT.pkl", mano_tools.mirror(data))
    model = HandModel.from_folder(folder, "right", dtype=torch.float64)
    out = model(_random_params(4, seed=3))
    skinned = _skin(model.skinning_weights, out.bone_transforms, out.canonical_vertices)
    _assert_close(out.vertices, skinned, atol=1e-7, rtol=0)


def test_pose_correctives_are_the_only_difference(toy_models):
    """With posedirs, posed vertices differ from plain skinning by small, pose-dependent offsets."""
    model = toy_models["right"]
    params = _random_params(2, seed=4)
    out = model(params)
    skinned = _skin(model.skinning_weights, out.bone_transforms, out.canonical_vertices)
    gap = (out.vertices - skinned).norm(dim=-1)
    assert 1e-5 < float(gap.max()) < 0.05


def test_canonical_pose_is_flat_and_pose_independent(toy_models):
    model = toy_models["right"]
    assert CANONICAL_POSE == "flat"
    params = _random_params(2, seed=5)
    other = _random_params(2, seed=6)
    other.betas = params.betas.clone()
    canonical = model.canonical_vertices(params.betas)
    _assert_close(model(params).canonical_vertices, canonical)
    _assert_close(model(other).canonical_vertices, canonical)
    data = model.data
    expected = data.v_template + np.einsum("vcs,bs->bvc", data.shapedirs, params.betas.numpy())
    np.testing.assert_allclose(canonical.numpy(), expected, atol=1e-12)
    # the flat pose in absolute terms is hand_pose = -hands_mean: it reproduces the canonical mesh
    flat = ManoParams(
        global_orient=torch.zeros(2, 3, dtype=torch.float64),
        hand_pose=-torch.as_tensor(data.hands_mean).expand(2, 45),
        betas=params.betas,
        transl=torch.zeros(2, 3, dtype=torch.float64),
    )
    out = model(flat)
    _assert_close(out.vertices, canonical, atol=1e-7, rtol=0)
    identity = torch.eye(4, dtype=torch.float64).expand(2, 16, 4, 4)
    _assert_close(out.bone_transforms, identity, atol=1e-7, rtol=0)


def test_keypoints_follow_interhand_order(toy_models, mano_tools):
    model = toy_models["right"]
    out = model(_random_params(2, seed=7))
    tips = model.data.fingertip_vertex_ids
    _assert_close(out.keypoints[:, 20], out.joints[:, 0])  # wrist last
    for finger, tip_row in enumerate([0, 4, 8, 12, 16]):  # thumb, index, middle, ring, pinky
        _assert_close(out.keypoints[:, tip_row], out.vertices[:, tips[finger]])
        # the row after the tip is the finger's last (outermost) MANO joint
        last_joint = mano_tools.last_joint_of_finger[finger]
        _assert_close(out.keypoints[:, tip_row + 1], out.joints[:, last_joint])
        _assert_close(out.keypoints[:, tip_row + 3], out.joints[:, last_joint - 2])


def test_left_is_mirror_of_right_for_mirrored_pose(toy_models):
    params = _random_params(3, seed=8)
    right = toy_models["right"](params)
    left = toy_models["left"](_mirror_params(params))
    _assert_close(left.vertices, right.vertices * MIRROR, atol=1e-7, rtol=0)
    _assert_close(left.keypoints, right.keypoints * MIRROR, atol=1e-7, rtol=0)
    flip = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    _assert_close(left.bone_transforms, flip @ right.bone_transforms @ flip, atol=1e-7, rtol=0)


def test_procedural_hand_left_mirrors_right(procedural_folder):
    # The dense hand, which has no pose correctives (the MANO-resolution one, the default,
    # has them: tests/hand/test_coarse_hand.py).
    models = load_mano_folder(None, procedural="dense")
    right = HandModel(models["right"], dtype=torch.float64)
    left = HandModel(models["left"], dtype=torch.float64)
    assert right.side == "right" and left.side == "left"
    params = _random_params(2, seed=9)
    params.transl = params.transl * 0.1
    out_right, out_left = right(params), left(_mirror_params(params))
    _assert_close(out_left.vertices, out_right.vertices * MIRROR, atol=1e-6, rtol=0)
    # no pose correctives: posed vertices are exactly the skinned canonical vertices
    skinned = _skin(right.skinning_weights, out_right.bone_transforms, out_right.canonical_vertices)
    _assert_close(out_right.vertices, skinned, atol=1e-7, rtol=0)
    tips = list(right.data.fingertip_vertex_ids)
    _assert_close(out_right.keypoints[:, [0, 4, 8, 12, 16]], out_right.vertices[:, tips])


def test_float32_model_accepts_float64_params_and_backpropagates(toy_folder):
    model = HandModel.from_folder(toy_folder, "left")
    params = _random_params(2, seed=10)
    params.hand_pose.requires_grad_(True)
    out = model(params)
    assert out.vertices.dtype == torch.float32
    out.vertices.square().sum().backward()
    assert params.hand_pose.grad is not None and bool(params.hand_pose.grad.abs().sum() > 0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hand_pose", torch.zeros(2, 48), r"'hand_pose' has shape \(2, 48\)"),
        ("betas", torch.zeros(2, 10, 1), r"'betas' has shape"),
        ("transl", torch.zeros(3, 3), r"'transl' has batch size 3"),
        ("global_orient", torch.full((2, 3), float("nan")), r"'global_orient' contains NaN"),
        ("hand_pose", torch.full((2, 45), float("inf")), r"'hand_pose' contains NaN or inf"),
        ("betas", np.zeros((2, 10)), r"'betas' must be a torch tensor"),
    ],
)
def test_bad_params_raise_parameter_error(toy_models, field, value, message):
    params = _random_params(2)
    setattr(params, field, value)
    with pytest.raises(ParameterError, match=message) as info:
        toy_models["right"](params)
    assert "right HandModel.forward" in str(info.value)


def test_canonical_vertices_checks_betas(toy_models):
    with pytest.raises(ParameterError, match="'betas'"):
        toy_models["right"].canonical_vertices(torch.zeros(2, 9))


def test_from_folder_rejects_unknown_side(toy_folder):
    with pytest.raises(ParameterError, match="'middle'"):
        HandModel.from_folder(toy_folder, "middle")


def test_from_interhand_entry():
    rng = np.random.default_rng(0)
    entry = {"pose": rng.normal(size=48).tolist(), "shape": rng.normal(size=10).tolist(),
             "trans": [0.1, -0.2, 0.9]}  # fmt: skip
    params = ManoParams.from_interhand(entry, "mano.json capture 0 frame 3 right")
    assert len(params) == 1
    np.testing.assert_allclose(params.global_orient[0].numpy(), entry["pose"][:3], rtol=1e-6)
    np.testing.assert_allclose(params.hand_pose[0].numpy(), entry["pose"][3:], rtol=1e-6)
    np.testing.assert_allclose(params.betas[0].numpy(), entry["shape"], rtol=1e-6)
    np.testing.assert_allclose(params.transl[0].numpy(), entry["trans"], rtol=1e-6)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (None, "null"),
        ({"pose": [0.0] * 48, "trans": [0.0] * 3}, "no 'shape'"),
        ({"pose": [0.0] * 45, "shape": [0.0] * 10, "trans": [0.0] * 3}, "'pose' has 45 values"),
        (
            {"pose": [0.0] * 48, "shape": [0.0] * 10, "trans": [0.0, float("nan"), 0.0]},
            "'trans' contains NaN",
        ),
        ({"pose": [0.0] * 48, "shape": ["a"] * 10, "trans": [0.0] * 3}, "'shape' is not a list"),
        ([1, 2, 3], "must be a dict"),
    ],
)
def test_from_interhand_errors_name_entry_and_field(entry, message):
    where = "InterHand2.6M_test_MANO_NeuralAnnot.json capture 0 frame 7 left"
    with pytest.raises(ParameterError, match=message) as info:
        ManoParams.from_interhand(entry, where)
    assert where in str(info.value)


def test_params_stack_index_len_to():
    a, b = _random_params(2, seed=11), _random_params(3, seed=12)
    stacked = ManoParams.stack([a, b])
    assert len(stacked) == 5
    _assert_close(stacked.index(3).hand_pose, b.hand_pose[1:2])
    _assert_close(stacked.index(-1).betas, b.betas[2:3])
    assert len(stacked.index(slice(1, 4))) == 3
    with pytest.raises(IndexError):
        stacked.index(5)
    as32 = stacked.to("cpu", torch.float32)
    assert as32.transl.dtype == torch.float32 and len(as32) == 5
    assert len(ManoParams.zeros(4).validate("zeros")) == 4
    with pytest.raises(ParameterError, match="empty"):
        ManoParams.stack([])
