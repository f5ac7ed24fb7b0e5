"""Ground-truth images of the textured, posed hand by ray casting (Embree through trimesh).

Per pixel: a primary ray through the pixel centre against the posed mesh; pixels on a
silhouette or an occlusion edge get an ``s x s`` grid of sub-pixel rays (adaptive
anti-aliasing, where aliasing shows); at the hit, the albedo is evaluated at the hit's *canonical*
position (barycentric interpolation of the hit triangle's canonical vertices) so the skin
texture moves with the hand; shading is Lambertian + Blinn-Phong specular from a key light
fixed in the world (shadow rays give self-shadows) plus a sky-tinted ambient term, with
smooth (barycentric vertex) normals. The background is black. Colour is computed in linear
light, multiplied by the camera's gain, averaged over the pixel's sub-samples and encoded
as sRGB. The generic mesh ray casting (Embree, exact first hits) is
:mod:`handnerf.geometry.raycast`; this module shades and renders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from handnerf.geometry.raycast import embree_intersector, first_hits
from handnerf.synth.rig import WORLD_UP, RigCamera

#: Albedo of canonical points: (N, 3) canonical positions (metres) -> (N, 3) sRGB albedo in [0, 1].
AlbedoFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Lighting:
    """A studio light fixed in the world, plus ambient.

    Attributes:
        direction: (3,) unit vector from the hand towards the key light (world).
        key: key-light irradiance (linear units; 1 = albedo-coloured white at normal incidence).
        ambient: ambient irradiance from the upper hemisphere (``WORLD_UP``).
        ground_ambient: ambient irradiance from below (a dark floor bounce).
        specular: Blinn-Phong specular strength (skin has a faint sheen).
        shininess: Blinn-Phong exponent.
        exposure: overall scale of linear radiance before the camera gain.
    """

    direction: tuple[float, float, float] = (0.45, -0.35, 0.82)
    key: float = 1.5
    ambient: float = 0.24
    ground_ambient: float = 0.08
    specular: float = 0.10
    shininess: float = 24.0
    exposure: float = 1.0

    def unit_direction(self) -> np.ndarray:
        d = np.asarray(self.direction, dtype=np.float64)
        return d / np.linalg.norm(d)


@dataclass
class RenderedView:
    """One rendered camera view.

    Attributes:
        image: (H, W, 3) uint8 sRGB image, black background.
        mask: (H, W) bool ground-truth mask: the pixel's ray hits the hand (on anti-aliased
            edge pixels: at least half of its sub-pixel rays do).
        coverage: (H, W) float32 fraction of the pixel's sub-samples that hit the hand.
    """

    image: np.ndarray
    mask: np.ndarray
    coverage: np.ndarray = field(repr=False)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light."""
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear light -> sRGB-encoded values in [0, 1] (clipped)."""
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1.0 / 2.4) - 0.055)


class HandScene:
    """The posed hand of one frame, ready to be rendered from any camera.

    Args:
        vertices: (V, 3) posed world vertices, metres.
        canonical_vertices: (V, 3) the same vertices in canonical space (where albedo lives).
        faces: (F, 3) triangle vertex indices.
        albedo: function of canonical points -> sRGB albedo, see :data:`AlbedoFn`.
        lighting: the world-fixed light.
    """

    def __init__(
        self,
        vertices: np.ndarray,
        canonical_vertices: np.ndarray,
        faces: np.ndarray,
        albedo: AlbedoFn,
        lighting: Lighting | None = None,
    ) -> None:
        import trimesh

        self.mesh = trimesh.Trimesh(
            vertices=np.asarray(vertices, dtype=np.float64),
            faces=np.asarray(faces, dtype=np.int64),
            process=False,
        )
        self.canonical_vertices = np.asarray(canonical_vertices, dtype=np.float64)
        self.albedo = albedo
        self.lighting = lighting or Lighting()
        self.intersector = embree_intersector(self.mesh)
        self.triangles = self.mesh.triangles  # (F, 3, 3)
        self.vertex_normals = np.asarray(self.mesh.vertex_normals)
        self.face_normals = np.asarray(self.mesh.face_normals)

    def _intersect(
        self, origins: np.ndarray, directions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First hits of rays (N, 3): (N,) triangle index or -1, (N,) distance, (N, 3) barycentrics.

        See :func:`handnerf.geometry.raycast.first_hits` (exact float64 refinement of
        Embree's hits, for smooth interpolation).
        """
        return first_hits(self.intersector, self.triangles, origins, directions)

    def shade(
        self, tri: np.ndarray, points: np.ndarray, bary: np.ndarray, view_dirs: np.ndarray
    ) -> np.ndarray:
        """Linear radiance (N, 3) at hit points (N, 3) on triangles ``tri`` (N,).

        ``view_dirs`` (N, 3) are the unit ray directions (camera -> surface).
        """
        light = self.lighting
        faces = self.mesh.faces[tri]  # (N, 3)
        normals = np.einsum("nk,nkc->nc", bary, self.vertex_normals[faces])
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True) + 1e-12
        geometric = self.face_normals[tri]
        # Rays entering the open wrist see the inside of the surface: shade it two-sided.
        backface = np.einsum("nc,nc->n", geometric, view_dirs) > 0.0
        normals[backface] *= -1.0
        geometric = np.where(backface[:, None], -geometric, geometric)

        canonical = np.einsum("nk,nkc->nc", bary, self.canonical_vertices[faces])
        albedo = srgb_to_linear(np.asarray(self.albedo(canonical), dtype=np.float64))

        to_light = light.unit_direction()
        n_dot_l = normals @ to_light
        lit = (n_dot_l > 0.0) & (geometric @ to_light > -0.2)
        if lit.any():
            # Offset along the geometric normal so the shadow ray does not re-hit its own face.
            shadow_origins = points[lit] + geometric[lit] * 2e-4
            blocked = (
                np.asarray(
                    self.intersector.intersects_first(
                        shadow_origins, np.broadcast_to(to_light, shadow_origins.shape).copy()
                    )
                )
                >= 0
            )
            lit[np.flatnonzero(lit)[blocked]] = False
        diffuse = np.where(lit, np.clip(n_dot_l, 0.0, None), 0.0)
        up = normals @ WORLD_UP
        ambient = light.ambient * (0.5 + 0.5 * up) + light.ground_ambient * (0.5 - 0.5 * up)
        half = to_light[None, :] - view_dirs
        half /= np.linalg.norm(half, axis=-1, keepdims=True) + 1e-12
        specular = np.where(
            lit,
            light.specular
            * np.clip(np.einsum("nc,nc->n", normals, half), 0.0, 1.0) ** light.shininess,
            0.0,
        )
        radiance = albedo * (ambient + light.key * diffuse)[:, None] + specular[:, None]
        return radiance * light.exposure

    def render(self, camera: RigCamera, supersample: int = 2) -> RenderedView:
        """Render the hand from ``camera``; edge pixels get ``supersample x supersample`` rays."""
        if supersample < 1:
            raise ValueError("supersample must be >= 1")
        width, height = camera.width, camera.height
        image = np.zeros((height, width, 3), dtype=np.uint8)
        coverage = np.zeros((height, width), dtype=np.float32)
        # Only pixels under the hand's projection can be hit: skip the rest of the frame.
        uv, depth = camera.project(self.mesh.vertices)
        front = depth > 0
        if not front.any():
            return RenderedView(image=image, mask=coverage >= 0.5, coverage=coverage)
        u0, v0 = np.floor(uv[front].min(axis=0)).astype(int) - 2
        u1, v1 = np.ceil(uv[front].max(axis=0)).astype(int) + 2
        u0, u1 = max(u0, 0), min(u1, width)
        v0, v1 = max(v0, 0), min(v1, height)
        if u1 <= u0 or v1 <= v0:
            return RenderedView(image=image, mask=coverage >= 0.5, coverage=coverage)

        grid_h, grid_w = v1 - v0, u1 - u0
        rows, cols = np.mgrid[v0:v1, u0:u1]
        rows, cols = rows.ravel(), cols.ravel()
        pixel_linear = np.zeros((len(rows), 3))
        pixel_coverage = np.zeros(len(rows))

        # Pass 1: one ray through each pixel centre.
        dirs = camera.ray_directions(cols + 0.5, rows + 0.5)
        origins = np.broadcast_to(camera.campos, dirs.shape).copy()
        tri, t, bary = self._intersect(origins, dirs)
        hit = tri >= 0
        edge = np.zeros(len(rows), dtype=bool)
        if supersample > 1:
            edge = _edge_pixels(hit.reshape(grid_h, grid_w), t.reshape(grid_h, grid_w)).ravel()
        # Interior pixels keep their centre sample.
        centre = hit & ~edge
        if centre.any():
            points = origins[centre] + dirs[centre] * t[centre, None]
            pixel_linear[centre] = self.shade(tri[centre], points, bary[centre], dirs[centre])
            pixel_coverage[centre] = 1.0

        # Pass 2: silhouette and occlusion edges get an s x s grid of sub-pixel rays.
        if edge.any():
            n_samples = supersample * supersample
            offsets = (np.arange(supersample) + 0.5) / supersample
            sub_v, sub_u = np.meshgrid(offsets, offsets, indexing="ij")
            edge_rows, edge_cols = rows[edge], cols[edge]
            sub_dirs = camera.ray_directions(
                (edge_cols[None, :] + sub_u.reshape(-1, 1)).ravel(),
                (edge_rows[None, :] + sub_v.reshape(-1, 1)).ravel(),
            )
            sub_origins = np.broadcast_to(camera.campos, sub_dirs.shape).copy()
            sub_tri, sub_t, sub_bary = self._intersect(sub_origins, sub_dirs)
            sub_hit = sub_tri >= 0
            radiance = np.zeros((len(sub_dirs), 3))
            if sub_hit.any():
                points = sub_origins[sub_hit] + sub_dirs[sub_hit] * sub_t[sub_hit, None]
                radiance[sub_hit] = self.shade(
                    sub_tri[sub_hit], points, sub_bary[sub_hit], sub_dirs[sub_hit]
                )
            # Average linear light over the sub-samples (misses are black).
            pixel_linear[edge] = radiance.reshape(n_samples, -1, 3).mean(axis=0)
            pixel_coverage[edge] = sub_hit.reshape(n_samples, -1).mean(axis=0)

        encoded = linear_to_srgb(pixel_linear * camera.gain[None, :])
        image[rows, cols] = np.round(encoded * 255.0).astype(np.uint8)
        coverage[rows, cols] = pixel_coverage
        return RenderedView(image=image, mask=coverage >= 0.5, coverage=coverage)


def _edge_pixels(hit: np.ndarray, depth: np.ndarray, depth_jump: float = 0.004) -> np.ndarray:
    """(H, W) bool: pixels whose 4-neighbourhood crosses a silhouette or a depth jump.

    ``hit`` (H, W) bool and ``depth`` (H, W) ray distances (metres) of the centre rays.
    A depth jump larger than ``depth_jump`` marks an occlusion edge (a finger over the palm).
    """
    edge = np.zeros_like(hit)
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        ha, hb = hit[tuple(a)], hit[tuple(b)]
        both = ha & hb
        gap = np.abs(np.where(both, depth[tuple(a)], 0.0) - np.where(both, depth[tuple(b)], 0.0))
        jump = (ha != hb) | (gap > depth_jump)
        edge[tuple(a)] |= jump
        edge[tuple(b)] |= jump
    return edge
