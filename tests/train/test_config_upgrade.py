"""Saved configs from before the deformer's mesh modes load as they were trained."""

from __future__ import annotations

import copy
from dataclasses import asdict

from handnerf.config import config_from_dict
from handnerf.train.config import FitConfig, upgrade_saved_config


def _saved_before_mesh_modes() -> dict:
    """Today's config dict without the deformer keys added with the mesh modes."""
    saved = asdict(FitConfig())
    del saved["model"]["deformer"]["near"]
    del saved["model"]["deformer"]["correctives"]
    return saved


def test_runs_saved_before_the_mesh_modes_read_as_nearest_vertex_without_correctives() -> None:
    saved = _saved_before_mesh_modes()
    before = copy.deepcopy(saved)
    upgraded = upgrade_saved_config(saved)
    # Filled explicitly (not left to today's defaults, which may change).
    assert upgraded["model"]["deformer"]["near"] == "vertex"
    assert upgraded["model"]["deformer"]["correctives"] is False
    assert saved == before  # the checkpoint's own dict is left alone
    cfg = config_from_dict(FitConfig, upgraded)
    assert cfg.model.deformer.near == "vertex" and cfg.model.deformer.correctives is False


def test_saved_mesh_mode_settings_are_kept() -> None:
    saved = asdict(FitConfig())
    saved["model"]["deformer"].update(blend="surface", near="mesh", correctives=True)
    upgraded = upgrade_saved_config(saved)
    assert upgraded["model"]["deformer"]["near"] == "mesh"
    assert upgraded["model"]["deformer"]["correctives"] is True


def test_runs_saved_before_the_procedural_default_changed_keep_the_dense_hand() -> None:
    saved = asdict(FitConfig())
    del saved["data"]["procedural_hand"]
    assert upgrade_saved_config(saved)["data"]["procedural_hand"] == "dense"


def test_data_derived_values_older_runs_saved_are_dropped() -> None:
    saved = asdict(FitConfig())
    saved["model"]["field"].update(n_cameras=17, n_visibility=8)
    before = copy.deepcopy(saved)
    upgraded = upgrade_saved_config(saved)
    assert "n_cameras" not in upgraded["model"]["field"]
    assert "n_visibility" not in upgraded["model"]["field"]
    assert saved == before
    config_from_dict(FitConfig, upgraded)  # loads: no unknown key left


def test_building_the_avatar_leaves_the_users_config_alone() -> None:
    import torch

    from handnerf.hand.hand_model import HandModel
    from handnerf.model.avatar import HandAvatar

    cfg = FitConfig()
    before = copy.deepcopy(asdict(cfg))
    avatar = HandAvatar(cfg.model, HandModel.from_folder(None, "right"), torch.zeros(10), 5)
    assert asdict(cfg) == before
    assert avatar.field.camera_affine is not None
    assert avatar.field.camera_affine.n_cameras == 5
