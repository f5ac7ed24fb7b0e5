"""Write InterHand2.6M annotation files with the real schema and a real split's sizes.

For timing ``handnerf prepare`` and measuring its peak memory without the real data set:
the four annotation JSONs of a split (data, camera, joint_3d, MANO_NeuralAnnot) get as
many records as the real InterHand2.6M 5 fps test split, spread over its captures,
cameras and sequences; placeholder JPEGs are written only for the benchmark sequence
(hard links to two template files, so 10k images cost almost no disk).

Sizes used (defaults), from the InterHand2.6M homepage (mks0601.github.io/InterHand2.6M):
the 5 fps test split (H+M) has 352,897 images in Capture0..Capture7. Cameras per capture
vary between real captures (roughly 80 to 140); we use 100 for the benchmark capture and
a fixed cycle for the others. Sequence counts and lengths are estimates: 26 sequences per
capture, the benchmark sequence ``ROM04_RT_Occlusion`` with 100 frames x 100 cameras,
and the remaining images spread evenly over the other sequences.

Only the benchmark sequence's MANO fits are posed sensibly (hand at the world origin, in
view of every camera); the other records are random numbers of the right shape. A
``synth.json`` marks the root as synthetic, so ``prepare`` may use the procedural hand.

Example:
  .venv/bin/python tools/make_realscale_annotations.py --out /tmp/realscale
  /usr/bin/time -v handnerf prepare --interhand /tmp/realscale --split test --capture 0 \\
      --seq ROM04_RT_Occlusion --hand right --crop 1.3:256 --out /tmp/realscale_cache
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

REAL_TEST_IMAGES = 352_897
REAL_TEST_CAPTURES = 8
OTHER_CAPTURE_CAMERAS = (139, 120, 110, 95, 130, 85, 125)
SEQUENCES = (
    "ROM01_No_Interaction_2_Hand",
    "ROM02_Interaction_2_Hand",
    "ROM03_RT_No_Occlusion",
    "ROM04_RT_Occlusion",
    "ROM05_RT_Wrist_ROM",
    "ROM07_Rt_Finger_Occlusions",
    "ROM08_Lt_Finger_Occlusions",
    "ROM09_Interaction_Fingers_Touching",
    "0000_neutral_relaxed",
    "0001_good_luck",
    "0002_fake_gun",
    "0003_star_trek",
    "0004_star_trek_occlusion",
    "0005_thumbup_normal",
    "0006_thumbup_relaxed",
    "0007_thumbup_occlusion",
    "0008_finger_spread",
    "0009_thumbtucknormal",
    "0010_thumbtuckrigid",
    "0011_aokay",
    "0012_aokay_upright",
    "0013_surfer",
    "0014_rocker",
    "0015_rocker_backhand",
    "0016_fist",
    "0017_alligator_closed",
)


def camera_ids(n: int) -> list[str]:
    return [str(400002 + 2 * i) for i in range(n)]


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per capture: cameras and ``{seq: frame count}``, totalling ``args.images`` images."""
    cams = [args.bench_cameras, *OTHER_CAPTURE_CAMERAS]
    cams = (cams * args.captures)[: args.captures]
    bench_images = args.bench_frames * args.bench_cameras
    per_capture = (args.images - bench_images) / args.captures
    captures = []
    for capture in range(args.captures):
        budget = per_capture + (bench_images if capture == 0 else 0)
        frames_total = max(len(SEQUENCES), round(budget / cams[capture]))
        seqs: dict[str, int] = {}
        others = [s for s in SEQUENCES if not (capture == 0 and s == args.bench_seq)]
        if capture == 0:
            seqs[args.bench_seq] = args.bench_frames
            frames_total -= args.bench_frames
        base, extra = divmod(frames_total, len(others))
        for i, seq in enumerate(others):
            seqs[seq] = base + (1 if i < extra else 0)
        captures.append({"capture": capture, "cameras": camera_ids(cams[capture]), "seqs": seqs})
    return captures


