#!/usr/bin/env bash
# The GPU checks, in ONE device call of at most 540 s (the device tool allows 600 s a command and 15 minutes a
# session, machine start included). Prepare here first with bench/gpu_prepare.sh, then call the device tool's
# run with carry [".whl", ".gpu"] and timeout_s 600:
#   bash bench/gpu_check.sh            issue 9's checks (the fast path):
#     1. env: the GPU, the versions, every import the rest needs (stops here, at once, if one is missing);
#     2. bench/gpu_throughput.py: images/s, TFLOPS and MFU of tiny, small and base at patch 8 and 4 in bf16,
#        eager and compiled, the trainer as users run it; a 20-step torch.profiler summary of small and base at
#        patch 4 (top kernels, the GPU's busy share of a step);
#     3. 20 CIFAR-10 epochs of tiny at patch 4 with the fast path (bench/cifar10_tiny.sh; precision auto).
#   bash bench/gpu_check.sh autobatch  issue 4's checks: bench/autobatch_gpu.py, `vitdist autobatch` as users run
#     it, the tiny preset on CIFAR-10 with --batch.auto (about 5 minutes).
#   bash bench/gpu_check.sh recipe [NAME]  optional, longer: a recipe preset (vit-lite-7-4 by default; `vitdist
#     presets` says what each aims at) on CIFAR-10 for EPOCHS (default 100, its schedule fitted to them) within
#     480 s; the full 200-300 epochs need more than one call allows.
# Each step has its own time limit, and a failing step does not stop the next (except env). Logs land in $OUT
# (the device tool's folder that comes back), else runs/gpu-check.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here" || exit 1
out=${OUT:-$here/runs/gpu-check}
mkdir -p "$out"
ALLOW_CPU=${ALLOW_CPU:-}  # set: run on a CPU too, to check this script (with small THROUGHPUT_ARGS and EPOCHS)
export PYTHONUNBUFFERED=1 VITDIST_CACHE=${VITDIST_CACHE:-/tmp/vitdist-cache} TQDM_DISABLE=1
py=${PYTHON:-python3}
which=${1:-fast}
if [ -f .whl/requirements.txt ]; then  # tyro and its needs, pinned to CI's versions (bench/gpu_prepare.sh)
  "$py" -m pip install -q --no-index --find-links .whl --no-deps --no-compile --no-cache-dir --target /tmp/site \
    -r .whl/requirements.txt || { echo "gpu_check: installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$here
else
  echo "gpu_check: no .whl/requirements.txt (run bench/gpu_prepare.sh here first); using what the machine has" >&2
  export PYTHONPATH=$here${PYTHONPATH:+:$PYTHONPATH}
fi
printf '#!/bin/sh\nexec %s -m vitdist "$@"\n' "$py" > /tmp/vitdist && chmod +x /tmp/vitdist  # for bench/*.sh

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log to $out/NAME.txt, say how it ended
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "=== $name (limit ${limit} s): $*"
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$out/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  return "$rc"
}

step env 60 sh -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; \
  $py -c 'import sys, torch, accelerate, tyro, safetensors, tqdm, vitdist.train; \
print(sys.version.split()[0], \"torch\", torch.__version__, \"accelerate\", accelerate.__version__, \
\"tyro\", tyro.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else \"no GPU\"); \
sys.exit(0 if torch.cuda.is_available() or \"$ALLOW_CPU\" else 3)'" || { echo "gpu_check: env failed, stopping" >&2; exit 1; }

cifar() {  # cifar NAME LIMIT EPOCHS FLAGS...: bench/cifar10_tiny.sh; metrics and results come back, not checkpoints
  local name=$1 limit=$2 epochs=$3
  shift 3
  if [ ! -f .gpu/cifar10-jpeg.tar.gz ]; then
    echo "=== $name: skipped, .gpu/cifar10-jpeg.tar.gz not here (run bench/gpu_prepare.sh first)"
    return
  fi
  RUN_DIR=$out/$name CIFAR10_TARBALL=$here/.gpu/cifar10-jpeg.tar.gz VITDIST=/tmp/vitdist \
    step "$name" "$limit" bash bench/cifar10_tiny.sh "$epochs" "$@"
  for f in metrics.jsonl results.json; do cp "$out/$name/$f" "$out/${name}_$f" 2>/dev/null; done
  rm -rf "${out:?}/$name"
}

case $which in
  fast)
    # shellcheck disable=SC2086  # one word per flag
    step throughput 330 "$py" bench/gpu_throughput.py ${THROUGHPUT_ARGS:---batch 1024} --out "$out"
    cifar tiny_p4 140 "${EPOCHS:-20}" --model.patch-size 4
    ;;
  autobatch)
    step autobatch_bench 240 "$py" bench/autobatch_gpu.py --budgets-gb 0 4 8 16
    step autobatch_cli 90 /tmp/vitdist autobatch --preset base --precision bf16 --global-batch 1024
    cifar tiny-bf16 300 "${EPOCHS:-20}" --precision bf16 --batch.auto
    ;;
  recipe)
    recipe=${2:-vit-lite-7-4}
    cifar "recipe-$recipe" 480 "${EPOCHS:-100}" --preset "$recipe" --optim.warmup-epochs 5
    ;;
  *) echo "usage: bash bench/gpu_check.sh [fast|autobatch|recipe [NAME]]" >&2; exit 2 ;;
esac
echo "=== gpu_check $which: done in $SECONDS s"
