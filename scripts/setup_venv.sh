#!/usr/bin/env bash
# Create the private Python venv used by the asset/fixture scripts and install
# the pinned requirements. Tested with CPython 3.11.7 (`python3` on the dev
# machine, pyenv). Override the interpreter with PYTHON=..., the location with
# VENV=... (default: <repo>/.venv-scripts, which is git-ignored).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$REPO/.venv-scripts}"

pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$pyver" != "3.11" ]; then
    echo "warning: tested with Python 3.11 (got $pyver from $PYTHON)" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --disable-pip-version-check \
    -r "$REPO/scripts/requirements.txt"
"$VENV/bin/python" -c 'import torch, torchvision, safetensors, skimage, PIL, numpy; print("venv OK: torch", torch.__version__, "python", __import__("sys").version.split()[0])'
echo "venv ready: $VENV"
