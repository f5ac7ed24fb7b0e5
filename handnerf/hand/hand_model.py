"""MANO parameters, the posed hand, and the :class:`HandModel` that maps one to the other.

:class:`HandModel` wraps ``smplx.MANO`` built from a :class:`ManoModelData` (never from a
path, so no chumpy and no unchecked pickle) and adds what the avatar needs on top of
smplx's vertices and 16 joints: the 21 InterHand-order keypoints, the per-joint bone
transforms from the canonical hand to posed world space, and the canonical vertices.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from smplx import MANO
from smplx.lbs import batch_rigid_transform, batch_rodrigues, blend_shapes

from handnerf.errors import ParameterError
from handnerf.hand.mano_file import (
    HAND_POSE_DIM,
    NUM_BETAS,
    NUM_JOINTS,
    ManoModelData,
    load_mano_folder,
)

CANONICAL_POSE = "flat"
"""The avatar's canonical space: the shaped hand with all 15 finger joint rotations zero in
absolute terms (not relative to ``hands_mean``), no global rotation and no translation.

Why flat: fingers are straight and spread, so no two skin surfaces touch and every
canonical point belongs to one finger; the inverse skinning of posed samples is then
unambiguous. Pose blend shapes vanish there (``R - I = 0``), so the canonical mesh is just
``v_template + shapedirs @ betas``. MANO's mean pose, by contrast, curls the fingers.
"""

# MANO joint rows (0 wrist, 1-3 index, 4-6 middle, 7-9 pinky, 10-12 ring, 13-15 thumb)
# followed by the 5 fingertip vertices at rows 16-20 (thumb, index, middle, ring, pinky),
# gathered into InterHand's order: per finger tip -> knuckle, thumb first, wrist last.
_TIP = {"thumb": 16, "index": 17, "middle": 18, "ring": 19, "pinky": 20}
INTERHAND_FROM_MANO: tuple[int, ...] = (
    _TIP["thumb"], 15, 14, 13,
    _TIP["index"], 3, 2, 1,
    _TIP["middle"], 6, 5, 4,
    _TIP["ring"], 12, 11, 10,
    _TIP["pinky"], 9, 8, 7,
    0,
)  # fmt: skip
NUM_KEYPOINTS = 21
#: Largest |value| of a MANO parameter accepted from an annotation file.
MANO_VALUE_LIMIT = 1e3
_FIELDS: dict[str, int] = {
    "global_orient": 3,
    "hand_pose": HAND_POSE_DIM,
    "betas": NUM_BETAS,
    "transl": 3,
}


def _holds_non_number(value: Any) -> bool:
    """Whether a (nested) list holds anything but ints and floats (bools and strings too)."""
    if isinstance(value, (list, tuple)):
        return any(_holds_non_number(item) for item in value)
    if isinstance(value, torch.Tensor):
        return value.is_complex() or value.dtype == torch.bool
    if hasattr(value, "dtype") and hasattr(value, "shape"):  # numpy arrays and scalars
        return getattr(value.dtype, "kind", "O") not in "iuf"
    return isinstance(value, bool) or not isinstance(value, (int, float))


@dataclass
class ManoParams:
    """A batch of MANO parameters (``B`` hands).

    Attributes:
        global_orient: (B, 3) axis-angle of the wrist.
        hand_pose: (B, 45) axis-angle of the 15 finger joints RELATIVE to ``hands_mean``
            (InterHand2.6M's convention; :class:`HandModel` adds the mean back).
        betas: (B, 10) shape coefficients.
        transl: (B, 3) translation in metres.
    """

    global_orient: torch.Tensor
    hand_pose: torch.Tensor
    betas: torch.Tensor
    transl: torch.Tensor

    @classmethod
    def zeros(cls, batch_size: int = 1, device: torch.device | str | None = None) -> ManoParams:
        """``batch_size`` hands in MANO's mean pose, mean shape, at the origin."""
        return cls(*(torch.zeros(batch_size, dim, device=device) for dim in _FIELDS.values()))

    @classmethod
    def from_interhand(cls, entry: dict[str, Any] | None, where: str) -> ManoParams:
        """One ``MANO_NeuralAnnot.json`` entry ``{'pose': 48, 'shape': 10, 'trans': 3}``.

        ``where`` names the entry in error messages (e.g. ``"<file>: capture 0 frame 12
        right"``). Returns a batch of one.

        Raises:
            ParameterError: the entry is null, lacks a field, or a field has the wrong
                length or non-finite values.
        """
        if entry is None:
            raise ParameterError(f"{where}: no MANO parameters (the entry is null)")
        if not isinstance(entry, dict):
            raise ParameterError(f"{where}: MANO entry must be a dict, got {type(entry).__name__}")
        values: dict[str, torch.Tensor] = {}
        for field, length in (("pose", 48), ("shape", NUM_BETAS), ("trans", 3)):
            if field not in entry or entry[field] is None:
                raise ParameterError(f"{where}: MANO entry has no '{field}'")
            if _holds_non_number(entry[field]):
                raise ParameterError(f"{where}: MANO '{field}' is not a list of numbers")
            try:
                value = torch.as_tensor(entry[field], dtype=torch.float64).reshape(-1)
            except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
                raise ParameterError(f"{where}: MANO '{field}' is not a list of numbers") from exc
            if value.numel() != length:
                raise ParameterError(
                    f"{where}: MANO '{field}' has {value.numel()} values, expected {length}"
                )
            if not bool(torch.isfinite(value).all()):
                raise ParameterError(f"{where}: MANO '{field}' contains NaN or inf")
            if bool((value.abs() > MANO_VALUE_LIMIT).any()):
                # no real pose (radians), shape or translation (metres) comes near; 1e39
                # would even overflow the float32 the model runs in
                raise ParameterError(
                    f"{where}: MANO '{field}' holds values beyond +-{MANO_VALUE_LIMIT:g}"
                )
            values[field] = value.float().unsqueeze(0)
        pose = values["pose"]
        return cls(
            global_orient=pose[:, :3],
            hand_pose=pose[:, 3:],
            betas=values["shape"],
            transl=values["trans"],
        )

    def to_interhand(self, row: int = 0) -> dict[str, list[float]]:
        """Row ``row`` as a ``MANO_NeuralAnnot.json`` entry ``{'pose': 48, 'shape': 10,
        'trans': 3}`` (the inverse of :meth:`from_interhand`)."""
        pose = torch.cat([self.global_orient[row], self.hand_pose[row]])
        return {
            "pose": [float(v) for v in pose.detach().cpu().reshape(-1)],
            "shape": [float(v) for v in self.betas[row].detach().cpu().reshape(-1)],
            "trans": [float(v) for v in self.transl[row].detach().cpu().reshape(-1)],
        }

    @classmethod
    def stack(cls, params: Sequence[ManoParams]) -> ManoParams:
        """Concatenate batches along the batch dimension."""
        if not params:
            raise ParameterError("cannot stack an empty list of MANO parameters")
        return cls(*(torch.cat([getattr(p, field) for p in params], dim=0) for field in _FIELDS))

    def validate(self, where: str) -> ManoParams:
        """Check shapes ((B, 3), (B, 45), (B, 10), (B, 3)) and finiteness; returns self.

        Raises:
            ParameterError: naming ``where`` and the field at fault.
        """
        batch: int | None = None
        for field, dim in _FIELDS.items():
            value = getattr(self, field)
            if not isinstance(value, torch.Tensor):
                raise ParameterError(
                    f"{where}: MANO '{field}' must be a torch tensor, got {type(value).__name__}"
                )
            if value.ndim != 2 or value.shape[1] != dim:
                raise ParameterError(
                    f"{where}: MANO '{field}' has shape {tuple(value.shape)}, expected (B, {dim})"
                )
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise ParameterError(
                    f"{where}: MANO '{field}' has batch size {value.shape[0]}, "
                    f"global_orient has {batch}"
                )
            if not value.is_floating_point():
                raise ParameterError(f"{where}: MANO '{field}' must be floating point")
            if not bool(torch.isfinite(value).all()):
                raise ParameterError(f"{where}: MANO '{field}' contains NaN or inf")
            if bool((value.abs() > MANO_VALUE_LIMIT).any()):
                # no real pose (radians), shape or translation (metres) comes near; 1e39
                # would even overflow the float32 the model runs in
                raise ParameterError(
                    f"{where}: MANO '{field}' holds values beyond +-{MANO_VALUE_LIMIT:g}"
                )
        return self

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> ManoParams:
        return ManoParams(
            *(getattr(self, field).to(device=device, dtype=dtype) for field in _FIELDS)
        )

    def __len__(self) -> int:
        return int(self.global_orient.shape[0])

    def index(self, i: int | slice | torch.Tensor) -> ManoParams:
        """A sub-batch; an int keeps the batch dimension (a batch of one)."""
        if isinstance(i, int):
            if not -len(self) <= i < len(self):
                raise IndexError(f"MANO parameter index {i} out of range for batch {len(self)}")
            i = slice(i, i + 1 if i != -1 else None)
        return ManoParams(*(getattr(self, field)[i] for field in _FIELDS))


@dataclass
class HandOutput:
    """The posed hand of a :class:`HandModel` forward pass (metres, world space).

    Attributes:
        vertices: (B, V, 3) posed vertices, with pose correctives and translation.
        joints: (B, 16, 3) posed MANO joints (MANO order, wrist first).
        keypoints: (B, 21, 3) InterHand order: 0 thumb tip, 1-3 thumb3..thumb1,
            4-7 index tip..1, 8-11 middle, 12-15 ring, 16-19 pinky, 20 wrist.
        bone_transforms: (B, 16, 4, 4) rigid maps from the canonical hand to posed world
            space; ``x_posed = sum_k w_k T_k x_canonical`` (homogeneous).
        canonical_vertices: (B, V, 3) the same shaped hand in the canonical (flat) pose.
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    keypoints: torch.Tensor
    bone_transforms: torch.Tensor
    canonical_vertices: torch.Tensor


class HandModel(torch.nn.Module):
    """One hand (right or left) of a MANO-format model, as a differentiable module.

    Buffers: ``faces`` (F, 3) long, ``skinning_weights`` (V, 16), ``parents`` (16,) long,
    ``fingertip_vertex_ids`` (5,) long. ``smplx.MANO`` is built with ``use_pca=False`` and
    ``flat_hand_mean=False`` so ``ManoParams.hand_pose`` is relative to ``hands_mean``.
    """

    faces: torch.Tensor
    skinning_weights: torch.Tensor
    parents: torch.Tensor
    fingertip_vertex_ids: torch.Tensor
    vertex_colors: torch.Tensor | None

    def __init__(self, data: ManoModelData, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.side = data.side
        self.data = data
        # smplx prints a warning about having only 10 shape coefficients; it is expected
        with contextlib.redirect_stdout(io.StringIO()):
            # MANO.forward leaves out smplx's vertex_joint_selector (it indexes fixed
            # vertex ids of the 778-vertex mesh), so other vertex counts are safe.
            self.mano = MANO(
                model_path="",
                is_rhand=data.side == "right",
                data_struct=data.to_smplx_struct(),
                use_pca=False,
                num_pca_comps=HAND_POSE_DIM,
                flat_hand_mean=False,
                create_global_orient=False,
                create_hand_pose=False,
                create_betas=False,
                create_transl=False,
                create_body_pose=False,
                dtype=dtype,
            )
        # smplx casts every array through float32 numpy; restore full precision so a
        # float64 model really computes in float64
        full_precision = {
            "v_template": data.v_template,
            "shapedirs": data.shapedirs,
            "posedirs": data.posedirs.reshape(-1, data.posedirs.shape[-1]).T,
            "J_regressor": data.J_regressor,
            "lbs_weights": data.weights,
        }
        with torch.no_grad():
            for name, array in full_precision.items():
                getattr(self.mano, name).copy_(torch.as_tensor(array, dtype=dtype))
        self.register_buffer("faces", torch.as_tensor(data.faces, dtype=torch.long))
        self.register_buffer("skinning_weights", torch.as_tensor(data.weights, dtype=dtype))
        self.register_buffer("parents", torch.as_tensor(data.parents, dtype=torch.long))
        self.register_buffer(
            "fingertip_vertex_ids", torch.as_tensor(data.fingertip_vertex_ids, dtype=torch.long)
        )
        colors = (
            None if data.vertex_colors is None else torch.as_tensor(data.vertex_colors, dtype=dtype)
        )
        self.register_buffer("vertex_colors", colors)
        self.register_buffer(
            "_keypoint_rows",
            torch.as_tensor(INTERHAND_FROM_MANO, dtype=torch.long),
            persistent=False,
        )

    @classmethod
    def from_folder(
        cls,
        mano_dir: str | Path | None,
        side: str,
        dtype: torch.dtype = torch.float32,
        procedural: str | None = None,
    ) -> HandModel:
        """The ``side`` hand of a MANO folder (``None``: the procedural hand of resolution
        ``procedural``, None: the default)."""
        if side not in ("right", "left"):
            raise ParameterError(f"hand side must be 'right' or 'left', got {side!r}")
        return cls(load_mano_folder(mano_dir, procedural)[side], dtype=dtype)

    @property
    def num_vertices(self) -> int:
        return int(self.skinning_weights.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.skinning_weights.dtype

    @property
    def device(self) -> torch.device:
        return self.skinning_weights.device

    def _check_betas(self, betas: torch.Tensor, where: str) -> torch.Tensor:
        if not isinstance(betas, torch.Tensor) or betas.ndim != 2 or betas.shape[1] != NUM_BETAS:
            shape = tuple(betas.shape) if isinstance(betas, torch.Tensor) else type(betas).__name__
            raise ParameterError(
                f"{where}: MANO 'betas' has shape {shape}, expected (B, {NUM_BETAS})"
            )
        if not bool(torch.isfinite(betas).all()):
            raise ParameterError(f"{where}: MANO 'betas' contains NaN or inf")
        return betas.to(device=self.device, dtype=self.dtype)

    def canonical_vertices(self, betas: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) vertices of the shaped hand in the canonical flat pose, from (B, 10) betas."""
        betas = self._check_betas(betas, f"{self.side} HandModel.canonical_vertices")
        return self.mano.v_template + blend_shapes(betas, self.mano.shapedirs)

    def forward(self, params: ManoParams) -> HandOutput:
        """Pose the hand. ``params`` is validated first (ParameterError on bad shapes/NaN)."""
        params = params.validate(f"{self.side} HandModel.forward").to(self.device, self.dtype)
        batch = len(params)
        output = self.mano(
            betas=params.betas,
            global_orient=params.global_orient,
            hand_pose=params.hand_pose,
            transl=params.transl,
        )

        # Bone transforms as smplx's lbs() builds them: rest joints of the shaped hand,
        # then the kinematic chain of the absolute rotations (mean pose added back).
        canonical = self.mano.v_template + blend_shapes(params.betas, self.mano.shapedirs)
        rest_joints = torch.einsum("jv,bvc->bjc", self.mano.J_regressor, canonical)
        full_pose = torch.cat([params.global_orient, params.hand_pose], dim=1) + self.mano.pose_mean
        rot_mats = batch_rodrigues(full_pose.reshape(-1, 3)).reshape(batch, NUM_JOINTS, 3, 3)
        _, transforms = batch_rigid_transform(rot_mats, rest_joints, self.parents, dtype=self.dtype)
        translation = torch.zeros_like(transforms)
        translation[:, :, :3, 3] = params.transl[:, None, :]
        bone_transforms = transforms + translation

        tips = output.vertices[:, self.fingertip_vertex_ids]
        keypoints = torch.cat([output.joints, tips], dim=1)[:, self._keypoint_rows]
        return HandOutput(
            vertices=output.vertices,
            joints=output.joints,
            keypoints=keypoints,
            bone_transforms=bone_transforms,
            canonical_vertices=canonical,
        )
