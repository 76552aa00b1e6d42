#!/usr/bin/env bash
# One node, one process per GPU (DDP).
#   launch/multi_gpu.sh [NUM_GPUS] --preset base --precision bf16 --batch.global-batch-size 1024
# NUM_GPUS defaults to the GPUs visible here (CUDA_VISIBLE_DEVICES if set, else nvidia-smi).
# Every other argument goes to `vitdist train`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/common.sh
source "$ROOT/launch/common.sh"

if take_num_gpus "${1:-}"; then shift; fi
cmd=(accelerate launch --config_file "$ROOT/configs/multi_gpu.yaml" --num_processes "$num_gpus"
     -m vitdist.train "$@")
echo "+ ${cmd[*]}" >&2
exec "${cmd[@]}"
