"""Evaluation report: ``report.json``, ``report.md`` and a self-contained ``report.html``.

Every render, its ground truth and mask are saved as PNG under ``images/`` next to the
report (named by set, camera and frame) so that anyone can recompute the metrics. The
HTML embeds its pictures as base64 PNG: one file to open or mail. The pages themselves
are laid out in :mod:`handnerf.evaluation.report_pages`.

Rows carry the protocol's ``psnr``/``ssim``/``lpips`` and, optionally, the inside-mask
numbers (``mask_psnr``/``mask_ssim``/``mask_lpips``), the protocol's extras
(``lpips_scaled``, ``psnr_xhand_code``) and, for two-hand runs, each hand's numbers inside
its own visible mask (``right_psnr``/``right_ssim``/``left_psnr``/``left_ssim``, with the
masks saved as ``*_right_mask.png``/``*_left_mask.png``); each is averaged per set like
the others. A one-hand report has none of the per-hand fields.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from handnerf.errors import DataError, ParameterError
from handnerf.evaluation.protocols import INSIDE_MASK_TEXT, EvalProtocol, get_protocol
from handnerf.evaluation.report_pages import html_page, markdown_page
from handnerf.files import (
    atomic_write_bytes,
    atomic_write_text,
    machine_info,
    remove_temp_files_under,
)

REQUIRED_ROW_FIELDS = ("split", "camera", "frame", "psnr", "ssim")
METRIC_FIELDS = ("psnr", "ssim", "lpips")
#: Metrics a row may carry besides the protocol's (None where undefined for a view).
OPTIONAL_METRIC_FIELDS = (
    "mask_psnr",
    "mask_ssim",
    "mask_lpips",
    "lpips_scaled",
    "psnr_xhand_code",
    "hole_fraction",
    # two-hand runs: each hand inside its own visible MANO mask (the render shows both)
    "right_psnr",
    "right_ssim",
    "left_psnr",
    "left_ssim",
    # eval --refine-pose: the novel poses scored with the refined MANO's masks
    "refined_mask_psnr",
    "refined_mask_ssim",
    "refined_mask_lpips",
)
#: A view's saved images; a two-hand run's also each hand's visible mask.
IMAGE_KINDS = ("render", "gt", "mask", "right_mask", "left_mask")


def image_key(split: str, camera: str | int, frame: int) -> str:
    """File-name-safe id of one evaluated view, e.g. ``novel_view_cam400002_frame000563``."""
    safe_split = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(split))
    safe_camera = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(camera))
    return f"{safe_split}_cam{safe_camera}_frame{int(frame):06d}"


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become None (strict JSON has no inf/NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _check_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if len(rows) == 0:
        raise ParameterError("rows: no evaluated image to report")
    checked = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ParameterError(f"rows[{index}]: expected a dict, got {type(row).__name__}")
        missing = [field for field in REQUIRED_ROW_FIELDS if field not in row]
        if missing:
            raise ParameterError(f"rows[{index}]: missing field(s) {', '.join(missing)}")
        row = dict(row)
        for field in METRIC_FIELDS + OPTIONAL_METRIC_FIELDS:
            value = row.get(field)
            if value is None and (field == "lpips" or field in OPTIONAL_METRIC_FIELDS):
                continue
            try:
                row[field] = float(value)
            except (TypeError, ValueError):
                raise ParameterError(
                    f"rows[{index}].{field}: expected a number, got {value!r}"
                ) from None
            if math.isnan(row[field]):
                raise ParameterError(f"rows[{index}].{field}: is NaN")
        row["frame"] = int(row["frame"])
        row["camera"] = str(row["camera"])
        row["split"] = str(row["split"])
        row["key"] = image_key(row["split"], row["camera"], row["frame"])
        checked.append(row)
    keys = [row["key"] for row in checked]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ParameterError(f"rows: the same view is listed twice: {', '.join(duplicates[:3])}")
    return checked


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    aggregate: dict[str, Any] = {
        "n_images": len(rows),
        "psnr": _mean([row["psnr"] for row in rows]),
        "ssim": _mean([row["ssim"] for row in rows]),
        "lpips": _mean([row["lpips"] for row in rows if row.get("lpips") is not None]),
    }
    for field in OPTIONAL_METRIC_FIELDS:
        if any(field in row for row in rows):
            # Views where a value is undefined (e.g. an empty mask) are left out of its mean.
            aggregate[field] = _mean([row[field] for row in rows if row.get(field) is not None])
    if any("hole_region_px" in row for row in rows):
        # Pooled over the set's hand pixels, as the real-MANO issue measures holes (not the
        # mean of per-image fractions).
        region = sum(int(row.get("hole_region_px") or 0) for row in rows)
        holes = sum(int(row.get("hole_px") or 0) for row in rows)
        aggregate["hole_fraction"] = holes / region if region else None
    return aggregate


def _to_uint8(image: Any, label: str) -> np.ndarray:
    """(H, W, 3) or (H, W) float in [0, 1], bool or uint8 -> uint8 of the same shape."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
        raise ParameterError(f"{label}: expected an (H, W) or (H, W, 3) image, got {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if not np.issubdtype(array.dtype, np.floating):
        raise ParameterError(f"{label}: expected float, bool or uint8 pixels, got {array.dtype}")
    if not np.isfinite(array).all():
        raise ParameterError(f"{label}: image contains NaN or inf values")
    return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def _save_images(
    out_dir: Path, rows: list[dict[str, Any]], images: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, np.ndarray]]:
    """Write each view's PNGs under ``out_dir/images``; returns the uint8 arrays by key."""
    import imageio.v3 as iio

    known = {row["key"] for row in rows}
    unknown = sorted(set(images) - known)
    if unknown:
        raise ParameterError(
            f"images: key(s) {', '.join(unknown[:3])} match no row; build keys with "
            "image_key(split, camera, frame)"
        )
    image_dir = out_dir / "images"
    converted: dict[str, dict[str, np.ndarray]] = {}
    for row in rows:
        entry = images.get(row["key"])
        if entry is None:
            continue
        arrays: dict[str, np.ndarray] = {}
        for kind in IMAGE_KINDS:
            if entry.get(kind) is None:
                continue
            arrays[kind] = _to_uint8(entry[kind], f"images[{row['key']!r}][{kind!r}]")
        if "render" in arrays and "gt" in arrays:
            if arrays["render"].shape != arrays["gt"].shape or arrays["render"].ndim != 3:
                raise ParameterError(
                    f"images[{row['key']!r}]: render {arrays['render'].shape} and gt "
                    f"{arrays['gt'].shape} must be (H, W, 3) of one size"
                )
        image_dir.mkdir(parents=True, exist_ok=True)
        for kind, array in arrays.items():
            name = f"{row['key']}_{kind}.png"
            atomic_write_bytes(image_dir / name, iio.imwrite("<bytes>", array, extension=".png"))
            row[f"{kind}_png"] = f"images/{name}"
        converted[row["key"]] = arrays
    return converted


