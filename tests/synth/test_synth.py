"""Tests of ``handnerf synth``: layout, conventions, rendering and determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handnerf.errors import ConfigError
from handnerf.synth.presets import PRESETS, SynthPreset, get_preset
from handnerf.synth.raycast import HandScene, Lighting
from handnerf.synth.rig import make_dome

SPLIT = "test"
ANNOT = Path("annotations") / SPLIT


def _load(root: Path, what: str) -> dict:
    return json.loads((root / ANNOT / f"InterHand2.6M_{SPLIT}_{what}.json").read_text())


def _image(root: Path, file_name: str) -> np.ndarray:
    return np.asarray(Image.open(root / "images" / SPLIT / file_name).convert("RGB"))


def _mask(root: Path, file_name: str) -> np.ndarray:
    path = (root / "gt_masks" / SPLIT / file_name).with_suffix(".png")
    return np.asarray(Image.open(path)) > 127


# ------------------------------------------------------------------ layout and keys


def test_layout_and_json_keys(tiny_capture: Path) -> None:
    preset = get_preset("tiny")
    data = _load(tiny_capture, "data")
    cams = _load(tiny_capture, "camera")
    joints = _load(tiny_capture, "joint_3d")
    mano = _load(tiny_capture, "MANO_NeuralAnnot")
    n_frames = preset.train_frames + preset.novel_frames
    assert len(data["images"]) == len(data["annotations"]) == preset.n_cameras * n_frames

    seqs = {img["seq_name"] for img in data["images"]}
    assert seqs == {"ROM04_RT_Occlusion", "ROM03_RT_No_Occlusion"}
    for img in data["images"]:
        assert {
            "id",
            "file_name",
            "width",
            "height",
            "capture",
            "subject",
            "seq_name",
            "camera",
            "frame_idx",
        } <= img.keys()
        assert (
            isinstance(img["camera"], str)
            and img["camera"].isdigit()
            and img["camera"].startswith("400")
        )
        assert isinstance(img["frame_idx"], int) and isinstance(img["capture"], int)
        expected = f"Capture0/{img['seq_name']}/cam{img['camera']}/image{img['frame_idx']:04d}.jpg"
        assert img["file_name"] == expected
        assert (tiny_capture / "images" / SPLIT / img["file_name"]).is_file()
        assert (tiny_capture / "gt_masks" / SPLIT / img["file_name"]).with_suffix(".png").is_file()
    for ann in data["annotations"]:
        assert ann["id"] == ann["image_id"]
        assert len(ann["bbox"]) == 4 and all(isinstance(v, float) for v in ann["bbox"])
        assert np.asarray(ann["joint_valid"]).shape == (42, 1)
        assert ann["hand_type"] == "right" and ann["hand_type_valid"] == 1

    assert set(cams) == {"0"}
    cam_ids = {img["camera"] for img in data["images"]}
    for key, length in (("campos", (3,)), ("camrot", (3, 3)), ("focal", (2,)), ("princpt", (2,))):
        assert set(cams["0"][key]) == cam_ids
        for value in cams["0"][key].values():
            assert np.asarray(value, dtype=float).shape == length
    # campos is in millimetres: the dome is about a metre from the hand.
    dist = [np.linalg.norm(p) for p in cams["0"]["campos"].values()]
    assert 900 < min(dist) and max(dist) < 1300

    frame_keys = {str(img["frame_idx"]) for img in data["images"]}
    assert set(joints) == {"0"} and set(joints["0"]) == frame_keys
    assert set(mano) == {"0"} and set(mano["0"]) == frame_keys
    for key in frame_keys:
        entry = joints["0"][key]
        world = np.asarray(entry["world_coord"])
        valid = np.asarray(entry["joint_valid"]).ravel()
        assert world.shape == (42, 3)
        assert (valid[:21] == 1).all() and (valid[21:] == 0).all()
        assert (world[21:] == 0).all() and np.abs(world[:21]).max() > 30  # millimetres
        assert entry["hand_type"] == "right"
        params = mano["0"][key]
        assert params["left"] is None
        assert len(params["right"]["pose"]) == 48
        assert len(params["right"]["shape"]) == 10
        assert len(params["right"]["trans"]) == 3
        assert np.abs(params["right"]["trans"]).max() < 0.5  # metres, not millimetres
    shape = np.asarray(mano["0"][next(iter(frame_keys))]["right"]["shape"])
    assert np.abs(shape).max() > 0.05 and np.abs(shape).max() <= 1.0

    skeleton = (tiny_capture / "annotations" / "skeleton.txt").read_text().splitlines()
    rows = [line.split() for line in skeleton if not line.startswith("#")]
    assert len(rows) == 42
    assert rows[0] == ["r_thumb4", "0", "1"] and rows[20] == ["r_wrist", "20", "-1"]
    assert rows[41] == ["l_wrist", "41", "-1"] and rows[24] == ["l_thumb1", "24", "41"]

    meta = json.loads((tiny_capture / "synth.json").read_text())
    assert meta["preset"]["name"] == "tiny" and meta["hand_model"]["source"] == "procedural"
    assert set(meta["camera_gains"]) == cam_ids
    # atomic writes leave no temporary files behind
    assert not [p for p in tiny_capture.rglob("*.tmp")]


def test_jpegs_have_declared_size(tiny_capture: Path) -> None:
    data = _load(tiny_capture, "data")
    sizes = set()
    for img in data["images"]:
        with Image.open(tiny_capture / "images" / SPLIT / img["file_name"]) as jpeg:
            assert jpeg.format == "JPEG" and jpeg.mode == "RGB"
            assert jpeg.size == (img["width"], img["height"])
        sizes.add((img["width"], img["height"]))
    assert sizes == {(334, 512), (512, 334)}


# ------------------------------------------------------------------ rendering vs annotations


def test_hand_pixels_match_gt_mask(tiny_capture: Path) -> None:
    from scipy.ndimage import binary_dilation, binary_erosion

    data = _load(tiny_capture, "data")
    for img in data["images"][::3]:
        image = _image(tiny_capture, img["file_name"]).astype(int)
        mask = _mask(tiny_capture, img["file_name"])
        assert mask.shape == (img["height"], img["width"])
        assert mask.sum() > 3000  # HandAvatar's minimum
        bright = image.max(axis=-1)
        inner = binary_erosion(mask, iterations=1)
        outside = ~binary_dilation(mask, iterations=2)
        assert (bright[inner] > 12).mean() > 0.995
        assert (bright[outside] < 16).mean() > 0.999
        assert bright.max() > 100  # lit, not a dark silhouette


def test_projected_keypoints_inside_bbox(tiny_capture: Path) -> None:
    data = _load(tiny_capture, "data")
    cams = _load(tiny_capture, "camera")["0"]
    joints = _load(tiny_capture, "joint_3d")["0"]
    for img, ann in zip(data["images"], data["annotations"], strict=True):
        cam = img["camera"]
        R = np.asarray(cams["camrot"][cam])
        campos = np.asarray(cams["campos"][cam])
        fx, fy = cams["focal"][cam]
        cx, cy = cams["princpt"][cam]
        world = np.asarray(joints[str(img["frame_idx"])]["world_coord"])[:21]
        X = (world - campos) @ R.T
        assert (X[:, 2] > 500).all()
        u = fx * X[:, 0] / X[:, 2] + cx
        v = fy * X[:, 1] / X[:, 2] + cy
        x, y, w, h = ann["bbox"]
        assert max(w, h) > 80 and min(w, h) > 30
        assert x > 0 and y > 0 and x + w < img["width"] and y + h < img["height"]
        tol = 1e-3
        assert (u >= x - tol).all() and (u <= x + w + tol).all()
        assert (v >= y - tol).all() and (v <= y + h + tol).all()
        # the keypoints land on the rendered hand
        mask = _mask(tiny_capture, img["file_name"])
        rows = np.clip(np.round(v).astype(int), 0, img["height"] - 1)
        cols = np.clip(np.round(u).astype(int), 0, img["width"] - 1)
        from scipy.ndimage import binary_dilation

        assert binary_dilation(mask, iterations=4)[rows, cols].mean() > 0.8


def test_mano_annotations_reproduce_joints(tiny_capture: Path) -> None:
    import torch

    from handnerf.hand.hand_model import HandModel, ManoParams

    model = HandModel.from_folder(None, "right", dtype=torch.float64)
    joints = _load(tiny_capture, "joint_3d")["0"]
    mano = _load(tiny_capture, "MANO_NeuralAnnot")["0"]
    for key, entry in mano.items():
        params = ManoParams.from_interhand(entry["right"], where=f"frame {key}").to(
            dtype=torch.float64
        )
        with torch.no_grad():
            keypoints_mm = model(params).keypoints[0].numpy() * 1000.0
        np.testing.assert_allclose(
            keypoints_mm, np.asarray(joints[key]["world_coord"])[:21], atol=0.05
        )


def test_shading_differs_between_frames(tiny_capture: Path) -> None:
    data = _load(tiny_capture, "data")
    cam = data["images"][0]["camera"]
    train = [
        i for i in data["images"] if i["camera"] == cam and i["seq_name"] == "ROM04_RT_Occlusion"
    ]
    a, b = (_image(tiny_capture, i["file_name"]).astype(float) for i in train[:2])
    ma, mb = (_mask(tiny_capture, i["file_name"]) for i in train[:2])
    assert (ma != mb).any()
    assert abs(a[ma].mean() - b[mb].mean()) > 0.5 or not np.allclose(a, b)


def test_same_seed_same_capture(tmp_path: Path) -> None:
    from handnerf.synth.writer import synthesize_capture

    small = get_preset("tiny").with_overrides(n_cameras=2, train_frames=2, novel_frames=1)
    first, again, other = tmp_path / "first", tmp_path / "again", tmp_path / "other"
    synthesize_capture(first, small, seed=3, workers=1)
    # With another thread count, whose float sums end in other last bits: the annotation
    # files are rounded, so byte-identical still (a fit fingerprints them by size).
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        synthesize_capture(again, small, seed=3, workers=1)
    finally:
        torch.set_num_threads(threads)
    synthesize_capture(other, small, seed=4, workers=1)
    for what in ("data", "camera", "joint_3d", "MANO_NeuralAnnot"):
        name = ANNOT / f"InterHand2.6M_{SPLIT}_{what}.json"
        assert (again / name).read_bytes() == (first / name).read_bytes(), what
        assert (other / name).read_bytes() != (first / name).read_bytes(), what
    assert (again / "synth.json").read_bytes() == (first / "synth.json").read_bytes()
    images = sorted(p.relative_to(first) for p in (first / "images").rglob("*.jpg"))
    assert len(images) == 6
    for name in images:
        assert (again / name).read_bytes() == (first / name).read_bytes()

    # re-running over a finished capture rewrites the same files
    synthesize_capture(first, small, seed=3, workers=1)
    assert (again / images[0]).read_bytes() == (first / images[0]).read_bytes()


# ------------------------------------------------------------------ renderer on simple scenes


def _sphere(
    radius: float = 0.05, centre: tuple[float, float, float] = (0, 0, 0)
) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    return np.asarray(mesh.vertices) + np.asarray(centre), np.asarray(mesh.faces)


def _grey(points: np.ndarray) -> np.ndarray:
    return np.full((len(points), 3), 0.6)


def test_renderer_uses_embree_and_light_fixed_in_world() -> None:
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    camera = make_dome(np.random.default_rng(0), 1)[0]
    verts, faces = _sphere()
    # an elongated blob so that rotating it is visible
    verts = verts * np.array([2.0, 1.0, 0.6])
    scene = HandScene(verts, verts, faces, _grey)
    assert isinstance(scene.intersector, RayMeshIntersector)
    view = scene.render(camera, supersample=2)
    assert view.image.dtype == np.uint8 and view.mask.dtype == bool
    assert view.image.shape == (camera.height, camera.width, 3)
    assert (view.image[~view.mask & (view.coverage == 0)] == 0).all()

    # Rotate object and camera together about the origin: the silhouette is unchanged but
    # the shading changes, because the light stays fixed in the world...
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("z", 70, degrees=True).as_matrix()
    from dataclasses import replace

    turned_camera = replace(camera, campos=rot @ camera.campos, camrot=camera.camrot @ rot.T)
    turned = HandScene(verts @ rot.T, verts, faces, _grey).render(turned_camera, supersample=2)
    assert (turned.mask == view.mask).mean() > 0.999
    diff = np.abs(turned.image.astype(int) - view.image.astype(int))[view.mask]
    assert diff.mean() > 5
    # ...and turning the light with them reproduces the first image.
    light = Lighting()
    turned_light = replace(light, direction=tuple(rot @ light.unit_direction()))
    relit = HandScene(verts @ rot.T, verts, faces, _grey, turned_light).render(turned_camera, 2)
    diff = np.abs(relit.image.astype(int) - view.image.astype(int))[view.mask]
    assert diff.mean() < 1.0


def test_shadow_rays_darken_occluded_surface() -> None:
    light = Lighting()
    to_light = light.unit_direction()
    ball, ball_faces = _sphere(0.05)
    blocker, blocker_faces = _sphere(0.02, centre=tuple(to_light * 0.12))
    verts = np.concatenate([ball, blocker])
    faces = np.concatenate([ball_faces, blocker_faces + len(ball)])
    alone = HandScene(ball, ball, ball_faces, _grey, light)
    both = HandScene(verts, verts, faces, _grey, light)
    # a ray onto the ball's point that faces the light (the blocker sits between them)
    origin = to_light * 0.051
    ray = -to_light[None]
    tri, t, bary = alone._intersect(origin[None], ray)
    assert tri[0] >= 0
    point = origin[None] + ray * t[:, None]
    lit = alone.shade(tri, point, bary, ray)
    shadowed = both.shade(tri, point, bary, ray)
    assert shadowed.sum() < 0.6 * lit.sum()


def test_albedo_is_read_at_canonical_positions() -> None:
    camera = make_dome(np.random.default_rng(1), 1)[0]
    verts, faces = _sphere()
    offset = np.array([0.3, 0.0, 0.0])

    def split_colour(points: np.ndarray) -> np.ndarray:
        # red where the *canonical* x > 0.3, blue elsewhere
        red = (points[:, 0] > 0.3)[:, None]
        return np.where(red, [[0.9, 0.1, 0.1]], [[0.1, 0.1, 0.9]])

    blue = HandScene(verts, verts, faces, split_colour).render(camera, 1)
    red = HandScene(verts, verts + offset, faces, split_colour).render(camera, 1)
    assert (blue.mask == red.mask).all()
    b, r = blue.image[blue.mask].astype(int), red.image[red.mask].astype(int)
    assert (b[:, 2] > b[:, 0]).mean() > 0.99 and (r[:, 0] > r[:, 2]).mean() > 0.99


# ------------------------------------------------------------------ rig, presets, CLI


def test_dome_rig() -> None:
    cameras = make_dome(np.random.default_rng(0), 24)
    assert [c.cam_id for c in cameras[:3]] == ["400002", "400004", "400006"]
    below = [c for c in cameras if c.campos[2] < -0.1]
    assert len(below) >= 2
    for cam in cameras:
        assert np.allclose(cam.camrot @ cam.camrot.T, np.eye(3), atol=1e-9)
        assert np.isclose(np.linalg.det(cam.camrot), 1.0)
        assert 0.9 < np.linalg.norm(cam.campos) < 1.1
        assert 1050 < cam.focal[0] < 1350
        uv, z = cam.project(np.zeros((1, 3)))
        assert z[0] > 0
        assert np.abs(uv[0] - [cam.width / 2, cam.height / 2]).max() < 45  # looks at the hand
        assert np.all(np.abs(cam.gain - 1.0) < 0.16)
    # the camera x axis has a component along world up when the camera is rolled
    tilts = [abs(c.camrot[0] @ np.array([0, 0, 1.0])) for c in cameras]
    assert max(tilts) > np.sin(np.radians(8)) and min(tilts) < np.sin(np.radians(8))
    # ray_directions inverts project
    cam = cameras[5]
    point = np.array([[0.03, -0.02, 0.05]])
    uv, z = cam.project(point)
    d = cam.ray_directions(uv[:, 0], uv[:, 1])
    np.testing.assert_allclose(
        cam.campos + d[0] * np.linalg.norm(point[0] - cam.campos), point[0], atol=1e-9
    )


def test_presets_and_bad_input(tmp_path: Path) -> None:
    from handnerf.cli import main

    assert set(PRESETS) == {"tiny", "demo", "fullscale"}
    assert PRESETS["fullscale"].n_cameras >= 90
    with pytest.raises(ConfigError, match="unknown synth preset 'huge'"):
        get_preset("huge")
    with pytest.raises(ConfigError, match="side"):
        SynthPreset(name="x", n_cameras=1, train_frames=1, novel_frames=0, side="middle")
    with pytest.raises(ConfigError, match="overlap"):
        SynthPreset(name="x", n_cameras=1, train_frames=5, novel_frames=5, novel_first_frame=2403)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["synth", "--out", str(blocker), "--preset", "tiny"]) == 2
    assert main(["synth", "--out", str(tmp_path / "x"), "--preset", "tiny", "--workers", "0"]) == 2
    missing = tmp_path / "no_mano"
    assert (
        main(
            ["synth", "--out", str(tmp_path / "y"), "--preset", "tiny", "--mano-dir", str(missing)]
        )
        == 2
    )


def test_left_hand_capture(tmp_path: Path) -> None:
    from handnerf.synth.writer import synthesize_capture

    preset = get_preset("tiny").with_overrides(
        side="left", n_cameras=2, train_frames=1, novel_frames=0
    )
    synthesize_capture(tmp_path, preset, seed=0, workers=1)
    (entry,) = _load(tmp_path, "joint_3d")["0"].values()
    valid = np.asarray(entry["joint_valid"]).ravel()
    assert (valid[:21] == 0).all() and (valid[21:] == 1).all()
    assert entry["hand_type"] == "left"
    (params,) = _load(tmp_path, "MANO_NeuralAnnot")["0"].values()
    assert params["right"] is None and len(params["left"]["pose"]) == 48
    data = _load(tmp_path, "data")
    assert {a["hand_type"] for a in data["annotations"]} == {"left"}
    assert _mask(tmp_path, data["images"][0]["file_name"]).sum() > 3000


# ------------------------------------------------------------------ what real captures do


@pytest.fixture(scope="module")
def real_rig_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three cameras, one of them cut by the border, with white-balance errors."""
    from handnerf.synth.writer import synthesize_capture

    preset = get_preset("tiny").with_overrides(
        n_cameras=3, train_frames=1, novel_frames=0, border_cut_cameras=1, white_balance_spread=0.05
    )
    root = tmp_path_factory.mktemp("real_rig")
    synthesize_capture(root, preset, seed=1, workers=1)
    return root


