"""Everything a fit (and its evaluation) reads from a capture, prepared once.

Selects the training sequence's frames, splits cameras into training and held-out ones,
crops every view around the hand (K adjusted), attaches masks, and stacks them as tensors.
The extra training sequences (``data.extra_train_seqs``) add their views from the training
cameras. The novel-pose sequence is prepared the same way for evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from handnerf.data.cache import CachedView, PreparedCache, is_prepared_cache
from handnerf.data.interhand import (
    FrameView,
    InterHandCapture,
    refuse_other_procedural_hand,
    refuse_procedural_hand,
    refuse_seen_novel_pose,
)
from handnerf.errors import ConfigError, DataError, SelectionError
from handnerf.hand.hand_model import HandModel, ManoParams
from handnerf.hand.identity import same_hand
from handnerf.model.two_hands import SIDES
from handnerf.train.config import DataConfig
from handnerf.train.fit_hands import FitHands, FitMano, frame_mano
from handnerf.train.rays import ViewStack


@dataclass
class ViewSet:
    """Views prepared for fitting or evaluation (training: of every training sequence)."""

    stack: ViewStack
    views: list[FrameView]
    frame_keys: list[tuple[str, int]]  # (seq_name, frame_idx) per frame id
    mano: FitMano  # one row per frame id (data.hand=both: per side)


@dataclass
class FitData:
    hand_model: HandModel  # data.hand=both: the right hand's (see hands)
    betas: torch.Tensor  # (10,); data.hand=both: (2, 10), right and left
    camera_names: list[str]  # camera id per camera index
    train_cameras: list[str]
    holdout_cameras: list[str]
    train: ViewSet
    val: ViewSet | None  # held-out cameras, training frames
    novel_pose: ViewSet | None  # novel-pose sequence, all cameras
    fingerprint: str
    hand_identity: dict[str, str]
    selection: str
    hands: FitHands | None = None  # None: FitHands({data.hand: hand_model})

    @property
    def train_views(self) -> ViewStack:
        return self.train.stack

    @property
    def val_views(self) -> ViewStack | None:
        return None if self.val is None else self.val.stack

    @property
    def train_mano(self) -> FitMano:
        return self.train.mano

    @property
    def fit_hands(self) -> FitHands:
        """The hand model(s) fitted."""
        return self.hands or FitHands({self.hand_model.side: self.hand_model})


def choose_holdout(cameras: list[str], cfg: DataConfig) -> list[str]:
    if cfg.holdout_cameras:
        unknown = sorted(set(cfg.holdout_cameras) - set(cameras))
        if unknown:
            raise SelectionError(
                f"data.holdout_cameras: unknown camera(s) {unknown}; the capture has {sorted(cameras)}"
            )
        return list(cfg.holdout_cameras)
    if cfg.holdout_every <= 0:
        return []
    ordered = sorted(cameras)
    return ordered[cfg.holdout_every // 2 :: cfg.holdout_every]


def training_sequences(cfg: DataConfig) -> list[str]:
    """``data.train_seq`` then ``data.extra_train_seqs``: the sequences a fit trains on.

    Raises ConfigError for a sequence named twice.
    """
    seqs = [cfg.train_seq, *cfg.extra_train_seqs]
    repeated = sorted({s for s in seqs if seqs.count(s) > 1})
    if repeated:
        raise ConfigError(
            f"data.extra_train_seqs={list(cfg.extra_train_seqs)!r}: {', '.join(repeated)} "
            f"named twice among the training sequences (data.train_seq={cfg.train_seq!r} "
            "and data.extra_train_seqs)"
        )
    return seqs


def check_training_sequences(cfg: DataConfig) -> None:
    """The checks of ``cfg``'s sequences before any data is read: no sequence twice, the
    novel-pose sequence not trained on (ConfigError / NovelPoseSequenceError)."""
    training_sequences(cfg)
    refuse_seen_novel_pose(cfg.train_seq, cfg.novel_pose_seq, cfg.extra_train_seqs)


def open_sequence(
    root: Path, cfg: DataConfig, seq: str, stride: int, cameras: list[str] | None = None
) -> InterHandCapture:
    """The views of ``seq`` selected by ``cfg`` (split, capture, hand, excluded cameras)."""
    return InterHandCapture(
        root,
        split=cfg.split,
        capture=cfg.capture,
        seqs=[seq],
        hand=cfg.hand,
        cameras=cameras,
        exclude_cameras=cfg.exclude_cameras or None,
        stride=stride,
    )


def load_fit_data(
    root: Path, cfg: DataConfig, mask_cache: Path | None = None, progress: bool = True
) -> FitData:
    """Read and prepare the capture at ``root`` (or a ``handnerf prepare`` cache) for a fit."""
    check_training_sequences(cfg)
    if is_prepared_cache(root):
        return _load_fit_data_from_cache(root, cfg, progress)
    hands = FitHands.load(cfg.hand, cfg.mano_dir, cfg.procedural_hand)
    hand_model = hands.first
    refuse_procedural_hand(root, hand_model.data.is_procedural, "fit")
    refuse_other_procedural_hand(root, hand_model.data.procedural, "data.procedural_hand")
    train_cap = open_sequence(root, cfg, cfg.train_seq, cfg.stride)
    if not train_cap.views:
        raise DataError(
            f"{root}: no usable views for {cfg.train_seq}:\n{train_cap.selection_report}"
        )
    cameras = sorted({v.camera_id for v in train_cap.views})
    holdout = choose_holdout(cameras, cfg)
    train_cams = [c for c in cameras if c not in holdout]
    if not train_cams:
        raise SelectionError("data: every camera is held out; nothing left to train on")
    camera_index = {c: i for i, c in enumerate(cameras)}

    def views_of(views: list[FrameView], what: str, **frames: Any) -> ViewSet:
        """Prepared views of the training sequences (same capture, hand, crops, cameras)."""
        return prepare_view_set(
            views, train_cap, hands, cfg, camera_index, mask_cache, progress, what, **frames
        )

    extra_views, extra_reports = _extra_training_views(root, cfg, train_cams)
    train = views_of(
        [v for v in train_cap.views if v.camera_id in train_cams] + extra_views, "train views"
    )
    val_views = [v for v in train_cap.views if v.camera_id in holdout]
    # The held-out cameras see the training frames: same frame ids and MANO rows.
    val = (
        views_of(val_views, "held-out views", frame_keys=train.frame_keys, mano=train.mano)
        if val_views
        else None
    )
    novel = None
    selection = "\n".join([str(train_cap.selection_report), *extra_reports])
    if cfg.novel_pose_seq:
        novel_cap = open_sequence(root, cfg, cfg.novel_pose_seq, cfg.novel_pose_stride)
        known = [v for v in novel_cap.views if v.camera_id in camera_index]
        if known:
            novel = prepare_view_set(
                known,
                novel_cap,
                hands,
                cfg,
                camera_index,
                mask_cache,
                progress,
                "novel-pose views",
            )
        selection += "\n" + str(novel_cap.selection_report)
    fingerprint = _fingerprint(root, cfg, train.views)
    return _fit_data(
        hands, cameras, train_cams, holdout, (train, val, novel), fingerprint, selection
    )


def _extra_training_views(
    root: Path, cfg: DataConfig, train_cameras: list[str]
) -> tuple[list[FrameView], list[str]]:
    """The views of ``data.extra_train_seqs`` from ``train_cameras`` (``data.stride``
    thins their frames), and each sequence's selection report.

    Raises SelectionError for a sequence the capture lacks and DataError for one with no
    usable view from the training cameras, both naming the key and the sequence.
    """
    views: list[FrameView] = []
    reports: list[str] = []
    for seq in cfg.extra_train_seqs:
        try:
            capture = open_sequence(root, cfg, seq, cfg.stride)
        except SelectionError as exc:
            raise SelectionError(f"data.extra_train_seqs: {seq}: {exc}") from exc
        kept = [v for v in capture.views if v.camera_id in train_cameras]
        if not kept:
            raise DataError(
                f"data.extra_train_seqs: {root}: no usable views of {seq} from the training "
                f"cameras ({', '.join(train_cameras)}):\n{capture.selection_report}"
            )
        views += kept
        # Named: the reports are alike, and the training sequence's comes unnamed before.
        reports.append(f"{seq} (data.extra_train_seqs) {capture.selection_report}")
    return views, reports


def subject_betas(mano: ManoParams) -> torch.Tensor:
    """(10,) the one shape of a fit's subject: the mean of its training frames' betas.

    InterHand2.6M fits each frame's shape separately, so they jitter around the subject's;
    their mean is a better estimate than any single frame's.
    """
    return mano.betas.mean(0).clone()


def prepare_view_set(
    views: list[FrameView],
    capture: InterHandCapture,
    hands: FitHands,
    cfg: DataConfig,
    camera_index: dict[str, int],
    mask_cache: Path | None,
    progress: bool,
    desc: str,
    frame_keys: list[tuple[str, int]] | None = None,
    mano: FitMano | None = None,
) -> ViewSet:
    """Crop, mask and stack ``views``; frames get ids in ``frame_keys`` order (default:
    the views' sorted (seq, frame) keys). ``capture`` reads the images: any selection of
    the views' root (the views may come from several of its sequences)."""
    from handnerf.data.crops import crop_hand

    if frame_keys is None:
        frame_keys = sorted({(v.seq_name, v.frame_idx) for v in views})
        mano = hands.frame_mano(views, frame_keys)
    assert mano is not None
    frame_id = {k: i for i, k in enumerate(frame_keys)}
    # Both hands: the crop box and the mask cover both.
    posed = hands.posed_vertices(mano)
    masker = hands.masker(mask_cache)

    images, masks, Ks, Rs, ts, fids, cids, valid = [], [], [], [], [], [], [], []
    for view in tqdm(views, desc=desc, disable=not progress, leave=False):
        fid = frame_id[(view.seq_name, view.frame_idx)]
        image = capture.load_image(view)
        if cfg.mask_source == "gt":
            mask = _gt_mask(capture.root, view)
        elif cfg.mask_source == "mano":
            mask = masker.mask(view)
        else:
            raise DataError(f"data.mask_source must be 'mano' or 'gt', got {cfg.mask_source!r}")
        crop = crop_hand(
            image,
            view.camera,
            mask=mask,
            points=posed[fid],
            scale=cfg.crop_scale,
            out_size=cfg.crop_size,
        )
        images.append(torch.from_numpy(crop.image).float() / 255.0)
        masks.append(torch.from_numpy(crop.mask.astype(bool)))
        valid.append(torch.from_numpy(crop.valid_pixels.astype(bool)))
        Ks.append(torch.from_numpy(crop.camera.K).float())
        Rs.append(torch.from_numpy(crop.camera.R).float())
        ts.append(torch.from_numpy(crop.camera.t).float())
        fids.append(fid)
        cids.append(camera_index[view.camera_id])
    stack = ViewStack(
        images=torch.stack(images),
        masks=torch.stack(masks),
        K=torch.stack(Ks),
        R=torch.stack(Rs),
        t=torch.stack(ts),
        frame_ids=torch.tensor(fids),
        camera_ids=torch.tensor(cids),
        valid=torch.stack(valid) if valid else None,
    )
    return ViewSet(stack=stack, views=list(views), frame_keys=frame_keys, mano=mano)


def _mano_of(views: list[FrameView], key: tuple[str, int]) -> dict[str, np.ndarray]:
    for v in views:
        if (v.seq_name, v.frame_idx) == key:
            return v.mano
    raise KeyError(key)


def _gt_mask(root: Path, view: FrameView) -> np.ndarray:
    import imageio.v3 as iio

    rel = view.image_path.relative_to(Path(root) / "images")
    path = Path(root) / "gt_masks" / rel.with_suffix(".png")
    if not path.is_file():
        raise DataError(
            f"data.mask_source=gt but {path} is missing (only synthetic captures have it)"
        )
    mask = iio.imread(path)
    return (mask[..., 0] if mask.ndim == 3 else mask) > 127


def _fingerprint(root: Path, cfg: DataConfig, views: list[FrameView]) -> str:
    """Identifies the training data: selection, annotation files (path and size: not the
    mtime, so that a copied or re-downloaded capture keeps it), views."""
    digest = hashlib.sha256()
    selection: list[Any] = [cfg.split, cfg.capture, cfg.train_seq, cfg.hand, cfg.stride]
    # Only when set: runs trained on one sequence keep their fingerprint (and resume).
    if cfg.extra_train_seqs:
        selection.append(list(cfg.extra_train_seqs))
    digest.update(json.dumps(selection).encode())
    ann = Path(root) / "annotations"
    for path in sorted(ann.rglob("*.json")) if ann.is_dir() else []:
        st = path.stat()
        digest.update(f"{path.relative_to(root)}:{st.st_size}".encode())
    for v in views:
        digest.update(f"{v.seq_name}/{v.camera_id}/{v.frame_idx}".encode())
    return digest.hexdigest()[:16]


def sequence_mano(root: Path, cfg: DataConfig, seq: str, stride: int = 1) -> FitMano:
    """MANO parameters of every selected frame of ``seq`` (frame order), for driving an avatar."""
    if is_prepared_cache(root):
        cache = PreparedCache(root)
        frames = cache.frames(seq)[::stride]
        per_side = {
            side: ManoParams.stack(
                [
                    ManoParams.from_interhand(
                        cache.hands_mano(seq, f)[side], where=f"{root}: {seq} frame {f} ({side})"
                    )
                    for f in frames
                ]
            )
            for side in (SIDES if cache.hand == "both" else (cache.hand,))
        }
        return per_side if cache.hand == "both" else per_side[cache.hand]
    capture = open_sequence(root, cfg, seq, stride)
    keys = sorted({(v.seq_name, v.frame_idx) for v in capture.views})
    if not keys:
        raise DataError(f"{root}: sequence {seq} has no usable frames:\n{capture.selection_report}")
    if cfg.hand == "both":
        return frame_mano(capture.views, keys, "both")
    return ManoParams.stack(
        [
            ManoParams.from_interhand(_mano_of(capture.views, k), where=f"{seq} frame {k[1]}")
            for k in keys
        ]
    )


# --------------------------------------------------------------------------- prepared cache


def cached_entries(
    cache: PreparedCache, seq: str, stride: int, exclude_cameras: list[str]
) -> list[CachedView]:
    """The kept views of ``seq`` a fit (and its evaluation) uses, by (frame, camera).

    ``stride`` thins the cached frames (those with at least one kept view) further;
    ``exclude_cameras`` drops cameras. Fit and eval share this so that they agree.
    """
    frames = set(cache.frames(seq)[::stride])
    excluded = set(exclude_cameras)
    return [
        e
        for e in cache.entries(seq)
        if e.view.frame_idx in frames and e.view.camera_id not in excluded
    ]


def _load_fit_data_from_cache(root: Path, cfg: DataConfig, progress: bool) -> FitData:
    """:func:`load_fit_data` from a ``handnerf prepare`` cache: no JSON, no mask rendering.

    The cache fixes split, capture and hand (a mismatch with ``cfg`` is an error);
    ``cfg.stride`` thins the cached frames further and ``cfg.exclude_cameras`` drops cameras.
    Every training sequence must be in the cache (``prepare --seq`` each).
    """
    cache = PreparedCache(root)
    for name, wanted, cached in (
        ("split", cfg.split, cache.split),
        ("capture", cfg.capture, cache.capture),
        ("hand", cfg.hand, cache.hand),
    ):
        if wanted != cached:
            raise SelectionError(
                f"data.{name}={wanted!r} but the prepared cache {root} holds {name} {cached!r}"
            )
    hands = FitHands.load(cfg.hand, cfg.mano_dir, cfg.procedural_hand)
    identity = hands.identity()
    if not same_hand(cache.hand_record, identity):
        raise DataError(
            f"{root}: its masks were made with another hand model (sha256 {cache.hand_sha[:12]}) "
            f"than this fit's ({identity['sha256'][:12]}); pass the same --mano-dir to prepare "
            "and fit"
        )

    def entries(seq: str, stride: int) -> list[CachedView]:
        return cached_entries(cache, seq, stride, cfg.exclude_cameras)

    train_entries = entries(cfg.train_seq, cfg.stride)
    if not train_entries:
        raise DataError(f"{root}: no cached views of {cfg.train_seq} are left")
    cameras = sorted({e.view.camera_id for e in train_entries})
    holdout = choose_holdout(cameras, cfg)
    train_cams = [c for c in cameras if c not in holdout]
    if not train_cams:
        raise SelectionError("data: every camera is held out; nothing left to train on")
    camera_index = {c: i for i, c in enumerate(cameras)}

    def view_set(
        chosen: list[CachedView],
        desc: str,
        frame_keys: list[tuple[str, int]] | None = None,
        mano: FitMano | None = None,
    ) -> ViewSet:
        return _cached_view_set(
            cache, chosen, hands, cfg, camera_index, progress, desc, frame_keys, mano
        )

    train = view_set(
        [e for e in train_entries if e.view.camera_id in train_cams]
        + _extra_cached_entries(cache, cfg, train_cams),
        "train views",
    )
    val_entries = [e for e in train_entries if e.view.camera_id in holdout]
    val = (
        view_set(val_entries, "held-out views", frame_keys=train.frame_keys, mano=train.mano)
        if val_entries
        else None
    )
    novel = None
    selection = cache.selection_report
    if cfg.novel_pose_seq:
        if cfg.novel_pose_seq in cache.sequences:
            known = [
                e
                for e in entries(cfg.novel_pose_seq, cfg.novel_pose_stride)
                if e.view.camera_id in camera_index
            ]
            novel = view_set(known, "novel-pose views") if known else None
        else:
            selection += f"\nnote: novel-pose sequence {cfg.novel_pose_seq} is not in the cache"
    digest = hashlib.sha256(cache.fingerprint.encode())
    selection_key: list[Any] = [cfg.train_seq, cfg.stride, sorted(cfg.exclude_cameras)]
    # Only when set: runs trained on one sequence keep their fingerprint (and resume).
    if cfg.extra_train_seqs:
        selection_key.append(list(cfg.extra_train_seqs))
    digest.update(json.dumps(selection_key).encode())
    fingerprint = digest.hexdigest()[:16]
    return _fit_data(
        hands, cameras, train_cams, holdout, (train, val, novel), fingerprint, selection
    )


def _extra_cached_entries(
    cache: PreparedCache, cfg: DataConfig, train_cameras: list[str]
) -> list[CachedView]:
    """The cached views of ``data.extra_train_seqs`` from ``train_cameras``, thinned as
    :func:`cached_entries` thins them; a sequence the cache lacks (SelectionError) or keeps
    no such view of (DataError) is an error naming the key and the sequence."""
    chosen: list[CachedView] = []
    for seq in cfg.extra_train_seqs:
        if seq not in cache.sequences:
            raise SelectionError(
                f"data.extra_train_seqs: sequence {seq!r} is not in the prepared cache "
                f"{cache.root}; it holds: {', '.join(cache.sequences)} (prepare it with "
                f"--seq {seq} too)"
            )
        kept = [
            e
            for e in cached_entries(cache, seq, cfg.stride, cfg.exclude_cameras)
            if e.view.camera_id in train_cameras
        ]
        if not kept:
            raise DataError(
                f"data.extra_train_seqs: the prepared cache {cache.root} keeps no view of "
                f"{seq} from the training cameras ({', '.join(train_cameras)})"
            )
        chosen += kept
    return chosen


def _fit_data(
    hands: FitHands,
    cameras: list[str],
    train_cameras: list[str],
    holdout: list[str],
    sets: tuple[ViewSet, ViewSet | None, ViewSet | None],
    fingerprint: str,
    selection: str,
) -> FitData:
    """The :class:`FitData` of a capture or a cache: ``sets`` = (train, held-out, novel-pose)."""
    train, val, novel = sets
    return FitData(
        hand_model=hands.first,
        betas=hands.subject_betas(train.mano),
        camera_names=cameras,
        train_cameras=train_cameras,
        holdout_cameras=holdout,
        train=train,
        val=val,
        novel_pose=novel,
        fingerprint=fingerprint,
        hand_identity=hands.identity(),
        selection=selection,
        hands=hands,
    )


def _cached_view_set(
    cache: PreparedCache,
    entries: list[CachedView],
    hands: FitHands,
    cfg: DataConfig,
    camera_index: dict[str, int],
    progress: bool,
    desc: str,
    frame_keys: list[tuple[str, int]] | None = None,
    mano: FitMano | None = None,
) -> ViewSet:
    """Like :func:`prepare_view_set`, reading the cached crops (re-cut if sizes differ)."""
    views = [e.view for e in entries]
    if frame_keys is None:
        frame_keys = sorted({(v.seq_name, v.frame_idx) for v in views})
        mano = hands.frame_mano(views, frame_keys)
    assert mano is not None
    frame_id = {k: i for i, k in enumerate(frame_keys)}
    n, size = len(entries), cfg.crop_size
    # Filled as uint8/float64 numpy and converted once: per-view torch ops cost more than
    # decoding the PNGs. cv2 decodes without the GIL, so threads read in parallel.
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    valid = np.empty((n, size, size), dtype=bool)
    Ks, Rs, ts = np.empty((n, 3, 3)), np.empty((n, 3, 3)), np.empty((n, 3))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        crops = pool.map(lambda e: cache.read_cropped(e, cfg.crop_scale, size), entries)
        for i, crop in enumerate(
            tqdm(crops, total=n, desc=desc, disable=not progress, leave=False)
        ):
            images[i], masks[i], valid[i] = crop.image, crop.mask, crop.valid_pixels
            Ks[i], Rs[i], ts[i] = crop.camera.K, crop.camera.R, crop.camera.t
    stack = ViewStack(
        images=torch.from_numpy(images).float().div_(255.0),
        masks=torch.from_numpy(masks),
        K=torch.from_numpy(Ks).float(),
        R=torch.from_numpy(Rs).float(),
        t=torch.from_numpy(ts).float(),
        frame_ids=torch.tensor([frame_id[(v.seq_name, v.frame_idx)] for v in views]),
        camera_ids=torch.tensor([camera_index[v.camera_id] for v in views]),
        valid=torch.from_numpy(valid),
    )
    return ViewSet(stack=stack, views=views, frame_keys=frame_keys, mano=mano)
