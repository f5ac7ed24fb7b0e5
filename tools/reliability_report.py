"""The reliability harness's report: fast fault tests and ``docs/reliability.md``.

Used by ``tools/reliability.py``; separate so that each file does one job.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fast tests


def run_fast_tests(workdir: Path, env: dict[str, str]) -> tuple[list[dict[str, Any]], str]:
    """Run tests/reliability (except the kill tests, which this script is) and collect results."""
    junit = workdir / "junit.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "tests/reliability",
        "-q",
        "-p",
        "no:cacheprovider",
        "--hypothesis-show-statistics",
        f"--junitxml={junit}",
        "--deselect",
        "tests/reliability/test_interrupts.py",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=1800)
    examples = _hypothesis_examples(proc.stdout)
    docs = _test_docs()
    results = []
    if junit.is_file():
        for case in ElementTree.parse(junit).getroot().iter("testcase"):
            name = case.get("name", "")
            outcome = "passed"
            for tag in ("failure", "error", "skipped"):
                if case.find(tag) is not None:
                    outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
            base = name.split("[")[0]
            module = (case.get("classname") or "").split(".")[-1]
            results.append(
                {
                    "file": module,
                    "test": name,
                    "what": docs.get(base, base.removeprefix("test_").replace("_", " ")),
                    "examples": examples.get(name),
                    "outcome": outcome,
                    "seconds": float(case.get("time", 0.0)),
                }
            )
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    return results, tail


def _hypothesis_examples(output: str) -> dict[str, int]:
    """Examples run per property, from pytest's ``--hypothesis-show-statistics`` output."""
    counts: dict[str, int] = {}
    current = None
    for line in output.splitlines():
        header = re.match(r"^\S+::(\S+):\s*$", line)
        if header:
            current = header.group(1)
            continue
        # "60 passing, 0 failing, and 3 invalid test cases" (older: "60 passing examples, ...")
        found = re.search(r"(\d+) passing(?: examples?)?, (\d+) failing", line)
        if found and current is not None:
            counts[current] = counts.get(current, 0) + int(found.group(1)) + int(found.group(2))
    return counts


def _test_docs() -> dict[str, str]:
    docs = {}
    for path in (REPO / "tests" / "reliability").glob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                doc = ast.get_docstring(node)
                if doc:
                    docs[node.name] = doc.splitlines()[0].rstrip(".")
    return docs


# --------------------------------------------------------------------------- report

_FAULTS_TEXT = """\
## What is injected, and what must hold

| fault | how it is injected | what must hold |
|---|---|---|
| SIGTERM / SIGINT in any phase of `fit`, `eval`, `prepare`, `render` | a real `handnerf` process, held at a named progress point (`HANDNERF_HOLD_AT`) and signalled there | exit status 130 (handled from the first line of the CLI to its exit); every file left is complete or absent (atomic temp file + fsync + rename, held against signals), no temp file left; a fit stopped in training saved the step in flight |
| SIGKILL in the same phases | the same, uncatchable | every file under its final name is complete (temp files may remain and are ignored and removed by the re-run); `--resume` or a plain re-run repeats only the lost work |
| every kill | | the job then run to the end (`--resume` for fits) equals an uninterrupted run: same weights and logged losses (each step once), same report numbers, same cache files, same video frames |
| corrupt annotations | hypothesis: one JSON value replaced by garbage (wrong type, huge or NaN/inf number, unicode, path tricks), a key deleted, or the file truncated | a `HandnerfError` naming file and field, or a counted skip, or views that pass a sanity check; never a library traceback |
| corrupt MANO parameters | hypothesis over `ManoParams.from_interhand` entries | `ParameterError`, or parameters equal to the input; garbage (bools, strings, NaN, \\|x\\| > 1e3) never accepted |
| singular / reflecting / non-numeric camera rotations | hypothesis over `PinholeCamera.from_interhand` | `DataError` unless the matrix is a proper rotation |
| corrupt JPEG / PNG, wrong image size | hypothesis: truncation, flipped bytes, other sizes | `DataError` naming the file; never a truncated or mis-sized image accepted |
| unicode roots and sequence names | hypothesis over folder names | read back exactly |
| NaN / inf loss or gradient | monkeypatched loss / gradient hook in a real fit | step skipped (weights and Adam moments untouched) and counted, learning rate halved per bad step; after `train.max_bad_steps` the fit stops with `TrainingDivergedError` naming the intact last checkpoint |
| out of memory | monkeypatched allocator failure | rendering retries in smaller ray chunks (same image); training stops with a `ResourceError` naming the knobs |
| full disk (ENOSPC) | monkeypatched `os.fsync` / half-writing file handle during checkpoint, log and mask-cache writes | the previous checkpoint / cache entry still loads, no temp file left, a clear error (exit 2); `--resume` continues once space is back |
| code in untrusted files | crafted checkpoint (zip and raw pickle), MANO pickle (object array, `os.system`, `eval`), poisoned `.npz` cache | refused before anything runs (a sentinel file is never created) |

## Memory and disk knobs

- Training memory per step grows with `train.batch_rays` x `model.sampler.n_samples`
  (plus `train.lpips_patches` x `train.lpips_patch_size`^2 rays when LPIPS is on); an
  allocation failure stops the fit with a `ResourceError` that names these knobs, with the
  last checkpoint intact.
- Rendering (`handnerf render --chunk`, `handnerf eval --chunk`, validation) works in ray
  chunks; a chunk that does not fit is retried in halves down to 256 rays.
- `train.checkpoint_every` bounds the work a SIGKILL can lose; SIGTERM/SIGINT lose none.
- A checkpoint write needs free space for one extra checkpoint (temp file + rename).
"""


