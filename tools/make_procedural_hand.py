"""Write the license-free procedural hand as MANO_RIGHT.pkl / MANO_LEFT.pkl.

Usage: python tools/make_procedural_hand.py --out DIR [--seed N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from handnerf.hand.procedural import write_procedural_mano_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="skin appearance seed")
    args = parser.parse_args()
    start = time.perf_counter()
    out = write_procedural_mano_dir(args.out, seed=args.seed)
    elapsed = time.perf_counter() - start
    for name in ("MANO_RIGHT.pkl", "MANO_LEFT.pkl"):
        print(f"{out / name}: {(out / name).stat().st_size / 1e6:.1f} MB")
    print(f"generated in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