def dome(n: int, rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    """camera.json tables of ``n`` cameras 1.3 m around the origin (millimetres)."""
    table: dict[str, dict[str, Any]] = {"campos": {}, "camrot": {}, "focal": {}, "princpt": {}}
    golden = np.pi * (3.0 - np.sqrt(5.0))
    for index, cam_id in enumerate(camera_ids(n)):
        z = -0.5 + 1.4 * (index + 0.5) / n
        z = min(z, 0.9)
        direction = np.array(
            [
                np.sqrt(1 - z * z) * np.cos(index * golden),
                np.sqrt(1 - z * z) * np.sin(index * golden),
                z,
            ]
        )
        campos = direction * 1300.0
        forward = -direction
        up = np.array([0.0, 0.0, 1.0])
        right = np.cross(forward, up)
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        width, height = (512, 334) if index % 3 == 2 else (334, 512)
        table["campos"][cam_id] = campos.tolist()
        table["camrot"][cam_id] = np.stack([right, down, forward]).tolist()
        focal = 1250.0 * (1 + rng.normal(0, 0.02))
        table["focal"][cam_id] = [focal, focal]
        table["princpt"][cam_id] = [width / 2 + rng.normal(0, 2), height / 2 + rng.normal(0, 2)]
    return table


def bench_mano(n_frames: int, rng: np.random.Generator) -> list[dict[str, list[float]]]:
    """Plausible right-hand fits centred at the world origin (procedural hand)."""
    import torch

    from handnerf.hand.hand_model import HandModel, ManoParams

    model = HandModel.from_folder(None, "right")
    entries = []
    for _ in range(n_frames):
        entry = {
            "pose": np.concatenate([rng.normal(0, 0.3, 3), rng.normal(0, 0.15, 45)]).tolist(),
            "shape": rng.normal(0, 0.5, 10).tolist(),
            "trans": [0.0, 0.0, 0.0],
        }
        with torch.no_grad():
            verts = model(ManoParams.from_interhand(entry, "bench")).vertices[0].numpy()
        centre = 0.5 * (verts.min(axis=0) + verts.max(axis=0))
        entry["trans"] = (-centre).tolist()
        entries.append(entry)
    return entries


def random_mano(rng: np.random.Generator) -> dict[str, list[float]]:
    return {
        "pose": np.round(rng.normal(0, 0.2, 48), 6).tolist(),
        "shape": np.round(rng.normal(0, 0.5, 10), 6).tolist(),
        "trans": np.round(rng.normal(0, 0.05, 3), 6).tolist(),
    }


class JsonArrayWriter:
    """Write a JSON array element by element (the files are too big to build in memory)."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle
        self.first = True

    def add(self, value: Any) -> None:
        self.handle.write(("" if self.first else ", ") + json.dumps(value))
        self.first = False


def template_images(folder: Path) -> dict[tuple[int, int], Path]:
    """Two placeholder JPEGs (portrait, landscape): a skin-toned blob on a gray backdrop."""
    rng = np.random.default_rng(0)
    paths = {}
    for width, height in ((334, 512), (512, 334)):
        yy, xx = np.mgrid[0:height, 0:width]
        pixels = np.empty((height, width, 3), np.uint8)
        pixels[:] = (70, 75, 85)
        blob = ((xx - width / 2) / (width * 0.22)) ** 2 + (
            (yy - height / 2) / (height * 0.2)
        ) ** 2 < 1
        pixels[blob] = (205, 150, 120)
        noise = rng.integers(-6, 7, size=pixels.shape)
        pixels = np.clip(pixels.astype(int) + noise, 0, 255).astype(np.uint8)
        path = folder / f"placeholder_{width}x{height}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths[(width, height)] = path
    return paths


def link(template: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return
    try:
        os.link(template, target)
    except OSError:
        shutil.copyfile(template, target)


def write(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    out: Path = args.out
    split = args.split
    folder = out / "annotations" / split
    folder.mkdir(parents=True, exist_ok=True)
    captures = plan(args)
    templates = template_images(out) if not args.no_images else {}
    bench = bench_mano(args.bench_frames, rng)

    cameras_json: dict[str, Any] = {}
    joint_ok = [[1]] * 42
    data_path = folder / f"InterHand2.6M_{split}_data.json"
    mano_path = folder / f"InterHand2.6M_{split}_MANO_NeuralAnnot.json"
    joints_path = folder / f"InterHand2.6M_{split}_joint_3d.json"
    n_images = 0
    n_frames = 0
    with (
        data_path.open("w") as data_file,
        mano_path.open("w") as mano_file,
        joints_path.open("w") as joints_file,
        (out / "annotations_tmp_annotations.json").open("w+") as ann_file,
    ):
        data_file.write('{"images": [')
        images = JsonArrayWriter(data_file)
        annotations = JsonArrayWriter(ann_file)
        mano_file.write("{")
        joints_file.write("{")
        for c_index, cap in enumerate(captures):
            capture = cap["capture"]
            table = dome(len(cap["cameras"]), rng)
            cameras_json[str(capture)] = table
            sep = "" if c_index == 0 else ", "
            mano_file.write(f'{sep}"{capture}": {{')
            joints_file.write(f'{sep}"{capture}": {{')
            frame = 0
            first_frame = True
            for seq, count in cap["seqs"].items():
                is_bench = capture == 0 and seq == args.bench_seq
                for f_index in range(count):
                    frame += 6  # 5 fps out of a 30 fps capture
                    n_frames += 1
                    right = bench[f_index] if is_bench else random_mano(rng)
                    left = None if is_bench else random_mano(rng)
                    fsep = "" if first_frame else ", "
                    first_frame = False
                    mano_file.write(
                        f'{fsep}"{frame}": ' + json.dumps({"right": right, "left": left})
                    )
                    world = np.round(rng.normal(0, 60.0, (42, 3)), 4).tolist()
                    joints_file.write(
                        f'{fsep}"{frame}": '
                        + json.dumps(
                            {
                                "world_coord": world,
                                "joint_valid": joint_ok,
                                "hand_type": "right" if is_bench else "interacting",
                                "hand_type_valid": 1,
                            }
                        )
                    )
                    for cam_id in cap["cameras"]:
                        width, height = (
                            (512, 334) if (int(cam_id) - 400002) // 2 % 3 == 2 else (334, 512)
                        )
                        file_name = f"Capture{capture}/{seq}/cam{cam_id}/image{frame:04d}.jpg"
                        images.add(
                            {
                                "id": n_images,
                                "file_name": file_name,
                                "width": width,
                                "height": height,
                                "capture": capture,
                                "subject": capture + 1,
                                "seq_name": seq,
                                "camera": cam_id,
                                "frame_idx": frame,
                            }
                        )
                        annotations.add(
                            {
                                "id": n_images,
                                "image_id": n_images,
                                "bbox": np.round(rng.uniform(50, 200, 4), 2).tolist(),
                                "joint_valid": joint_ok,
                                "hand_type": "right" if is_bench else "interacting",
                                "hand_type_valid": 1,
                            }
                        )
                        if is_bench and templates:
                            link(templates[(width, height)], out / "images" / split / file_name)
                        n_images += 1
            mano_file.write("}")
            joints_file.write("}")
        mano_file.write("}")
        joints_file.write("}")
        data_file.write('], "annotations": [')
        ann_file.seek(0)
        shutil.copyfileobj(ann_file, data_file)
        data_file.write('], "categories": [{"id": 1, "name": "hand"}]}')
    (out / "annotations_tmp_annotations.json").unlink()
    (folder / f"InterHand2.6M_{split}_camera.json").write_text(json.dumps(cameras_json))
    sizes = {p.name: p.stat().st_size for p in sorted(folder.glob("*.json"))}
    (out / "synth.json").write_text(json.dumps({"made_by": "tools/make_realscale_annotations.py"}))
    return {"images": n_images, "frames": n_frames, "captures": len(captures), "files": sizes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=REAL_TEST_IMAGES)
    parser.add_argument("--captures", type=int, default=REAL_TEST_CAPTURES)
    parser.add_argument("--bench-seq", default="ROM04_RT_Occlusion")
    parser.add_argument("--bench-frames", type=int, default=100)
    parser.add_argument("--bench-cameras", type=int, default=100)
    parser.add_argument("--no-images", action="store_true", help="annotations only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.monotonic()
    summary = write(args)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