def write_report(
    path: Path,
    trials: list[dict[str, Any]],
    tests: list[dict[str, Any]] | None,
    tests_tail: str,
    meta: dict[str, Any],
) -> None:
    """``docs/reliability.md`` from the trial records (``asdict`` of the harness's Trials)."""
    kills = [k | {"job": t["job"]} for t in trials for k in t["kills"]]
    planned = sum(len(t["plan"]) for t in trials)
    survived = [k for k in kills if k["ok"]]
    late = sum(t["missed"] for t in trials)
    lines = [
        "# Reliability: faults tried and their outcomes",
        "",
        "Generated by `tools/reliability.py`; rerun it with",
        "`.venv/bin/python tools/reliability.py` (about 10 minutes on 2 CPU cores) to refresh",
        "this page. The fast part (`tests/reliability`, including the 3-kill `--quick` run of",
        "this harness) runs in `make test`.",
        "",
        f"Run: {meta['date']} on {meta['machine']}, seed {meta['seed']}, "
        f"{'quick' if meta['quick'] else 'full'} mode, {meta['workers']} trials at a time, "
        f"{meta['wall_seconds'] / 60:.1f} min wall; fit of {meta['steps']} steps.",
        "",
        "## Interrupted jobs",
        "",
        "Each kill is aimed at a named phase: the job runs with `HANDNERF_HOLD_AT` set to a "
        "progress point (see `handnerf/interrupts.py`), waits there, and is signalled there, so "
        "a kill lands in the same phase on a fast machine or a slow one. A trial chains its "
        "kills through one job's life (resuming between them), then runs the job to the end "
        "and compares it with an uninterrupted run.",
        "",
        f"**{len(kills)} kills delivered of {planned} planned, {len(survived)} survived; "
        f"{late} late or missed.** {sum(t['survived'] for t in trials)} of {len(trials)} "
        "trials ended equal to an uninterrupted run.",
        "",
        "| job | phase | progress point | kills | SIGTERM | SIGINT | SIGKILL | exit codes | survived |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for kill in kills:
        rows.setdefault((kill["job"], kill["phase"]), []).append(kill)
    for (job, phase), group in rows.items():
        signals = Counter(k["signal"] for k in group)
        codes = Counter(k["exit_code"] for k in group)
        points = sorted({re.sub(r"=\d+$", "=N", k["point"]) for k in group})
        lines.append(
            f"| {job} | {phase} | {', '.join(f'`{p}`' for p in points)} | {len(group)} | "
            f"{signals.get('SIGTERM', 0)} | {signals.get('SIGINT', 0)} | "
            f"{signals.get('SIGKILL', 0)} | "
            + ", ".join(f"{c} x{n}" for c, n in sorted(codes.items()))
            + f" | {sum(k['ok'] for k in group)} / {len(group)} |"
        )
    diffs = [t["max_weight_diff"] for t in trials if t.get("max_weight_diff") is not None]
    if diffs:
        lines += [
            "",
            f"Largest weight difference between a resumed fit and the uninterrupted one: "
            f"{max(diffs):.2e} (tolerance {meta['weight_tolerance']:g}); every step logged once.",
        ]
    failed = [t for t in trials if not t["survived"]]
    lines += ["", "Failures:" if failed else "No failures.", ""]
    for t in failed:
        problems = "; ".join(
            [t["problem"]] + [f"{k['phase']}: {k['problem']}" for k in t["kills"] if k["problem"]]
        )
        lines.append(f"- {t['job']} trial {t['name']}: {problems}")
    lines += ["", "## Fast fault tests (`tests/reliability`)", ""]
    if tests is None:
        lines.append("Not run in this mode.")
    else:
        lines += [
            f"`pytest tests/reliability`: {tests_tail}",
            "",
            "| file | fault tried | hypothesis examples | outcome |",
            "|---|---|---|---|",
        ]
        for row in tests:
            examples = "" if row["examples"] is None else str(row["examples"])
            what = row["what"] + (
                "" if "[" not in row["test"] else f" ({row['test'].split('[', 1)[1][:-1]})"
            )
            lines.append(f"| {row['file']} | {what} | {examples} | {row['outcome']} |")
    lines += ["", _FAULTS_TEXT]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
