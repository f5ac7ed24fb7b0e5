"""The format marker and version every handnerf file format carries, checked on load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from handnerf.data.cache import FORMAT as CACHE_FORMAT
from handnerf.data.cache import INDEX_NAME, PreparedCache
from handnerf.errors import CheckpointError, DataError
from handnerf.train.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint, save_checkpoint


def test_a_checkpoint_of_another_version_is_refused_naming_file_and_version(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 3})
    assert load_checkpoint(path)["step"] == 3
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION + 1, "step": 3}, path)
    with pytest.raises(
        CheckpointError,
        match=rf"ckpt\.pt: handnerf checkpoint 'format_version' is {FORMAT_VERSION + 1}, "
        rf"this handnerf reads {FORMAT_VERSION}$",
    ):
        load_checkpoint(path)
    torch.save({"format": "someone-else", "step": 3}, path)
    with pytest.raises(CheckpointError, match=r"ckpt\.pt: not a handnerf checkpoint \('format'"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ([1, 2], r"not a prepared cache index \('format' is not"),
        ({"format": "other", "version": 1}, r"not a prepared cache index \('format' is not"),
        (
            {"format": CACHE_FORMAT, "version": 99},
            r"prepared cache index 'version' is 99, this handnerf reads 1; re-run 'handnerf "
            r"prepare' into a new folder",
        ),
    ],
)
def test_a_foreign_or_newer_cache_index_is_refused_naming_the_file(
    tmp_path: Path, index: object, message: str
) -> None:
    (tmp_path / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(DataError, match=rf"index\.json: {message}"):
        PreparedCache(tmp_path)
