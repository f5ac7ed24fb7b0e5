#!/usr/bin/env bash
# Prepare, on this machine, what the lent GPU machine (device tool; no package registry,
# 64 MiB carried) needs for tools/device_check.sh:
#   .whl/  wheels for Python 3.12 of the dependencies its image lacks
#   .gpu/  a fitted run (checkpoint without optimiser state), its capture, the procedural
#          hand it was fitted with, and the AlexNet LPIPS backbone (VGG's 59 MB do not fit)
#
#   tools/prepare_device_check.sh RUN_DIR      # e.g. demo_out/run
# Then: device run with carry [".whl", ".gpu"] and command `bash tools/device_check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: tools/prepare_device_check.sh RUN_DIR}
PY=${PYTHON:-.venv/bin/python}
[ -f "$RUN/run.json" ] || { echo "error: $RUN is not a handnerf run folder (no run.json)" >&2; exit 2; }
rm -rf .whl .gpu
# libigl (14 MB) is left out: on CUDA the deformer's torch twin runs, and the CPU falls back to it.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  smplx==0.1.28 nerfacc==0.5.3 omegaconf==2.4.0 antlr4-python3-runtime==4.13.2 ijson==3.6.0 \
  kornia==0.9.0 kornia_rs==0.2.0 trimesh==5.2.0 rtree==1.4.1 lpips==0.1.4 embreex==4.4.0.post1
mkdir -p .gpu/run/checkpoints .gpu/lpips
data_root=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["data_root"])' "$RUN/run.json")
cp -r "$data_root" .gpu/capture
cp "$RUN"/run.json "$RUN"/config.yaml .gpu/run/
[ -d "$RUN/mask_cache" ] && cp -r "$RUN/mask_cache" .gpu/run/
"$PY" - "$RUN/checkpoints/latest.pt" .gpu/run/checkpoints/latest.pt <<'PY'
import sys
import torch
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
state.pop("optimizer", None)  # 38 MB of the demo's 58; rendering never reads it
torch.save(state, sys.argv[2])
PY
# The run's data_root is rewritten on the device (its checkout is elsewhere).
"$PY" - .gpu/run/run.json <<'PY'
import json, sys
info = json.load(open(sys.argv[1]))
info["data_root"] = "@GPU@/capture"
json.dump(info, open(sys.argv[1], "w"), indent=2)
PY
"$PY" - <<'PY'
import shutil
from pathlib import Path
from handnerf.hand.procedural import procedural_mano_dir
from handnerf.metrics.perceptual import backbone_weights_file
source = procedural_mano_dir()
shutil.copytree(source, Path(".gpu/hc") / source.name)
alex = backbone_weights_file("alex")
if alex is None:
    raise SystemExit("error: the LPIPS AlexNet backbone is not installed (make install)")
shutil.copy(alex, ".gpu/lpips/")
PY
du -sh .whl .gpu
echo "carried in all (limit 64 MiB): $(( $(du -sb .whl .gpu | awk '{s+=$1} END {print s}') + $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) )) bytes"
