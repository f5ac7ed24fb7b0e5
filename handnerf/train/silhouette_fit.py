"""MANO poses fitted to the images' silhouettes in every view, before the field exists.

The photometric refinement (:mod:`handnerf.train.pose_refinement`) can only move a pose
as fast as the field learns the hand, and the field learns the given (wrong) pose first:
on the demo capture with 2 deg / 2 mm fit errors it brought the training frames' vertex
error from 6.0 to only 4.4 mm in 650 steps. The outline of the hand in 15-20 calibrated
views pins the pose down without any field: every point of the posed mesh must project
inside the hand's silhouette in every view, and every point of a silhouette's outline
must be the projection of some point of the mesh. Multi-view silhouette fitting is the
classic first stage of hand and body capture; here it runs once, before the fit, and
hands its result to the photometric refinement as the corrections' starting value.

**Where the silhouette comes from.** InterHand2.6M ships no masks, and a mask drawn from
the given MANO fit is wrong by exactly the error sought. The hand is taken from the image
instead, as HandAvatar's mask code does: pixels brighter than a threshold (its 10 of
255) against the capture's dark background, with holes filled. Only the outline within
``band`` px of the given fit's silhouette is used, so an arm or a second hand elsewhere
in the image does not pull the pose; points of the mesh that project outside the image
(views that cut the hand at the border) are not held.

**Losses** (pixels; views of one frame share its pose):

- *inside*: the signed distance (px, positive outside) of the image's silhouette at each
  projected surface point, where positive: a mesh point outside the hand is wrong;
- *outline*: for each outline point of the silhouette (on each pixel edge between hand
  and background, placed by the two pixels' coverage; below), the distance to the
  closest projected mesh edge. The outline of a projected triangle mesh is made of
  projected edges, so this distance is zero where the pose is right; a distance to the
  closest of a set of points on the mesh is not (it is the points' spacing, a fraction
  of a pixel, and it pulled the demo's poses 0.76 mm off on average instead of 0.36 mm).

Both are Huber (1 px), averaged over the views, plus the corrections' prior. The inside
term's surface points are the vertices and fixed barycentric points of every triangle
(MANO's triangles span several pixels).

**Edge pixels.** A pixel the hand covers in part is as bright as the part covered, so it
is the hand where it is brighter than half its brightest neighbour. The brightest pixel
farther inside is no reference: the hand darkens towards its outline (the surface turns
away from the light), and against a pixel two further in the demo's silhouettes came out
0.2 px too small on average; against the neighbours, 0.04 px.

**Outline points between pixel centres.** A binary silhouette puts every outline point
on a pixel edge, up to half a pixel from the hand's: a quantisation that does not average
out along a finger lying along the pixel grid. The edge's two pixels say where it lies:
if the hand's outline crosses the line through their centres at ``s`` px from the hand
pixel's centre, the hand covers ``s + 1/2`` of it and ``s - 1/2`` of the background one
(each clamped to [0, 1]), so ``s = c_hand + c_background - 1/2`` from their coverages
(brightness over the brightest neighbour's, as for the edge pixels). On the demo capture
(``tools/bench_silhouette_fit.py``): training frames 0.36 -> 0.26 mm from the given fits,
an exact fit moved 0.26 -> 0.15 mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from handnerf.errors import ParameterError
from handnerf.hand.hand_model import HandModel, ManoParams
from handnerf.train.pose_refinement import PoseCorrections, silhouette_band
from handnerf.train.rays import ViewStack

#: Barycentric coordinates of the points sampled on every triangle, besides its corners:
#: the centroid, the edge midpoints and three points between the centroid and the corners.
_BARYCENTRIC = torch.tensor(
    [
        [1 / 3, 1 / 3, 1 / 3],
        [0.5, 0.5, 0.0],
        [0.0, 0.5, 0.5],
        [0.5, 0.0, 0.5],
        [2 / 3, 1 / 6, 1 / 6],
        [1 / 6, 2 / 3, 1 / 6],
        [1 / 6, 1 / 6, 2 / 3],
    ]
)


@dataclass
class SilhouetteFitConfig:
    """How the poses are fitted to the silhouettes."""

    #: Adam steps (0: no silhouette fit).
    steps: int = 200
    #: Learning rate of the corrections (radians of axis-angle; translation in
    #: :data:`~handnerf.train.pose_refinement.TRANSL_UNIT`).
    lr: float = 5e-3
    #: Intensity (0-1, any channel) above which a pixel is the hand: HandAvatar's 10/255.
    threshold: float = 10 / 255
    #: An edge pixel is the hand where it is brighter than half the brightest pixel within
    #: this many px (its coverage): 1, its neighbours.
    edge_window: int = 1
    #: Place each outline point along its pixel edge's normal by the coverage of the
    #: edge's two pixels (``outline_points``' ``brightness``), not at the pixel edge.
    subpixel_outline: bool = True
    #: Only the outline within this many px of the given fit's silhouette is used.
    band: int = 6
    #: Outline points per view at most (a fixed random subset beyond).
    max_outline: int = 512
    #: Weight of the corrections' prior (per rad^2 / unit^2).
    w_prior: float = 1e-2
    #: Recompute each outline point's closest projected mesh edge every N steps.
    match_every: int = 5
    seed: int = 0


def image_coverage(images: Tensor, threshold: float, window: int = 1) -> Tensor:
    """(N,H,W) float in [0,1]: how much of each pixel of ``images`` (N,H,W,3) in [0,1] the
    hand covers, against the capture's dark background.

    An edge pixel that the hand covers in part is as bright as the part covered: its
    coverage is its brightest channel over the brightest pixel's within ``window`` px
    (clamped to 1), and 0 where it is not above ``threshold`` (the dark background's
    noise). Pixels inside the hand's silhouette (coverage above 1/2, holes filled) darker
    than that, a crease or a shadow, count as covered.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ParameterError(
            f"image_coverage: images (N,H,W,3) expected, got {tuple(images.shape)}"
        )
    bright = images.amax(dim=-1).float()
    size = 2 * window + 1
    local = F.max_pool2d(bright[:, None], size, stride=1, padding=window)[:, 0]
    coverage = (bright / local.clamp_min(1e-6)).clamp(0, 1)
    coverage = torch.where(bright > threshold, coverage, torch.zeros_like(coverage))
    hand = (coverage > 0.5).cpu().numpy()
    filled = torch.from_numpy(
        np.stack([ndimage.binary_fill_holes(h) for h in hand]).astype(bool) if len(hand) else hand
    ).to(coverage.device)
    return torch.where(filled & (coverage <= 0.5), torch.ones_like(coverage), coverage)


