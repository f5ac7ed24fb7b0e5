"""The silhouette fit of the given MANO poses (handnerf/train/silhouette_fit.py): its image
silhouettes, distances and outlines, and what it does to known fit errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from handnerf.config import load_config, overrides_from_yaml
from handnerf.errors import ParameterError
from handnerf.hand.hand_model import ManoParams
from handnerf.train.config import FitConfig
from handnerf.train.fit_data import FitData, load_fit_data
from handnerf.train.pose_refinement import PoseCorrections
from handnerf.train.rays import ViewStack
from handnerf.train.silhouette_fit import (
    SilhouetteFitConfig,
    SilhouetteTargets,
    fit_silhouette_corrections,
    image_coverage,
    image_silhouettes,
    mesh_edges,
    outline_points,
    segment_distance,
    signed_distance,
    vertex_edges,
)

#: The tiny capture with MANO masks, cropped to 96 px: a pixel is about 2.5 mm, near the
#: demo's 128 px crops (2 mm); at tiny.yaml's 48 px (5 mm) the fit's precision, a fraction
#: of a pixel, is more millimetres than a fit's error is.
TINY_MANO = [
    *overrides_from_yaml(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"),
    "data.mask_source=mano",
    "data.crop_size=96",
]


#: Many small steps: one thread avoids oversubscribing 2 cores (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _hand_image() -> Tensor:
    """(1,10,10,3): a hand with partly covered edge columns and a crease, on the dark
    background's noise."""
    image = torch.full((1, 10, 10, 3), 4 / 255)  # the dark background's noise
    image[0, 2:8, 2:6] = torch.tensor([0.8, 0.5, 0.4])  # the hand
    image[0, 2:8, 6] = 0.6 * image[0, 2:8, 5]  # an edge column 60 % covered
    image[0, 2:8, 7] = 0.3 * image[0, 2:8, 5]  # and one 30 % covered
    image[0, 4:6, 3:5] = 0.02  # a dark crease inside the hand
    return image


def test_image_silhouettes_cut_at_half_coverage_and_fill_holes() -> None:
    image = _hand_image()
    hand = image_silhouettes(image, 10 / 255)[0]
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[2:8, 2:7] = True
    assert torch.equal(hand, expected)
    with pytest.raises(ParameterError, match="images"):
        image_silhouettes(image[..., :2], 10 / 255)


def test_image_coverage_is_the_share_of_each_pixel_the_hand_covers() -> None:
    image = _hand_image()
    coverage = image_coverage(image, 10 / 255)[0]
    assert coverage[3:7, 6].tolist() == pytest.approx([0.6] * 4)
    assert coverage[3:7, 7].tolist() == pytest.approx([0.5] * 4)  # against column 6's 0.48
    assert bool((coverage[2:8, 2:6] == 1).all())  # the crease is inside: covered
    assert float(coverage[0].max()) == 0.0  # the background's noise: none
    assert torch.equal(image_silhouettes(image, 10 / 255)[0], coverage > 0.5)


def test_signed_distance_is_zero_on_the_edge_between_pixels() -> None:
    hand = torch.zeros(1, 5, 9, dtype=torch.bool)
    hand[0, :, :4] = True  # columns 0-3 are the hand: its edge is at x = 4
    sdf = signed_distance(hand)[0]
    assert sdf[2].tolist() == [-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 4.5]
    # Sampled at the edge itself (between pixel centres 3.5 and 4.5): zero.
    grid = torch.tensor([[[[2 * 4.0 / 9 - 1, 0.0]]]])
    value = torch.nn.functional.grid_sample(sdf[None, None], grid, align_corners=False)
    assert float(value) == pytest.approx(0.0, abs=1e-6)


def test_outline_points_are_the_midpoints_of_hand_background_edges() -> None:
    hand = torch.zeros(6, 6, dtype=torch.bool)
    hand[2:4, 2:4] = True
    everywhere = torch.ones(6, 6, dtype=torch.bool)
    points = {tuple(p) for p in outline_points(hand, everywhere).tolist()}
    assert points == {
        (4.0, 2.5), (4.0, 3.5), (2.0, 2.5), (2.0, 3.5),
        (2.5, 4.0), (3.5, 4.0), (2.5, 2.0), (3.5, 2.0),
    }  # fmt: skip
    # A hand cut by the image's border has no outline there; ``keep`` selects pixels.
    cut = torch.zeros(6, 6, dtype=torch.bool)
    cut[:, 4:] = True
    xs = {p[0] for p in outline_points(cut, everywhere).tolist()}
    assert xs == {4.0}
    keep = torch.zeros(6, 6, dtype=torch.bool)
    keep[0] = True
    assert outline_points(cut, keep).tolist() == [[4.0, 0.5]]


@pytest.mark.parametrize("edge_x", [3.7, 4.0, 4.3, 4.45])
def test_outline_points_lie_where_the_pixels_coverage_puts_the_edge(edge_x: float) -> None:
    # A hand covering x < edge_x (a vertical edge between pixel columns), each pixel as
    # bright as the share of it the hand covers, on a dark background's noise.
    cover = (edge_x - torch.arange(8.0)).clamp(0, 1)
    brightness = (0.8 * cover + 0.01).expand(5, 8).clone()
    hand = image_silhouettes(brightness[None, ..., None].expand(-1, -1, -1, 3), 10 / 255)[0]
    everywhere = torch.ones(5, 8, dtype=torch.bool)
    points = outline_points(hand, everywhere, brightness)
    assert len(points) == 5
    assert points[:, 0].tolist() == pytest.approx([edge_x] * 5, abs=0.02)
    # Without the image, the pixel edge: up to half a pixel off.
    assert {p[0] for p in outline_points(hand, everywhere).tolist()} == {float(round(edge_x))}
    with pytest.raises(ParameterError, match="brightness"):
        outline_points(hand, everywhere, brightness[:, :4])


