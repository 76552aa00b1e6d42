#!/usr/bin/env bash
set -euo pipefail
cd /tmp/vitdist-snap
cache=$HOME/.cache/vitdist/cifar10-jpeg
start=$(date +%s)
/work/main/.venv/bin/python -m vitdist tune --preset tiny --data.name imagefolder --data.root "$cache/cifar10" \
  --data.train-subset 10000 --epochs 8 --log.no-progress --budget-trials 14 --budget-minutes 40 --sweep-epochs 2 \
  --tune-dir /work/main/runs/cifar10-tune
echo "wall: $(( $(date +%s) - start )) s"
