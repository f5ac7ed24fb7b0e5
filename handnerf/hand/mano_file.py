"""Chumpy-free, allow-listed loading of MANO-format model files.

The MANO release (``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl``) is a Python-2 pickle whose
``shapedirs`` is a pickled *chumpy* object; chumpy does not import on modern numpy, and
a pickle can run arbitrary code when loaded. :class:`SafeManoUnpickler` therefore
resolves only an allow-list of globals: the numpy / scipy.sparse reconstruction helpers
and two chumpy classes, which it maps to small stand-ins that rebuild plain numpy arrays.
Anything else raises :class:`~handnerf.errors.UnsafePickleError` before it can run.

:func:`load_mano_file` validates and converts one file into a :class:`ManoModelData`
(plain numpy arrays) and caches the conversion as an ``.npz`` (loaded with
``allow_pickle=False``) under ``$HANDNERF_CACHE/mano`` keyed by the file's sha256.
:func:`load_mano_folder` loads both hands and applies the well-known left-hand
``shapedirs`` sign fix; ``mano_dir=None`` selects the license-free procedural hand.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import dataclasses
import hashlib
import io
import json
import pickle
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from handnerf.errors import ModelFileError, UnsafePickleError
from handnerf.files import atomic_path, cache_root

Side = Literal["right", "left"]

NUM_JOINTS = 16
NUM_BETAS = 10
NUM_POSE_BASIS = 9 * (NUM_JOINTS - 1)  # (R - I) of the 15 non-root joints
HAND_POSE_DIM = 3 * (NUM_JOINTS - 1)
MANO_NUM_VERTICES = 778
# Thumb, index, middle, ring, pinky tip vertices of the real MANO mesh, as used with
# the InterHand2.6M joint regressor.
MANO_FINGERTIP_VERTEX_IDS: tuple[int, int, int, int, int] = (745, 317, 445, 556, 673)
MANO_FILE_NAMES: dict[str, str] = {"right": "MANO_RIGHT.pkl", "left": "MANO_LEFT.pkl"}
PROCEDURAL_KEY = "handnerf_procedural"
# Bump when the layout of the cached .npz changes, so stale entries are rebuilt.
_CACHE_FORMAT = 1


@dataclass(frozen=True, eq=False)
class ManoModelData:
    """One hand of a MANO-format model as plain numpy arrays.

    ``V`` vertices, ``F`` faces, 16 joints (0 wrist, 1-3 index, 4-6 middle, 7-9 pinky,
    10-12 ring, 13-15 thumb). Lengths are metres.
    """

    side: Side
    v_template: np.ndarray  # (V, 3) float64, flat-pose template mesh
    faces: np.ndarray  # (F, 3) int64
    weights: np.ndarray  # (V, 16) float64 skinning weights, rows sum to 1
    J_regressor: np.ndarray  # (16, V) float64 dense
    parents: np.ndarray  # (16,) int64, -1 for the root
    posedirs: np.ndarray  # (V, 3, 135) float64 pose correctives
    shapedirs: np.ndarray  # (V, 3, 10) float64 shape blend shapes
    hands_components: np.ndarray  # (45, 45) float64 pose PCA basis
    hands_mean: np.ndarray  # (45,) float64 mean finger pose (axis-angle)
    fingertip_vertex_ids: tuple[int, int, int, int, int]  # thumb, index, middle, ring, pinky
    vertex_colors: np.ndarray | None  # (V, 3) albedo in [0, 1]; procedural hand only
    procedural: dict[str, Any] | None  # generator metadata; None for real MANO
    source: Path
    sha256: str

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def is_procedural(self) -> bool:
        return self.procedural is not None

    def to_smplx_struct(self) -> types.SimpleNamespace:
        """The attributes ``smplx.MANO(data_struct=...)`` reads, under MANO's key names."""
        kintree_table = np.stack([self.parents, np.arange(NUM_JOINTS, dtype=np.int64)])
        return types.SimpleNamespace(
            v_template=self.v_template,
            f=self.faces,
            weights=self.weights,
            J_regressor=self.J_regressor,
            kintree_table=kintree_table,
            posedirs=self.posedirs,
            shapedirs=self.shapedirs,
            hands_components=self.hands_components,
            hands_mean=self.hands_mean,
        )


# --------------------------------------------------------------------------- unpickling


