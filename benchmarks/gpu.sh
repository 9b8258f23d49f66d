#!/usr/bin/env bash
# The engine's GPU benchmark (Keras's JAX backend) as one command, for a machine that has only
# Python 3.12, JAX with CUDA, numpy, h5py and Pillow, and no network.
#
#   benchmarks/gpu.sh --prepare   # here, with a network: the missing wheels into benchmarks/wheels/
#   benchmarks/gpu.sh             # there: install them (offline), measure, print, write $OUT/gpu.json
#   benchmarks/gpu.sh --smoke     # anywhere (CI, on a CPU): tiny sizes with this environment's Python
#
# Extra arguments go to benchmarks/gpu.py (e.g. --budget SECONDS).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
wheels="$here/wheels"
# What the engine imports that such a machine lacks; pip brings their own dependencies.
packages=(keras pydantic pydantic-settings)

case "${1:-}" in
--prepare)
    python="${PYTHON:-$root/.venv/bin/python}"
    [ -x "$python" ] || python=python3
    rm -rf "$wheels"
    "$python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        --python-version 3.12 --implementation cp --abi cp312 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$wheels" "${packages[@]}"
    size=$(du -sm "$wheels" | cut -f1)
    ls "$wheels"
    echo "$(ls "$wheels" | wc -l) wheels, ${size} MiB in $wheels"
    if [ "$size" -ge 64 ]; then
        echo "too large to carry (64 MiB at most)" >&2
        exit 1
    fi
    ;;
--smoke)
    shift
    cd "$root"
    exec "${PYTHON:-python3}" "$here/gpu.py" --smoke "$@"
    ;;
*)
    python="${PYTHON:-python3.12}"
    [ -d "$wheels" ] || { echo "no $wheels: run benchmarks/gpu.sh --prepare first" >&2; exit 1; }
    # Only what is missing is installed, next to the JAX, numpy, h5py and Pillow already there:
    # into that Python's own virtual environment if it is one, else into a new one that sees
    # the system's packages (and uses the system's pip: no ensurepip needed).
    if ! "$python" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
        venv="${TMPDIR:-/tmp}/oneiro-gpu-venv"
        [ -x "$venv/bin/python" ] || "$python" -m venv --system-site-packages --without-pip "$venv"
        python="$venv/bin/python"
    fi
    "$python" -m pip install --quiet --disable-pip-version-check --no-index \
        --find-links "$wheels" "${packages[@]}"
    cd "$root"
    exec "$python" "$here/gpu.py" "$@"
    ;;
esac