def read_metrics_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a training log, one JSON object a line (blank lines skipped)."""
    records = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the training log: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: not valid JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object")
        records.append(record)
    return records


def _curve_series(records: list[dict[str, Any]]) -> tuple[str, dict[str, tuple[list, list]]]:
    """x-axis name and, per numeric field, its (x, y) points."""
    x_name = next(
        (
            name
            for name in ("step", "iteration", "iter")
            if any(name in record for record in records)
        ),
        "record",
    )
    series: dict[str, tuple[list, list]] = {}
    for index, record in enumerate(records):
        x = record.get(x_name, index)
        for name, value in record.items():
            if name == x_name or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            xs, ys = series.setdefault(name, ([], []))
            xs.append(x)
            ys.append(value)
    return x_name, series


def plot_training_curves(records: list[dict[str, Any]]) -> bytes | None:
    """PNG of every numeric field of the training log against the step (None if none)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x_name, series = _curve_series(records)
    series = {name: points for name, points in series.items() if len(points[0]) >= 1}
    if not series:
        return None
    columns = min(3, len(series))
    rows = math.ceil(len(series) / columns)
    figure = Figure(figsize=(4.2 * columns, 2.8 * rows), dpi=100)
    FigureCanvasAgg(figure)
    for index, (name, (xs, ys)) in enumerate(sorted(series.items())):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.plot(xs, ys, marker="." if len(xs) < 30 else None, linewidth=1.2)
        if "loss" in name and min(ys) > 0:
            axes.set_yscale("log")
        axes.set_title(name, fontsize=10)
        axes.set_xlabel(x_name, fontsize=8)
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_report(
    out_dir: str | Path,
    *,
    protocol: EvalProtocol | str,
    rows: Sequence[Mapping[str, Any]],
    images: Mapping[str, Mapping[str, Any]],
    run_info: Mapping[str, Any],
    metrics_jsonl: str | Path | None = None,
    lpips_net: str | None = None,
) -> dict[str, Any]:
    """Write ``report.json``, ``report.md``, ``report.html`` and the images to ``out_dir``.

    Args:
        out_dir: folder to write (created).
        protocol: the :class:`EvalProtocol` used, or its preset name.
        rows: one dict per evaluated image with ``split`` (e.g. ``"novel_view"`` or
            ``"novel_pose"``), ``camera``, ``frame``, ``psnr``, ``ssim`` and optionally
            ``lpips`` (None when not computed); extra fields are kept.
        images: by :func:`image_key` of a row: ``{"render": (H, W, 3), "gt": (H, W, 3),
            "mask": (H, W)}`` and for two hands ``"right_mask"``/``"left_mask"`` (H, W)
            (float in [0, 1], bool or uint8; any may be left out).
        run_info: ``config`` (the run's config dict), ``backends`` (e.g. renderer and
            encoding backends), ``timings`` (seconds by name), optionally ``machine``
            (filled from this machine otherwise) and ``lpips_net``; other keys are
            kept under ``run``.
        metrics_jsonl: the training log to plot (one JSON object a line), if any.
        lpips_net: name of the network behind the LPIPS scores
            (:attr:`PerceptualMetric.net_name`); required when a row has ``lpips``.

    Returns:
        The report as written to ``report.json``.
    """
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    if not isinstance(protocol, EvalProtocol):
        raise ParameterError(
            f"protocol: expected an EvalProtocol or a preset name, got {type(protocol).__name__}"
        )
    if not isinstance(run_info, Mapping):
        raise ParameterError(f"run_info: expected a dict, got {type(run_info).__name__}")
    checked = _check_rows(rows)
    lpips_net = lpips_net or run_info.get("lpips_net")
    if lpips_net is None and any(row.get("lpips") is not None for row in checked):
        raise ParameterError(
            "lpips_net: rows carry LPIPS scores but the network behind them is not named "
            "(pass PerceptualMetric.net_name)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # An older report.json would describe images about to be overwritten; it reappears
    # only once this report is complete.
    (out_dir / "report.json").unlink(missing_ok=True)
    remove_temp_files_under(out_dir)  # left by a killed evaluation into this folder
    arrays = _save_images(out_dir, checked, images)

    records = read_metrics_jsonl(Path(metrics_jsonl)) if metrics_jsonl is not None else []
    curves_png = plot_training_curves(records) if records else None
    if curves_png is not None:
        atomic_write_bytes(out_dir / "training_curves.png", curves_png)

    splits = list(dict.fromkeys(row["split"] for row in checked))
    overall = _aggregate(checked)
    extra_run = {
        name: value
        for name, value in run_info.items()
        if name not in ("config", "backends", "timings", "machine", "lpips_net")
    }
    report: dict[str, Any] = {
        "protocol": protocol.to_dict(),
        "region": protocol.region_text,
        "inside_mask_region": INSIDE_MASK_TEXT,
        "formula": protocol.formula_text,
        "lpips_input": protocol.lpips_input_text,
        "lpips_net": lpips_net if lpips_net is not None else "not computed",
        "n_images": overall["n_images"],
        "psnr": overall["psnr"],
        "ssim": overall["ssim"],
        "lpips": overall["lpips"],
        "overall": overall,
        "cameras": {
            split: sorted({r["camera"] for r in checked if r["split"] == split}) for split in splits
        },
        "sets": {
            split: _aggregate([r for r in checked if r["split"] == split]) for split in splits
        },
        "images": checked,
        "config": run_info.get("config"),
        "backends": run_info.get("backends"),
        "timings": run_info.get("timings"),
        "machine": run_info.get("machine") or machine_info(),
        "run": extra_run,
        "training_log": str(metrics_jsonl) if metrics_jsonl is not None else None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    report = _jsonable(report)
    # report.json last and each file atomically: a report.json on disk is always complete
    # and belongs to a finished evaluation, even when the job is killed while writing.
    atomic_write_text(out_dir / "report.md", markdown_page(report, curves_png is not None))
    atomic_write_text(out_dir / "report.html", html_page(report, arrays, curves_png, _jsonable))
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report
