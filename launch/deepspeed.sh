#!/usr/bin/env bash
# DeepSpeed ZeRO on one node, one process per GPU.
#   launch/deepspeed.sh STAGE [NUM_GPUS] --preset base --precision bf16
# STAGE: 1 (optimizer state sharded), 2 (+ gradients), 3 (+ parameters), 3-offload (ZeRO-3 with parameters
# and optimizer state in CPU memory). NUM_GPUS defaults to the GPUs visible here. Every other argument
# goes to `vitdist train`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=launch/common.sh
source "$ROOT/launch/common.sh"

usage="usage: launch/deepspeed.sh STAGE [NUM_GPUS] [vitdist train flags...]  (STAGE: 1, 2, 3 or 3-offload)"
case ${1:-} in
    1 | 2 | 3) name=zero$1 ;;
    3-offload) name=zero3_offload ;;
    "" | -h | --help) echo "$usage" >&2; exit 2 ;;
    *) echo "launch/deepspeed.sh: error: ZeRO stage '$1' is not one of 1, 2, 3, 3-offload" >&2; echo "$usage" >&2; exit 2 ;;
esac
shift
if take_num_gpus "${1:-}"; then shift; fi
# The JSON path is passed absolute so the launch works from any directory (the YAML's is relative to the repo).
cmd=(accelerate launch --config_file "$ROOT/configs/$name.yaml"
     --deepspeed_config_file "$ROOT/configs/ds_$name.json" --num_processes "$num_gpus"
     -m vitdist.train "$@")
echo "+ ${cmd[*]}" >&2
exec "${cmd[@]}"
