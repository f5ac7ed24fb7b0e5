"""Rendering a synthetic capture's frames: every camera's JPEG image and PNG mask of each
frame, written under the capture's InterHand paths, in this process or over a pool of
fresh ones. Shared by the one-hand writer (:mod:`handnerf.synth.writer`) and the
two-hand one (:mod:`handnerf.synth.two_hands`)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from handnerf import interrupts
from handnerf.files import atomic_write_bytes
from handnerf.synth.annotations import CapturePaths, FramePlan
from handnerf.synth.presets import SynthPreset
from handnerf.synth.raycast import AlbedoFn, HandScene, Lighting
from handnerf.synth.rig import RigCamera


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """(H, W, 3) uint8 -> JPEG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_mask_png(mask: np.ndarray) -> bytes:
    """(H, W) bool -> 8-bit PNG bytes (0 / 255)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Scene:
    """What every frame of a capture shares: canonical vertices (V,3) for the albedo lookup,
    faces (F,3), the albedo function and the light."""

    canonical_vertices: np.ndarray
    faces: np.ndarray
    albedo: AlbedoFn
    lighting: Lighting


@dataclass
class FrameTask:
    """Everything a render process needs for one frame (picklable)."""

    plan: FramePlan
    vertices: np.ndarray  # (V, 3) posed world metres
    scene: Scene
    cameras: list[RigCamera]
    supersample: int
    jpeg_quality: int
    paths: CapturePaths


def render_frame(task: FrameTask) -> int:
    """Render and write every camera's image and mask of one frame; returns the image count."""
    shared = task.scene
    scene = HandScene(
        task.vertices, shared.canonical_vertices, shared.faces, shared.albedo, shared.lighting
    )
    plan = task.plan
    for camera in task.cameras:
        view = scene.render(camera, task.supersample)
        atomic_write_bytes(
            task.paths.image(plan.seq_name, camera.cam_id, plan.frame_idx),
            encode_jpeg(view.image, task.jpeg_quality),
        )
        atomic_write_bytes(
            task.paths.mask(plan.seq_name, camera.cam_id, plan.frame_idx),
            encode_mask_png(view.mask),
        )
    return len(task.cameras)


def run_tasks(tasks: Sequence[FrameTask], workers: int) -> Iterator[int]:
    """Render frames inline (``workers <= 1``) or over a pool of fresh processes."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield render_frame(task)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # "spawn": the parent holds torch state that must not be forked into renderers.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=interrupts.leave_to_parent
    )
    try:
        yield from pool.map(render_frame, tasks)
    finally:
        # On an interrupt, drop the queued frames instead of rendering them all first.
        pool.shutdown(wait=True, cancel_futures=True)


def render_frames(
    plans: Sequence[FramePlan],
    vertices: np.ndarray,
    scene: Scene,
    cameras: list[RigCamera],
    preset: SynthPreset,
    paths: CapturePaths,
    workers: int,
    progress: Callable[[int], None] | None,
) -> int:
    """Render and write every camera's image and mask of each frame (``vertices`` (T,V,3),
    one row per plan) over ``workers`` processes; returns the number of images."""
    tasks = [
        FrameTask(plan, vertices[i], scene, cameras, preset.supersample, preset.jpeg_quality, paths)
        for i, plan in enumerate(plans)
    ]
    n_images = 0
    for count in run_tasks(tasks, workers):
        n_images += count
        if progress is not None:
            progress(count)
    return n_images
