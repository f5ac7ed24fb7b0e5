"""A one-capture synthetic root laid out as several subjects (captures) of its split."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from handnerf.data.interhand import InterHandCapture
from handnerf.data.stream import split_sequences
from handnerf.errors import DataError
from handnerf.synth.subjects import replicate_captures


def test_replicated_captures_read_like_the_first(tiny_capture: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(tiny_capture, root)
    replicate_captures(root, 3)
    listing = split_sequences(root, "test")
    assert list(listing) == [0, 1, 2]
    assert listing[0] == listing[2] == ["ROM03_RT_No_Occlusion", "ROM04_RT_Occlusion"]
    first = InterHandCapture(root, split="test", capture=0, seqs=["ROM04_RT_Occlusion"])
    third = InterHandCapture(root, split="test", capture=2, seqs=["ROM04_RT_Occlusion"])
    assert len(first.views) == len(third.views) > 0
    for a, b in zip(first.views, third.views, strict=True):
        assert (a.camera_id, a.frame_idx) == (b.camera_id, b.frame_idx)
        assert "Capture2" in str(b.image_path)
        np.testing.assert_array_equal(first.load_image(a), third.load_image(b))


def test_replicating_a_root_of_several_captures_is_refused(
    tiny_capture: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    shutil.copytree(tiny_capture, root)
    replicate_captures(root, 2)
    with pytest.raises(DataError, match="Capture0 only"):
        replicate_captures(root, 3)
    with pytest.raises(DataError, match="not a synthetic capture"):
        replicate_captures(tmp_path / "nothing", 2)
