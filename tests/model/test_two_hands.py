"""The two-hand avatar: each posed sample goes to the hand whose posed surface is closest
(contact regions included), and one hand rendered alone stays inside its own silhouette."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from handnerf.config import load_config
from handnerf.data.interhand import InterHandCapture
from handnerf.errors import ParameterError
from handnerf.hand.hand_model import HandModel, ManoParams
from handnerf.model.avatar import AvatarConfig
from handnerf.model.two_hands import SIDES, TwoHandAvatar, TwoHandPosedFrames
from handnerf.synth.two_hands import TRAIN_SEQS

#: configs/tiny.yaml's model section.
TINY_MODEL = [
    "field.encoding.n_levels=4",
    "field.encoding.log2_hashmap_size=12",
    "field.hidden_dim=16",
    "field.color_hidden_dim=16",
    "field.view_sh_degree=1",
    "sampler.n_samples=24",
    "occupancy.resolution=24",
    "shell_resolution=32",
    # self-shadow visibility plays no part in which hand a sample belongs to
    "visibility.n_directions=0",
]


def _frames_mano(root: Path, seqs: list[str]) -> tuple[dict[str, ManoParams], list]:
    capture = InterHandCapture(root, hand="both", seqs=seqs)
    first = {}
    for view in capture.views:
        first.setdefault((view.seq_name, view.frame_idx), view)
    views = list(first.values())
    mano = {
        side: ManoParams.stack(
            [ManoParams.from_interhand(v.hands_mano[side], v.mano_where_of(side)) for v in views]
        )
        for side in SIDES
    }
    return mano, views


def _avatar(
    mano: dict[str, ManoParams], n_cameras: int = 6, overrides: list[str] | None = None
) -> TwoHandAvatar:
    cfg = load_config(AvatarConfig, overrides=TINY_MODEL if overrides is None else overrides)
    models = {side: HandModel.from_folder(None, side) for side in SIDES}
    betas = {side: mano[side].betas[0].float() for side in SIDES}
    return TwoHandAvatar(cfg, models, betas, n_cameras)


def _surface_points(
    vertices: torch.Tensor, canonical: torch.Tensor, faces: torch.Tensor, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """n random points (n,3) on a posed mesh (V,3) and their canonical twins (n,3)."""
    gen = torch.Generator().manual_seed(seed)
    face = torch.randint(0, faces.shape[0], (n,), generator=gen)
    bary = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    bary = bary / bary.sum(-1, keepdim=True)
    corners = faces[face]
    posed = torch.einsum("nc,ncd->nd", bary, vertices.double()[corners])
    twin = torch.einsum("nc,ncd->nd", bary, canonical.double()[corners])
    return posed.float(), twin.float()


def test_surface_points_map_to_their_own_hand(tiny_two_hand_capture: Path) -> None:
    import igl

    seqs = [TRAIN_SEQS["palms_touch"], TRAIN_SEQS["interlock"]]
    mano, _ = _frames_mano(tiny_two_hand_capture, seqs)
    avatar = _avatar(mano)
    frames = avatar.pose_frames(mano)
    faces = avatar.hand("right").hand_model.faces.long()
    contact_points = 0
    for t in range(len(frames)):
        for index, side in enumerate(SIDES):
            other = SIDES[1 - index]
            hand = avatar.hand(side)
            vertices = frames.hands[side].vertices[t]
            points, twins = _surface_points(
                vertices, hand.canonical_vertices, faces, 60000, seed=10 * t + index
            )
            # the contact region: points within 6 mm of the other hand's surface, where
            # both hands' shells (8 mm) overlap and the closest surface must decide
            squared, _, _ = igl.point_mesh_squared_distance(
                points.double().numpy(),
                frames.hands[other].vertices[t].double().numpy(),
                faces.numpy(),
            )
            contact = torch.from_numpy(np.sqrt(squared) < 0.006)
            assert int(contact.sum()) > 50, f"frame {t}: no contact region"
            contact_points += int(contact.sum())
            rows = torch.cat([torch.nonzero(contact)[:, 0], torch.arange(1000)])
            points, twins = points[rows], twins[rows]
            ids = torch.full((len(points),), t, dtype=torch.long)
            owner, canonical, valid = avatar.deform(frames, points, ids)
            error_mm = (canonical - twins).norm(dim=-1) * 1000.0
            assert (owner == index).all(), f"frame {t}: {side} surface given to {other}"
            assert valid.all()
            assert float(error_mm.max()) < 0.5
    # palms pressed together and interlocked fingers: a large contact region in all
    assert contact_points > 1500


def test_points_between_the_hands_go_to_the_closer_one(tiny_two_hand_capture: Path) -> None:
    mano, _ = _frames_mano(tiny_two_hand_capture, [TRAIN_SEQS["palms_touch"]])
    avatar = _avatar(mano)
    frames = avatar.pose_frames(mano)
    faces = avatar.hand("right").hand_model.faces.long()
    right = frames.hands["right"].vertices[0]
    left = frames.hands["left"].vertices[0]
    # samples off each hand's surface along its normal, 0.6 mm out: in the 2 mm gap
    # between the palms they are closer to their own hand than to the other
    for index, (side, vertices) in enumerate((("right", right), ("left", left))):
        hand = avatar.hand(side)
        points, _ = _surface_points(vertices, hand.canonical_vertices, faces, 3000, seed=index)
        result = frames.hands[side].deformation.deform(points, torch.zeros(len(points)).long())
        assert result.normal is not None
        off = points + 0.0006 * result.normal
        owner, _, valid = avatar.deform(frames, off, torch.zeros(len(off)).long())
        assert (owner[valid] == index).all()


def _visibility(frames: TwoHandPosedFrames, side: str) -> torch.Tensor:
    """(T,V,K) per-vertex visibility ``side``'s deformer blends (its vertex attributes)."""
    attributes = frames.hands[side].deformation.vertex_attributes
    assert attributes is not None
    return attributes.reshape(*frames.hands[side].vertices.shape[:2], -1)


