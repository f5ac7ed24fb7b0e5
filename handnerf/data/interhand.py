"""The InterHand2.6M reader: select frames and cameras of one capture, one hand.

:class:`InterHandCapture` parses each annotation JSON whole (once per process, see
:func:`~handnerf.data.annotations.read_json`); :func:`handnerf.data.stream.select_views`
makes the same selection from streamed JSONs. The dataset layout and annotation files
are in :mod:`handnerf.data.annotations`, the records and :class:`FrameView` in
:mod:`handnerf.data.records`, the shared selection steps and the record-to-view builder
in :mod:`handnerf.data.selection`; their public names are re-exported here.

Selection happens in a fixed order and every step is counted in
:attr:`InterHandCapture.selection_report`: split -> capture -> sequences -> frames with
this hand's MANO fit -> cameras -> frame stride. Nothing is dropped silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from handnerf.data.annotations import (
    HAND_CHOICES,
    HANDS,
    SPLITS,
    SYNTH_MARKER,
    AnnotationFiles,
    clear_json_cache,
    find_annotation_files,
    is_synthetic_capture,
    json_parse_count,
    read_json,
    refuse_other_procedural_hand,
    refuse_procedural_hand,
    refuse_seen_novel_pose,
)
from handnerf.data.records import (
    HAND_ROWS,
    HAND_TYPES,
    MANO_VALUE_LIMIT,
    FrameView,
    ImageAnnotation,
    check_image_record,
    interhand_camera,
    joint_3d_keypoints,
    joint_flags,
    json_numbers,
    load_image,
    normalize_camera_id,
    parse_annotation,
    parse_frame_mano,
    parse_hand_type,
    parse_mano_entry,
    validity_flags,
)
from handnerf.data.selection import (
    CaptureSource,
    SelectedViews,
    SelectionReport,
    SelectionRequest,
    annotations_by_image,
    build_frame_views,
    keep_cameras,
    note_two_hand_frames,
    start_selection,
    stride_frames,
)
from handnerf.errors import DataError, SelectionError

__all__ = [
    "HANDS",
    "HAND_CHOICES",
    "HAND_ROWS",
    "HAND_TYPES",
    "MANO_VALUE_LIMIT",
    "SPLITS",
    "SYNTH_MARKER",
    "AnnotationFiles",
    "FrameView",
    "ImageAnnotation",
    "InterHandCapture",
    "SelectedViews",
    "SelectionReport",
    "SelectionRequest",
    "annotations_by_image",
    "build_frame_views",
    "check_image_record",
    "clear_json_cache",
    "find_annotation_files",
    "interhand_camera",
    "is_synthetic_capture",
    "joint_3d_keypoints",
    "joint_flags",
    "json_numbers",
    "json_parse_count",
    "load_image",
    "normalize_camera_id",
    "note_two_hand_frames",
    "parse_annotation",
    "parse_frame_mano",
    "parse_hand_type",
    "parse_mano_entry",
    "read_json",
    "refuse_other_procedural_hand",
    "refuse_procedural_hand",
    "refuse_seen_novel_pose",
    "validity_flags",
]


class InterHandCapture(SelectedViews):
    """A selection of (frame, camera) views of one hand in one InterHand2.6M capture.

    Args:
        root: dataset root (holds ``images/`` and ``annotations/``).
        **options: what to select, by keyword: ``split``, ``capture``, ``seqs``, ``hand``,
            ``cameras``, ``exclude_cameras``, ``stride``, ``drop_grayscale_cameras``; see
            :class:`~handnerf.data.selection.SelectionRequest` for meanings and defaults.

    Raises:
        DataError: missing/unreadable annotation files or malformed camera entries.
        SelectionError: unknown split, capture, sequence, hand or camera (lists what
            exists), or a selection that keeps no image.
        TypeError: an unknown option.
    """

    def __init__(self, root: str | Path, **options: Any) -> None:
        request = SelectionRequest(Path(root), **options)
        self.files, self.selection_report = start_selection(request)
        self.root = request.root
        self.split = request.split
        self.capture = int(request.capture)
        self.hand = request.hand
        self.stride = int(request.stride)
        self.views: list[FrameView] = self._select(request)

    # ------------------------------------------------------------------ selection

    def _select(self, request: SelectionRequest) -> list[FrameView]:
        report = self.selection_report
        data = read_json(self.files.data)
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise DataError(f"{self.files.data}: no 'images' list (is this a data.json?)")
        report.add_step(f"images in split '{self.split}'", len(images))

        try:
            in_capture = [
                check_image_record(img, f"{self.files.data}: images[{index}]")
                for index, img in enumerate(images)
                if int(img["capture"]) == self.capture
            ]
            captures = sorted({int(img["capture"]) for img in images}) if not in_capture else []
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise DataError(f"{self.files.data}: images[*] lack a valid 'capture' ({exc})") from exc
        if not in_capture:
            raise SelectionError(
                f"capture {self.capture} not in {self.files.data}; captures: "
                f"{', '.join(map(str, captures)) or '(none)'}"
            )
        report.add_step(f"in capture {self.capture}", len(in_capture))

        available_seqs = sorted({str(img["seq_name"]) for img in in_capture})
        wanted_seqs = request.wanted_seqs()
        if wanted_seqs is None:
            wanted_seqs = set(available_seqs)
        else:
            unknown = sorted(wanted_seqs - set(available_seqs))
            if unknown:
                raise SelectionError(
                    f"sequence(s) {', '.join(unknown)} not in capture {self.capture} of split "
                    f"'{self.split}'; sequences: {', '.join(available_seqs)}"
                )
        in_seqs = [img for img in in_capture if img["seq_name"] in wanted_seqs]
        report.add_step(f"in sequences ({len(wanted_seqs)})", len(in_seqs))

        mano_all = read_json(self.files.mano)
        if not isinstance(mano_all, dict):
            raise DataError(
                f"{self.files.mano}: expected an object keyed by capture, got "
                f"{type(mano_all).__name__}"
            )
        mano_capture = mano_all.get(str(self.capture))
        if mano_capture is None:
            report.notes.append(f"{self.files.mano} has no entry for capture {self.capture}")
            mano_capture = {}
        if not isinstance(mano_capture, dict):
            raise DataError(
                f"{self.files.mano}: mano['{self.capture}'] must be an object keyed by frame, "
                f"got {type(mano_capture).__name__}"
            )
        mano_by_frame: dict[int, dict[str, Any]] = {}
        with_mano = []
        for img in in_seqs:
            frame = int(img["frame_idx"])
            if frame not in mano_by_frame:
                params, reason = parse_frame_mano(mano_capture.get(str(frame)), self.hand)
                if params is None:
                    report.skip(str(reason))
                    continue
                mano_by_frame[frame] = params
            with_mano.append(img)
        report.add_step(f"with {self.hand}-hand MANO", len(with_mano))

        with_cams = keep_cameras(with_mano, in_seqs, self.capture, wanted_seqs, request, report)
        strided = stride_frames(with_cams, wanted_seqs, self.stride, report)
        return self._build_views(strided, mano_by_frame, data)

    def _build_views(
        self,
        images: list[dict[str, Any]],
        mano_by_frame: dict[int, dict[str, Any]],
        data: dict[str, Any],
    ) -> list[FrameView]:
        annotations = data.get("annotations") or []
        if not isinstance(annotations, list):
            raise DataError(f"{self.files.data}: 'annotations' must be a list")
        annotation_by_image = annotations_by_image(images, annotations, self.files.data)
        camera_json = read_json(self.files.camera)
        cams = camera_json.get(str(self.capture)) if isinstance(camera_json, dict) else None
        if not isinstance(cams, dict):
            raise DataError(f"{self.files.camera}: no entry for capture '{self.capture}'")

        joints_capture: dict[str, Any] | None = None
        if self.files.joint_3d is not None:
            joints_all = read_json(self.files.joint_3d)
            joints_capture = (
                joints_all.get(str(self.capture)) if isinstance(joints_all, dict) else None
            )
            if joints_capture is not None and not isinstance(joints_capture, dict):
                raise DataError(
                    f"{self.files.joint_3d}: joints['{self.capture}'] must be an object keyed "
                    f"by frame, got {type(joints_capture).__name__}"
                )
        joint_entry = None
        if joints_capture is not None:
            frames_of: dict[str, Any] = joints_capture

            def joint_entry(frame: int) -> object:
                return frames_of.get(str(frame))

        source = CaptureSource(self.root, self.files, self.split, self.capture, self.hand)
        return build_frame_views(
            source,
            images,
            mano_by_frame,
            annotation_by_image,
            cams,
            joint_entry,
            self.selection_report,
        )
