#!/usr/bin/env bash
# The prepared GPU check of issue 17: one run, no network, everything written under $OUT.
#   tools/gpu_check.sh [--lmdb-wheel PATH] [--dry-run]
# 0. the named CUDA kernels (on failure the rest runs without them); 1. the GPU-marked tests, then the layer
# suite (CPU and GPU halves); 2. 1 vs 2 replicas on one GPU;
# 3. VGG-16 (batch 32 and 64, 224x224) forward and forward+backward, vggtool against PyTorch+cuDNN, fp32
# and TF32, with peak memory (bench/bench_gpu.py); 4. per-layer `vggtool time --gpu 0`; 5. the demo
# trained on the GPU (needs the lmdb module: --lmdb-wheel, or a wheel in .whl/, else the step is skipped
# and says so). Sized for under 8 minutes on an H200: each step gets what is left of GPU_CHECK_SECONDS
# (default 450). --dry-run runs the same steps on the CPU with tiny sizes (checks the script only).
set -u -o pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/gpu_check_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
PY=${PYTHON:-python3}
DRY=0
WHEEL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --lmdb-wheel) WHEEL=$2; shift ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
BUDGET=${GPU_CHECK_SECONDS:-450}
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
say() { echo "== $*" | tee -a "$LOG"; }
# run STEP-NAME CAP-SECONDS CMD...: at most CAP seconds and never past the budget
run() {
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - SECONDS ))
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -lt 15 ]; then say "$name: SKIPPED (the ${BUDGET} s budget is spent)"; return 0; fi
  say "$name (at most ${cap} s): $*"
  timeout "$cap" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && say "$name: TIMED OUT after ${cap} s"
  say "$name: exit $rc at ${SECONDS} s"
}

say "gpu_check.sh $(git rev-parse --short HEAD 2>/dev/null) dry-run=$DRY $(date -u +%FT%TZ)"
nvidia-smi -L 2>&1 | tee -a "$LOG" || true
if [ -z "$WHEEL" ]; then WHEEL=$(ls .whl/lmdb-*.whl 2>/dev/null | head -1); fi
if [ -n "$WHEEL" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHEEL" \
    && export PYTHONPATH=$PYTHONPATH:$WORK/site
fi
$PY - <<'PYEOF' 2>&1 | tee -a "$LOG"
import importlib, sys
print("python", sys.version.split()[0])
for name in ("numpy", "cupy", "torch", "lmdb", "cv2", "google.protobuf", "sklearn"):
    try:
        m = importlib.import_module(name)
        print(f"  {name} {getattr(m, '__version__', '?')}")
    except Exception as e:
        print(f"  {name}: MISSING ({type(e).__name__}: {e})")
PYEOF
HAVE_LMDB=$($PY -c "import lmdb" 2>/dev/null && echo 1 || echo 0)

if [ "$DRY" = 1 ]; then
  DEV=cpu; VGG="--dry-run --extra-algorithms winograd4"; TIME_NET="--net A --batch 2 --size 32"; GPU_FLAG=""; DEMO_DEV=cpu; ITERS=2
else
  DEV=gpu; VGG="--batches 32,64 --size 224 --case-timeout 110 --extra-algorithms winograd4"; TIME_NET="--net D --batch 32 --size 224"
  GPU_FLAG="--gpu 0"; DEMO_DEV=gpu:0; ITERS=${DEMO_ITERS:-800}
fi

# The named CUDA kernels first: should they fail on the GPU, the steps after run the generic CuPy code
# (VGGTOOL_NO_CUDA_KERNELS=1) so that one run still gives every figure, and the log says so.
run "named CUDA kernels against the generic CuPy code" 60 $PY -m pytest -q -p no:cacheprovider \
  tests/layers/test_cuda_kernels.py
if [ "$DRY" = 0 ] && ! grep -q "named CUDA kernels against the generic CuPy code: exit 0" "$LOG"; then
  export VGGTOOL_NO_CUDA_KERNELS=1
  say "the named CUDA kernels failed: the steps below run with VGGTOOL_NO_CUDA_KERNELS=1"
fi
run "GPU-marked tests" 120 $PY -m pytest -q -rs -m gpu -p no:cacheprovider --continue-on-collection-errors tests \
  --junitxml="$OUT/pytest_gpu.xml"
run "layer suite (CPU and GPU halves)" 90 $PY -m pytest -q -p no:cacheprovider tests/layers/test_layers_*.py \
  tests/test_device_discipline.py tests/layers/test_dropout_masks.py tests/solvers/test_exchange.py
run "1 vs 2 replicas, float64" 60 $PY bench/bench_gpu.py replicas --device $DEV --dtype float64
run "1 vs 2 replicas, float32" 60 $PY bench/bench_gpu.py replicas --device $DEV --dtype float32
run "VGG vggtool vs PyTorch" 260 $PY bench/bench_gpu.py vgg --device $DEV $VGG --out "$OUT"
$PY bench/bench_gpu.py prototxt "$WORK/vgg_time.prototxt" $TIME_NET
run "per-layer vggtool time" 60 $PY -m vggtool time --net "$WORK/vgg_time.prototxt" $GPU_FLAG --iterations 3
if [ "$HAVE_LMDB" = 1 ]; then
  run "demo on $DEMO_DEV ($ITERS iterations)" 150 $PY -m vggtool demo --devices $DEMO_DEV --iterations $ITERS \
    --out "$WORK/demo"
  cp "$WORK/demo/train.log" "$OUT/demo_train.log" 2>/dev/null || true
else
  say "demo: SKIPPED: no lmdb module (give --lmdb-wheel PATH or put the wheel in .whl/; see README)"
fi
rm -rf "$WORK"
say "done in ${SECONDS} s; files: $(ls "$OUT" | tr '\n' ' ')"