def image_silhouettes(images: Tensor, threshold: float, window: int = 1) -> Tensor:
    """(N,H,W) bool: the hand in ``images`` (N,H,W,3) in [0,1], with each silhouette's holes
    filled.

    A pixel is the hand where its brightest channel exceeds ``threshold`` (the dark
    background's noise) and half the brightest pixel within ``window`` px: an edge pixel
    that the hand covers in part is as bright as the part covered, so the half-maximum
    puts the silhouette's edge where the hand's is, not up to a pixel outside it
    (:func:`image_coverage` above 1/2).
    """
    return (image_coverage(images, threshold, window) > 0.5).cpu()


def signed_distance(silhouettes: Tensor) -> Tensor:
    """(N,H,W) float: per pixel centre the distance (px) to the silhouette's edge, positive
    outside it and negative inside, so that it is 0 on the edge between two pixels."""
    out = []
    for s in silhouettes.cpu().numpy():
        outside = ndimage.distance_transform_edt(~s) - 0.5
        inside = ndimage.distance_transform_edt(s) - 0.5
        out.append(np.where(s, -inside, outside))
    return torch.from_numpy(np.stack(out).astype(np.float32)) if out else torch.zeros(0)


def outline_points(
    silhouette: Tensor, keep: Tensor, brightness: Tensor | None = None, window: int = 1
) -> Tensor:
    """(P,2) float (x, y) pixel coordinates of the outline of the silhouette (H,W bool):
    one point on each edge between a hand pixel where ``keep`` (H,W bool) holds and a
    background pixel; edges on the image's border are not outlines.

    Without ``brightness`` a point is its pixel edge's midpoint. With ``brightness`` (H,W)
    (the image's brightest channel) it moves along the line through the two pixels'
    centres to where the hand's outline crosses it, ``c_hand + c_background - 1/2`` px from
    the hand pixel's centre (clamped to the two pixels' centres), where a coverage is the
    pixel's brightness over the brightest within ``window`` px of the hand pixel.
    """
    s = silhouette
    points = []
    h, w = s.shape
    if brightness is not None:
        if brightness.shape != s.shape:
            raise ParameterError(
                f"outline_points: brightness {tuple(brightness.shape)} and silhouette "
                f"{tuple(s.shape)} must have one size"
            )
        size = 2 * window + 1
        local = F.max_pool2d(brightness[None, None].float(), size, stride=1, padding=window)
        reference = local[0, 0].clamp_min(1e-6)
    # (dy, dx): the neighbour that is background; the edge lies half a pixel that way.
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        neighbour = torch.zeros_like(s)
        ys = slice(max(dy, 0), h + min(dy, 0))
        xs = slice(max(dx, 0), w + min(dx, 0))
        yd = slice(max(-dy, 0), h + min(-dy, 0))
        xd = slice(max(-dx, 0), w + min(-dx, 0))
        neighbour[yd, xd] = ~s[ys, xs]
        rows, cols = torch.nonzero(s & neighbour & keep, as_tuple=True)
        offset = torch.full(rows.shape, 0.5)  # from the hand pixel's centre, in px
        if brightness is not None:
            ref = reference[rows, cols]
            hand = (brightness[rows, cols] / ref).clamp(0, 1)
            background = (brightness[rows + dy, cols + dx] / ref).clamp(0, 1)
            offset = (hand + background - 0.5).clamp(0, 1)
        x = cols.float() + 0.5 + offset * dx
        y = rows.float() + 0.5 + offset * dy
        points.append(torch.stack([x, y], dim=-1))
    return torch.cat(points) if points else torch.zeros(0, 2)


