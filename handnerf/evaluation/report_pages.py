"""Markdown and HTML pages of an evaluation report (see :mod:`handnerf.evaluation.report`).

Both pages state, before any number, the protocol's region, formula, LPIPS network and
LPIPS input range, and show the protocol's numbers next to the inside-mask numbers (and
the protocol's extras: LiveHand's LPIPS x1000, XHand's code-compatible PSNR), so that a
reader can place a result in any paper's table without guessing how it was measured.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Fixed scale of the error heat-map (mean absolute RGB error), so that heat-maps of
# different views compare at a glance.
ERROR_MAP_MAX = 0.25
N_EXTREME_VIEWS = 3

#: The hands of a two-hand report, each scored inside its own visible mask.
HAND_SIDES = ("right", "left")
MASK_KINDS = tuple(f"{side}_mask" for side in HAND_SIDES)

#: The image metrics, each measured in several regions: (field, label, digits).
_METRICS: tuple[tuple[str, str, int], ...] = (
    ("psnr", "PSNR (dB)", 2),
    ("ssim", "SSIM", 4),
    ("lpips", "LPIPS", 4),
)


def _in_region(
    prefix: str, region: str, metrics: tuple[tuple[str, str, int], ...] = _METRICS
) -> tuple[tuple[str, str, int], ...]:
    """The columns of ``metrics`` in one region: fields ``prefix + field``, labels
    ``"label, region"``."""
    return tuple((prefix + key, f"{label}, {region}", digits) for key, label, digits in metrics)


#: Columns of the metric tables: (field of a row or aggregate, label, digits). Columns
#: whose field no row carries (a protocol's extras) are left out.
METRIC_COLUMNS: tuple[tuple[str, str, int], ...] = (
    *_in_region("", "protocol"),
    ("lpips_scaled", "LPIPS x1000 (LiveHand's scale)", 1),
    ("psnr_xhand_code", "PSNR XHand-code-compatible (28*log10, predicted mask)", 2),
    *_in_region("mask_", "inside mask"),
    ("hole_fraction", "holes (share of eroded hand px rendered near black)", 5),
    # Per hand: PSNR and SSIM (scoring.hand_scores gives no per-hand LPIPS).
    *(
        column
        for side in HAND_SIDES
        for column in _in_region(f"{side}_", f"{side} hand's visible mask", _METRICS[:2])
    ),
)
HANDS_TEXT = (
    "both hands are rendered together (one composite); each hand is also scored inside its "
    "own visible MANO mask: the pixels of the scored hand mask where that hand is in front "
    "(disjoint, together the whole hand mask)"
)


def png_bytes(image: np.ndarray) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", image, extension=".png")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def error_heatmap(render: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 colour map of the mean absolute RGB error, 0..ERROR_MAP_MAX."""
    from matplotlib import colormaps

    error = np.abs(render.astype(np.float64) - gt.astype(np.float64)).mean(axis=2) / 255.0
    colours = colormaps["inferno"](np.clip(error / ERROR_MAP_MAX, 0.0, 1.0))[..., :3]
    return np.round(colours * 255.0).astype(np.uint8)


def fmt(value: float | None, digits: int) -> str:
    """A metric for a table: "–" for missing, "∞" for an exact match's PSNR."""
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return "∞" if value > 0 else "–"
    return f"{value:.{digits}f}"


def metric_columns(report: dict[str, Any]) -> list[tuple[str, str, int]]:
    """The :data:`METRIC_COLUMNS` this report has values (or a field) for."""
    rows = report["images"]
    return [
        column
        for column in METRIC_COLUMNS
        if column[0] in ("psnr", "ssim", "lpips") or any(column[0] in row for row in rows)
    ]


def summary_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and body of the per-set metric table (sets, then overall)."""
    columns = metric_columns(report)
    header = ["set", "images", *(label for _, label, _ in columns)]
    body = []
    for name, aggregate in [*report["sets"].items(), ("overall", report["overall"])]:
        cells = [fmt(aggregate.get(field), digits) for field, _, digits in columns]
        body.append([name, str(aggregate["n_images"]), *cells])
    return header, body


def per_image_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and body of the per-image metric table."""
    columns = metric_columns(report)
    header = ["set", "camera", "frame", *(label for _, label, _ in columns)]
    body = [
        [
            row["split"],
            row["camera"],
            str(row["frame"]),
            *(fmt(row.get(field), digits) for field, _, digits in columns),
        ]
        for row in report["images"]
    ]
    return header, body


def padding_line(report: dict[str, Any]) -> str:
    """How the protocol treats crop padding, and how many views its filters dropped."""
    text = str(report["protocol"].get("padding_text", "not recorded"))
    dropped = (report.get("run") or {}).get("dropped_views") or []
    return f"{text} ({len(dropped)} views dropped)" if dropped else text


