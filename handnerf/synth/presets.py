"""Named sizes of a synthetic capture: how many cameras, frames and pixels to render.

A preset fixes everything about a capture except the seed, so ``(preset, seed)`` names a
capture exactly. Sequence names, split and capture follow the InterHand2.6M subset that
the published avatar papers train on (HandAvatar: ``test/Capture0``, train on
``ROM04_RT_Occlusion``, novel pose on ``ROM03_RT_No_Occlusion``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from handnerf.config import lookup
from handnerf.errors import ConfigError


@dataclass(frozen=True)
class SynthPreset:
    """Everything that sizes a synthetic capture.

    Attributes:
        name: the preset's name (recorded in ``synth.json``).
        n_cameras: cameras in the dome.
        train_frames: frames of the training sequence ``train_seq``.
        novel_frames: frames of the novel-pose sequence ``novel_seq``.
        supersample: sub-pixel rays per side on silhouette/occlusion edges (1 = one ray per
            pixel centre everywhere, 2 = 2x2 anti-aliasing of the edges).
        landscape_every: every n-th camera is landscape (512x334), the others portrait (334x512).
        side: ``"right"`` or ``"left"``: the hand that is captured.
        split, capture, subject: InterHand2.6M split name, capture number, subject id.
        train_seq, novel_seq: sequence names.
        train_first_frame, novel_first_frame, frame_step: frame numbers of the sequences;
            InterHand numbers frames per capture (not per sequence), so they never overlap.
        jpeg_quality: JPEG quality of the images.
        workers: default number of render processes.
        border_cut_cameras: how many cameras are moved closer and aimed past the hand so
            that the image border cuts it, as some of InterHand2.6M's cameras do (0: every
            camera sees the whole hand).
        white_balance_spread: standard deviation of a per-camera white-balance error
            (colour-temperature tilt of the red/blue gains, half as much green tint) on top
            of the exposure and channel gains every camera has (0: none).
        mano_noise_deg, mano_noise_mm: standard deviations of the Gaussian errors added to
            the MANO parameters written to ``MANO_NeuralAnnot.json`` (degrees per axis-angle
            component of the global orientation and the 15 joints, millimetres per
            translation component); the images are rendered from the exact parameters,
            which go to ``exact_mano.json`` beside the capture. 0: the annotation is exact.

    Every preset renders with a key light fixed in the world plus ambient light
    (:class:`~handnerf.synth.raycast.Lighting`), per-camera RGB gains and JPEG compression;
    ``tiny`` keeps the two options above off so the test-suite's capture stays small and
    every view holds the whole hand, ``demo`` and ``fullscale`` switch them on.
    """

    name: str
    n_cameras: int
    train_frames: int
    novel_frames: int
    supersample: int = 2
    landscape_every: int = 3
    side: str = "right"
    split: str = "test"
    capture: int = 0
    subject: int = 1
    train_seq: str = "ROM04_RT_Occlusion"
    novel_seq: str = "ROM03_RT_No_Occlusion"
    train_first_frame: int = 2403
    novel_first_frame: int = 563
    frame_step: int = 6
    jpeg_quality: int = 95
    workers: int = 1
    border_cut_cameras: int = 0
    white_balance_spread: float = 0.0
    mano_noise_deg: float = 0.0
    mano_noise_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.side not in ("right", "left"):
            raise ConfigError(
                f"synth preset {self.name!r}: side must be 'right' or 'left', got {self.side!r}"
            )
        for field in ("n_cameras", "train_frames", "supersample", "landscape_every", "frame_step"):
            if getattr(self, field) < 1:
                raise ConfigError(f"synth preset {self.name!r}: {field} must be >= 1")
        if not 0 <= self.border_cut_cameras <= self.n_cameras:
            raise ConfigError(
                f"synth preset {self.name!r}: border_cut_cameras must be in 0..n_cameras "
                f"({self.n_cameras}), got {self.border_cut_cameras}"
            )
        if not 0.0 <= self.white_balance_spread <= 0.2:
            raise ConfigError(
                f"synth preset {self.name!r}: white_balance_spread must be in [0, 0.2], "
                f"got {self.white_balance_spread}"
            )
        if not (0.0 <= self.mano_noise_deg <= 30.0 and 0.0 <= self.mano_noise_mm <= 50.0):
            raise ConfigError(
                f"synth preset {self.name!r}: mano noise must be in [0, 30] degrees and "
                f"[0, 50] mm, got {self.mano_noise_deg}, {self.mano_noise_mm}"
            )
        if self.novel_frames < 0:
            raise ConfigError(f"synth preset {self.name!r}: novel_frames must be >= 0")
        last_novel = self.novel_first_frame + self.frame_step * max(self.novel_frames - 1, 0)
        last_train = self.train_first_frame + self.frame_step * (self.train_frames - 1)
        if self.novel_frames and not (
            last_novel < self.train_first_frame or last_train < self.novel_first_frame
        ):
            raise ConfigError(
                f"synth preset {self.name!r}: frame numbers of {self.train_seq} and "
                f"{self.novel_seq} overlap (InterHand numbers frames per capture)"
            )

    def train_frame_ids(self) -> list[int]:
        """Frame numbers of the training sequence, in order."""
        return [self.train_first_frame + self.frame_step * i for i in range(self.train_frames)]

    def novel_frame_ids(self) -> list[int]:
        """Frame numbers of the novel-pose sequence, in order."""
        return [self.novel_first_frame + self.frame_step * i for i in range(self.novel_frames)]

    def with_overrides(self, **changes: object) -> SynthPreset:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


PRESETS: dict[str, SynthPreset] = {
    # Unit tests: a handful of images in a few seconds.
    "tiny": SynthPreset(name="tiny", n_cameras=6, train_frames=3, novel_frames=2),
    # `make demo`: enough views and poses for a CPU fit of a few minutes.
    "demo": SynthPreset(
        name="demo",
        n_cameras=20,
        train_frames=10,
        novel_frames=5,
        workers=2,
        border_cut_cameras=3,
        white_balance_spread=0.05,
        # The real regime: InterHand2.6M's MANO parameters are fits, off by millimetres.
        # 2 deg per axis-angle component and 2 mm per translation component give a mean
        # vertex error of 5.9 mm (90th percentile 9.8 mm), the size of NeuralAnnot's
        # errors; configs/demo.yaml refines the poses (train.refine_pose).
        mano_noise_deg=2.0,
        mano_noise_mm=2.0,
    ),
    # GPU benchmarks: an InterHand-sized rig and sequence (rendered over processes).
    "fullscale": SynthPreset(
        name="fullscale",
        n_cameras=100,
        train_frames=300,
        novel_frames=60,
        workers=8,
        border_cut_cameras=12,
        white_balance_spread=0.05,
    ),
}


def get_preset(name: str) -> SynthPreset:
    """The preset called ``name``; a :class:`ConfigError` lists the known ones otherwise."""
    return lookup(PRESETS, name, "synth preset")
