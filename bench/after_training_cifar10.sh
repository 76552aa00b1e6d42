#!/usr/bin/env bash
# Issue 11's figures on the shared CIFAR-10 copy: a short tiny run (trained here unless RUN already holds one),
# then `vitdist eval` of its test split, `vitdist predict` on 20 test images, and `vitdist export` to every
# format, each export checking itself against the run's logits.
#   bench/after_training_cifar10.sh [RUN] [EPOCHS]
set -euo pipefail
# shellcheck source=bench/cifar10_data.sh
source "$(dirname "$0")/cifar10_data.sh"
run=${1:-$here/runs/cifar10-after}; epochs=${2:-3}
set -x
if [ ! -f "$run/model.safetensors" ]; then
  "$vitdist" train --preset tiny --data.name imagefolder --data.root "$cache/cifar10" --epochs "$epochs" \
    --optim.warmup-epochs 1 --run-dir "$run" --overwrite --log.no-progress
fi
grep -o '"test_acc": [0-9.]*' "$run/results.json"
"$vitdist" eval "$run"
images=$(mktemp -d)
# 20 test images, 2 of each class (file names repeat across class folders: the class goes in the copy's name)
for class_dir in "$cache"/cifar10/test/*/; do
  for f in $(find "$class_dir" -name '*.jpg' | sort | head -2); do
    cp "$f" "$images/$(basename "$class_dir")_$(basename "$f")"
  done
done
"$vitdist" predict "$run" "$images" --out "$run/predict-20.csv"
# Throughput where a worker's start-up no longer dominates: the whole test split (10,000 files).
"$vitdist" predict "$run" "$cache/cifar10/test" --out "$run/predict-test.csv" | tail -1
for format in safetensors timm torchscript onnx hub; do
  "$vitdist" export "$run" --format "$format"
done
