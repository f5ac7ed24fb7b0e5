"""What the viewer shows of a run's capture: its sequences' poses, cameras and photos.

The training sequences (``data.train_seq`` then ``data.extra_train_seqs``: the frames the
fit used, with the fit's refined MANO parameters where it refined them) and the novel-pose
sequence, each as its frames' MANO parameters; the capture's cameras (the views of those
frames); and each (frame, camera) photo, read on demand, for the ground-truth panel. Read
from the run's ``data_root``: an InterHand2.6M root or a ``handnerf prepare`` cache (whose
stored crops are the photos).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from handnerf.data.cache import PreparedCache, is_prepared_cache
from handnerf.data.camera import PinholeCamera
from handnerf.data.interhand import FrameView, load_image
from handnerf.errors import DataError
from handnerf.hand.hand_model import ManoParams
from handnerf.runs.loader import TrainedRun
from handnerf.train.fit_data import cached_entries, open_sequence, training_sequences


@dataclass
class Sequence:
    """One sequence's frames.

    ``mano`` has one row per entry of ``frames`` (frame order); ``photos`` reads the
    (H, W, 3) uint8 photo of (frame, camera) for the pairs the capture holds.
    """

    name: str
    role: str  # "training" or "novel pose"
    frames: list[int]
    mano: ManoParams
    photos: dict[tuple[int, str], Callable[[], np.ndarray]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.role}: {self.name} ({len(self.frames)} frames)"

    def frame_mano(self, index: int) -> ManoParams:
        """Parameters of the ``index``-th frame, a batch of one."""
        return self.mano.index(int(index))


@dataclass
class CaptureSequences:
    sequences: list[Sequence]
    cameras: dict[str, PinholeCamera]  # camera id -> its (source image) camera
    #: Why a sequence is absent (e.g. the cache holds no view of the novel-pose sequence).
    notes: list[str] = field(default_factory=list)

    def photo(self, seq: Sequence, index: int, camera: str) -> np.ndarray | None:
        """The photo of ``seq``'s ``index``-th frame by ``camera``, None where there is none."""
        read = seq.photos.get((seq.frames[int(index)], camera))
        return None if read is None else read()


def _from_views(run: TrainedRun, name: str, role: str, views: list[FrameView]) -> Sequence:
    frames = sorted({v.frame_idx for v in views})
    first = {v.frame_idx: v for v in reversed(views)}
    mano = []
    for f in frames:
        view = first[f]
        given = ManoParams.from_interhand(
            {k: np.asarray(v).tolist() for k, v in view.mano.items()}, where=view.mano_where
        )
        mano.append(run.frame_mano(name, f, given) if role == "training" else given)
    photos = {(v.frame_idx, v.camera_id): _reader(v) for v in views}
    return Sequence(name, role, frames, ManoParams.stack(mano), photos)


def _reader(view: FrameView) -> Callable[[], np.ndarray]:
    return lambda: load_image(view)


def load_sequences(run: TrainedRun) -> CaptureSequences:
    """The run's training and novel-pose sequences and the capture's cameras."""
    root = Path(run.data_root)
    if not root.exists():
        raise DataError(
            f"{run.run_dir / 'run.json'}: 'data_root' {root} (what the run was fitted from) "
            "no longer exists; the viewer reads its poses, cameras and photos"
        )
    cfg = run.cfg.data
    wanted = [(seq, "training", cfg.stride) for seq in training_sequences(cfg)]
    if cfg.novel_pose_seq:
        wanted.append((cfg.novel_pose_seq, "novel pose", cfg.novel_pose_stride))
    cache = PreparedCache(root) if is_prepared_cache(root) else None
    sequences: list[Sequence] = []
    notes: list[str] = []
    cameras: dict[str, PinholeCamera] = {}
    for name, role, stride in wanted:
        try:
            if cache is None:
                views = open_sequence(root, cfg, name, stride).views
                if not views:
                    raise DataError(f"{root}: no usable views of {name}")
                seq = _from_views(run, name, role, views)
                cameras.update({v.camera_id: v.camera for v in views})
            else:
                seq = _from_cache(run, cache, name, role, stride)
                cameras.update(
                    {
                        e.view.camera_id: e.view.camera
                        for e in cached_entries(cache, name, stride, cfg.exclude_cameras)
                    }
                )
        except DataError as exc:
            if role == "training":
                raise
            notes.append(f"no {role} sequence: {exc}")
            continue
        sequences.append(seq)
    return CaptureSequences(sequences, dict(sorted(cameras.items())), notes)


def _from_cache(
    run: TrainedRun, cache: PreparedCache, name: str, role: str, stride: int
) -> Sequence:
    """A sequence of a prepared cache: its kept frames, photos being the stored crops."""
    entries = cached_entries(cache, name, stride, run.cfg.data.exclude_cameras)
    if not entries:
        raise DataError(f"the prepared cache {cache.root} keeps no view of {name}")
    frames = sorted({e.view.frame_idx for e in entries})
    mano = []
    for f in frames:
        given = ManoParams.from_interhand(cache.mano(name, f), where=f"{cache.root}: {name} {f}")
        mano.append(run.frame_mano(name, f, given) if role == "training" else given)
    photos = {
        (e.view.frame_idx, e.view.camera_id): (lambda e=e: cache.read(e).image) for e in entries
    }
    return Sequence(name, role, frames, ManoParams.stack(mano), photos)