def cameras_line(report: dict[str, Any]) -> str:
    """The cameras evaluated in each set, and the protocol's note on its camera split."""
    cameras = report.get("cameras") or {}
    text = "; ".join(f"{name}: {', '.join(ids)}" for name, ids in cameras.items()) or "none"
    note = report["protocol"].get("cameras_note")
    return f"{text} ({note})" if note else text


def description_lines(report: dict[str, Any], bold: Callable[[str], str]) -> list[str]:
    """The "how it was measured" lines both pages open with (plain text but for ``bold``)."""
    protocol = report["protocol"]
    return [
        f"protocol: {bold(protocol['name'])}: {protocol['description']}",
        f"images: {protocol['image_text']}",
        f"cameras: {cameras_line(report)}",
        f"metric region (protocol numbers): {report['region']}",
        f"inside-mask numbers: {report['inside_mask_region']}",
        f"formula: {report['formula']}",
        f"padding: {padding_line(report)}",
        f"LPIPS network: {bold(str(report['lpips_net']))}",
        f"LPIPS input range: {report['lpips_input']}",
        f"novel-pose MANO: {pose_line(report)}",
        f"created: {report['created']}",
    ]


def pose_line(report: dict[str, Any]) -> str:
    """Whether the novel poses were rendered from refined MANO fits (eval --refine-pose)."""
    refinement = (report.get("run") or {}).get("pose_refinement") or {}
    if not refinement.get("used"):
        return "as given (no refinement)"
    return (
        f"refined (eval --refine-pose: {refinement.get('frames')} frames, "
        f"{refinement.get('steps')} steps each, avatar frozen, against cameras not "
        f"evaluated); {refinement.get('masks')}"
    )


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a Markdown table."""
    return [
        f"| {' | '.join(header)} |",
        "|" + "---|" * len(header),
        *(f"| {' | '.join(cells)} |" for cells in body),
    ]


def is_two_hand(report: dict[str, Any]) -> bool:
    """Whether the report scores each hand of two-hand views inside its own mask."""
    return any(f"{side}_psnr" in row for row in report["images"] for side in HAND_SIDES)


def hands_markdown(report: dict[str, Any]) -> list[str]:
    """The ``## Each hand`` section of a two-hand report.md (per-hand masks linked)."""
    out = ["", "## Each hand", "", HANDS_TEXT + ".", ""]
    header = ["set", "camera", "frame", "both hands", *(f"{side} hand" for side in HAND_SIDES)]
    body = []
    for row in report["images"]:
        cells = [row["split"], row["camera"], str(row["frame"])]
        cells.append(f"[render]({row['render_png']})" if row.get("render_png") else "")
        for side in HAND_SIDES:
            link = f" ([mask]({row[f'{side}_mask_png']}))" if row.get(f"{side}_mask_png") else ""
            cells.append(f"{fmt(row.get(f'{side}_psnr'), 2)} dB{link}")
        body.append(cells)
    return out + markdown_table(header, body)


def markdown_page(report: dict[str, Any], has_curves: bool) -> str:
    """``report.md``."""
    out = ["# handnerf evaluation report", ""]
    out += [f"- {line}" for line in description_lines(report, lambda text: f"**{text}**")]
    out += ["", "## Metrics", "", *markdown_table(*summary_table(report))]
    if is_two_hand(report):
        out += hands_markdown(report)
    header, body = per_image_table(report)
    links = [
        f"[png]({row['render_png']})" if row.get("render_png") else "" for row in report["images"]
    ]
    body = [[*cells, link] for cells, link in zip(body, links, strict=True)]
    out += ["", "## Per image", "", *markdown_table([*header, "render"], body)]
    if has_curves:
        out += ["", "## Training curves", "", "![training curves](training_curves.png)"]
    timings = report.get("timings") or {}
    if timings:
        out += ["", "## Timings", ""]
        out += [f"- {name}: {value}" for name, value in timings.items()]
    out += ["", "## Machine", ""]
    out += [f"- {name}: {value}" for name, value in (report.get("machine") or {}).items()]
    return "\n".join(out) + "\n"