def test_each_hand_is_shadowed_by_the_other_where_they_touch(tiny_two_hand_capture: Path) -> None:
    seqs = [TRAIN_SEQS["palms_touch"], TRAIN_SEQS["interlock"]]
    mano, _ = _frames_mano(tiny_two_hand_capture, seqs)
    shadows = [
        *[o for o in TINY_MODEL if not o.startswith("visibility.")],
        "visibility.n_directions=16",
    ]
    both = _avatar(mano, overrides=[*shadows, "visibility.other_hand=true"]).pose_frames(mano)
    alone_avatar = _avatar(mano, overrides=[*shadows, "visibility.other_hand=false"])
    alone = alone_avatar.pose_frames(mano)
    for side, other in (("right", "left"), ("left", "right")):
        # The same geometry: only the visibility changes.
        assert torch.equal(both.hands[side].vertices, alone.hands[side].vertices)
        with_other, own = _visibility(both, side), _visibility(alone, side)
        assert bool((with_other <= own).all())  # another mesh can only block rays
        # other_hand=false is each hand posed by itself, as a one-hand avatar poses it.
        hand = alone_avatar.hand(side)
        by_itself = hand.pose_frames(mano[side]).deformation.vertex_attributes
        assert by_itself is not None and torch.equal(own.flatten(0, 1), by_itself)
        assert torch.equal(hand.posed_mesh(mano[side]).vertices, alone.hands[side].vertices)
        # Where the hands touch (vertices within 1 cm of a vertex of the other posed hand:
        # MANO's vertices are ~5 mm apart), the other hand blocks several of the 16
        # directions; far from it (4 cm and more), it blocks a few times fewer.
        gap = torch.cdist(both.hands[side].vertices, both.hands[other].vertices).amin(-1)
        near, far = gap < 0.01, gap > 0.04
        assert int(near.sum()) > 50 and int(far.sum()) > 500
        lost = (own - with_other).sum(-1)  # (T,V) directions lost per vertex
        assert float(lost[near].mean()) > 2.0
        assert float(lost[near].mean()) > 3 * float(lost[far].mean())


def test_bad_input() -> None:
    models = {"right": HandModel.from_folder(None, "right")}
    with pytest.raises(ParameterError, match="no hand model or betas"):
        TwoHandAvatar(load_config(AvatarConfig, overrides=TINY_MODEL), models, {}, 1)


# ------------------------------------------------------------------ a fitted pair


