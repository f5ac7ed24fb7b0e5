#!/usr/bin/env bash
# The GPU check as run on a lent machine (device tool) from what
# tools/prepare_device_check.sh put in .whl/ and .gpu/: nerfacc's CUDA build, the CUDA
# tests, the render bench (nerfacc and torch samplers), bench.py and the early-stop bench.
# Each step has a time limit within DEADLINE seconds; every result is packed into
# $OUT/results.tgz after each step (a timeout loses only the step it stopped), the console
# into $OUT/log.txt. Run as: `bash tools/device_check.sh` (carry [".whl", ".gpu"]).
cd "$(dirname "$0")/.."
: "${OUT:?OUT (the folder whose files come back) is not set}"
START=$SECONDS
DEADLINE=${DEADLINE:-540}
R=/tmp/device_check
mkdir -p $R
exec > >(tee -a "$OUT/log.txt") 2>&1
pack() { tar czf "$OUT/results.tgz" -C $R . 2>/dev/null; }
left() { echo $((DEADLINE - (SECONDS - START))); }
step() { # step NAME MAX_SECONDS COMMAND...
  local name=$1 max=$2 limit
  shift 2
  limit=$(left)
  limit=$((max < limit - 5 ? max : limit - 5))
  if [ $limit -lt 10 ]; then echo "== SKIP $name (no time left)"; return; fi
  echo "== $name (limit ${limit}s) at +$((SECONDS - START))s"
  local s0=$SECONDS
  timeout -k 5 $limit "$@" >$R/$name.log 2>&1
  echo "== $name rc=$? in $((SECONDS - s0))s"
  tail -n "${TAILN:-15}" $R/$name.log
  pack
}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HANDNERF_CACHE=$PWD/.gpu/hc \
  HANDNERF_LPIPS_WEIGHTS=$PWD/.gpu/lpips TORCH_EXTENSIONS_DIR=/tmp/tex TORCH_CUDA_ARCH_LIST=9.0 \
  MAX_JOBS=16 NUMBA_CACHE_DIR=/tmp/nb
sed -i "s#@GPU@#$PWD/.gpu#" .gpu/run/run.json
nvidia-smi -L
nvcc --version | tail -1
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
step nerfacc_build 240 python3 -c "
import time; t = time.perf_counter()
from nerfacc.cuda import _backend
print('nerfacc', _backend._C, 'built in %.1f s' % (time.perf_counter() - t))
from handnerf.model.kernels import nerfacc_kernels
print('nerfacc_kernels(cuda) =', nerfacc_kernels('cuda'))"
# The files holding cuda-marked tests (tests/test_cuda_markers.py keeps them marked); the
# rest of the suite needs packages (viser, ray, playwright) the machine does not carry, and
# so does the ST-LPIPS fallback's test (stlpips-pytorch, 66 MB).
TAILN=30 step pytest_cuda 240 python3 -m pytest -m cuda -q -rs -p no:cacheprovider --timeout 200 \
  --junitxml=$R/junit.xml --deselect "tests/metrics/test_perceptual.py::test_cuda_matches_cpu[fallback]" \
  $(grep -rl "mark.cuda" tests --include="test_*.py" | grep -v test_cuda_markers)
TAILN=14 step render_cuda_auto 120 python3 tools/bench_render.py --run .gpu/run --device cuda \
  --views 3 --repeats 5 --out $R/render_cuda_auto.json
TAILN=14 step render_cuda_torch 120 python3 tools/bench_render.py --run .gpu/run --device cuda \
  --sampler torch --views 3 --repeats 5 --out $R/render_cuda_torch.json
TAILN=25 step bench_cuda 200 python3 tools/bench.py --device cuda --data .gpu/capture \
  --minutes 0.75 --set loss.lpips_net=alex --out $R/bench_cuda.json
step early_stop 90 python3 tools/bench_early_stop.py --device cuda --steps 300 \
  --out $R/early_stop.json
pack
echo "done at +$((SECONDS - START))s"
