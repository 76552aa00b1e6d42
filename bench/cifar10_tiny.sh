#!/usr/bin/env bash
# The tiny preset (patch 8) on the shared CIFAR-10 JPEG copy, for a few epochs: accuracy per epoch, seconds per
# epoch and images per second, as printed by the trainer (and in RUN_DIR/metrics.jsonl).
#   bench/cifar10_tiny.sh [EPOCHS] [extra train flags...]
set -euo pipefail
epochs=${1:-5}; shift || true
# shellcheck source=bench/cifar10_data.sh
source "$(dirname "$0")/cifar10_data.sh"
set -x
"$vitdist" train --preset tiny --data.name imagefolder --data.root "$cache/cifar10" --epochs "$epochs" \
  --optim.warmup-epochs 1 --run-dir "${RUN_DIR:-$here/runs/cifar10-tiny-e$epochs}" --overwrite --log.no-progress "$@"
