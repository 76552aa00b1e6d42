#!/usr/bin/env bash
# Run HERE (a machine with PyPI), before the one device call of bench/gpu_check.sh. The lent H200 has PyTorch,
# accelerate, matplotlib, tensorboard, tqdm, PyYAML and scikit-learn but no tyro and no registry: this puts
# tyro and what it needs, as wheels for the device's Python 3.12, into .whl/, and the shared CIFAR-10 copy
# into .gpu/ (both git-ignored). Then call the device tool's run with carry [".whl", ".gpu"] and the command
#   bash bench/gpu_check.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
py=${PYTHON:-python3}
rm -rf .whl && mkdir -p .whl .gpu
# Pure-Python wheels, pinned to the versions CI installs (pip freeze in .venv, built by `make setup`), so the device
# runs what the tests ran; .whl/requirements.txt names them for bench/gpu_check.sh.
pins=$(.venv/bin/python -m pip freeze 2>/dev/null | grep -iE '^(tyro|docstring.parser|typeguard|typing.extensions|shtab)==' || true)
[ "$(echo "$pins" | grep -ciE '^(tyro|docstring.parser|typeguard|typing.extensions)==')" -ge 4 ] \
  || { echo "gpu_prepare: .venv lacks tyro or its needs (run make setup first); found: $pins" >&2; exit 1; }
echo "$pins" > .whl/requirements.txt
echo "wheels: $(tr '\n' ' ' < .whl/requirements.txt)"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl -r .whl/requirements.txt
tarball=${CIFAR10_TARBALL:-$here/../shared/data/cifar10-jpeg.tar.gz}
if [ -f "$tarball" ]; then
  cp "$tarball" .gpu/
else
  echo "gpu_prepare: $tarball not found: bench/gpu_check.sh will skip its CIFAR-10 runs" >&2
fi
du -sh .whl .gpu