class _PickledChumpy:
    """Base of the chumpy stand-ins: keeps the pickled state, rebuilds a numpy value.

    Unpickling creates instances with ``cls.__new__`` (no ``__init__``), so ``state``
    only exists once ``__setstate__`` ran; ``_state`` guards the other case.
    """

    @property
    def _state(self) -> dict[str, Any]:
        return self.__dict__.get("state", {})

    def __setstate__(self, state: Any) -> None:
        # protocol-2 BUILD hands over either the __dict__ or (dict, slot dict)
        if isinstance(state, tuple) and len(state) == 2:
            merged: dict[str, Any] = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            state = merged
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"unexpected chumpy state of type {type(state).__name__}")
        self.state = {str(k): v for k, v in state.items()}

    def value(self) -> np.ndarray:
        raise NotImplementedError


class _ChumpyCh(_PickledChumpy):
    """Stand-in for ``chumpy.ch.Ch``: a wrapped array stored as ``x``."""

    def value(self) -> np.ndarray:
        if "x" not in self._state:
            raise pickle.UnpicklingError("chumpy Ch object without its 'x' array")
        return _to_plain(self._state["x"])


class _ChumpySelect(_PickledChumpy):
    """Stand-in for ``chumpy.reordering.Select``: ``a.ravel()[idxs].reshape(preferred_shape)``."""

    def value(self) -> np.ndarray:
        missing = [k for k in ("a", "idxs") if k not in self._state]
        if missing:
            raise pickle.UnpicklingError(f"chumpy Select object without {missing}")
        source = np.asarray(_to_plain(self._state["a"]))
        idxs = np.asarray(_to_plain(self._state["idxs"]), dtype=np.int64)
        selected = source.ravel()[idxs.ravel()]
        shape = self._state.get("preferred_shape")
        if shape is None:
            shape = idxs.shape
        return selected.reshape(tuple(int(s) for s in np.asarray(shape).ravel()))


class _PickledCsc:
    """Stand-in for a pickled ``scipy.sparse`` CSC matrix (any scipy version's layout)."""

    @property
    def _state(self) -> dict[str, Any]:
        return self.__dict__.get("state", {})

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("unexpected scipy.sparse state")
        self.state = {str(k): v for k, v in state.items()}

    def value(self) -> np.ndarray:
        import scipy.sparse

        shape = self._state.get("_shape", self._state.get("shape"))
        missing = [k for k in ("data", "indices", "indptr") if k not in self._state]
        if shape is None or missing:
            raise pickle.UnpicklingError(f"scipy.sparse matrix without {missing or ['shape']}")
        matrix = scipy.sparse.csc_matrix(
            (self._state["data"], self._state["indices"], self._state["indptr"]),
            shape=tuple(int(s) for s in shape),
        )
        return np.asarray(matrix.toarray())


