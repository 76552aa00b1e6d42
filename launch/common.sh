# shellcheck shell=bash
# Shared by the launchers (sourced, not run).

# GPUs visible to this process: CUDA_VISIBLE_DEVICES when set, else nvidia-smi's list, else 0.
count_gpus() {
    if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
        local ids
        IFS=, read -r -a ids <<< "$CUDA_VISIBLE_DEVICES"
        echo "${#ids[@]}"
    elif command -v nvidia-smi > /dev/null 2>&1; then
        nvidia-smi --list-gpus 2> /dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
}

require_gpus() {
    if [[ $1 -lt 1 ]]; then
        echo "$(basename "$0"): error: no GPU found (nvidia-smi lists none): pass the count as the first argument," \
             "or use launch/single_gpu.sh (which runs on the CPU too)" >&2
        exit 2
    fi
}