def _crop_views(root: Path, seqs: list[str], size: int):  # type: ignore[no-untyped-def]
    """Crops (size px, around both hands) of every view: image, union and per-hand whole
    silhouettes, camera, frame index."""
    from handnerf.data.crops import CropConfig, crop_box, prepare_view
    from handnerf.data.two_hand_masks import TwoHandMasker

    capture = InterHandCapture(root, hand="both", seqs=seqs)
    masker = TwoHandMasker({side: HandModel.from_folder(None, side) for side in SIDES})
    keys = sorted({(v.seq_name, v.frame_idx) for v in capture.views})
    out = []
    for view in capture.views:
        image = capture.load_image(view)
        crop = prepare_view(image, view.camera, CropConfig(out_size=size), mask=masker.mask(view))
        whole = {
            side: crop_box(image, view.camera, crop.box, size, mask=sil).mask
            for side, sil in masker.silhouettes(view).items()
        }
        out.append((crop, whole, keys.index((view.seq_name, view.frame_idx))))
    return out


def _rays(crop, frame: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    from handnerf.model.renderer import CameraTensors, camera_rays

    origins, dirs = camera_rays(CameraTensors.of(crop.camera), torch.device("cpu"))
    return origins, dirs, torch.full((len(origins),), frame, dtype=torch.long)


def test_each_hand_alone_stays_inside_its_silhouette(tiny_two_hand_capture: Path) -> None:
    """Fit a tiny pair on palms touching and interlocked fingers, then render each hand
    alone: its pixels lie inside its own silhouette and do not cover the other hand's."""
    from scipy.ndimage import binary_dilation

    from handnerf.model.rays import RayBundle

    torch.manual_seed(0)
    seqs = [TRAIN_SEQS["palms_touch"], TRAIN_SEQS["interlock"]]
    mano, _ = _frames_mano(tiny_two_hand_capture, seqs)
    avatar = _avatar(mano)
    frames = avatar.pose_frames(mano)
    size = 32
    views = _crop_views(tiny_two_hand_capture, seqs, size)
    rays = [_rays(crop, frame) for crop, _, frame in views]
    origins = torch.cat([r[0] for r in rays])
    dirs = torch.cat([r[1] for r in rays])
    frame_ids = torch.cat([r[2] for r in rays])
    colours = torch.cat(
        [torch.from_numpy(c.image).float().reshape(-1, 3) / 255.0 for c, _, _ in views]
    )
    masks = torch.cat([torch.from_numpy(c.mask).reshape(-1).float() for c, _, _ in views])
    groups = avatar.param_groups()
    optimiser = torch.optim.Adam([p for g in groups.values() for p in g], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for step in range(80):
        # rays on the hands and around them (most of each crop is background)
        pick = torch.randint(0, len(origins), (256,), generator=gen)
        batch = RayBundle(origins[pick], dirs[pick], frame_ids[pick], None)
        out = avatar.render_rays(frames, batch, torch.zeros(3), training=True)
        loss = (out["rgb"] - colours[pick]).square().mean() + 0.5 * (
            out["opacity"] - masks[pick]
        ).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 16 == 15:
            avatar.update_occupancy(step)

    ious, leaks, into_other = [], [], []
    with torch.no_grad():
        for (_, whole, _), (o, d, f) in list(zip(views, rays, strict=True))[::3]:
            for index, side in enumerate(SIDES):
                out = avatar.render_rays(
                    frames, RayBundle(o, d, f, None), torch.zeros(3), only=side
                )
                alone = (out["opacity"] > 0.5).reshape(size, size).numpy()
                own = whole[side]
                union = (alone | own).sum()
                ious.append((alone & own).sum() / max(union, 1))
                # a pixel's silhouette is a half-covered call: allow one pixel of edge
                outside = alone & ~binary_dilation(own)
                leaks.append(outside.sum() / max(alone.sum(), 1))
                into_other.append((outside & whole[SIDES[1 - index]]).sum() / max(alone.sum(), 1))
    print(
        f"IoU {np.mean(ious):.3f} (min {min(ious):.3f}), leak max {max(leaks):.4f}, "
        f"into the other hand max {max(into_other):.4f}"
    )
    assert np.mean(ious) > 0.78, ious
    assert max(leaks) < 0.03, leaks
    assert max(into_other) < 0.015, into_other
