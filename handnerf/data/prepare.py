"""``handnerf prepare``: turn one selection of an InterHand2.6M split into a compact cache.

The selection is streamed from the annotation JSONs (:mod:`handnerf.data.stream`), every
frame is posed once, and then each view independently (in parallel processes) gets its
MANO silhouette (optionally refined by GrabCut against the photo, as LiveHand does), the
frame filters, and its crop; results go to :mod:`handnerf.data.cache`. Finished views
are never redone, so the job resumes where an interrupted run stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from handnerf import interrupts
from handnerf.data import cache as cache_format
from handnerf.data.camera import camera_to_json
from handnerf.data.crops import CropConfig, prepare_view
from handnerf.data.filters import FrameFilterConfig, check_frame
from handnerf.data.interhand import (
    HANDS,
    SPLITS,
    AnnotationFiles,
    FrameView,
    find_annotation_files,
    load_image,
    refuse_procedural_hand,
)
from handnerf.data.masks import DEFAULT_SUPERSAMPLE, mesh_silhouette, to_numpy
from handnerf.data.stream import StreamedSelection, select_views
from handnerf.errors import ConfigError, DataError, SelectionError
from handnerf.files import remove_temp_files_under
from handnerf.hand.identity import hands_identity

# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class PrepareSpec:
    """What to prepare. Two runs into one cache folder must have equal specs.

    Attributes:
        split, capture, seqs, hand, cameras, exclude_cameras, stride,
            drop_grayscale_cameras: the selection (see ``InterHandCapture``).
        crop: hand crop (``mode='crop'``) or full-frame scale (``mode='full'``).
        filters: HandAvatar's frame filters, None to keep every view.
        refine_masks: refine the MANO silhouette with GrabCut against the photo.
        supersample: silhouette supersampling (see :func:`mesh_silhouette`).
        mano_dir: a MANO folder; None is the procedural hand.
    """

    split: str = "test"
    capture: int = 0
    seqs: tuple[str, ...] | None = None
    hand: str = "right"
    cameras: tuple[str, ...] | None = None
    exclude_cameras: tuple[str, ...] | None = None
    stride: int = 1
    drop_grayscale_cameras: bool = False
    crop: CropConfig = field(default_factory=CropConfig)
    filters: FrameFilterConfig | None = field(default_factory=FrameFilterConfig)
    refine_masks: bool = False
    supersample: int = DEFAULT_SUPERSAMPLE
    mano_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass
class PrepareSummary:
    """What a run did. ``computed`` views were processed now, ``reused`` by an earlier run."""

    root: Path
    n_views: int
    n_kept: int
    computed: int
    reused: int
    filter_counts: dict[str, int]
    seconds: float
    already_complete: bool = False
    #: Wall time of streaming the selection out of the annotation JSONs (part of ``seconds``).
    select_seconds: float = 0.0


def _source_stamps(files: AnnotationFiles) -> dict[str, Any]:
    stamps: dict[str, Any] = {}
    for kind in ("data", "camera", "mano", "joint_3d"):
        path = getattr(files, kind)
        if path is None:
            continue
        stat = path.stat()
        stamps[kind] = {
            "path": str(path.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }
    return stamps


# --------------------------------------------------------------------------- masks


def refine_mask(
    image: np.ndarray,
    mano_mask: np.ndarray,
    band_px: int = 8,
    iterations: int = 4,
) -> np.ndarray:
    """Refine a roughly aligned MANO silhouette against the photo with GrabCut.

    Pixels deeper than ``band_px`` inside the MANO mask are certain hand, those further
    than ``band_px`` outside it certain background, the band between is left to GrabCut
    (probable hand inside the MANO mask, probable background outside). The result is the
    largest connected component. Only a box around the band is segmented, which keeps it
    fast. Falls back to ``mano_mask`` when the seed is degenerate (too small a hand) or
    GrabCut returns nothing.

    Args:
        image: (H, W, 3) uint8 RGB.
        mano_mask: (H, W) bool.

    Returns:
        (H, W) bool.
    """
    mano_mask = np.asarray(mano_mask, dtype=bool)
    if band_px < 1 or not mano_mask.any():
        return mano_mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band_px + 1, 2 * band_px + 1))
    as_u8 = mano_mask.astype(np.uint8)
    core = cv2.erode(as_u8, kernel).astype(bool)
    outer = cv2.dilate(as_u8, kernel).astype(bool)
    if not core.any():
        return mano_mask
    rows = np.flatnonzero(outer.any(axis=1))
    cols = np.flatnonzero(outer.any(axis=0))
    pad = band_px
    y0, y1 = max(rows[0] - pad, 0), min(rows[-1] + 1 + pad, mano_mask.shape[0])
    x0, x1 = max(cols[0] - pad, 0), min(cols[-1] + 1 + pad, mano_mask.shape[1])
    trimap = np.full((y1 - y0, x1 - x0), cv2.GC_BGD, dtype=np.uint8)
    roi = (slice(y0, y1), slice(x0, x1))
    trimap[outer[roi]] = cv2.GC_PR_BGD
    trimap[mano_mask[roi]] = cv2.GC_PR_FGD
    trimap[core[roi]] = cv2.GC_FGD
    bgr = np.ascontiguousarray(image[roi][..., ::-1])
    background_model = np.zeros((1, 65), np.float64)
    foreground_model = np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(
            bgr,
            trimap,
            None,
            background_model,
            foreground_model,
            iterations,
            cv2.GC_INIT_WITH_MASK,
        )
    except cv2.error:
        # GrabCut's GMMs cannot be fitted when one class has too few distinct pixels.
        return mano_mask
    hand = (trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        hand.astype(np.uint8), connectivity=8
    )
    if count <= 1:
        return mano_mask
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    refined = np.zeros_like(mano_mask)
    refined[roi] = labels == largest
    return refined


# --------------------------------------------------------------------------- workers

_worker_state: dict[str, Any] = {}


def _set_state(root: str, out: str, faces: np.ndarray, spec: PrepareSpec) -> None:
    _worker_state.update(root=Path(root), out=Path(out), faces=faces, spec=spec)


def _init_worker(root: str, out: str, faces: np.ndarray, spec: PrepareSpec) -> None:
    # One process per core already; cv2's own threads would only oversubscribe.
    cv2.setNumThreads(1)
    interrupts.leave_to_parent()
    _set_state(root, out, faces, spec)


def _prepare_one(task: tuple[FrameView, np.ndarray]) -> dict[str, Any]:
    """Mask, filter, crop and store one view; returns its record."""
    view, vertices = task
    root: Path = _worker_state["root"]
    spec: PrepareSpec = _worker_state["spec"]
    record: dict[str, Any] = {
        "seq": view.seq_name,
        "camera": view.camera_id,
        "frame": view.frame_idx,
        "image_id": view.image_id,
        "file_name": str(view.image_path.relative_to(root / "images" / view.split)),
        "bbox": None if view.bbox is None else list(view.bbox),
        "refined": spec.refine_masks,
    }
    try:
        image = load_image(view)
    except DataError as exc:
        # One bad JPEG among thousands is skipped and counted, not fatal.
        record.update(status="filtered", reason="image unreadable", error=str(exc))
        return cache_format.write_view(_worker_state["out"], record, None)
    mask = mesh_silhouette(view.camera, vertices, _worker_state["faces"], spec.supersample)
    if spec.refine_masks:
        mask = refine_mask(image, mask)
    record["mask_px"] = int(np.count_nonzero(mask))
    reason = None if spec.filters is None else check_frame(view, image, mask, spec.filters)
    if reason is not None:
        record.update(status="filtered", reason=reason)
        return cache_format.write_view(_worker_state["out"], record, None)
    crop = prepare_view(image, view.camera, spec.crop, mask=mask, points=vertices)
    record.update(
        status="kept",
        crop={
            "K": crop.camera.K.tolist(),
            "width": crop.camera.width,
            "height": crop.camera.height,
            "box": list(crop.box),
        },
    )
    return cache_format.write_view(_worker_state["out"], record, crop)


# --------------------------------------------------------------------------- the job


def prepare_cache(
    root: str | Path,
    out: str | Path,
    spec: PrepareSpec,
    workers: int | None = None,
    progress: bool = True,
    on_view: Callable[[dict[str, Any]], None] | None = None,
) -> PrepareSummary:
    """Prepare ``spec``'s selection of the InterHand2.6M root ``root`` into the cache ``out``.

    Args:
        workers: processes (default: the machine's cores); 1 works in this process.
        progress: show a progress bar.
        on_view: called with each newly computed view's record (in this process).

    Raises:
        SelectionError: a bad selection (lists what exists), or every view filtered out.
        DataError: unreadable inputs, or ``out`` holding a cache of another spec.
    """
    from tqdm import tqdm

    t0 = time.monotonic()
    root, out = Path(root), Path(out)
    _check_spec(spec)
    if not root.is_dir():
        raise DataError(f"InterHand2.6M root not found: {root}")
    refuse_procedural_hand(root, _is_procedural(spec.mano_dir), "prepare")
    job = {
        "spec": spec.to_json(),
        "source": {
            "root": str(root.resolve()),
            "files": _source_stamps(find_annotation_files(root, spec.split)),
        },
    }
    spec_path = out / cache_format.SPEC_NAME
    if spec_path.is_file():
        try:
            previous = json.loads(spec_path.read_text())
        except ValueError:
            previous = None
        if previous != job:
            raise DataError(
                f"{out} holds a cache prepared with other options or annotation files "
                f"(see {spec_path}); choose another --out or delete it"
            )
        if (out / cache_format.INDEX_NAME).is_file():
            index = json.loads((out / cache_format.INDEX_NAME).read_text())
            n_views = len(index["views"]) + sum(index["filter_counts"].values())
            return PrepareSummary(
                root=out,
                n_views=n_views,
                n_kept=len(index["views"]),
                computed=0,
                reused=n_views,
                filter_counts=dict(index["filter_counts"]),
                seconds=time.monotonic() - t0,
                already_complete=True,
            )
    t_select = time.monotonic()
    selection = select_views(
        root,
        split=spec.split,
        capture=spec.capture,
        seqs=list(spec.seqs) if spec.seqs is not None else None,
        hand=spec.hand,
        cameras=spec.cameras,
        exclude_cameras=spec.exclude_cameras,
        stride=spec.stride,
        drop_grayscale_cameras=spec.drop_grayscale_cameras,
    )
    select_seconds = time.monotonic() - t_select
    # Written only once the selection is known to be good, so a typo leaves no cache behind.
    if not spec_path.is_file():
        cache_format.atomic_write_json(spec_path, job)
    remove_temp_files_under(out)  # an interrupted run's; only this job writes here

    hand_models, vertices_by_frame, faces = _pose_frames(selection, spec)

    records: dict[tuple[str, str, int], dict[str, Any]] = {}
    todo: list[tuple[FrameView, np.ndarray]] = []
    for view in selection.views:
        record = cache_format.read_record(out, view.seq_name, view.camera_id, view.frame_idx)
        if record is not None:
            records[(view.seq_name, view.camera_id, view.frame_idx)] = record
        else:
            todo.append((view, vertices_by_frame[(view.seq_name, view.frame_idx)]))
    reused = len(records)
    n_workers = max(1, int(workers) if workers else os.cpu_count() or 1)
    with tqdm(
        total=len(selection.views),
        initial=reused,
        unit="view",
        desc="prepare",
        disable=not progress,
    ) as bar:
        for record in _run(todo, root, out, faces, spec, n_workers):
            records[(record["seq"], record["camera"], int(record["frame"]))] = record
            bar.update(1)
            interrupts.reached("prepare.view", len(records))
            if on_view is not None:
                on_view(record)

    index = _build_index(selection, spec, job, hand_models, records)
    if not index["views"]:
        raise SelectionError(
            f"every one of the {len(records)} selected views was dropped by the frame filters "
            f"({', '.join(f'{r}: {n}' for r, n in index['filter_counts'].items())}); relax the "
            "filters or disable them (--no-filters)"
        )
    cache_format.atomic_write_json(out / cache_format.INDEX_NAME, index)
    return PrepareSummary(
        root=out,
        n_views=len(selection.views),
        n_kept=len(index["views"]),
        computed=len(todo),
        reused=reused,
        filter_counts=dict(index["filter_counts"]),
        seconds=time.monotonic() - t0,
        select_seconds=select_seconds,
    )


def _check_spec(spec: PrepareSpec) -> None:
    if spec.split not in SPLITS:
        raise SelectionError(f"unknown split {spec.split!r}; splits are {', '.join(SPLITS)}")
    if spec.crop.mode not in ("crop", "full"):
        raise ConfigError(f"crop mode must be 'crop' or 'full', got {spec.crop.mode!r}")
    if spec.crop.mode == "crop" and (spec.crop.scale <= 0 or spec.crop.out_size < 1):
        raise ConfigError(f"crop scale and size must be positive, got {spec.crop}")
    if spec.crop.mode == "full" and not spec.crop.full_scale > 0:
        raise ConfigError(f"full-frame scale must be positive, got {spec.crop.full_scale}")
    if spec.hand == "both" and spec.refine_masks:
        # refine_mask keeps the largest connected component: one of two apart hands.
        raise ConfigError(
            "refine_masks (--refine-masks) is not supported with hand 'both': the refinement "
            "keeps one connected region, and two hands apart are two"
        )


def _is_procedural(mano_dir: str | None) -> bool:
    """Whether ``mano_dir`` (None: the procedural hand) holds the procedural hand."""
    from handnerf.hand.mano_file import load_mano_folder

    return mano_dir is None or any(d.is_procedural for d in load_mano_folder(mano_dir).values())


def _pose_frames(
    selection: StreamedSelection, spec: PrepareSpec
) -> tuple[dict[str, Any], dict[tuple[str, int], np.ndarray], np.ndarray]:
    """The hand model of each side, the posed vertices of every selected frame and their
    triangles: (V, 3) float64 and (F, 3) int64 for one hand; for ``hand='both'`` the right
    hand's vertices then the left's ((2 V, 3)) with both meshes' triangles, whose
    silhouette is the union of the two hands' (what a two-hand image shows)."""
    import torch

    from handnerf.hand.hand_model import HandModel, ManoParams

    folder = Path(spec.mano_dir) if spec.mano_dir else None
    sides = HANDS if spec.hand == "both" else (spec.hand,)
    models = {side: HandModel.from_folder(folder, side) for side in sides}
    first: dict[tuple[str, int], FrameView] = {}
    for view in selection.views:
        first.setdefault((view.seq_name, view.frame_idx), view)
    keys = list(first)
    per_side: dict[str, list[np.ndarray]] = {side: [] for side in sides}
    batch = 256
    with torch.no_grad():
        for side, model in models.items():
            for start in range(0, len(keys), batch):
                chunk = [first[k] for k in keys[start : start + batch]]
                params = [
                    ManoParams.from_interhand(v.hands_mano[side], v.mano_where_of(side))
                    for v in chunk
                ]
                posed = model(ManoParams.stack(params)).vertices.cpu().numpy()
                per_side[side] += [verts.astype(np.float64) for verts in posed]
    vertices = {
        key: np.concatenate([per_side[side][i] for side in sides]) for i, key in enumerate(keys)
    }
    faces, offset = [], 0
    for model in models.values():
        faces.append(np.asarray(to_numpy(model.faces), dtype=np.int64) + offset)
        offset += model.num_vertices
    return models, vertices, np.concatenate(faces)


def _run(
    todo: Sequence[tuple[FrameView, np.ndarray]],
    root: Path,
    out: Path,
    faces: np.ndarray,
    spec: PrepareSpec,
    workers: int,
) -> Iterator[dict[str, Any]]:
    """Yield the record of each task as it finishes (in task order)."""
    if not todo:
        return
    if workers == 1 or len(todo) < 2:
        _set_state(str(root), str(out), faces, spec)
        for task in todo:
            yield _prepare_one(task)
        return
    # spawn, not fork: the parent holds torch's thread pools, which fork does not copy safely.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(str(root), str(out), faces, spec),
    )
    try:
        # Small chunks: an interrupt waits only for the views already handed out.
        chunk = max(1, min(4, len(todo) // (workers * 8)))
        yield from pool.map(_prepare_one, todo, chunksize=chunk)
    finally:
        # On an interrupt, drop the queued views instead of finishing them all first.
        pool.shutdown(wait=True, cancel_futures=True)


def _build_index(
    selection: StreamedSelection,
    spec: PrepareSpec,
    job: dict[str, Any],
    hand_models: dict[str, Any],
    records: dict[tuple[str, str, int], dict[str, Any]],
) -> dict[str, Any]:
    report = selection.selection_report
    filter_counts: Counter[str] = Counter()
    kept_views: list[dict[str, Any]] = []
    for view in selection.views:
        record = records[(view.seq_name, view.camera_id, view.frame_idx)]
        if record["status"] == "kept":
            kept_views.append(record)
        else:
            filter_counts[record["reason"]] += 1
    for reason, count in sorted(filter_counts.items()):
        report.skip(f"filter: {reason}", count)
    if spec.filters is not None or filter_counts:
        report.add_step("after frame filters", len(kept_views))
    kept_frames = {(r["seq"], int(r["frame"])) for r in kept_views}
    frames = []
    cameras: dict[str, Any] = {}
    for view in selection.views:
        key = (view.seq_name, view.frame_idx)
        if key in kept_frames:
            kept_frames.discard(key)
            frames.append(
                {
                    "seq": view.seq_name,
                    "frame": view.frame_idx,
                    "mano": {k: v.tolist() for k, v in view.mano.items()},
                    **_two_hands_entry(view),
                    "keypoints_world": None
                    if view.keypoints_world is None
                    else view.keypoints_world.tolist(),
                    "keypoints_valid": None
                    if view.keypoints_valid is None
                    else view.keypoints_valid.tolist(),
                }
            )
        cameras.setdefault(view.camera_id, camera_to_json(view.camera))
    digest = hashlib.sha256(json.dumps(job, sort_keys=True).encode())
    for record in kept_views:
        digest.update(f"{record['seq']}/{record['camera']}/{record['frame']}".encode())
    return {
        "format": cache_format.FORMAT,
        "version": cache_format.VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **job,
        "hand": hands_identity(hand_models, spec.hand),
        "fingerprint": digest.hexdigest()[:16],
        "selection_report": str(report),
        "selection_steps": report.steps,
        "skipped": dict(report.skipped),
        "filter_counts": dict(sorted(filter_counts.items())),
        "cameras": cameras,
        "frames": frames,
        "views": kept_views,
    }


def _two_hands_entry(view: FrameView) -> dict[str, Any]:
    """A two-hand frame's ``{'two_hands': {side: MANO params}}`` for index.json (its
    ``mano`` is empty); nothing for a one-hand frame."""
    if view.two_hands is None:
        return {}
    return {
        "two_hands": {
            side: {k: v.tolist() for k, v in params.items()}
            for side, params in view.two_hands.items()
        }
    }
