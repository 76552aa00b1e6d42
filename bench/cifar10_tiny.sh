#!/usr/bin/env bash
# The tiny preset (patch 8) on the shared CIFAR-10 JPEG copy, for a few epochs: accuracy per epoch, seconds per
# epoch and images per second, as printed by the trainer (and in RUN_DIR/metrics.jsonl).
#   bench/cifar10_tiny.sh [EPOCHS] [extra train flags...]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
epochs=${1:-5}; shift || true
tarball=${CIFAR10_TARBALL:-$here/../shared/data/cifar10-jpeg.tar.gz}
cache=${VITDIST_CACHE:-$HOME/.cache/vitdist}/cifar10-jpeg
if [ ! -d "$cache/cifar10/train" ]; then
  [ -f "$tarball" ] || { echo "bench: $tarball not found (the shared CIFAR-10 copy); set CIFAR10_TARBALL" >&2; exit 2; }
  mkdir -p "$cache" && tar -xzf "$tarball" -C "$cache"
fi
vitdist=${VITDIST:-$here/.venv/bin/vitdist}
set -x
"$vitdist" train --preset tiny --data.name imagefolder --data.root "$cache/cifar10" --epochs "$epochs" \
  --optim.warmup-epochs 1 --run-dir "${RUN_DIR:-$here/runs/cifar10-tiny-e$epochs}" --log.no-progress "$@"
