"""Config loading: choices are checked when a config loads, with the key in the error."""

from __future__ import annotations

import pytest

from handnerf.config import load_config
from handnerf.errors import ConfigError
from handnerf.train.config import FitConfig


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.background=white", "train.background"),
        ("data.hand=two", "data.hand"),
        ("data.mask_source=sam", "data.mask_source"),
        ("data.procedural_hand=fine", "data.procedural_hand"),
        ("data.split=dev", "data.split"),
        ("model.deformer.blend=linear", "model.deformer.blend"),
        ("model.deformer.near=face", "model.deformer.near"),
        ("model.deformer.backend=octree", "model.deformer.backend"),
        ("model.field.color_model=pbr", "model.field.color_model"),
        ("model.field.encoding.backend=cuda", "model.field.encoding.backend"),
        ("model.sampler.kind=uniform", "model.sampler.kind"),
        ("loss.photometric=l2", "loss.photometric"),
    ],
)
def test_a_value_outside_the_choices_names_the_key_and_the_choices(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key} must be one of .*; got '"):
        load_config(FitConfig, overrides=[override])


def test_every_choice_is_accepted() -> None:
    cfg = load_config(FitConfig, overrides=["train.background=black", "data.hand=left"])
    assert (cfg.train.background, cfg.data.hand) == ("black", "left")
    assert load_config(FitConfig, overrides=["data.hand=both"]).data.hand == "both"
    assert load_config(FitConfig).data.procedural_hand == "mano"


def test_a_yaml_file_as_overrides_gives_the_same_config(tmp_path) -> None:
    from pathlib import Path

    from handnerf.config import overrides_from_yaml

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    overrides = overrides_from_yaml(tiny)
    assert "model.field.encoding.n_levels=4" in overrides
    assert load_config(FitConfig, tiny) == load_config(FitConfig, None, overrides)
    odd = tmp_path / "odd.yaml"
    odd.write_text("data:\n  exclude_cameras: ['400002']\n  novel_pose_seq: null\n")
    cfg = load_config(FitConfig, None, overrides_from_yaml(odd))
    assert cfg.data.exclude_cameras == ["400002"] and cfg.data.novel_pose_seq is None
    with pytest.raises(ConfigError, match="config file not found"):
        overrides_from_yaml(tmp_path / "missing.yaml")


def test_an_unknown_preset_name_is_refused_with_the_known_ones_listed() -> None:
    from handnerf.evaluation.protocols import PROTOCOLS, get_protocol
    from handnerf.synth.presets import get_preset

    assert get_preset("tiny").name == "tiny"
    assert get_protocol("livehand") is PROTOCOLS["livehand"]
    with pytest.raises(
        ConfigError, match=r"^unknown synth preset 'huge'; choose one of: tiny, demo"
    ):
        get_preset("huge")
    with pytest.raises(ConfigError, match=r"^unknown evaluation protocol 'nerf'; choose one of: "):
        get_protocol("nerf")
