"""Avatar-level checks of the GPU paths and of the inference path (``render_camera``).

On CUDA: a checkpoint trained with one hash-grid backend (tcnn / torch) renders the same
image with the other, the nerfacc and torch samplers render the same avatar, and fp16
rendering matches fp32. On every device: rendering runs without autograd and leaves the
trainer able to train on, whatever the chunk size.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from handnerf.config import load_config
from handnerf.files import pick_device
from handnerf.model.avatar import HandAvatar
from handnerf.model.encoding import tcnn_available
from handnerf.model.renderer import render_camera
from handnerf.train.checkpoint import load_checkpoint
from handnerf.train.config import FitConfig
from handnerf.train.fit_data import FitData, load_fit_data
from handnerf.train.trainer import Trainer, psnr_from_mse

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: Enough steps of the unit-test-sized fit for the hand to show up in held-out views.
TRAIN_STEPS = 60


def make_config(small_fit: list[str], *extra: str) -> FitConfig:
    return load_config(FitConfig, None, [*small_fit, "data.novel_pose_seq=null", *extra])


@pytest.fixture(scope="module")
def fit_data(
    tiny_capture: Path, small_fit: list[str], tmp_path_factory: pytest.TempPathFactory
) -> FitData:
    cfg = make_config(small_fit)
    masks = tmp_path_factory.mktemp("avatar_gpu_masks")
    return load_fit_data(tiny_capture, cfg.data, mask_cache=masks, progress=False)


def train_checkpoint(cfg: FitConfig, data: FitData, out: Path) -> dict[str, Tensor]:
    """Fit ``TRAIN_STEPS`` steps, save a checkpoint, return its model state as loaded."""
    trainer = Trainer(cfg, data, out)
    for _ in range(TRAIN_STEPS):
        trainer.training_step()
        trainer.step += 1
    return load_checkpoint(trainer.save())["model"]


def avatar_from(cfg: FitConfig, data: FitData, state: dict[str, Tensor]) -> HandAvatar:
    avatar = HandAvatar(
        cfg.model,
        data.hand_model,
        data.betas,
        n_cameras=len(data.camera_names),
        device=pick_device(cfg.train.device),
    )
    avatar.load_state_dict(state)
    return avatar.to(pick_device(cfg.train.device)).eval()


def render_heldout(avatar: HandAvatar, data: FitData, i: int = 0, **kwargs: object) -> Tensor:
    """Held-out view ``i`` of ``data`` rendered by ``avatar`` (H,W,3) on the CPU."""
    device = avatar.betas.device
    views = data.val_views
    assert views is not None
    frames = avatar.pose_frames(data.train_mano.to(device))
    return render_camera(
        avatar,
        frames,
        views.camera(i),
        int(views.frame_ids[i]),
        int(views.camera_ids[i]),
        device,
        **kwargs,  # type: ignore[arg-type]
    )


def psnr(a: Tensor, b: Tensor) -> float:
    return psnr_from_mse(float(((a - b) ** 2).mean()))


def require_tinycudann() -> None:
    # tinycudann is optional: skip when it is not installed, but an installed one that
    # does not work on this CUDA machine is a failure (tcnn_available() alone would hide it).
    if importlib.util.find_spec("tinycudann") is None:
        reason = "tinycudann (optional CUDA backend) is not installed: pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"
        pytest.skip(reason)  # CUDA-only optional backend
    assert tcnn_available(), "tinycudann is installed but unusable on this CUDA machine"


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize(("trained_with", "rendered_with"), [("tcnn", "torch"), ("torch", "tcnn")])
def test_checkpoint_renders_the_same_with_either_grid_backend(
    fit_data: FitData, small_fit: list[str], tmp_path: Path, trained_with: str, rendered_with: str
) -> None:
    require_tinycudann()
    common = ["train.device=cuda", "model.sampler.kind=torch"]
    trained_cfg = make_config(small_fit, *common, f"model.field.encoding.backend={trained_with}")
    state = train_checkpoint(trained_cfg, fit_data, tmp_path / "run")
    other_cfg = make_config(small_fit, *common, f"model.field.encoding.backend={rendered_with}")
    trained = avatar_from(trained_cfg, fit_data, state)
    other = avatar_from(other_cfg, fit_data, state)
    assert trained.backends()["encoding"] == trained_with
    assert other.backends()["encoding"] == rendered_with

    image = render_heldout(trained, fit_data, amp=False)
    image_other = render_heldout(other, fit_data, amp=False)
    views = fit_data.val_views
    assert views is not None
    gt = views.images[0]
    # The fit learned the hand (else two empty renders would match trivially) ...
    assert psnr(image, gt) > psnr(torch.zeros_like(gt), gt) + 2.0
    # ... and the other backend reads the same weights: only fp16/ulp-level differences.
    assert psnr(image, image_other) > 35.0


@pytest.mark.cuda
@needs_cuda
def test_nerfacc_and_torch_samplers_render_the_same_avatar(
    fit_data: FitData, small_fit: list[str], tmp_path: Path
) -> None:
    base = ["train.device=cuda", "model.field.encoding.backend=torch"]
    state = train_checkpoint(make_config(small_fit, *base), fit_data, tmp_path / "run")
    # Fine sampling on both sides, so what is left is the samplers' own disagreement.
    dense = avatar_from(
        make_config(small_fit, *base, "model.sampler.kind=torch", "model.sampler.n_samples=512"),
        fit_data,
        state,
    )
    packed = avatar_from(
        make_config(
            small_fit,
            *base,
            "model.sampler.kind=nerfacc",
            "model.sampler.step_size=0.0005",
            "model.sampler.posed_resolution=128",
        ),
        fit_data,
        state,
    )
    assert dense.backends()["sampler"] == "torch"
    assert packed.backends()["sampler"] == "nerfacc"
    image_dense = render_heldout(dense, fit_data, amp=False)
    image_packed = render_heldout(packed, fit_data, amp=False)
    assert float(image_dense.amax(-1).gt(0.05).float().mean()) > 0.02, "the hand is visible"
    assert psnr(image_dense, image_packed) > 30.0
    assert float((image_dense - image_packed).abs().mean()) < 0.01


@pytest.mark.cuda
@needs_cuda
def test_fp16_render_matches_fp32_at_all_sixteen_hash_levels(
    fit_data: FitData, small_fit: list[str], tmp_path: Path
) -> None:
    """At the tiny config's 4 levels the finest cell is ~5 mm and fp16 geometry noise
    (~0.1 mm) would not show; at 16 levels it is ~0.1 mm, where it would."""
    cfg = make_config(
        small_fit,
        "train.device=cuda",
        "train.amp=true",
        "model.field.encoding.n_levels=16",
        "model.field.encoding.log2_hashmap_size=16",
    )
    avatar = avatar_from(cfg, fit_data, train_checkpoint(cfg, fit_data, tmp_path / "run"))
    full = render_heldout(avatar, fit_data, amp=False)
    half = render_heldout(avatar, fit_data)  # fp16 autocast, the CUDA default
    assert float(full.amax(-1).gt(0.05).float().mean()) > 0.02, "the hand is visible"
    assert psnr(half, full) > 35.0


def test_training_and_rendering_through_the_nerfacc_path_on_the_cpu(
    fit_data: FitData, small_fit: list[str], tmp_path: Path, nerfacc_standin: object
) -> None:
    """nerfacc's kernels stood in for on the CPU (tests/nerfacc_standin.py): training
    steps (marching, packed rendering and its backward) and a render through the packed
    path, which then matches the batched torch path's render of the same weights."""
    calls = nerfacc_standin.calls  # type: ignore[attr-defined]
    cfg = make_config(small_fit, "train.device=cpu", "model.sampler.kind=nerfacc")
    trainer = Trainer(cfg, fit_data, tmp_path / "run")
    assert trainer.avatar.backends()["sampler"] == "nerfacc"
    grid = trainer.avatar.field.encoding.params
    before = grid.detach().clone()
    for _ in range(20):
        stats = trainer.training_step()
        trainer.step += 1
        assert math.isfinite(stats["loss"])
    assert calls["traverse_grids"] >= 20
    assert calls["exclusive_sum"] >= 40, "forward and backward of every step's packed render"
    assert not torch.equal(grid.detach(), before), "the packed render's gradient reached the grid"

    state = load_checkpoint(trainer.save())["model"]
    # Fine sampling on both sides, so what is left is the samplers' own disagreement.
    fine = ["model.sampler.step_size=0.0005", "model.sampler.posed_resolution=64"]
    packed = avatar_from(
        make_config(small_fit, "model.sampler.kind=nerfacc", *fine), fit_data, state
    )
    dense_cfg = make_config(
        small_fit, "train.device=cpu", "model.sampler.kind=torch", "model.sampler.n_samples=512"
    )
    dense = avatar_from(dense_cfg, fit_data, state)
    marched = calls["traverse_grids"]
    image_packed = render_heldout(packed, fit_data)
    assert calls["traverse_grids"] > marched, "the render marched with nerfacc"
    image_dense = render_heldout(dense, fit_data)
    assert float(image_dense.amax(-1).gt(0.05).float().mean()) > 0.02, "the hand is visible"
    assert psnr(image_dense, image_packed) > 30.0
    assert float((image_dense - image_packed).abs().mean()) < 0.01


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, needs_cuda])]
)
def test_render_camera_is_an_inference_path_and_training_goes_on(
    fit_data: FitData, small_fit: list[str], tmp_path: Path, device: str
) -> None:
    cfg = make_config(small_fit, f"train.device={device}")
    trainer = Trainer(cfg, fit_data, tmp_path / "run")
    views = fit_data.val_views
    assert views is not None

    # Rendering first builds the model's lazy caches inside inference mode; training
    # must still work afterwards, and again after a render of a trained model.
    first = trainer.render_view(trainer.train_frames, views, 0)
    for _ in range(3):
        stats = trainer.training_step()
        trainer.step += 1
        assert math.isfinite(stats["loss"])
    image = trainer.render_view(trainer.train_frames, views, 0)
    assert math.isfinite(trainer.training_step()["loss"])

    for img in (first, image):
        assert img.shape == (views.height, views.width, 3)
        assert img.device.type == "cpu" and img.dtype == torch.float32
        assert not img.is_inference() and not img.requires_grad
        assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    image[0, 0] = 0.5  # a normal tensor: callers may modify it in place

    trainer.avatar.eval()
    whole = render_heldout(trainer.avatar, fit_data, amp=False)
    pieces = render_heldout(trainer.avatar, fit_data, amp=False, chunk=97)
    assert torch.allclose(whole, pieces, atol=1e-4), "chunking changes nothing"
    if device == "cuda":
        half = render_heldout(trainer.avatar, fit_data)  # fp16 autocast by default on CUDA
        assert psnr(half, whole) > 35.0
