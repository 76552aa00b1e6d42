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

# Sets num_gpus from a leading count argument (then returns 0: the caller shifts it off) or from the machine
# (returns 1); stops with exit status 2 when there is no GPU.
take_num_gpus() {
    if [[ ${1:-} =~ ^[0-9]+$ ]]; then
        num_gpus=$1
        require_gpus "$num_gpus"
        return 0
    fi
    num_gpus=$(count_gpus)
    require_gpus "$num_gpus"
    return 1
}

require_gpus() {
    if [[ $1 -lt 1 ]]; then
        echo "$(basename "$0"): error: no GPU found (nvidia-smi lists none): pass the count as the first argument," \
             "or use launch/single_gpu.sh (which runs on the CPU too)" >&2
        exit 2
    fi
}