def html_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """An HTML table with every cell escaped."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"
        for cells in body
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def extreme_views_html(report: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]]) -> str:
    from handnerf.render.video import side_by_side

    with_images = [
        row
        for row in report["images"]
        if "render" in arrays.get(row["key"], {}) and "gt" in arrays.get(row["key"], {})
    ]
    if not with_images:
        return "<p>No images were saved with this report.</p>"
    # PSNR of an exact match is inf; it sorts as the best view.
    ranked = sorted(
        with_images, key=lambda row: row["psnr"] if row["psnr"] is not None else math.inf
    )
    count = min(N_EXTREME_VIEWS, math.ceil(len(ranked) / 2))
    sections = []
    for title, chosen in (("Worst views", ranked[:count]), ("Best views", ranked[::-1][:count])):
        figures = []
        for row in chosen:
            pair = arrays[row["key"]]
            triptych = side_by_side(
                side_by_side(pair["gt"], pair["render"], gap=4),
                error_heatmap(pair["render"], pair["gt"]),
                gap=4,
            )
            caption = (
                f"{row['split']} · camera {row['camera']} · frame {row['frame']} · "
                f"PSNR {fmt(row['psnr'], 2)} · SSIM {fmt(row['ssim'], 4)} · "
                f"LPIPS {fmt(row.get('lpips'), 4)}"
            )
            figures.append(
                f'<figure><img src="{data_uri(png_bytes(triptych))}" alt="{html.escape(row["key"])}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        sections.append(f"<h3>{title}</h3>" + "".join(figures))
    legend = (
        f"<p>Each row: ground truth | render | error heat-map (mean absolute RGB error, "
        f"black = 0, yellow = {ERROR_MAP_MAX:g} or more).</p>"
    )
    return legend + "".join(sections)


def hands_html(report: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]]) -> str:
    """Two-hand reports: the worst views (composite PSNR) as ground truth | render of both
    hands, then of each hand inside its own visible mask."""
    from handnerf.render.video import side_by_side

    with_masks = [
        row
        for row in report["images"]
        if all(kind in arrays.get(row["key"], {}) for kind in ("render", "gt", *MASK_KINDS))
    ]
    if not with_masks:
        return f"<p>{html.escape(HANDS_TEXT)}.</p><p>No per-hand masks were saved.</p>"
    ranked = sorted(with_masks, key=lambda row: row["psnr"] if row["psnr"] is not None else 0.0)
    figures = []
    for row in ranked[:N_EXTREME_VIEWS]:
        pair = arrays[row["key"]]
        strip = side_by_side(pair["gt"], pair["render"], gap=4)
        for side in HAND_SIDES:
            inside = (pair[f"{side}_mask"] > 127)[..., None]
            strip = side_by_side(
                strip, side_by_side(pair["gt"] * inside, pair["render"] * inside, gap=4), gap=12
            )
        caption = (
            f"{row['split']} · camera {row['camera']} · frame {row['frame']} · both hands "
            f"PSNR {fmt(row['psnr'], 2)} · "
            + " · ".join(f"{side} hand {fmt(row.get(f'{side}_psnr'), 2)} dB" for side in HAND_SIDES)
        )
        figures.append(
            f'<figure><img src="{data_uri(png_bytes(strip))}" alt="{html.escape(row["key"])} hands">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    legend = (
        f"<p>{html.escape(HANDS_TEXT)}. Each row: ground truth | render of both hands, then "
        "ground truth | render inside the right hand's mask, then inside the left hand's.</p>"
    )
    return legend + "".join(figures)


CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}img{max-width:100%;image-rendering:pixelated}
figcaption{font-size:0.9em;color:#555}pre{background:#f7f7f7;padding:1em;overflow:auto}
"""


def html_page(
    report: dict[str, Any],
    arrays: dict[str, dict[str, np.ndarray]],
    curves_png: bytes | None,
    jsonable: Callable[[Any], Any],
) -> str:
    """``report.html``: self-contained (pictures embedded as base64 PNG).

    ``jsonable`` turns the run's config and timings into plain JSON types.
    """
    marker = "\x00"  # bold spans survive escaping as markers, then become <b>
    items = "".join(
        "<li>"
        + html.escape(line).replace(marker + "(", "<b>").replace(")" + marker, "</b>")
        + "</li>"
        for line in description_lines(report, lambda text: f"{marker}({text}){marker}")
    )
    curves = (
        f'<img src="{data_uri(curves_png)}" alt="training curves">'
        if curves_png
        else "<p>No training log was given.</p>"
    )
    run = {name: report.get(name) for name in ("config", "backends", "timings", "machine")}
    hands_section = f"<h2>Each hand</h2>{hands_html(report, arrays)}" if is_two_hand(report) else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>handnerf evaluation</title>
<style>{CSS}</style></head><body>
<h1>handnerf evaluation report</h1>
<ul>{items}</ul>
<h2>Metrics</h2>{html_table(*summary_table(report))}
<h2>Worst and best views</h2>{extreme_views_html(report, arrays)}{hands_section}
<h2>Training curves</h2>{curves}
<h2>Per image</h2>{html_table(*per_image_table(report))}
<h2>Run</h2><pre>{html.escape(json.dumps(jsonable(run), indent=2))}</pre>
</body></html>
"""
