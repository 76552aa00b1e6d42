# shellcheck shell=bash disable=SC2034  # sets variables for the script that sources it
# Sourced by the bench scripts: unpacks the shared CIFAR-10 JPEG copy once into the cache and sets $cache.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tarball=${CIFAR10_TARBALL:-$here/../shared/data/cifar10-jpeg.tar.gz}
cache=${VITDIST_CACHE:-$HOME/.cache/vitdist}/cifar10-jpeg
if [ ! -d "$cache/cifar10/train" ]; then
  [ -f "$tarball" ] || { echo "bench: $tarball not found (the shared CIFAR-10 copy); set CIFAR10_TARBALL" >&2; exit 2; }
  mkdir -p "$cache" && tar -xzf "$tarball" -C "$cache"
fi
vitdist=${VITDIST:-$here/.venv/bin/vitdist}
