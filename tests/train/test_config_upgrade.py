"""Saved configs from before newer keys (the deformer's mesh modes, the other hand's shadows, ...)
load as they were trained."""

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


def _saved_before_other_hand(hand: str, n_directions: int) -> dict:
    """Today's config dict for ``data.hand`` without ``model.visibility.other_hand``."""
    saved = asdict(FitConfig())
    saved["data"]["hand"] = hand
    saved["model"]["visibility"]["n_directions"] = n_directions
    del saved["model"]["visibility"]["other_hand"]
    return saved


def test_two_hand_runs_with_shadows_saved_before_other_hand_read_as_each_hand_alone() -> None:
    saved = _saved_before_other_hand("both", 32)
    before = copy.deepcopy(saved)
    upgraded = upgrade_saved_config(saved)
    assert upgraded["model"]["visibility"]["other_hand"] is False
    assert saved == before
    assert config_from_dict(FitConfig, upgraded).model.visibility.other_hand is False


def test_runs_the_other_hand_key_does_not_change_read_as_todays_default() -> None:
    """One hand, or no self-shadowing: those runs trained as with other_hand=true, so they
    resume with the default (no override needed)."""
    default = FitConfig().model.visibility.other_hand
    assert default is True
    for hand, n_directions in (("right", 32), ("left", 32), ("both", 0)):
        upgraded = upgrade_saved_config(_saved_before_other_hand(hand, n_directions))
        assert upgraded["model"]["visibility"]["other_hand"] is default, (hand, n_directions)
    # Runs from before self-shadowing (no visibility at all) as well.
    saved = asdict(FitConfig())
    saved["data"]["hand"] = "both"
    del saved["model"]["visibility"]
    upgraded = upgrade_saved_config(saved)["model"]["visibility"]
    assert upgraded["n_directions"] == 0 and upgraded["other_hand"] is default


def test_a_saved_other_hand_is_kept() -> None:
    saved = asdict(FitConfig())
    saved["data"]["hand"] = "both"
    saved["model"]["visibility"]["other_hand"] = True
    assert upgrade_saved_config(saved)["model"]["visibility"]["other_hand"] is True
