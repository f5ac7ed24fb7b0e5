"""Counting the places where PyTorch code waits for the device (host syncs), on any device.

On a GPU, ``torch.cuda.set_sync_debug_mode`` reports syncs; on the CPU there are none to
see, but the calls that cause them on a GPU are the same: reading a value back
(``item``, ``tolist``, ``bool``/``int``/``float`` of a tensor) and ops whose output size
depends on the data (``nonzero``, boolean-mask indexing, ``unique``, ``equal``).
:func:`count_host_syncs` counts those calls, so a test on the CPU can check that a loop
over frames or parameters no longer syncs once per item.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

_TENSOR_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero")
_TORCH_FUNCTIONS = ("nonzero", "unique", "unique_consecutive", "equal", "masked_select")


@contextmanager
def count_host_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Within the block, every call named above is counted (by name) in the yielded Counter."""
    counts: Counter[str] = Counter()

    def counting(name: str, original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return original(*args, **kwargs)

        return wrapper

    with monkeypatch.context() as patch:
        for owner, names in ((torch.Tensor, _TENSOR_METHODS), (torch, _TORCH_FUNCTIONS)):
            for name in names:
                patch.setattr(owner, name, counting(name, getattr(owner, name)))
        yield counts
