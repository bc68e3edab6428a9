#!/usr/bin/env bash
# Create .venv and install the project with its pinned stack.
#   ./setup.sh          runtime dependencies
#   ./setup.sh --dev    plus the test dependencies (pytest, moto[server], h5py)
# TORCH_INDEX_URL picks the torch 2.13.0 build: unset = pip's configured indexes (on these
# machines the local CPU wheel); e.g. https://download.pytorch.org/whl/cu128 for CUDA,
# https://download.pytorch.org/whl/cpu for a CPU-only build elsewhere.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '2.13.0' else 1)" 2>/dev/null; then
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        "${pip[@]}" install torch==2.13.0 --index-url "$TORCH_INDEX_URL"
    else
        "${pip[@]}" install torch==2.13.0
    fi
fi
"${pip[@]}" install -e ".${extra}"