def _safe_reconstructor(cls: type, base: type, state: Any) -> Any:
    """``copyreg._reconstructor`` limited to the stand-in classes (protocol 0/1 pickles)."""
    if cls not in (_ChumpyCh, _ChumpySelect, _PickledCsc) or base is not object:
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r} from {base!r}")
    return cls.__new__(cls)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` restricted to the text codecs pickle itself uses."""
    if codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8", "ascii"):
        raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
    return codecs.encode(text, encoding)


def _numpy_reconstruction_globals() -> dict[str, Any]:
    # Take the functions from numpy's own reducers so the names resolve on numpy 1 and 2.
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce__()[0]
    allowed: dict[str, Any] = {}
    for core in ("numpy.core", "numpy._core"):
        allowed[f"{core}.multiarray._reconstruct"] = reconstruct
        allowed[f"{core}.multiarray.scalar"] = scalar
        allowed[f"{core}.numeric._frombuffer"] = frombuffer
    allowed["numpy.ndarray"] = np.ndarray
    allowed["numpy.dtype"] = np.dtype
    return allowed


def _allowed_globals() -> dict[str, Any]:
    allowed = _numpy_reconstruction_globals()
    allowed["chumpy.ch.Ch"] = _ChumpyCh
    allowed["chumpy.Ch"] = _ChumpyCh
    allowed["chumpy.reordering.Select"] = _ChumpySelect
    for module in ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse"):
        allowed[f"{module}.csc_matrix"] = _PickledCsc
        allowed[f"{module}.csc_array"] = _PickledCsc
    allowed["copyreg._reconstructor"] = _safe_reconstructor
    allowed["builtins.object"] = object
    # plain containers chumpy keeps in its objects' state; constructing them runs no code
    allowed["builtins.set"] = set
    allowed["builtins.frozenset"] = frozenset
    allowed["builtins.slice"] = slice
    # Python 3 pickles bytes at protocol < 3 as _codecs.encode(text, 'latin1').
    allowed["_codecs.encode"] = _latin1_encode
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class SafeManoUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a MANO-format file needs.

    Chumpy classes become stand-ins (see :func:`_to_plain`), scipy CSC matrices become a
    stand-in holding their arrays, numpy arrays are rebuilt by numpy's own helpers.
    Any other global raises :class:`UnsafePickleError` naming the file and the global.
    """

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, source: Path | str) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 spellings (copy_reg, __builtin__) map to their Python 3 names first.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = _ALLOWED_GLOBALS.get(f"{module}.{name}")
        if found is None:
            raise UnsafePickleError(
                f"{self.source}: refusing to load global '{module}.{name}'; a MANO file "
                "only needs numpy, scipy.sparse and chumpy arrays, so this file may try "
                "to run code"
            )
        return found


def _to_plain(value: Any) -> Any:
    """Replace the stand-ins (recursively, in containers) by plain numpy arrays."""
    if isinstance(value, (_PickledChumpy, _PickledCsc)):
        return value.value()
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_plain(v) for v in value)
    return value


def _unpickle(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        loaded = SafeManoUnpickler(io.BytesIO(raw), path).load()
        loaded = _to_plain(loaded)
    except UnsafePickleError:
        raise
    except Exception as exc:  # a broken pickle raises almost any exception type
        raise ModelFileError(
            f"{path}: not a readable MANO-format pickle ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(loaded, dict):
        raise ModelFileError(
            f"{path}: a MANO file holds a dict of arrays, found {type(loaded).__name__}"
        )
    return {str(k): v for k, v in loaded.items()}


# --------------------------------------------------------------------------- validation


def _array(
    data: dict[str, Any],
    key: str,
    path: Path,
    shape: tuple[int | None, ...],
    dtype: type = np.float64,
) -> np.ndarray:
    """``data[key]`` as a finite array of ``shape`` (None = any size) or ModelFileError."""
    if key not in data:
        raise ModelFileError(f"{path}: missing key '{key}' (keys present: {sorted(data)})")
    try:
        value = np.asarray(data[key])
        if value.dtype == object:
            raise TypeError("object array")
        value = value.astype(dtype)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: key '{key}' is not a numeric array ({exc})") from exc
    if value.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(value.shape, shape, strict=True)
    ):
        expected = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ModelFileError(f"{path}: key '{key}' has shape {value.shape}, expected {expected}")
    if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
        raise ModelFileError(f"{path}: key '{key}' contains NaN or inf")
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, Path)):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in the procedural metadata")


def _normalise(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """Validated plain arrays under MANO's key names (also the cache's layout)."""
    v_template = _array(data, "v_template", path, (None, 3))
    num_vertices = v_template.shape[0]
    faces = _array(data, "f", path, (None, 3), np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= num_vertices):
        raise ModelFileError(f"{path}: key 'f' indexes vertices outside 0..{num_vertices - 1}")
    out: dict[str, Any] = {
        "v_template": v_template,
        "f": faces,
        "weights": _array(data, "weights", path, (num_vertices, NUM_JOINTS)),
        "J_regressor": _array(data, "J_regressor", path, (NUM_JOINTS, num_vertices)),
        "posedirs": _array(data, "posedirs", path, (num_vertices, 3, NUM_POSE_BASIS)),
        "hands_components": _array(data, "hands_components", path, (HAND_POSE_DIM, HAND_POSE_DIM)),
        "hands_mean": _array(data, "hands_mean", path, (HAND_POSE_DIM,)),
    }
    shapedirs = _array(data, "shapedirs", path, (num_vertices, 3, None))
    if shapedirs.shape[2] < NUM_BETAS:
        raise ModelFileError(
            f"{path}: key 'shapedirs' has shape {shapedirs.shape}, expected (V, 3, >={NUM_BETAS})"
        )
    out["shapedirs"] = np.ascontiguousarray(shapedirs[:, :, :NUM_BETAS])

    # float64 holds both MANO's uint32 2**32 - 1 root marker and our -1
    kintree = _array(data, "kintree_table", path, (2, NUM_JOINTS), np.float64)
    parents = kintree[0].astype(np.int64)
    # smplx wants -1 for the root and each parent listed before its children
    parents[0] = -1
    if np.any(parents[1:] < 0) or np.any(parents[1:] >= np.arange(1, NUM_JOINTS)):
        raise ModelFileError(
            f"{path}: key 'kintree_table' does not list each joint's parent before the joint "
            f"(parents {parents.tolist()})"
        )
    out["kintree_table"] = np.stack([parents, np.arange(NUM_JOINTS, dtype=np.int64)])

    if "fingertip_vertex_ids" in data:
        tips = _array(data, "fingertip_vertex_ids", path, (5,), np.int64)
    elif num_vertices == MANO_NUM_VERTICES:
        tips = np.asarray(MANO_FINGERTIP_VERTEX_IDS, dtype=np.int64)
    else:
        raise ModelFileError(
            f"{path}: missing key 'fingertip_vertex_ids' (needed for a mesh of "
            f"{num_vertices} vertices; MANO's own ids only fit its {MANO_NUM_VERTICES})"
        )
    if tips.min() < 0 or tips.max() >= num_vertices:
        raise ModelFileError(f"{path}: key 'fingertip_vertex_ids' {tips.tolist()} out of range")
    out["fingertip_vertex_ids"] = tips

    if data.get("vertex_colors") is not None:
        colors = _array(data, "vertex_colors", path, (num_vertices, 3))
        if colors.min() < 0.0 or colors.max() > 1.0:
            raise ModelFileError(f"{path}: key 'vertex_colors' must lie in [0, 1]")
        out["vertex_colors"] = colors

    procedural = data.get(PROCEDURAL_KEY)
    if procedural is not None:
        if not isinstance(procedural, dict):
            raise ModelFileError(f"{path}: key '{PROCEDURAL_KEY}' must be a dict")
        try:
            # JSON round trip: the cached and the freshly converted model compare equal
            out["procedural_json"] = json.dumps(procedural, default=_jsonable, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: key '{PROCEDURAL_KEY}': {exc}") from exc
    return out


def _infer_side(path: Path, side: str | None, procedural_json: str | None) -> Side:
    if side is not None:
        if side not in MANO_FILE_NAMES:
            raise ModelFileError(f"{path}: side must be 'right' or 'left', got {side!r}")
        return side  # type: ignore[return-value]
    if procedural_json is not None:
        declared = json.loads(procedural_json).get("side")
        if declared in MANO_FILE_NAMES:
            return declared  # type: ignore[return-value]
    stem = path.stem.lower()
    if "right" in stem and "left" not in stem:
        return "right"
    if "left" in stem and "right" not in stem:
        return "left"
    raise ModelFileError(f"{path}: cannot tell the hand side from the file name; pass side=")


def _build(arrays: dict[str, Any], path: Path, sha256: str, side: Side) -> ManoModelData:
    procedural_json = arrays.get("procedural_json")
    return ManoModelData(
        side=side,
        v_template=arrays["v_template"],
        faces=arrays["f"],
        weights=arrays["weights"],
        J_regressor=arrays["J_regressor"],
        parents=arrays["kintree_table"][0].copy(),
        posedirs=arrays["posedirs"],
        shapedirs=arrays["shapedirs"],
        hands_components=arrays["hands_components"],
        hands_mean=arrays["hands_mean"],
        fingertip_vertex_ids=tuple(int(i) for i in arrays["fingertip_vertex_ids"]),  # type: ignore[arg-type]
        vertex_colors=arrays.get("vertex_colors"),
        procedural=None if procedural_json is None else json.loads(str(procedural_json)),
        source=path,
        sha256=sha256,
    )


# --------------------------------------------------------------------------- cache


def _cache_path(sha256: str) -> Path:
    return cache_root() / "mano" / f"{sha256}-v{_CACHE_FORMAT}.npz"


def _read_cache(cache_file: Path, path: Path) -> dict[str, Any] | None:
    """The cached arrays, or None when absent or unreadable (it is then rebuilt)."""
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as npz:
            stored = {key: npz[key] for key in npz.files}
        arrays = _normalise(stored, cache_file)
        if "procedural_json" in stored:
            arrays["procedural_json"] = str(stored["procedural_json"])
            json.loads(arrays["procedural_json"])
        return arrays
    except Exception:  # any corruption: fall back to converting the source again
        return None


def _write_cache(cache_file: Path, arrays: dict[str, Any]) -> None:
    try:
        to_store = dict(arrays)
        if "procedural_json" in to_store:
            to_store["procedural_json"] = np.array(to_store["procedural_json"])
        with atomic_path(cache_file) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **to_store)  # atomic: readers never see half a file
    except OSError:
        pass  # a read-only cache only costs speed


# --------------------------------------------------------------------------- public loaders


def load_mano_file(path: str | Path, side: str | None = None) -> ManoModelData:
    """Load one MANO-format pickle as plain arrays, through the sha256-keyed cache.

    ``side`` defaults to the procedural metadata's ``side`` or the file name
    (``MANO_RIGHT`` / ``MANO_LEFT``). The left-hand shapedirs fix is *not* applied here
    (it needs both hands): use :func:`load_mano_folder`.

    Raises:
        ModelFileError: the file is missing, not a pickle, truncated, lacks a key or
            holds an array of the wrong shape (the message names file and key).
        UnsafePickleError: the pickle asks for a global outside the allow-list.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"{path}: MANO model file not found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read MANO model file ({exc})") from exc
    sha256 = hashlib.sha256(raw).hexdigest()
    cache_file = _cache_path(sha256)
    arrays = _read_cache(cache_file, path)
    if arrays is None:
        arrays = _normalise(_unpickle(raw, path), path)
        _write_cache(cache_file, arrays)
    return _build(arrays, path, sha256, _infer_side(path, side, arrays.get("procedural_json")))


def fix_left_shapedirs(left: ManoModelData, right: ManoModelData) -> ManoModelData:
    """Flip the sign of ``left.shapedirs[:, 0, :]`` if it has MANO's released-file bug.

    The released MANO_LEFT has the x component of its shape blend shapes equal to the
    right hand's instead of mirrored; every InterHand2.6M loader applies this test.
    """
    if left.shapedirs.shape != right.shapedirs.shape:
        return left  # different meshes cannot share MANO's bug
    if np.abs(left.shapedirs[:, 0, :] - right.shapedirs[:, 0, :]).sum() >= 1:
        return left
    shapedirs = left.shapedirs.copy()
    shapedirs[:, 0, :] *= -1
    return dataclasses.replace(left, shapedirs=shapedirs)


def _find_model_file(folder: Path, side: str) -> Path:
    name = MANO_FILE_NAMES[side]
    # the official download unpacks to mano_v1_2/models/MANO_*.pkl
    for candidate in (folder / name, folder / "models" / name):
        if candidate.is_file():
            return candidate
    present = sorted(p.name for p in folder.iterdir())
    raise ModelFileError(
        f"{folder}: no {name} (looked in the folder and its models/ subfolder); "
        f"the folder holds: {', '.join(present) if present else '(nothing)'}"
    )


def load_mano_folder(
    mano_dir: str | Path | None, procedural: str | None = None
) -> dict[str, ManoModelData]:
    """Both hands of a MANO-format model folder, keyed ``"right"`` and ``"left"``.

    ``mano_dir=None`` selects the license-free procedural hand of resolution ``procedural``
    (``"mano"`` or ``"dense"``; None: the default, ``"mano"``). The left-hand shapedirs
    fix (:func:`fix_left_shapedirs`) is applied.

    Raises:
        ModelFileError: the folder or one of ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` is
            missing (the message lists what the folder holds), or a file is malformed.
    """
    if mano_dir is None:
        from handnerf.hand.procedural import DEFAULT_RESOLUTION, procedural_mano_dir

        folder = Path(procedural_mano_dir(resolution=procedural or DEFAULT_RESOLUTION))
    else:
        folder = Path(mano_dir).expanduser()
    if not folder.is_dir():
        raise ModelFileError(
            f"{folder}: MANO folder not found (expected a folder with MANO_RIGHT.pkl and "
            "MANO_LEFT.pkl)"
        )
    right = load_mano_file(_find_model_file(folder, "right"), side="right")
    left = load_mano_file(_find_model_file(folder, "left"), side="left")
    return {"right": right, "left": fix_left_shapedirs(left, right)}