def _projected_vertices(root: Path, img: dict) -> np.ndarray:
    """(V, 2) pixel coordinates of the posed hand's vertices in ``img``'s camera."""
    import torch

    from handnerf.hand.hand_model import HandModel, ManoParams

    model = HandModel.from_folder(None, "right", dtype=torch.float64)
    entry = _load(root, "MANO_NeuralAnnot")["0"][str(img["frame_idx"])]["right"]
    params = ManoParams.from_interhand(entry, where="test").to(dtype=torch.float64)
    with torch.no_grad():
        vertices_mm = model(params).vertices[0].numpy() * 1000.0
    cams = _load(root, "camera")["0"]
    cam = img["camera"]
    X = (vertices_mm - np.asarray(cams["campos"][cam])) @ np.asarray(cams["camrot"][cam]).T
    return X[:, :2] / X[:, 2:] * np.asarray(cams["focal"][cam]) + np.asarray(cams["princpt"][cam])


def test_border_cut_camera_sees_the_hand_partly(real_rig_capture: Path) -> None:
    meta = json.loads((real_rig_capture / "synth.json").read_text())
    assert meta["preset"]["border_cut_cameras"] == 1
    (cut_id,) = meta["border_cut_cameras"]
    data = _load(real_rig_capture, "data")
    for img in data["images"]:
        mask = _mask(real_rig_capture, img["file_name"])
        rim = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        uv = _projected_vertices(real_rig_capture, img)
        inside = (
            (uv[:, 0] >= 0)
            & (uv[:, 0] < img["width"])
            & (uv[:, 1] >= 0)
            & (uv[:, 1] < img["height"])
        )
        if img["camera"] == cut_id:
            # The silhouette runs off the image: the mask touches the border along a stretch,
            # part of the hand projects outside, and most of what is left is still visible.
            assert rim.sum() >= 10
            assert 0.02 < 1.0 - inside.mean() < 0.8
            assert mask.sum() > 3000
        else:
            assert not rim.any() and inside.all()