def surface_points(vertices: Tensor, faces: Tensor) -> Tensor:
    """(B, V + F*7, 3): the vertices (B,V,3) and fixed barycentric points of every face."""
    bary = _BARYCENTRIC.to(vertices)
    corners = vertices[:, faces]  # (B,F,3,3)
    inner = torch.einsum("sk,bfkc->bfsc", bary, corners).flatten(1, 2)
    return torch.cat([vertices, inner], dim=1)


def project(points: Tensor, K: Tensor, R: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel coordinates (N,P,2) and depths (N,P) of ``points`` (N,P,3) in N cameras."""
    cam = torch.einsum("nij,npj->npi", R, points) + t[:, None, :]
    z = cam[..., 2]
    pix = torch.einsum("nij,npj->npi", K, cam)
    return pix[..., :2] / z.clamp_min(1e-6)[..., None], z


class SilhouetteTargets:
    """What the silhouette fit holds the N views of a :class:`ViewStack` to, from their
    images and the given fit's masks.

    sdf (N,H,W): the signed distance of each view's silhouette (px); a crop's padding
    counts as hand there, so that no point is pushed out of it. outline (N,O,2) pixel
    coordinates of up to ``max_outline`` outline points per view, padded;
    outline_valid (N,O) bool: which are real.
    """

    def __init__(self, views: ViewStack, cfg: SilhouetteFitConfig) -> None:
        silhouettes = image_silhouettes(views.images, cfg.threshold, cfg.edge_window)
        photo = torch.ones_like(silhouettes) if views.valid is None else views.valid.cpu()
        unknown_is_hand = silhouettes | ~photo
        self.sdf = signed_distance(unknown_is_hand)
        keep = silhouette_band(views.masks.cpu(), cfg.band) & photo
        brightness = views.images.amax(dim=-1).float().cpu() if cfg.subpixel_outline else None
        generator = torch.Generator().manual_seed(cfg.seed)
        outlines = []
        for i in range(len(views)):
            points = outline_points(
                unknown_is_hand[i],
                keep[i],
                None if brightness is None else brightness[i],
                cfg.edge_window,
            )
            if len(points) > cfg.max_outline:
                pick = torch.randperm(len(points), generator=generator)[: cfg.max_outline]
                points = points[pick]
            outlines.append(points)
        longest = max((len(p) for p in outlines), default=0)
        self.outline = torch.zeros(len(outlines), longest, 2)
        self.outline_valid = torch.zeros(len(outlines), longest, dtype=torch.bool)
        for i, points in enumerate(outlines):
            self.outline[i, : len(points)] = points
            self.outline_valid[i, : len(points)] = True
        self.height, self.width = views.height, views.width


def mesh_edges(faces: Tensor) -> Tensor:
    """(E,2) long: each edge of the triangles ``faces`` (F,3) once."""
    pairs = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return torch.unique(pairs.sort(dim=1).values, dim=0)


def segment_distance(points: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """(...): the distance of ``points`` (...,2) to the segments from ``a`` to ``b`` (...,2)."""
    ab = b - a
    t = ((points - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)
    closest = a + t.clamp(0, 1)[..., None] * ab
    return (points - closest).norm(dim=-1)


def vertex_edges(edges: Tensor, n_vertices: int) -> Tensor:
    """(V,D) long: the edges (indices into ``edges`` (E,2)) that meet at each vertex, each
    row padded by repeating its first (D: the most that meet at one vertex; a vertex on no
    edge gets edge 0, a harmless extra candidate)."""
    meeting: list[list[int]] = [[] for _ in range(n_vertices)]
    for index, (a, b) in enumerate(edges.tolist()):
        meeting[a].append(index)
        meeting[b].append(index)
    width = max((len(m) for m in meeting), default=1)
    rows = [(m or [0]) + [(m or [0])[0]] * (width - len(m or [0])) for m in meeting]
    return torch.tensor(rows, dtype=torch.long, device=edges.device)


def _closest_edge(
    vpix: Tensor, sdf_at: Tensor, outline: Tensor, edges: Tensor, at_vertex: Tensor, k: int = 8
) -> Tensor:
    """(N,O) index into ``edges`` (E,2) of the projected mesh edge closest to each of
    ``outline`` (N,O,2); ``vpix`` (N,V,2) the projected vertices, ``sdf_at`` (N,V) the
    silhouette's distance at them, ``at_vertex`` (V,D) :func:`vertex_edges`.

    The candidates for an outline point are the edges that meet at its ``k`` closest
    vertices near or outside the silhouette (> -2 px; the rest lie inside it, farther
    from its outline): the mesh's projected outline is made of such edges, and searching
    them alone keeps the search linear in the outline's length."""
    result = torch.zeros(outline.shape[:2], dtype=torch.long, device=vpix.device)
    with torch.no_grad():
        for n in range(len(vpix)):
            candidates = torch.nonzero(sdf_at[n] > -2).squeeze(1)
            if not len(candidates) or not outline.shape[1]:
                continue
            near = torch.cdist(outline[n], vpix[n, candidates])  # (O,C)
            closest = near.topk(min(k, len(candidates)), dim=1, largest=False).indices
            options = at_vertex[candidates[closest]].flatten(1)  # (O,k*D)
            ends = vpix[n][edges[options]]  # (O,k*D,2,2)
            d = segment_distance(outline[n][:, None], ends[..., 0, :], ends[..., 1, :])
            result[n] = torch.gather(options, 1, d.argmin(1, keepdim=True))[:, 0]
    return result


def fit_silhouette_corrections(
    hand: HandModel,
    mano: ManoParams,
    corrections: PoseCorrections,
    views: ViewStack,
    cfg: SilhouetteFitConfig | None = None,
) -> dict[str, float]:
    """Fit ``corrections`` (T frames, changed in place) so that ``mano`` (T frames, the
    given fits with the subject's betas) corrected by them matches the hand's silhouette
    in ``views`` (``frame_ids`` index the T frames).

    Returns the losses (px) before and after: ``inside_before``, ``outline_before``,
    ``inside_after``, ``outline_after``.
    """
    cfg = cfg or SilhouetteFitConfig()
    if len(views) == 0:
        raise ParameterError("fit_silhouette_corrections: no views")
    if int(views.frame_ids.max()) >= len(mano) or int(views.frame_ids.min()) < 0:
        raise ParameterError(
            f"fit_silhouette_corrections: view frame_ids must lie in [0, {len(mano)})"
        )
    if corrections.orient.shape[0] != len(mano):
        raise ParameterError(
            f"fit_silhouette_corrections: {corrections.orient.shape[0]} corrections for "
            f"{len(mano)} frames"
        )
    device = corrections.orient.device
    targets = SilhouetteTargets(views, cfg)
    sdf = targets.sdf.to(device)[:, None]  # (N,1,H,W)
    outline = targets.outline.to(device)
    outline_valid = targets.outline_valid.to(device)
    K, R, t = (x.to(device).float() for x in (views.K, views.R, views.t))
    frame_ids = views.frame_ids.to(device).long()
    faces = hand.faces
    edges = mesh_edges(faces).to(device)
    n_vertices = hand.num_vertices
    at_vertex = vertex_edges(edges, n_vertices)
    size = torch.tensor([targets.width, targets.height], device=device, dtype=torch.float32)
    optimizer = torch.optim.Adam(corrections.parameters(), lr=cfg.lr, eps=1e-15)
    match = torch.zeros(0)  # (N,O) index of each outline point's closest mesh edge

    def losses(rematch: bool) -> tuple[Tensor, Tensor]:
        """The inside and outline losses of the current corrections; ``rematch``: find
        each outline point's closest projected mesh edge again first."""
        nonlocal match
        posed = hand(corrections.apply(mano).to(hand.faces.device))
        points = surface_points(posed.vertices, faces).to(device).float()[frame_ids]
        pix, z = project(points, K, R, t)
        in_image = (z > 0) & (pix >= 0).all(-1) & (pix <= size).all(-1)
        grid = (2 * pix / size - 1)[:, :, None, :]  # (N,P,1,2)
        d = F.grid_sample(sdf, grid, mode="bilinear", align_corners=False)[:, 0, :, 0]
        inside = F.huber_loss(d.clamp_min(0), torch.zeros_like(d), reduction="none", delta=1.0)
        inside = (inside * in_image).sum(1) / in_image.sum(1).clamp_min(1)
        vpix, vd = pix[:, :n_vertices], d[:, :n_vertices]  # the vertices come first
        if rematch:
            match = _closest_edge(vpix.detach(), vd.detach(), outline, edges, at_vertex)
        ends = edges[match]  # (N,O,2)
        a = torch.gather(vpix, 1, ends[..., 0, None].expand(-1, -1, 2))
        b = torch.gather(vpix, 1, ends[..., 1, None].expand(-1, -1, 2))
        gap = segment_distance(outline, a, b)
        gap = F.huber_loss(gap, torch.zeros_like(gap), delta=1.0, reduction="none")
        counts = outline_valid.sum(1)
        per_view = (gap * outline_valid).sum(1) / counts.clamp_min(1)
        has = counts > 0
        outline_loss = per_view[has].mean() if bool(has.any()) else inside.sum() * 0
        return inside.mean(), outline_loss

    with torch.no_grad():
        inside_before, outline_before = losses(rematch=True)
    for step in range(cfg.steps):
        inside_loss, outline_loss = losses(rematch=step % cfg.match_every == 0)
        loss = inside_loss + outline_loss + cfg.w_prior * corrections.prior()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        inside_after, outline_after = losses(rematch=True)
    return {
        "inside_before": float(inside_before),
        "outline_before": float(outline_before),
        "inside_after": float(inside_after),
        "outline_after": float(outline_after),
    }
