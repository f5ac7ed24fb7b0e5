"""Numerical faults in training: NaN/inf losses and gradients, divergence, out of memory.

Faults are injected by monkeypatching the photometric loss or a gradient hook on the real
tiny-capture fit: the step must be skipped and counted, the learning rate halved, and a fit
that keeps failing must stop with a clear message and its last checkpoint intact.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import handnerf.train.trainer as trainer_module
from handnerf.cli import main
from handnerf.config import load_config
from handnerf.errors import ResourceError, TrainingDivergedError
from handnerf.model import renderer
from handnerf.model.rays import RayBundle
from handnerf.model.renderer import render_camera
from handnerf.train.checkpoint import LATEST, load_checkpoint
from handnerf.train.config import FitConfig
from handnerf.train.fit_data import FitData, load_fit_data
from handnerf.train.losses import photometric_loss
from handnerf.train.trainer import Trainer, gradients_finite
from tests.host_syncs import count_host_syncs


@pytest.fixture(scope="module")
def small_data(tiny_capture: Path, small_fit: list[str]) -> tuple[FitConfig, FitData]:
    cfg = load_config(FitConfig, None, [*small_fit, "train.max_bad_steps=3"])
    return cfg, load_fit_data(tiny_capture, cfg.data, progress=False)


def _lrs(trainer: Trainer) -> list[float]:
    return [float(g["lr"]) for g in trainer.optimizer.param_groups]


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.avatar.named_parameters()}


def _nan_after(good_calls: int) -> Callable[..., torch.Tensor]:
    """A photometric loss that is honest for ``good_calls`` calls, then NaN."""
    calls = {"n": 0}

    def loss(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls["n"] += 1
        value = photometric_loss(*args, **kwargs)
        return value if calls["n"] <= good_calls else value * float("nan")

    return loss


def _step(trainer: Trainer) -> dict[str, float]:
    stats = trainer.training_step()
    trainer.step += 1
    return stats


def test_nan_loss_is_skipped_counted_and_backs_the_lr_off(
    small_data: tuple[FitConfig, FitData], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, data = small_data
    trainer = Trainer(cfg, data, tmp_path)
    monkeypatch.setattr(trainer_module, "photometric_loss", _nan_after(2))
    for _ in range(2):
        _step(trainer)
    lr_good, params_good = _lrs(trainer), _params(trainer)
    adam_good = {k: v["exp_avg"].clone() for k, v in enumerate(trainer.optimizer.state.values())}

    first = _step(trainer)
    assert first == {"skipped": 1.0, "bad_steps": 1.0}
    assert _lrs(trainer) == pytest.approx([lr * 0.5 for lr in lr_good])
    second = _step(trainer)
    assert second["bad_steps"] == 2.0 and trainer.bad_steps == 2
    # halved once per bad step, not compounded: 1/4 after two, not 1/8
    assert _lrs(trainer) == pytest.approx([lr * 0.25 for lr in lr_good])
    for name, value in _params(trainer).items():
        assert torch.equal(value, params_good[name]), f"{name} moved on a skipped step"
    for k, state in enumerate(trainer.optimizer.state.values()):
        assert torch.equal(state["exp_avg"], adam_good[k]), "Adam moments moved on a skipped step"

    monkeypatch.setattr(trainer_module, "photometric_loss", photometric_loss)
    recovered = _step(trainer)
    assert "psnr" in recovered and torch.isfinite(torch.tensor(recovered["loss"]))
    # the schedule goes on, scaled by the back-off that the bad steps accumulated
    scheduled = trainer.scheduler.get_last_lr()
    assert _lrs(trainer) == pytest.approx([lr * 0.25 for lr in scheduled])
    assert trainer.lr_backoff == 0.25
    assert any(not torch.equal(v, params_good[n]) for n, v in _params(trainer).items())


def test_non_finite_gradient_is_skipped_and_counted(
    small_data: tuple[FitConfig, FitData], tmp_path: Path
) -> None:
    cfg, data = small_data
    trainer = Trainer(cfg, data, tmp_path)
    _step(trainer)
    name, param = next(
        (n, p) for n, p in trainer.avatar.named_parameters() if p.requires_grad and p.numel() > 1
    )
    before = _params(trainer)
    lr = _lrs(trainer)
    hook = param.register_hook(lambda grad: grad * float("inf"))
    try:
        stats = _step(trainer)
    finally:
        hook.remove()
    assert stats == {"skipped": 1.0, "bad_steps": 1.0}, f"inf gradient of {name} not caught"
    assert _lrs(trainer) == pytest.approx([v * 0.5 for v in lr])
    for key, value in _params(trainer).items():
        assert torch.equal(value, before[key]), f"{key} moved on a skipped step"
    assert all(p.grad is None for p in trainer.avatar.parameters()), "stale gradients kept"


def test_fit_that_cannot_recover_stops_with_its_last_checkpoint_intact(
    tiny_capture: Path,
    tmp_path: Path,
    small_fit: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    # steps 1-4 train, 5.. are NaN; checkpoints every 3 steps; 2 bad steps tolerated
    monkeypatch.setattr(trainer_module, "photometric_loss", _nan_after(4))
    status = main(
        [
            "fit",
            "--data",
            str(tiny_capture),
            "--out",
            str(run),
            "--no-progress",
            *small_fit,
            "train.steps=20",
            "train.max_bad_steps=2",
        ]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "training diverged: 3 steps with a non-finite loss" in err
    assert str(run / "checkpoints" / LATEST) in err
    state = load_checkpoint(run / "checkpoints" / LATEST)
    assert 3 <= state["step"] <= 6
    for key, value in state["model"].items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), f"checkpoint holds non-finite {key}"
    records = (run / "metrics.jsonl").read_text()
    assert '"skipped": 1.0' in records  # the skipped steps are logged, not hidden


def test_diverged_error_is_raised_after_max_bad_steps(
    small_data: tuple[FitConfig, FitData], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, data = small_data
    trainer = Trainer(cfg, data, tmp_path)
    monkeypatch.setattr(trainer_module, "photometric_loss", _nan_after(0))
    for _ in range(cfg.train.max_bad_steps):
        assert _step(trainer)["skipped"] == 1.0
    with pytest.raises(TrainingDivergedError, match="try lower learning rates"):
        _step(trainer)


def test_out_of_memory_in_a_training_step_names_the_knobs(
    small_data: tuple[FitConfig, FitData], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, data = small_data
    trainer = Trainer(cfg, data, tmp_path)

    def out_of_memory(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(trainer.avatar, "render_rays", out_of_memory)
    with pytest.raises(ResourceError, match=r"train\.batch_rays.*model\.sampler\.n_samples"):
        trainer.training_step()


@pytest.mark.parametrize("marching", [False, True])
def test_render_falls_back_to_smaller_chunks_when_memory_runs_out(
    small_data: tuple[FitConfig, FitData],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    marching: bool,
) -> None:
    """Both paths of render_camera: the reference (HandAvatar.render_rays) and the fast
    one (march_rays, what render_camera calls by default on the CPU)."""
    cfg, data = small_data
    trainer = Trainer(cfg, data, tmp_path)
    trainer.avatar.eval()
    views = data.train_views
    args = (
        trainer.avatar,
        trainer.train_frames,
        views.camera(0),
        int(views.frame_ids[0]),
        int(views.camera_ids[0]),
        trainer.device,
    )
    reference = render_camera(*args, chunk=views.height * views.width, marching=marching)
    refused: list[int] = []
    rendered: list[int] = []
    if marching:
        real_march = renderer.march_rays

        def limited(avatar: Any, frames: Any, rays: RayBundle, *rest: Any, **kw: Any) -> Any:
            if len(rays) > 600:  # pretend anything bigger does not fit
                refused.append(len(rays))
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB")
            rendered.append(len(rays))
            return real_march(avatar, frames, rays, *rest, **kw)

        monkeypatch.setattr(renderer, "march_rays", limited)
    else:
        real = trainer.avatar.render_rays

        def limited(frames: Any, rays: RayBundle, *rest: Any, **kw: Any) -> Any:  # type: ignore[misc]
            if len(rays) > 600:  # pretend anything bigger does not fit
                refused.append(len(rays))
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB")
            rendered.append(len(rays))
            return real(frames, rays, *rest, **kw)

        monkeypatch.setattr(trainer.avatar, "render_rays", limited)
    image = render_camera(*args, chunk=views.height * views.width, marching=marching)
    assert refused[0] == views.height * views.width and max(rendered) <= 600
    assert sum(rendered) == views.height * views.width
    assert torch.allclose(image, reference, atol=1e-5)

    def never_fits(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(trainer.avatar, "render_rays", never_fits)
    monkeypatch.setattr(renderer, "march_rays", never_fits)
    with pytest.raises(ResourceError, match="does not fit"):
        render_camera(*args, chunk=4096, marching=marching)


def test_gradient_check_reads_back_once_for_all_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params = [torch.nn.Parameter(torch.zeros(5)) for _ in range(40)]
    optimizer = torch.optim.Adam([{"params": params[:30]}, {"params": params[30:]}])
    for p in params[:-1]:  # the last one got no gradient: skipped, not an error
        p.grad = torch.ones(5)
    with count_host_syncs(monkeypatch) as counts:
        assert gradients_finite(optimizer)
    assert sum(counts.values()) == 1, counts
    params[17].grad[3] = float("nan")  # type: ignore[index]
    assert not gradients_finite(optimizer)
    params[17].grad[3] = float("-inf")  # type: ignore[index]
    assert not gradients_finite(optimizer)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision runs on CUDA only")
def test_amp_scaler_skips_inf_gradients_on_cuda(
    small_data: tuple[FitConfig, FitData], tmp_path: Path, small_fit: list[str]
) -> None:
    _, data = small_data
    cfg = load_config(FitConfig, None, [*small_fit, "train.device=cuda", "train.amp=true"])
    trainer = Trainer(cfg, data, tmp_path)
    scale = trainer.scaler.get_scale()
    param = next(p for p in trainer.avatar.parameters() if p.requires_grad)
    before = param.detach().clone()
    hook = param.register_hook(lambda grad: grad * float("inf"))
    try:
        trainer.training_step()
    finally:
        hook.remove()
    assert trainer.scaler.get_scale() < scale  # the scaler saw the inf and backed off
    assert torch.equal(param.detach(), before)
