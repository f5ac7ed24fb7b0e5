"""Loading MANO-format pickles: chumpy-free, allow-listed, validated, cached."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from handnerf.errors import ModelFileError, UnsafePickleError
from handnerf.hand import mano_file
from handnerf.hand.mano_file import (
    MANO_FINGERTIP_VERTEX_IDS,
    fix_left_shapedirs,
    load_mano_file,
    load_mano_folder,
)


def _assert_matches_source(model: mano_file.ManoModelData, source: dict[str, Any]) -> None:
    np.testing.assert_allclose(model.v_template, source["v_template"])
    np.testing.assert_array_equal(model.faces, source["f"].astype(np.int64))
    np.testing.assert_allclose(model.weights, source["weights"])
    np.testing.assert_allclose(model.J_regressor, source["J_regressor"].toarray())
    np.testing.assert_allclose(model.posedirs, source["posedirs"])
    np.testing.assert_allclose(model.shapedirs, source["shapedirs"])
    np.testing.assert_allclose(model.hands_components, source["hands_components"])
    np.testing.assert_allclose(model.hands_mean, source["hands_mean"])
    assert model.parents.tolist() == [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
    assert model.fingertip_vertex_ids == tuple(int(i) for i in source["fingertip_vertex_ids"])


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_plain_pickle_loads_as_plain_arrays(tmp_path, toy_right, mano_tools, protocol):
    path = mano_tools.write(tmp_path / "MANO_RIGHT.pkl", toy_right, protocol=protocol)
    model = load_mano_file(path)
    assert model.side == "right"
    _assert_matches_source(model, toy_right)
    assert model.v_template.dtype == np.float64 and model.faces.dtype == np.int64
    assert model.parents.dtype == np.int64 and isinstance(model.J_regressor, np.ndarray)
    assert model.procedural is None and model.vertex_colors is None
    assert model.source == path and len(model.sha256) == 64


@pytest.mark.parametrize("spelling", ["python2", "python3"])
def test_copyreg_and_builtins_in_both_spellings(tmp_path, toy_right, mano_tools, spelling):
    """The released files were written by Python 2 (copy_reg, __builtin__ names)."""
    path = mano_tools.write(tmp_path / "MANO_RIGHT.pkl", toy_right, protocol=0)
    raw = path.read_bytes()
    assert b"ccopy_reg\n_reconstructor" in raw and b"c__builtin__\nobject" in raw
    if spelling == "python3":
        raw = raw.replace(b"ccopy_reg\n", b"ccopyreg\n").replace(b"c__builtin__\n", b"cbuiltins\n")
        path.write_bytes(raw)
    _assert_matches_source(load_mano_file(path), toy_right)


def test_chumpy_shapedirs_load_without_chumpy(tmp_path, toy_right, mano_tools):
    path = mano_tools.write(tmp_path / "MANO_LEFT.pkl", toy_right, chumpy_shapedirs=True)
    assert b"chumpy.reordering" in path.read_bytes()  # really references chumpy classes
    model = load_mano_file(path)
    assert model.side == "left"
    # the Select keeps the first 10 of the 20 wrapped components
    np.testing.assert_allclose(model.shapedirs, toy_right["shapedirs"])
    assert model.shapedirs.shape == (toy_right["v_template"].shape[0], 3, 10)
    assert "chumpy" not in sys.modules


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


class _Evaluates:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (eval, ("__import__('os').getcwd()",))


def test_malicious_pickle_is_refused_before_running(tmp_path, toy_right):
    sentinel = tmp_path / "pwned"
    data = dict(toy_right)
    data["J_regressor"] = data["J_regressor"].toarray()
    data["bs_style"] = _RunsShell(f"touch {sentinel}")
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(UnsafePickleError) as info:
        load_mano_file(path)
    assert not sentinel.exists()
    assert str(path) in str(info.value) and "system" in str(info.value)


def test_builtin_eval_is_refused(tmp_path):
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps({"v_template": _Evaluates()}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        load_mano_file(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a pickle at all", b"\x80\x02}q\x00(X\x0a\x00\x00\x00v_template"],
    ids=["empty", "text", "garbage-pickle"],
)
def test_non_pickle_is_a_model_file_error(tmp_path, content):
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=r"MANO_RIGHT\.pkl"):
        load_mano_file(path)


def test_truncated_pickle_is_a_model_file_error(tmp_path, toy_right, mano_tools):
    path = mano_tools.write(tmp_path / "MANO_RIGHT.pkl", toy_right, chumpy_shapedirs=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="not a readable MANO-format pickle"):
        load_mano_file(path)


def test_non_dict_pickle_is_refused(tmp_path):
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps([np.zeros(3)], protocol=2))
    with pytest.raises(ModelFileError, match="dict of arrays"):
        load_mano_file(path)


def test_missing_file_is_a_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_mano_file(tmp_path / "MANO_RIGHT.pkl")


@pytest.mark.parametrize("key", ["weights", "J_regressor", "posedirs", "kintree_table", "f"])
def test_missing_key_names_file_and_key(tmp_path, toy_right, mano_tools, key):
    data = dict(toy_right)
    del data[key]
    path = mano_tools.write(tmp_path / "MANO_RIGHT.pkl", data)
    with pytest.raises(ModelFileError) as info:
        load_mano_file(path)
    assert str(path) in str(info.value)
    assert f"'{key}'" in str(info.value)


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("posedirs", lambda d: d["posedirs"][:, :, :100]),
        ("weights", lambda d: d["weights"][:, :15]),
        ("hands_mean", lambda d: d["hands_mean"][:44]),
        ("shapedirs", lambda d: d["shapedirs"][:, :, :5]),
        ("v_template", lambda d: np.full_like(d["v_template"], np.nan)),
        ("f", lambda d: d["f"] + 10_000),
    ],
)
def test_wrong_shape_or_value_names_file_and_key(tmp_path, toy_right, mano_tools, key, bad):
    data = dict(toy_right)
    data[key] = bad(toy_right)
    path = mano_tools.write(tmp_path / "MANO_RIGHT.pkl", data)
    with pytest.raises(ModelFileError) as info:
        load_mano_file(path)
    assert str(path) in str(info.value) and f"'{key}'" in str(info.value)


def test_mesh_of_other_size_needs_fingertip_ids(tmp_path, toy_right, mano_tools):
    data = dict(toy_right)
    del data["fingertip_vertex_ids"]
    path = mano_tools.write(tmp_path / "MANO_RIGHT.pkl", data)
    with pytest.raises(ModelFileError, match="fingertip_vertex_ids"):
        load_mano_file(path)


def test_mano_sized_mesh_gets_interhand_fingertips(tmp_path, mano_tools):
    rng = np.random.default_rng(3)
    data = mano_tools.make()
    del data["fingertip_vertex_ids"]
    # pad the toy mesh to MANO's 778 vertices; the padding hangs on the wrist
    extra = 778 - data["v_template"].shape[0]
    data["v_template"] = np.concatenate([data["v_template"], rng.normal(0, 0.01, (extra, 3))])
    weights = np.zeros((extra, 16))
    weights[:, 0] = 1.0
    data["weights"] = np.concatenate([data["weights"], weights])
    regressor = data["J_regressor"].toarray()
    data["J_regressor"] = np.concatenate([regressor, np.zeros((16, extra))], axis=1)
    for key in ("posedirs", "shapedirs"):
        data[key] = np.concatenate([data[key], np.zeros((extra, *data[key].shape[1:]))])
    model = load_mano_file(mano_tools.write(tmp_path / "MANO_RIGHT.pkl", data))
    assert model.fingertip_vertex_ids == MANO_FINGERTIP_VERTEX_IDS


def test_side_from_argument_or_error(tmp_path, toy_right, mano_tools):
    path = mano_tools.write(tmp_path / "hand.pkl", toy_right)
    with pytest.raises(ModelFileError, match="side"):
        load_mano_file(path)
    assert load_mano_file(path, side="left").side == "left"
    with pytest.raises(ModelFileError, match="side"):
        load_mano_file(path, side="middle")


def test_cache_is_written_and_used(tmp_path, toy_right, mano_tools, isolated_cache, monkeypatch):
    path = mano_tools.write(tmp_path / "MANO_RIGHT.pkl", toy_right, chumpy_shapedirs=True)
    first = load_mano_file(path)
    entries = list((isolated_cache / "mano").glob("*.npz"))
    assert len(entries) == 1 and entries[0].name.startswith(first.sha256)

    def must_not_unpickle(raw: bytes, source: Path) -> dict[str, Any]:
        raise AssertionError("the cached conversion should have been used")

    monkeypatch.setattr(mano_file, "_unpickle", must_not_unpickle)
    second = load_mano_file(path)
    _assert_matches_source(second, toy_right)
    assert second.sha256 == first.sha256


def test_cache_is_keyed_by_content(tmp_path, toy_right, mano_tools, isolated_cache):
    path = mano_tools.write(tmp_path / "MANO_RIGHT.pkl", toy_right)
    before = load_mano_file(path)
    changed = dict(toy_right)
    changed["v_template"] = toy_right["v_template"] + 0.001
    mano_tools.write(path, changed)
    after = load_mano_file(path)
    assert after.sha256 != before.sha256
    np.testing.assert_allclose(after.v_template, changed["v_template"])
    assert len(list((isolated_cache / "mano").glob("*.npz"))) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong-shape"])
def test_corrupt_cache_is_rebuilt(tmp_path, toy_right, mano_tools, isolated_cache, damage):
    path = mano_tools.write(tmp_path / "MANO_RIGHT.pkl", toy_right)
    load_mano_file(path)
    (entry,) = (isolated_cache / "mano").glob("*.npz")
    if damage == "garbage":
        entry.write_bytes(b"not an npz")
    elif damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:200])
    else:
        with np.load(entry) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["posedirs"] = arrays["posedirs"][:, :, :3]
        np.savez(entry, **arrays)
    model = load_mano_file(path)
    _assert_matches_source(model, toy_right)
    with np.load(entry, allow_pickle=False) as npz:  # rewritten in good order
        assert npz["posedirs"].shape[2] == 135


def test_procedural_extras_survive_the_cache(tmp_path, toy_right, mano_tools, monkeypatch):
    data = dict(toy_right)
    num_vertices = data["v_template"].shape[0]
    data["vertex_colors"] = np.random.default_rng(0).uniform(0, 1, (num_vertices, 3))
    data["handnerf_procedural"] = {"generator": "toy", "version": np.int64(2), "side": "left"}
    path = mano_tools.write(tmp_path / "hand.pkl", data)
    fresh = load_mano_file(path)
    monkeypatch.setattr(mano_file, "_unpickle", None)  # any reconversion would fail
    cached = load_mano_file(path)
    for model in (fresh, cached):
        assert model.side == "left"  # declared by the procedural metadata
        assert model.procedural == {"generator": "toy", "version": 2, "side": "left"}
        np.testing.assert_allclose(model.vertex_colors, data["vertex_colors"])


def test_vertex_colors_outside_unit_range_refused(tmp_path, toy_right, mano_tools):
    data = dict(toy_right)
    data["vertex_colors"] = np.full((data["v_template"].shape[0], 3), 255.0)
    path = mano_tools.write(tmp_path / "MANO_RIGHT.pkl", data)
    with pytest.raises(ModelFileError, match="vertex_colors"):
        load_mano_file(path)


def test_to_smplx_struct_has_manos_keys(tmp_path, toy_right, mano_tools):
    model = load_mano_file(mano_tools.write(tmp_path / "MANO_RIGHT.pkl", toy_right))
    struct = model.to_smplx_struct()
    assert struct.f is model.faces and struct.J_regressor is model.J_regressor
    assert struct.kintree_table.shape == (2, 16)
    np.testing.assert_array_equal(struct.kintree_table[0], model.parents)
    for key in ("v_template", "weights", "posedirs", "shapedirs", "hands_components", "hands_mean"):
        assert getattr(struct, key) is getattr(model, key)


def test_folder_mirror_left_is_left_alone(toy_folder, toy_right):
    models = load_mano_folder(toy_folder)
    assert models["right"].side == "right" and models["left"].side == "left"
    np.testing.assert_allclose(models["left"].shapedirs[:, 0], -toy_right["shapedirs"][:, 0])
    np.testing.assert_allclose(models["left"].shapedirs[:, 1:], toy_right["shapedirs"][:, 1:])


def test_folder_buggy_left_gets_shapedirs_fix(tmp_path, toy_right, mano_tools):
    folder = tmp_path / "mano"
    folder.mkdir()
    mano_tools.write(folder / "MANO_RIGHT.pkl", toy_right, chumpy_shapedirs=True)
    mano_tools.write(folder / "MANO_LEFT.pkl", mano_tools.mirror(toy_right, buggy=True))
    raw_left = load_mano_file(folder / "MANO_LEFT.pkl")
    np.testing.assert_allclose(raw_left.shapedirs[:, 0], toy_right["shapedirs"][:, 0])
    models = load_mano_folder(folder)
    np.testing.assert_allclose(models["left"].shapedirs[:, 0], -toy_right["shapedirs"][:, 0])
    np.testing.assert_allclose(models["left"].shapedirs[:, 1:], toy_right["shapedirs"][:, 1:])
    np.testing.assert_allclose(models["right"].shapedirs, toy_right["shapedirs"])


def test_fix_left_shapedirs_is_not_applied_twice(tmp_path, toy_right, mano_tools):
    right = load_mano_file(mano_tools.write(tmp_path / "MANO_RIGHT.pkl", toy_right))
    buggy = load_mano_file(
        mano_tools.write(tmp_path / "MANO_LEFT.pkl", mano_tools.mirror(toy_right, buggy=True))
    )
    fixed = fix_left_shapedirs(buggy, right)
    assert fixed is not buggy
    assert fix_left_shapedirs(fixed, right) is fixed
    np.testing.assert_allclose(buggy.shapedirs[:, 0], right.shapedirs[:, 0])  # input untouched


def test_folder_in_models_subfolder(tmp_path, toy_right, mano_tools):
    models_dir = tmp_path / "mano_v1_2" / "models"
    models_dir.mkdir(parents=True)
    mano_tools.write(models_dir / "MANO_RIGHT.pkl", toy_right)
    mano_tools.write(models_dir / "MANO_LEFT.pkl", mano_tools.mirror(toy_right))
    assert set(load_mano_folder(tmp_path / "mano_v1_2")) == {"right", "left"}


def test_missing_folder_and_file_errors_list_contents(tmp_path, toy_right, mano_tools):
    with pytest.raises(ModelFileError, match="MANO folder not found"):
        load_mano_folder(tmp_path / "nowhere")
    folder = tmp_path / "mano"
    folder.mkdir()
    mano_tools.write(folder / "MANO_RIGHT.pkl", toy_right)
    (folder / "mano_left.pickle").write_bytes(b"")
    with pytest.raises(ModelFileError) as info:
        load_mano_folder(folder)
    message = str(info.value)
    assert "MANO_LEFT.pkl" in message and "mano_left.pickle" in message
    assert "MANO_RIGHT.pkl" in message


def test_procedural_folder_loads(procedural_folder):
    models = load_mano_folder(None)
    for side in ("right", "left"):
        model = models[side]
        assert model.side == side and model.procedural is not None
        assert (
            model.vertex_colors is not None and model.vertex_colors.shape == model.v_template.shape
        )
        assert len(model.fingertip_vertex_ids) == 5
        extent = np.ptp(model.v_template, axis=0).max()
        assert 0.08 < extent < 0.4, f"procedural {side} hand is {extent} m long"
    # its left is the mirror of its right, so the MANO left-hand fix must not fire
    np.testing.assert_allclose(
        models["left"].shapedirs[:, 0], -models["right"].shapedirs[:, 0], atol=1e-9
    )
