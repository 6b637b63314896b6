#!/usr/bin/env bash
# Starts the app under Xvfb (software rendering) and saves what a newcomer sees into
# screenshots/: the iterations view and the all-regions view of the bundled sample.
# Needs: xvfb, imagemagick (import), Mesa (apt). Usage: bash scripts/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet

display=":${SHOT_DISPLAY:-97}"
wait_s="${SHOT_WAIT:-35}"
tmp=$(mktemp -d)
Xvfb "$display" -screen 0 1280x800x24 >/dev/null 2>&1 &
xvfb=$!
trap 'kill $xvfb 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 1

# Fetched models stay where they are; only the app's settings folder is replaced.
export UNVEIL_MODELS_DIR="${UNVEIL_MODELS_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/unveil/models}"
# A fresh settings folder, so persisted settings from earlier runs do not change the pictures.
export DISPLAY="$display" XDG_DATA_HOME="$tmp" XDG_CONFIG_HOME="$tmp" XDG_RUNTIME_DIR="$tmp"
unset WAYLAND_DISPLAY

shot() {
  ./target/release/unveil --view "$1" "${@:3}" &
  local app=$!
  sleep "${SHOT_WAIT:-$wait_s}"
  # Park the pointer in a corner so no tooltip covers the picture.
  command -v xdotool >/dev/null && xdotool mousemove 1279 799 && sleep 1
  import -window root "screenshots/$2"
  kill "$app"
  wait "$app" 2>/dev/null || true
  echo "wrote screenshots/$2"
}
shot iterations main-view.png
SHOT_WAIT=$((wait_s + 15)) shot iterations sanity-check-view.png --sanity-check
shot regions all-regions-view.png
# The chest X-ray model must have been fetched: unveil models fetch pneumonia-xception
if ./target/release/unveil models | grep -q "^pneumonia-xception.*installed in"; then
  SHOT_WAIT=$((wait_s + 60)) shot regions chest-xray-view.png --model pneumonia-xception assets/chest-xray-pneumonia.jpeg
fi
# A TorchXRayVision model (the test fixture's seeded weights) with its findings picker open.
./target/release/unveil --view iterations --model tests/fixtures/xray/xrv_densenet_opthreshs.pt \
  tests/fixtures/xray/xray_8bit.png &
app=$!
sleep "$wait_s"
xdotool mousemove 1000 12 click 1 && sleep 2 && xdotool mousemove 1279 799 && sleep 1
import -window root screenshots/xray-findings-picker.png
kill "$app"; wait "$app" 2>/dev/null || true
echo "wrote screenshots/xray-findings-picker.png"