def test_camera_gains_differ_and_stay_outside_the_interhand_layout(
    real_rig_capture: Path,
) -> None:
    meta = json.loads((real_rig_capture / "synth.json").read_text())
    gains = np.asarray(list(meta["camera_gains"].values()))
    assert gains.shape == (3, 3)
    # Every camera has its own exposure and white balance: no two gains alike, and the
    # red/blue balance (not only the brightness) differs between cameras.
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(gains[i] - gains[j]).max() > 1e-3
    balance = gains[:, 0] / gains[:, 2]
    assert balance.max() - balance.min() > 1e-2
    assert set(meta["camera_gains"]) == {
        img["camera"] for img in _load(real_rig_capture, "data")["images"]
    }
    # Gains live only in synth.json: InterHand's camera.json has no such field.
    assert set(_load(real_rig_capture, "camera")["0"]) == {"campos", "camrot", "focal", "princpt"}
    # The default-off preset stays without white-balance errors or border-cut cameras.
    assert (
        get_preset("tiny").white_balance_spread == 0 and get_preset("tiny").border_cut_cameras == 0
    )
    assert get_preset("demo").white_balance_spread > 0 and get_preset("demo").border_cut_cameras > 0


def test_lighting_is_fixed_in_the_world_up_to_the_camera_gain() -> None:
    """A surface point seen by two cameras has the same radiance once each gain is divided out."""
    from dataclasses import replace

    from handnerf.synth.raycast import srgb_to_linear

    cameras = make_dome(np.random.default_rng(0), 12)
    # The two closest cameras of the dome (tens of degrees apart), given clearly different
    # colour gains.
    centres = np.array([c.campos / np.linalg.norm(c.campos) for c in cameras])
    cosines = centres @ centres.T - 2.0 * np.eye(len(cameras))
    i, j = np.unravel_index(np.argmax(cosines), cosines.shape)
    assert cosines[i, j] < np.cos(np.radians(15.0))  # truly different viewpoints
    first = replace(cameras[i], gain=np.array([1.12, 1.0, 0.88]))
    second = replace(cameras[j], gain=np.array([0.9, 0.97, 1.1]))
    verts, faces = _sphere(0.05)
    # Diffuse + ambient only: a specular highlight moves with the viewer by nature.
    scene = HandScene(verts, verts, faces, _grey, Lighting(specular=0.0))
    views = [scene.render(camera, supersample=1) for camera in (first, second)]

    # Surface points facing both cameras (away from both silhouettes).
    directions = np.random.default_rng(3).normal(size=(4000, 3))
    points = directions / np.linalg.norm(directions, axis=1, keepdims=True) * 0.05
    normals = points / 0.05
    facing = np.ones(len(points), bool)
    for camera in (first, second):
        to_camera = camera.campos - points
        to_camera /= np.linalg.norm(to_camera, axis=1, keepdims=True)
        facing &= np.einsum("nc,nc->n", normals, to_camera) > 0.5
    points = points[facing]
    assert len(points) > 200

    radiance = []
    raw = []
    for camera, view in zip((first, second), views, strict=True):
        uv, _ = camera.project(points)
        cols, rows = np.floor(uv).astype(int).T
        assert view.mask[rows, cols].all()
        pixels = srgb_to_linear(view.image[rows, cols].astype(np.float64) / 255.0)
        raw.append(pixels)
        radiance.append(pixels / camera.gain)
    lit = radiance[0].mean(axis=1) > 0.02
    relative = np.abs(radiance[0] - radiance[1])[lit] / radiance[0][lit]
    assert np.median(relative) < 0.02 and np.mean(relative) < 0.04
    # Without dividing the gains out the two views disagree: the gains matter.
    raw_relative = np.abs(raw[0] - raw[1])[lit] / raw[0][lit]
    assert np.median(raw_relative) > 0.1
