"""The fit: one readable training step, checkpoints, validation, logging.

Run folder layout::

    RUN/config.yaml        resolved config (what --resume must match)
    RUN/run.json           data root, selection, hand identity, backends
    RUN/metrics.jsonl      one JSON object per logged step / validation
    RUN/checkpoints/latest.pt   atomic, weights_only-loadable
    RUN/val/step{N}_*.png  validation renders (held-out cameras)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from handnerf import interrupts
from handnerf.config import config_to_dict
from handnerf.errors import (
    CheckpointError,
    ConfigError,
    ResourceError,
    TrainingDivergedError,
)
from handnerf.files import atomic_write_bytes, pick_device
from handnerf.hand.identity import same_hand
from handnerf.model.avatar import HandAvatar, PosedFrames
from handnerf.model.renderer import is_out_of_memory, render_camera
from handnerf.train.checkpoint import LATEST, load_checkpoint, save_checkpoint
from handnerf.train.config import FitConfig, upgrade_saved_config
from handnerf.train.distributed import DataParallel
from handnerf.train.fit_data import FitData
from handnerf.train.fit_hands import mano_to
from handnerf.train.losses import mask_loss, photometric_loss, sharpen_loss
from handnerf.train.pose_refinement import (
    PoseRefiner,
    held_targets,
    pose_param_groups,
    pose_schedules,
    silhouette_band,
)
from handnerf.train.rays import RaySampler, ViewStack
from handnerf.train.silhouette import MeshSilhouette
from handnerf.train.silhouette_fit import (
    SilhouetteFitConfig,
    fit_silhouette_corrections,
    image_coverage,
)


def psnr_from_mse(mse: float) -> float:
    return float(-10.0 * math.log10(max(mse, 1e-12)))


@dataclass
class FitResult:
    step: int
    stopped_by: str  # "done" | "signal" | "time"
    checkpoint: Path
    metrics: Path


class Trainer:
    """Fits a :class:`HandAvatar` to the training views of :class:`FitData`.

    ``parallel``: this process's place in a data-parallel fit (default: the only one);
    see :mod:`handnerf.train.distributed`.
    """

    def __init__(
        self,
        cfg: FitConfig,
        data: FitData,
        out_dir: Path,
        wandb_run: Any = None,
        parallel: DataParallel | None = None,
    ):
        self.cfg = cfg
        self.data = data
        self.out = Path(out_dir)
        self.parallel = parallel or DataParallel.single(pick_device(cfg.train.device))
        self.parallel.check_shares(cfg.train.batch_rays, cfg.train.lpips_patches)
        self.device = self.parallel.device
        torch.manual_seed(cfg.train.seed)
        if cfg.train.refine_pose and data.fit_hands.both:
            raise ConfigError(
                "train.refine_pose=true is one-hand only for now; with data.hand=both set "
                "train.refine_pose=false"
            )
        # A HandAvatar, or for data.hand=both a TwoHandAvatar (same interface).
        self.avatar: HandAvatar = data.fit_hands.avatar(
            cfg.model, data.betas, n_cameras=len(data.camera_names), device=self.device
        ).to(self.device)
        self.pose = (
            PoseRefiner(
                self.avatar,
                data.train_mano,
                data.train.frame_keys,
                self.device,
                shell_softness=cfg.train.pose_shell_softness,
            )
            if cfg.train.refine_pose
            else None
        )
        # optim.pose_lr 0: the poses stay where the silhouette fit put them, and the
        # per-step pose gradient and the rebuilds of the posed frames are skipped.
        self.pose_learns = self.pose is not None and cfg.optim.pose_lr > 0
        self.train_frames: PosedFrames = (
            self.pose.pose_frames()
            if self.pose is not None
            else self.avatar.pose_frames(mano_to(data.train_mano, self.device))
        )
        silhouette = self._silhouette()
        band = self._uncertain_band()
        self.rays = RaySampler(
            data.train_views,
            fg_fraction=cfg.train.fg_fraction,
            seed=cfg.train.seed,
            jitter=cfg.train.jitter_rays,
            silhouette=silhouette,
            rank=self.parallel.rank,
            world_size=self.parallel.world_size,
            uncertain=band,
            band_coverage=self._band_coverage(band),
        )
        groups = self.avatar.param_groups()
        o = cfg.optim
        self.optimizer = torch.optim.Adam(
            [
                {"params": groups["grid"], "lr": o.lr_grid, "name": "grid"},
                {
                    "params": groups["mlp"],
                    "lr": o.lr_mlp,
                    "weight_decay": o.weight_decay_mlp,
                    "name": "mlp",
                },
                {"params": groups["camera"], "lr": o.lr_camera, "name": "camera"},
                *pose_param_groups(self.pose, o.pose_lr),
            ],
            eps=1e-15,
        )
        steps = max(cfg.train.steps, 1)
        gamma = o.final_lr_factor ** (1.0 / steps)

        def schedule(step: int) -> float:
            warm = min(1.0, (step + 1) / max(o.warmup_steps, 1))
            return warm * gamma**step

        schedules = [schedule] * 3 + pose_schedules(self.pose, schedule, cfg.train)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedules)
        self.use_amp = cfg.train.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.perceptual = None
        if cfg.loss.w_lpips > 0 and cfg.train.lpips_patches > 0:
            from handnerf.metrics.perceptual import PerceptualMetric

            self.perceptual = PerceptualMetric(net=cfg.loss.lpips_net, device=self.device)
        self.step = 0
        self.bad_steps = 0
        self.lr_backoff = 1.0
        self.wandb = wandb_run
        self.ckpt_dir = self.out / "checkpoints"
        self.metrics_path = self.out / "metrics.jsonl"

    def _silhouette(self) -> MeshSilhouette | None:
        """With MANO masks a jittered ray's mask is its own hit test of the posed mesh."""
        if not (self.cfg.train.jitter_rays and self.cfg.data.mask_source == "mano"):
            return None
        return MeshSilhouette(self.train_frames.vertices, self.data.fit_hands.faces())

    def _uncertain_band(self) -> Tensor | None:
        """Refining against MANO masks: the band around the given silhouette where the
        mask is not trusted (``train.pose_mask_band``); otherwise None."""
        width = self.cfg.train.pose_mask_band
        if self.pose is None or self.cfg.data.mask_source != "mano" or width <= 0:
            return None
        return silhouette_band(self.data.train_views.masks, width)

    def _band_coverage(self, band: Tensor | None) -> Tensor | None:
        """With an uncertain ``band`` and ``train.pose_band_masks=image``: how much of each
        training pixel the hand covers, read from the image (what the band is held to)."""
        if self.cfg.train.pose_band_masks != "image" or band is None:
            return None
        fit = SilhouetteFitConfig()
        return image_coverage(self.data.train_views.images, fit.threshold, fit.edge_window)

    def _repose(self, snapshot: bool = False) -> None:
        """Posed frames and silhouettes of the refined pose (pose refinement only)."""
        assert self.pose is not None
        self.train_frames = self.pose.pose_frames(snapshot)
        self.rays.silhouette = self._silhouette()

    def align_poses_to_silhouettes(self) -> None:
        """Start the pose corrections from a fit of the training views' silhouettes
        (``train.pose_silhouette_steps``; refinement only), and log what it did."""
        steps = self.cfg.train.pose_silhouette_steps
        if self.pose is None or steps <= 0:
            return
        start = time.monotonic()
        losses = fit_silhouette_corrections(
            self.pose.hand_model,
            self.pose.subject_mano(corrected=False),
            self.pose.corrections,
            self.data.train_views,
            SilhouetteFitConfig(steps=steps),
        )
        self._repose()
        if self.parallel.is_main:
            seconds = time.monotonic() - start
            self.log({"step": 0, "pose_silhouette_fit": {**losses, "seconds": seconds}})

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        pose = {} if self.pose is None else {"pose_refinement": self.pose.state_dict()}
        return {
            **pose,
            "step": self.step,
            "config": config_to_dict(self.cfg),
            "hand_identity": self.data.hand_identity,
            "data_fingerprint": self.data.fingerprint,
            "camera_names": list(self.data.camera_names),
            "betas": self.data.betas.detach().cpu(),
            "model": self.avatar.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ray_rng": self.rays.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "bad_steps": self.bad_steps,
            "lr_backoff": self.lr_backoff,
        }

    def save(self) -> Path:
        path = self.ckpt_dir / LATEST
        save_checkpoint(path, self.state_dict())
        return path

    def resume(self) -> int:
        """Restore the latest checkpoint of this run; it must match config, hand and data."""
        path = self.ckpt_dir / LATEST
        state = load_checkpoint(path)
        mine = config_to_dict(self.cfg)
        saved = upgrade_saved_config(state.get("config"))
        if saved != mine:
            differences = _config_differences(saved or {}, mine)
            diff = "; ".join(f"{key}: saved {a!r}, now {b!r}" for key, a, b in differences)
            # json.dumps writes values as the key=value parser reads them (true, null, ...).
            keep = " ".join(f"{key}={json.dumps(a)}" for key, a, _ in differences)
            raise CheckpointError(
                f"{path}: saved with a different config; resume needs the same one. "
                f"Differences: {diff}. To continue this run, add the saved values: {keep}; "
                f"to fit with the new settings, give another --out folder or delete {self.out}"
            )
        if not same_hand(state.get("hand_identity"), self.data.hand_identity):
            raise CheckpointError(
                f"{path}: trained with another hand model ({state.get('hand_identity')})"
            )
        if state.get("data_fingerprint") != self.data.fingerprint:
            raise CheckpointError(f"{path}: trained on different data (fingerprint mismatch)")
        try:
            self.avatar.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.rays.generator.set_state(state["ray_rng"])
            torch.set_rng_state(state["torch_rng"])
            if self.pose is not None:
                self.pose.load_state_dict(state["pose_refinement"])
                self._repose(snapshot=True)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: incompatible checkpoint contents ({exc})") from exc
        self.step = int(state["step"])
        self.bad_steps = int(state.get("bad_steps", 0))
        self.lr_backoff = float(state.get("lr_backoff", 1.0))
        return self.step

    # ------------------------------------------------------------------ one step
    def background(self, n: int) -> Tensor:
        if self.cfg.train.background == "random":
            return torch.rand(n, 3, device=self.device)
        return torch.zeros(n, 3, device=self.device)

    def training_step(self) -> dict[str, float]:
        """Draw rays (and LPIPS patches), render, compute losses, step the optimiser."""
        cfg = self.cfg
        batch = self.rays.sample(cfg.train.batch_rays)  # this rank's share
        n_rays = len(batch)
        n_patch_rays, patch = 0, cfg.train.lpips_patch_size
        use_lpips = self.perceptual is not None and self.step >= cfg.loss.lpips_start_step
        if use_lpips:
            patches, patch = self.rays.sample_patches(cfg.train.lpips_patches, patch)
            n_patch_rays = len(patches)
            batch = batch.cat(patches)
        batch = batch.to(self.device, non_blocking=True)
        if self.pose_learns:
            self.pose.attach_gradient(self.train_frames)  # type: ignore[union-attr]
        bg = self.background(len(batch))
        if n_patch_rays:  # one background colour per patch keeps LPIPS from judging noise
            bg[-n_patch_rays:] = (
                bg[-n_patch_rays:]
                .reshape(-1, patch * patch, 3)[:, :1]
                .expand(-1, patch * patch, 3)
                .reshape(-1, 3)
            )
        m = batch.mask.float().unsqueeze(-1)
        target = batch.rgb * m + bg * (1 - m)
        trusted = None
        if batch.uncertain is not None:  # refining against MANO masks
            target, bg, trusted = held_targets(batch.rgb, batch.mask, batch.uncertain, bg)

        try:
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
                out = self.avatar.render_rays(self.train_frames, batch.rays, bg, training=True)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            raise self._memory_error(exc, len(batch)) from exc
        rgb = out["rgb"].float()
        opacity = out["opacity"].float()
        losses: dict[str, Tensor] = {}
        losses["photometric"] = cfg.loss.w_photometric * photometric_loss(
            rgb, target, cfg.loss.photometric, cfg.loss.huber_delta
        )
        if cfg.loss.w_mask > 0:
            if trusted is None:
                losses["mask"] = cfg.loss.w_mask * mask_loss(opacity, batch.mask)
            elif bool(trusted.any()):
                losses["mask"] = cfg.loss.w_mask * mask_loss(opacity[trusted], batch.mask[trusted])
        if cfg.loss.w_sharpen > 0:
            losses["sharpen"] = cfg.loss.w_sharpen * sharpen_loss(opacity)
        if use_lpips and self.perceptual is not None:
            pred_p = rgb[-n_patch_rays:].reshape(-1, patch, patch, 3).permute(0, 3, 1, 2)
            gt_p = target[-n_patch_rays:].reshape(-1, patch, patch, 3).permute(0, 3, 1, 2)
            losses["lpips"] = cfg.loss.w_lpips * self.perceptual(pred_p, gt_p).mean()
        if self.pose_learns and cfg.loss.w_pose_prior > 0:
            losses["pose_prior"] = cfg.loss.w_pose_prior * self.pose.prior()
        loss = sum(losses.values())
        assert isinstance(loss, Tensor)

        self.optimizer.zero_grad(set_to_none=True)
        if not self.parallel.all_true(bool(torch.isfinite(loss))):  # skipped on every rank
            return self._bad_step("loss", losses)
        try:
            self.scaler.scale(loss).backward()
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            raise self._memory_error(exc, len(batch)) from exc
        self.parallel.average_gradients(p for g in self.optimizer.param_groups for p in g["params"])
        self.scaler.unscale_(self.optimizer)
        # With AMP the scaler checks and skips such steps itself: no check (no sync) here.
        if not self.use_amp and not gradients_finite(self.optimizer):
            self.optimizer.zero_grad(set_to_none=True)
            return self._bad_step("gradient", losses)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self._apply_backoff()
        if cfg.train.occupancy_every > 0 and self.step % cfg.train.occupancy_every == 0:
            # nerfacc's update draws random cells: rank 0 draws, every rank gets its grid.
            if self.parallel.is_main:
                self.avatar.update_occupancy(self.step)
            for grid in self.avatar.occupancy_grids():
                self.parallel.share_occupancy(grid)
        if self.pose_learns and (self.step + 1) % max(cfg.train.pose_refresh_every, 1) == 0:
            self._repose()
        with torch.no_grad():
            mse = float(((rgb[:n_rays] - target[:n_rays]) ** 2).mean())
        stats = {k: float(v.detach()) for k, v in losses.items()}
        stats.update(loss=float(loss.detach()), psnr=psnr_from_mse(mse))
        return stats

    def _memory_error(self, exc: BaseException, n_rays: int) -> ResourceError:
        """The user-facing error of an allocation failure, naming the knobs that bound memory."""
        return ResourceError(
            f"step {self.step}: a batch of {n_rays} rays does not fit in {self.device.type} "
            f"memory ({str(exc).splitlines()[0]}); lower train.batch_rays, "
            "model.sampler.n_samples or train.lpips_patches (the checkpoint "
            f"{self.ckpt_dir / LATEST} is intact)"
        )

    def _apply_backoff(self) -> None:
        if self.lr_backoff != 1.0:
            for g in self.optimizer.param_groups:
                g["lr"] *= self.lr_backoff

    def _bad_step(self, what: str, losses: dict[str, Tensor]) -> dict[str, float]:
        """A non-finite loss/gradient: skip the step, halve the learning rate, count it."""
        self.bad_steps += 1
        self.lr_backoff *= 0.5
        # The current rates already carry the previous back-off; halve them once more
        # (applying the whole accumulated factor again would compound it).
        for g in self.optimizer.param_groups:
            g["lr"] *= 0.5
        if self.bad_steps > self.cfg.train.max_bad_steps:
            raise TrainingDivergedError(
                f"training diverged: {self.bad_steps} steps with a non-finite {what} "
                f"(last losses: { {k: float(v.detach()) for k, v in losses.items()} }). "
                f"The last good checkpoint is {self.ckpt_dir / LATEST}; try lower learning rates."
            )
        return {"skipped": 1.0, "bad_steps": float(self.bad_steps)}

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, max_views: int | None = None) -> dict[str, Any]:
        """Render held-out-camera views of training frames on black; PSNR inside the crop,
        over the pixels from the photograph (a border-cut view's padding is not scored)."""
        views = self.data.val_views
        if views is None or len(views) == 0:
            return {}
        n = len(views) if max_views is None else min(len(views), max_views)
        idx = torch.linspace(0, len(views) - 1, n).round().long().unique()
        psnrs = []
        out_dir = self.out / "val"
        out_dir.mkdir(parents=True, exist_ok=True)
        for i in idx.tolist():
            img = self.render_view(self.train_frames, views, i)
            gt = views.images[i]
            error = (img - gt) ** 2
            if views.valid is not None:
                error = error[views.valid[i]]
            psnrs.append(psnr_from_mse(float(error.mean())))
            if i == int(idx[0]):
                _save_png(out_dir / f"step{self.step:06d}_view{i}.png", torch.cat([gt, img], 1))
        return {"val_psnr": float(np.mean(psnrs)), "val_views": len(psnrs)}

    @torch.no_grad()
    def render_view(self, frames: PosedFrames, views: ViewStack, i: int) -> Tensor:
        """View ``i`` of ``views`` (H,W,3) on black, through the inference path."""
        was_training = self.avatar.training
        self.avatar.eval()
        frame_id, camera_id = int(views.frame_ids[i]), int(views.camera_ids[i])
        img = render_camera(self.avatar, frames, views.camera(i), frame_id, camera_id, self.device)
        self.avatar.train(was_training)
        return img

    # ------------------------------------------------------------------ loop
    def log(self, record: dict[str, Any]) -> None:
        try:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            # held: a signal never cuts a record in half
            with interrupts.held(), open(self.metrics_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:  # disk full, quota: stop with the checkpoint intact
            raise ResourceError(
                f"cannot append to {self.metrics_path} ({exc.strerror or exc}); the last "
                f"checkpoint {self.ckpt_dir / LATEST} is intact"
            ) from exc
        if self.wandb is not None:
            self.wandb.log(record, step=record.get("step"))

    def fit(self, progress: bool = True) -> FitResult:
        from tqdm import tqdm

        cfg = self.cfg.train
        main = self.parallel.is_main  # the one rank that writes files
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
        # Every rank starts from rank 0's weights (fresh or resumed); ranks > 0 draw
        # their own stratified samples and backgrounds.
        if self.step == 0:
            self.align_poses_to_silhouettes()
        self.parallel.broadcast_from_main(self._shared_tensors())
        self.parallel.seed_rank_noise(cfg.seed, self.step)
        start_time = time.monotonic()
        stopped_by = "done"
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not (progress and main),
            desc="fit",
            unit="step",
            dynamic_ncols=True,
        )
        last_t, last_step = time.monotonic(), self.step
        # Signals are held through the loop: the step in flight finishes and is saved.
        with interrupts.held():
            while self.step < cfg.steps:
                stats = self.training_step()
                self.step += 1
                bar.update(1)
                log_now = self.step % cfg.log_every == 0 or self.step == cfg.steps
                if log_now:
                    stats = self.parallel.mean_stats(stats)  # the global batch's (collective)
                if main and log_now:
                    now = time.monotonic()
                    rays_s = (self.step - last_step) * cfg.batch_rays / max(now - last_t, 1e-9)
                    last_t, last_step = now, self.step
                    record = {
                        "step": self.step,
                        "time": now - start_time,
                        "rays_per_s": rays_s,
                        "lr_grid": self.optimizer.param_groups[0]["lr"],
                        **stats,
                    }
                    self.log(record)
                    if "psnr" in stats:
                        bar.set_postfix(
                            loss=f"{stats['loss']:.4f}",
                            psnr=f"{stats['psnr']:.2f}",
                            rays_s=f"{rays_s:.0f}",
                        )
                if main and cfg.val_every > 0 and self.step % cfg.val_every == 0:
                    if self.step < cfg.steps:
                        self.log({"step": self.step, **self.validate(cfg.val_views)})
                if main and cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0:
                    self.save()
                interrupts.reached("fit.step", self.step)
                stop = None
                if interrupts.pending() is not None:
                    stop = "signal"
                elif cfg.max_minutes > 0 and time.monotonic() - start_time > cfg.max_minutes * 60:
                    stop = "time"
                # Agreed: a rank that stopped alone would leave the others in a collective.
                stopped_by = self.parallel.agree_stop(stop) or "done"
                if stopped_by != "done":
                    break
            bar.close()
            ckpt = self.save() if main else self.ckpt_dir / LATEST
            if stopped_by == "signal":
                interrupts.take()  # acted on: the fit stopped after a saved step
        # A signal during the final save above is raised here, the checkpoint complete.
        # The final check is not held: a signal abandons it (it writes nothing until its
        # record), and `--resume` of the finished checkpoint runs it again.
        if stopped_by != "signal" and main:
            interrupts.reached("fit.final_validation", self.step)
            # A bounded final check; `handnerf eval` does the full evaluation.
            record = {"step": self.step, "final": True, **self.validate(4 * cfg.val_views)}
            self.log(record)
        return FitResult(
            step=self.step, stopped_by=stopped_by, checkpoint=ckpt, metrics=self.metrics_path
        )

    def _shared_tensors(self) -> list[Tensor]:
        """What every rank must hold equal: the avatar's weights and buffers (occupancy
        grid included) and every optimised parameter (pose corrections too)."""
        tensors = [*self.avatar.parameters(), *self.avatar.buffers()]
        seen = {id(t) for t in tensors}
        for group in self.optimizer.param_groups:
            tensors += [p for p in group["params"] if id(p) not in seen]
        return tensors


def gradients_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every gradient of ``optimizer``'s parameters is finite, decided on the
    device and read back once (one host sync per step, not one per parameter)."""
    checks = [
        torch.isfinite(p.grad).all()
        for group in optimizer.param_groups
        for p in group["params"]
        if p.grad is not None
    ]
    return not checks or bool(torch.stack(checks).all())


def _save_png(path: Path, image: Tensor) -> None:
    import imageio.v3 as iio

    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    atomic_write_bytes(path, iio.imwrite("<bytes>", pixels, extension=".png"))


def _config_differences(
    saved: dict[str, Any], now: dict[str, Any], prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) of every leaf where two configs differ."""
    out: list[tuple[str, Any, Any]] = []
    for key in sorted(set(saved) | set(now)):
        va, vb = saved.get(key), now.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append((f"{prefix}{key}", va, vb))
    return out
