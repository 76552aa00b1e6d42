#!/usr/bin/env bash
# The GPU checks of issue 4, in ONE device call (about 5 minutes on an H200, within a 15-minute device budget):
#   1. bench/autobatch_gpu.py: measured micro-batch, analytic estimate / torch.cuda.max_memory_allocated,
#      images/s, for tiny, small and base in bf16, on the whole GPU and within 4, 8 and 16 GB;
#   2. `vitdist autobatch --preset base --precision bf16 --global-batch 1024`, the command as users run it;
#   3. the trainer with --batch.auto: the tiny preset on CIFAR-10 for 20 epochs in bf16, the same run as the
#      CPU figures of bench/results/cifar10-tiny-e20 (bench/cifar10_tiny.sh 20), so the two compare.
# Prepare here with bench/gpu_prepare.sh, then call the device tool's run with carry [".whl", ".gpu"] and
#   bash bench/gpu_check.sh
# Each step has its own time limit, and a failing step does not stop the next. Logs land in $OUT (the device
# tool's folder that comes back), else runs/gpu-check.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here" || exit 1
out=${OUT:-$here/runs/gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 VITDIST_CACHE=${VITDIST_CACHE:-/tmp/vitdist-cache}
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then  # tyro and its needs (bench/gpu_prepare.sh)
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$here
else
  export PYTHONPATH=$here${PYTHONPATH:+:$PYTHONPATH}
fi
printf '#!/bin/sh\nexec %s -m vitdist "$@"\n' "$py" > /tmp/vitdist && chmod +x /tmp/vitdist  # for bench/*.sh

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log to $out/NAME.txt, say how it ended
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "=== $name (limit ${limit} s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

step env 60 sh -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; \
  $py -c 'import sys, torch, accelerate, tyro; print(sys.version.split()[0], \"torch\", torch.__version__, \
\"accelerate\", accelerate.__version__, \"tyro\", tyro.__version__, \
torch.cuda.get_device_name() if torch.cuda.is_available() else \"no GPU\")'"
step autobatch_bench 240 "$py" bench/autobatch_gpu.py --budgets-gb 0 4 8 16
step autobatch_cli 90 /tmp/vitdist autobatch --preset base --precision bf16 --global-batch 1024
if [ -f .gpu/cifar10-jpeg.tar.gz ]; then
  RUN_DIR=$out/tiny-bf16 CIFAR10_TARBALL=$here/.gpu/cifar10-jpeg.tar.gz VITDIST=/tmp/vitdist \
    step train_tiny 300 bash bench/cifar10_tiny.sh "${EPOCHS:-20}" --precision bf16 --batch.auto
  # metrics.jsonl and results.json come back; checkpoints do not (the device tool returns 8 files at most).
  for f in metrics.jsonl results.json; do cp "$out/tiny-bf16/$f" "$out/tiny_$f" 2>/dev/null; done
  rm -rf "$out/tiny-bf16"
else
  echo "=== train_tiny: skipped, .gpu/cifar10-jpeg.tar.gz not here (run bench/gpu_prepare.sh first)"
fi
