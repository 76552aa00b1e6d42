#!/usr/bin/env bash
# The checklist's first steps on the shared CIFAR-10 JPEG copy, tiny preset, on CPU:
#   1. `vitdist check` (shapes, gradients, overfit 32 samples): all PASS expected, under a minute;
#   2. a short LR sweep (5 rates of the checklist, constant rate, 3 epochs on a 5,000-image stratified subset):
#      a verdict per curve and the recommended rate, in SWEEP_DIR/sweep.json and sweep.png.
#   bench/cifar10_check_sweep.sh [extra sweep flags, e.g. --epochs 5 --data.train-subset 10000]
set -euo pipefail
# shellcheck source=bench/cifar10_data.sh
source "$(dirname "$0")/cifar10_data.sh"
data=(--data.name imagefolder --data.root "$cache/cifar10")
set -x
time "$vitdist" check --preset tiny "${data[@]}"
time "$vitdist" sweep lr --preset tiny "${data[@]}" --epochs 3 --data.train-subset 5000 --data.val-subset 2000 \
  --log.no-progress --log.no-tensorboard --sweep-dir "${SWEEP_DIR:-$here/runs/cifar10-sweep-lr}" "$@"
