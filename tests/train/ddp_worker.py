"""One torchrun worker for tests/train/test_distributed.py: the ``handnerf`` CLI, then a
dump of what this rank holds.

``torchrun ... tests/train/ddp_worker.py DUMP_DIR fit --data ... --out ...`` runs
``handnerf fit`` through :func:`handnerf.cli.main` exactly as ``-m handnerf`` does, keeps
the trainer it built (``Trainer.fit`` wrapped, not changed) and writes
``DUMP_DIR/rank{RANK}.pt``: the avatar's state (weights and occupancy grid), the step and
the CLI's exit status. Rank 1's grid and weights are otherwise never written anywhere.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from handnerf.cli import main
from handnerf.train.trainer import Trainer


def run(dump_dir: Path, argv: list[str]) -> int:
    kept: dict[str, Trainer] = {}
    fit = Trainer.fit

    def fit_and_keep(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        kept["trainer"] = self
        return fit(self, *args, **kwargs)

    Trainer.fit = fit_and_keep  # type: ignore[method-assign]
    status = main(argv)
    trainer = kept["trainer"]
    state = {
        "status": status,
        "step": trainer.step,
        "world_size": trainer.parallel.world_size,
        "model": {k: v.detach().cpu() for k, v in trainer.avatar.state_dict().items()},
    }
    torch.save(state, dump_dir / f"rank{os.environ['RANK']}.pt")
    return status


if __name__ == "__main__":
    raise SystemExit(run(Path(sys.argv[1]), sys.argv[2:]))