def test_mesh_edges_are_each_triangle_side_once() -> None:
    faces = torch.tensor([[0, 1, 2], [2, 1, 3]])
    edges = {tuple(e) for e in mesh_edges(faces).tolist()}
    assert edges == {(0, 1), (1, 2), (0, 2), (1, 3), (2, 3)}
    assert len(mesh_edges(faces)) == 5
    at_vertex = vertex_edges(mesh_edges(faces), 4)
    for v, row in enumerate(at_vertex.tolist()):
        meeting = {e for e, ends in enumerate(mesh_edges(faces).tolist()) if v in ends}
        assert set(row) == meeting


def test_segment_distance_is_to_the_segment_not_its_line() -> None:
    a, b = torch.tensor([0.0, 0.0]), torch.tensor([4.0, 0.0])
    points = torch.tensor([[2.0, 3.0], [-3.0, 4.0], [7.0, 0.0], [1.0, 0.0]])
    d = segment_distance(points, a.expand(4, 2), b.expand(4, 2))
    assert d.tolist() == pytest.approx([3.0, 5.0, 3.0, 0.0])
    # A degenerate segment (both ends on one point) is that point.
    assert float(segment_distance(points[:1], a[None], a[None])) == pytest.approx(13**0.5)


def test_a_crops_padding_is_neither_hand_nor_outline() -> None:
    image = torch.zeros(1, 8, 8, 3)
    image[0, 2:6, 3:] = 0.7  # a hand running into the padding at x >= 6
    image[0, :, 6:] = 0.0  # the padding is black
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    valid[0, :, 6:] = False
    views = ViewStack(
        images=image,
        masks=image[..., 0] > 0,
        K=torch.eye(3)[None],
        R=torch.eye(3)[None],
        t=torch.zeros(1, 3),
        frame_ids=torch.zeros(1, dtype=torch.long),
        camera_ids=torch.zeros(1, dtype=torch.long),
        valid=valid,
    )
    targets = SilhouetteTargets(views, SilhouetteFitConfig(band=3))
    # Points projected into the padding are not pushed out of it.
    assert bool((targets.sdf[0, :, 6:] <= 0).all())
    outline = targets.outline[0][targets.outline_valid[0]]
    assert len(outline) > 0
    assert float(outline[:, 0].max()) <= 6.0  # nothing on the padding's side
    assert {3.0} <= {float(x) for x in outline[:, 0]}  # the hand's left edge is there


def _subject_mano(data: FitData) -> ManoParams:
    m = data.train_mano
    return ManoParams(m.global_orient, m.hand_pose, data.betas[None].expand(len(m), -1), m.transl)


def _vertex_error_mm(data: FitData, a: ManoParams, b: ManoParams) -> float:
    with torch.no_grad():
        va, vb = data.hand_model(a).vertices, data.hand_model(b).vertices
    return float((va - vb).norm(dim=-1).mean()) * 1000.0


def test_the_silhouette_fit_recovers_most_of_a_known_fit_error(noisy_capture: Path) -> None:
    from handnerf.synth.writer import load_exact_mano

    cfg = load_config(FitConfig, None, TINY_MANO)
    data = load_fit_data(noisy_capture, cfg.data, progress=False)
    given = _subject_mano(data)
    exact = load_exact_mano(noisy_capture, [f for _, f in data.train.frame_keys], "right")
    exact = ManoParams(exact.global_orient, exact.hand_pose, given.betas, exact.transl)
    corrections = PoseCorrections(len(given))
    losses = fit_silhouette_corrections(data.hand_model, given, corrections, data.train_views)
    with torch.no_grad():
        fitted = corrections.apply(given)
    before, after = _vertex_error_mm(data, given, exact), _vertex_error_mm(data, fitted, exact)
    # Measured: 12.86 -> 0.99 mm (12 views of 96 px); 1.12 mm with the outline points on
    # the pixel edges (subpixel_outline=False), 1.75 mm with the outline matched to the
    # closest of a set of mesh points instead of edges.
    assert before > 10.0
    assert after < 0.1 * before, (before, after)
    assert losses["outline_after"] < 0.5 * losses["outline_before"]


def test_the_silhouette_fit_leaves_an_exact_fit_nearly_alone(tiny_capture: Path) -> None:
    cfg = load_config(FitConfig, None, TINY_MANO)
    data = load_fit_data(tiny_capture, cfg.data, progress=False)
    given = _subject_mano(data)
    corrections = PoseCorrections(len(given))
    fit_silhouette_corrections(data.hand_model, given, corrections, data.train_views)
    with torch.no_grad():
        moved = _vertex_error_mm(data, corrections.apply(given), given)
    # Measured: 0.38 mm, a seventh of a pixel; 0.54 mm with the outline points on the pixel
    # edges, 0.75 mm with the outline matched to mesh points instead of edges, and 3.05 mm
    # at 48 px when the silhouette was every pixel brighter than the background.
    assert moved < 0.6, moved


def test_the_silhouette_fit_rejects_views_of_other_frames(tiny_capture: Path) -> None:
    cfg = load_config(FitConfig, None, TINY_MANO)
    data = load_fit_data(tiny_capture, cfg.data, progress=False)
    given = _subject_mano(data)
    with pytest.raises(ParameterError, match="frame_ids"):
        fit_silhouette_corrections(
            data.hand_model, given.index(slice(0, 1)), PoseCorrections(1), data.train_views
        )
    with pytest.raises(ParameterError, match="corrections"):
        fit_silhouette_corrections(
            data.hand_model, given, PoseCorrections(len(given) + 1), data.train_views
        )
