"""Neighbour search of the inverse-LBS deformer: which posed vertices are near a sample.

Three lookup backends find the neighbours (all are measured by ``tools/bench_deformer.py``):

- ``kdtree``: scipy ``cKDTree`` per frame on the CPU (multi-threaded queries).
- ``cdist``: chunked ``torch.cdist`` + ``topk``; pure torch, so it runs on the GPU.
- ``grid``: the blended transform, bone-rotation quaternion and nearest-vertex distance
  precomputed on a voxel grid over each frame's posed bounding box (with the exact kNN
  lookup above) and trilinearly interpolated per sample. Expensive to prepare, cheapest to
  query; less accurate near joints because it interpolates across them.

The weighting of the neighbours found (:func:`neighbour_weights`) lives here too, because
the grid backend bakes it into its voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from handnerf.model.blend_math import blend_quaternions
from handnerf.model.deformer_config import DeformerConfig
from handnerf.model.surface_search import rows_by_frame

# Elements of one chunk's (points x vertices) distance matrix in the cdist backend: big
# enough to keep the GPU busy, small enough (64 MiB of float32) not to spike memory.
_CDIST_CHUNK_ELEMENTS = 1 << 24
# Queries smaller than this run single-threaded in the kd-tree backend.
_KDTREE_PARALLEL_MIN_POINTS = 16384
# kd-tree searches stop at this multiple of max_distance (see knn_kdtree).
_KDTREE_BOUND_FACTOR = 2.0


def build_trees(posed_vertices: torch.Tensor) -> list:
    """One scipy ``cKDTree`` per frame of the (F, V, 3) posed vertices (float64, CPU)."""
    from scipy.spatial import cKDTree

    return [cKDTree(v) for v in posed_vertices.cpu().double().numpy()]


def knn(
    posed_vertices: torch.Tensor,
    points: torch.Tensor,
    frame_ids: torch.Tensor,
    k: int,
    cfg: DeformerConfig,
    trees: list | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (N, k), ascending, and ids (N, k) of each sample's nearest frame vertices.

    ``posed_vertices`` (F, V, 3); ``points`` (N, 3) with ``frame_ids`` (N,) into the
    frames; ``trees``: one ``cKDTree`` per frame (:func:`build_trees`) to query, else the
    chunked cdist.
    """
    distances = points.new_empty(points.shape[0], k)
    ids = torch.empty(points.shape[0], k, dtype=torch.long, device=points.device)
    if posed_vertices.shape[0] == 1:
        groups: list[tuple[int, torch.Tensor | slice]] = [(0, slice(None))]
    else:
        # The frames present, grouped by one sort and one host sync (a training batch
        # mixes many frames), not a pass over all rows per prepared frame.
        groups = list(rows_by_frame(frame_ids))
    for frame, selection in groups:
        frame_points = points[selection]
        if trees is not None:
            d, i = knn_kdtree(trees[frame], frame_points, k, cfg)
        else:
            d, i = knn_cdist(posed_vertices[frame], frame_points, k)
        distances[selection] = d
        ids[selection] = i
    return distances, ids


