#!/usr/bin/env bash
# Issue 19's acceptance run: `vitdist tune` with 2 workers on 10,000 CIFAR-10 training images (8 epochs a
# trial, 3 seeds an arm, the rate re-tuned for each scientific change, the winner and the template confirmed on 3
# fresh seeds), in at most 60 minutes of wall time on this 2-core machine. Usage: bench/cifar10_tune_workers.sh [DIR]
set -euo pipefail
# shellcheck source=bench/cifar10_data.sh
source "$(dirname "$0")/cifar10_data.sh"
out=${1:-runs/cifar10-tune-workers}
start=$(date +%s)
"$vitdist" tune --preset tiny --data.name imagefolder --data.root "$cache/cifar10" --data.train-subset 10000 \
  --epochs 8 --log.no-progress --sweep-epochs 2 --seeds 3 --confirm-seeds 3 --nuisance-trials 4 --workers 2 \
  --budget-trials 40 --budget-minutes 52 --tune-dir "$out" --overwrite
echo "wall: $(( $(date +%s) - start )) s"
