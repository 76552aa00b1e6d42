#!/usr/bin/env bash
# One process on one GPU (the first visible one; pick another with CUDA_VISIBLE_DEVICES=N).
#   launch/single_gpu.sh --preset base --precision bf16
# Every argument goes to `vitdist train` (python -m vitdist.train).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cmd=(accelerate launch --config_file "$ROOT/configs/single_gpu.yaml" --num_processes 1 -m vitdist.train "$@")
echo "+ ${cmd[*]}" >&2
exec "${cmd[@]}"
