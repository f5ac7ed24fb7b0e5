"""A plan's summary: ``summary.json`` and ``summary.html`` in the output folder.

One row per entry: its selection, status (done, failed with the error, or incomplete),
PSNR/SSIM/LPIPS of each evaluation set read from its ``report.json``, the seconds each
stage took when it ran, and links (relative to the output folder) to its report and
videos. Both files are written atomically, at the end of every run of the plan.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handnerf.batch.plan import STAGES, BatchPlan
from handnerf.batch.stages import EntryPaths
from handnerf.files import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from handnerf.batch.runner import EntryOutcome

METRICS: tuple[str, ...] = ("psnr", "ssim", "lpips")


def entry_row(plan: BatchPlan, outcome: EntryOutcome) -> dict[str, Any]:
    """The summary row of one entry (see the module docstring)."""
    entry = outcome.entry
    paths = EntryPaths.of(plan, entry)
    out = Path(plan.out)
    report_json = paths.report / "report.json"
    sets: dict[str, dict[str, Any]] = {}
    protocol = None
    if "eval" in outcome.markers and report_json.is_file():
        report = json.loads(report_json.read_text())
        protocol = report.get("protocol", {}).get("name")
        for name, agg in report.get("sets", {}).items():
            sets[name] = {key: agg.get(key) for key in (*METRICS, "n_images")}
    videos = outcome.markers.get("render", {}).get("videos", {})
    fit = outcome.markers.get("fit", {})
    return {
        "name": entry.name,
        "label": entry.label,
        "split": entry.split,
        "capture": entry.capture,
        "hand": entry.hand,
        "train_seq": entry.train_seq,
        "novel_pose_seq": entry.novel_pose_seq,
        "status": outcome.status,
        "error": outcome.error,
        "failed_stage": outcome.failed_stage,
        "stages": {
            stage: {
                "state": outcome.stages.get(stage, "not run"),
                "seconds": outcome.markers.get(stage, {}).get("seconds"),
            }
            for stage in STAGES
        },
        "fit": {"step": fit.get("step"), "resumed_from": fit.get("resumed_from")},
        "protocol": protocol,
        "sets": sets,
        "links": {
            "report": _link(paths.report / "report.html", out, "eval" in outcome.markers),
            "report_json": _link(report_json, out, "eval" in outcome.markers),
            "videos": {mode: _link(Path(p), out, True) for mode, p in videos.items()},
        },
    }


def _link(path: Path, out: Path, exists: bool) -> str | None:
    if not exists:
        return None
    try:
        return Path(path).resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return str(path)


def write_summary(
    plan: BatchPlan, outcomes: Sequence[EntryOutcome], seconds: float, cluster: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``OUT/summary.json`` and ``OUT/summary.html``; returns their paths."""
    rows = [entry_row(plan, o) for o in outcomes]
    summary = {
        "plan": str(Path(plan.path).resolve()),
        "out": str(Path(plan.out).resolve()),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": seconds,
        "cluster": cluster,
        "counts": {
            status: sum(r["status"] == status for r in rows)
            for status in ("done", "failed", "incomplete")
        },
        "entries": rows,
    }
    out = Path(plan.out)
    json_path, html_path = out / "summary.json", out / "summary.html"
    atomic_write_json(json_path, summary, indent=2)
    atomic_write_text(html_path, summary_html(summary))
    return json_path, html_path


def _fmt(value: Any, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def summary_html(summary: dict[str, Any]) -> str:
    """A self-contained page of the summary: one table row per entry, errors spelt out."""
    rows = summary["entries"]
    set_names = sorted({name for row in rows for name in row["sets"]})
    head = ["entry", "status", "selection"]
    head += [f"{name} {m.upper()}" for name in set_names for m in METRICS]
    head += [f"{stage} s" for stage in STAGES] + ["links"]
    esc = html.escape
    body = []
    for row in rows:
        cells = [
            f"<td><b>{esc(row['name'])}</b></td>",
            f"<td class='{esc(row['status'])}'>{esc(row['status'])}</td>",
            f"<td>{esc(row['split'])} / Capture{row['capture']} / {esc(row['hand'])}<br>"
            f"train {esc(row['train_seq'])}<br>novel pose {esc(str(row['novel_pose_seq']))}</td>",
        ]
        for name in set_names:
            agg = row["sets"].get(name, {})
            for metric, digits in zip(METRICS, (2, 4, 4), strict=True):
                cells.append(f"<td>{_fmt(agg.get(metric), digits)}</td>")
        for stage in STAGES:
            info = row["stages"][stage]
            note = "" if info["state"] == "ran" else f" ({info['state']})"
            cells.append(f"<td>{_fmt(info['seconds'], 1)}{esc(note)}</td>")
        links = []
        if row["links"]["report"]:
            links.append(f"<a href='{esc(row['links']['report'])}'>report</a>")
        for mode, link in row["links"]["videos"].items():
            links.append(
                f"<a href='{esc(link)}'><img src='{esc(link)}' alt='{esc(mode)}' height='64'></a>"
            )
        cells.append(f"<td>{' '.join(links)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
        if row["error"]:
            body.append(
                f"<tr><td></td><td colspan='{len(head) - 1}'><pre class='error'>"
                f"{esc(str(row['failed_stage']))}: {esc(row['error'])}</pre></td></tr>"
            )
    counts = ", ".join(f"{n} {status}" for status, n in summary["counts"].items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>handnerf batch summary</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; font-size: 90%; }}
.done {{ color: #060; }} .failed {{ color: #a00; }} .incomplete {{ color: #a60; }}
pre.error {{ color: #a00; white-space: pre-wrap; margin: 0; }}
</style></head><body>
<h1>handnerf batch summary</h1>
<p>Plan {esc(summary["plan"])} &middot; {esc(counts)} &middot; {summary["seconds"]:.1f} s
&middot; {esc(summary["created"])}</p>
<table>
<tr>{"".join(f"<th>{esc(h)}</th>" for h in head)}</tr>
{chr(10).join(body)}
</table>
</body></html>
"""