def knn_kdtree(
    tree: object, points: torch.Tensor, k: int, cfg: DeformerConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (N, k), ascending, and ids (N, k) of the ``k`` vertices of ``tree`` (a
    ``cKDTree``) nearest to ``points`` (N, 3), on the points' device and dtype."""
    query = points.cpu().numpy()
    workers = cfg.kdtree_workers
    if workers < 1:
        # scipy's -1 means os.cpu_count(), the host's cores rather than this process's
        # share: follow torch's thread count instead.
        workers = torch.get_num_threads()
    if len(query) < _KDTREE_PARALLEL_MIN_POINTS:
        workers = 1  # starting threads costs more than a small query
    # Samples beyond max_distance are invalid anyway: bounding the search lets the tree stop
    # early (measured ~2x faster on hand-sized shells). Neighbours it did not find come
    # back as (inf, n); they get weight 0 (1/inf) and the nearest vertex's id.
    bound = _KDTREE_BOUND_FACTOR * cfg.max_distance
    d, i = tree.query(  # type: ignore[attr-defined]
        query, k=k, workers=workers, distance_upper_bound=bound
    )
    d = np.asarray(d, dtype=np.float64).reshape(len(query), k)
    i = np.asarray(i, dtype=np.int64).reshape(len(query), k)
    missing = ~np.isfinite(d)
    i = np.where(missing, i[:, :1], i)
    i[missing[:, 0], :] = 0  # nothing in reach: any id; the inf distance marks it invalid
    d = torch.from_numpy(d)
    i = torch.from_numpy(i)
    return d.to(device=points.device, dtype=points.dtype), i.to(points.device)


def knn_cdist(
    vertices: torch.Tensor, points: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (N, k), ascending, and ids (N, k) of the ``k`` of ``vertices`` (V, 3)
    nearest to ``points`` (N, 3): chunked ``torch.cdist`` + ``topk`` (any device)."""
    # Centring first keeps the matmul form of cdist (|x|² + |v|² - 2 x·v) accurate; the
    # selected neighbours' distances are then recomputed exactly from differences.
    centre = vertices.mean(dim=0)
    vertices_c = vertices - centre
    points_c = points - centre
    chunk = max(1, _CDIST_CHUNK_ELEMENTS // vertices.shape[0])
    # The matmul form's BLAS kernels round differently from call to call on the CPU (they
    # depend on buffer alignment): near-ties then pick other neighbours run to run. The
    # direct form is deterministic, and on the CPU this backend only serves as the GPU's twin.
    mode = (
        "donot_use_mm_for_euclid_dist"
        if points.device.type == "cpu"
        else "use_mm_for_euclid_dist_if_necessary"
    )
    ids = torch.empty(points.shape[0], k, dtype=torch.long, device=points.device)
    for start in range(0, points.shape[0], chunk):
        block = torch.cdist(points_c[start : start + chunk], vertices_c, compute_mode=mode)
        ids[start : start + chunk] = torch.topk(block, k, dim=1, largest=False, sorted=True).indices
    distances = (points_c[:, None, :] - vertices_c[ids]).norm(dim=2)
    # Exact distances may reorder near-ties; keep the nearest first (validity uses it).
    distances, order = distances.sort(dim=1)
    return distances, torch.gather(ids, 1, order)


def neighbour_weights(distances: torch.Tensor, cfg: DeformerConfig) -> torch.Tensor:
    """Normalised (N, k) neighbour weights from ascending distances (N, k)."""
    if distances.shape[1] == 1:
        return torch.ones_like(distances)
    if cfg.blend == "gaussian":
        # Shifting by the nearest distance keeps far samples from underflowing to 0/0.
        shifted = distances.square() - distances[:, :1].square()
        weights = torch.exp(-shifted / (2.0 * cfg.gaussian_sigma**2))
    else:
        # The epsilon makes a sample on a vertex take that vertex's weights (1/0 avoided).
        weights = (distances + 1e-7).pow(-cfg.idw_power)
    total = weights.sum(dim=1, keepdim=True)
    # No neighbour in reach (all distances inf): take the first; the sample is invalid.
    empty = total[:, 0] == 0
    if bool(empty.any()):
        weights[empty, 0] = 1.0
        total[empty] = 1.0
    return weights / total


@dataclass
class GridField:
    """Per-frame voxel grids of the deformation, flattened for one gather.

    ``values``: (F * X * Y * Z, 17) = 12 affine entries, 4 quaternion entries, distance.
    ``origin``: (F, 3) world position of node (0, 0, 0) per frame; ``dims``: (X, Y, Z).
    """

    values: torch.Tensor
    origin: torch.Tensor
    voxel_size: float
    dims: tuple[int, int, int]


def build_grid(
    posed_vertices: torch.Tensor,
    vertex_affine: torch.Tensor,
    vertex_quaternion: torch.Tensor,
    cfg: DeformerConfig,
    trees: list | None = None,
) -> GridField:
    """Sample the exact kNN deformation on a voxel grid over each frame's padded box.

    ``posed_vertices`` (F, V, 3); ``vertex_affine`` (F * V, 12) and ``vertex_quaternion``
    (F * V, 4) the per-vertex blended transforms; ``trees`` as in :func:`knn`.
    """
    voxel = cfg.grid_voxel_size
    vertices = posed_vertices
    num_frames, num_vertices = vertices.shape[:2]
    # Padding by max_distance plus a voxel keeps every valid sample strictly inside.
    pad = cfg.max_distance + voxel
    lower = vertices.amin(dim=1) - pad  # (F, 3)
    extent = (vertices.amax(dim=1) + pad - lower).amax(dim=0)  # (3,) common to all frames
    dims = tuple(int(d) for d in (torch.ceil(extent / voxel).long() + 1).tolist())
    axes = [torch.arange(d, dtype=vertices.dtype, device=vertices.device) * voxel for d in dims]
    offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    nodes_per_frame = offsets.shape[0]
    values = vertices.new_empty(num_frames * nodes_per_frame, 17)
    k = 1 if cfg.blend == "nearest" else min(cfg.k_neighbors, num_vertices)
    for frame in range(num_frames):
        nodes = lower[frame] + offsets
        if trees is not None:
            distances, ids = knn_kdtree(trees[frame], nodes, k, cfg)
        else:
            distances, ids = knn_cdist(vertices[frame], nodes, k)
        weights = neighbour_weights(distances, cfg)
        global_ids = frame * num_vertices + ids
        rows = slice(frame * nodes_per_frame, (frame + 1) * nodes_per_frame)
        values[rows, :12] = (weights[..., None] * vertex_affine[global_ids]).sum(dim=1)
        quaternion = blend_quaternions(vertex_quaternion[global_ids], weights)
        values[rows, 12:16] = quaternion / quaternion.norm(dim=1, keepdim=True).clamp_min(1e-12)
        values[rows, 16] = distances[:, 0]
    return GridField(values=values, origin=lower, voxel_size=voxel, dims=dims)  # type: ignore[arg-type]


def sample_grid(
    grid: GridField, points: torch.Tensor, frame_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trilinear interpolation of ``grid`` at (N, 3) ``points`` of frames ``frame_ids`` (N,).

    Returns the blended (N, 12) affine transforms, (N, 4) quaternions (not normalised) and
    (N,) nearest-vertex distances (``inf`` outside the grid's box).
    """
    dims = torch.tensor(grid.dims, device=points.device)
    local = (points - grid.origin[frame_ids]) / grid.voxel_size  # (N, 3) in voxel units
    inside = ((local >= 0) & (local <= (dims - 1).to(local.dtype))).all(dim=1)
    base = local.floor().long().clamp(min=torch.zeros_like(dims), max=dims - 2)
    frac = (local - base.to(local.dtype)).clamp(0.0, 1.0)
    strides = (dims[1] * dims[2], dims[2], 1)
    frame_offset = frame_ids * int(dims.prod())
    values = torch.zeros(points.shape[0], 17, dtype=points.dtype, device=points.device)
    reference_quaternion: torch.Tensor | None = None
    for corner in range(8):
        offset = [(corner >> axis) & 1 for axis in (2, 1, 0)]
        index = frame_offset.clone()
        corner_weight = torch.ones_like(frac[:, 0])
        for axis in range(3):
            index += (base[:, axis] + offset[axis]) * strides[axis]
            corner_weight *= frac[:, axis] if offset[axis] else 1.0 - frac[:, axis]
        corner_values = grid.values[index]
        # Quaternions q and -q are one rotation: align every corner to the first so
        # that interpolation does not cancel them.
        if reference_quaternion is None:
            reference_quaternion = corner_values[:, 12:16]
        else:
            sign = torch.sign((corner_values[:, 12:16] * reference_quaternion).sum(dim=1))
            corner_values[:, 12:16] *= torch.where(sign == 0, 1.0, sign)[:, None]
        values += corner_weight[:, None] * corner_values
    distance = torch.where(inside, values[:, 16], torch.full_like(values[:, 16], torch.inf))
    return values[:, :12], values[:, 12:16], distance
