#!/usr/bin/env bash
# Starts the app under Xvfb (software rendering) and saves what a newcomer sees into
# screenshots/: the iterations view and the all-regions view of the bundled sample.
# Needs: xvfb, imagemagick (import), Mesa (apt). Usage: bash scripts/screenshots/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-$PWD/target}/release/unveil"

display=":${SHOT_DISPLAY:-97}"
wait_s="${SHOT_WAIT:-35}"
tmp=$(mktemp -d)
# 1920 x 1080 so the larger layouts fit; 1280 x 800 shots capture the top-left corner.
Xvfb "$display" -screen 0 1920x1080x24 >/dev/null 2>&1 &
xvfb=$!
trap 'kill $xvfb 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 1

# Fetched models stay where they are; only the app's settings folder is replaced.
export UNVEIL_MODELS_DIR="${UNVEIL_MODELS_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/unveil/models}"
# A fresh settings folder, so persisted settings from earlier runs do not change the pictures.
export DISPLAY="$display" XDG_DATA_HOME="$tmp" XDG_CONFIG_HOME="$tmp" XDG_RUNTIME_DIR="$tmp"
unset WAYLAND_DISPLAY

shot() {
  "$bin" --default-settings --view "$1" "${@:3}" &
  local app=$!
  sleep "${SHOT_WAIT:-$wait_s}"
  # Park the pointer in a corner so no tooltip covers the picture.
  command -v xdotool >/dev/null && xdotool mousemove 1279 799 && sleep 1
  import -window root -crop 1280x800+0+0 "screenshots/$2"
  kill "$app"
  wait "$app" 2>/dev/null || true
  echo "wrote screenshots/$2"
}
shot iterations main-view.png
SHOT_WAIT=$((wait_s + 15)) shot iterations sanity-check-view.png --sanity-check
shot regions all-regions-view.png
# The chest X-ray model must have been fetched: unveil models fetch pneumonia-xception
if "$bin" models | grep -q "^pneumonia-xception.*installed in"; then
  SHOT_WAIT=$((wait_s + 60)) shot regions chest-xray-view.png --model pneumonia-xception assets/chest-xray-pneumonia.jpeg
fi
# A chest X-ray opened with the ImageNet model: the mismatch warning.
shot iterations mismatch-warning.png assets/chest-xray-pneumonia.jpeg
# The same where the chest X-ray model is not installed: the warning offers to fetch it.
(export UNVEIL_MODELS_DIR="$tmp/no-models" && shot iterations fetch-offer.png assets/chest-xray-pneumonia.jpeg)

# Interactive shots: start the app, click with xdotool (positions at 1280 x 800, default
# layout), then capture. `start_app ARGS...` leaves the app's pid in $app.
start_app() {
  "$bin" --default-settings "$@" &
  app=$!
  sleep "$wait_s"
}
capture() {
  xdotool mousemove 1279 799 && sleep 1
  import -window root -crop 1280x800+0+0 "screenshots/$1"
  kill "$app"; wait "$app" 2>/dev/null || true
  echo "wrote screenshots/$1"
}

# A TorchXRayVision model (the test fixture's seeded weights) with its findings picker open.
start_app --view iterations --model tests/fixtures/xray/xrv_densenet_opthreshs.pt \
  tests/fixtures/xray/xray_8bit.png
xdotool mousemove 350 35 click 1 && sleep 2          # the Class picker
capture xray-findings-picker.png

# The device menu: every GPU kind listed, the unusable ones greyed, the reason on hover.
start_app --view iterations
xdotool mousemove 1100 12 click 1 && sleep 1          # Device
xdotool mousemove 1080 57 && sleep 2                   # hover "CUDA GPU"
import -window root -crop 1280x800+0+0 screenshots/device-menu.png
kill "$app"; wait "$app" 2>/dev/null || true
echo "wrote screenshots/device-menu.png"

# A pinned run (kernel 11) next to a rerun with kernel 17.
start_app --view iterations
xdotool mousemove 392 260 click 1 && sleep 1                    # Pin this run
for _ in 1 2 3; do xdotool mousemove 47 163 click 1; sleep 0.3; done  # kernel + 3 x 2
sleep "$wait_s"
capture pinned-comparison-view.png

# ONNX graphs (the test fixtures' seeded ViT-B/16 and ConvNeXt-Tiny topologies): the vanilla
# run pinned, then Grad-CAM (with its Layer picker) beside it.
for m in vit_b_16 convnext_tiny; do
  start_app --view iterations --model "tests/fixtures/onnx/$m.onnx"
  xdotool mousemove 392 260 click 1 && sleep 1          # Pin this run (vanilla)
  xdotool mousemove 118 84 click 1 && sleep 1           # Method
  xdotool mousemove 52 180 click 1                      # Grad-CAM
  sleep "$wait_s"
  capture "onnx-$m.png"
done

# The same three-panel layout at other sizes and text scales (no overlap at 1.5x and 2x).
for spec in 1024x768:2 1920x1080:1.5 1280x800:1.5; do
  size=${spec%%:*}; scale=${spec##*:}
  start_app --view iterations --font-scale "$scale"
  xdotool search --sync --name '^unveil$' windowmove 0 0 windowsize "${size%x*}" "${size#*x}"
  xdotool mousemove $((${size%x*} - 1)) $((${size#*x} - 1))
  sleep 3
  import -window root -crop "${size}+0+0" "screenshots/layout-${size}-text-${scale}x.png"
  kill "$app"; wait "$app" 2>/dev/null || true
  echo "wrote screenshots/layout-${size}-text-${scale}x.png"
done

# Presenter mode on a 1920 x 1080 display with 1.5x text.
start_app --presenter --font-scale 1.5
xdotool search --sync --name '^unveil$' windowmove 0 0 windowsize 1920 1080
xdotool mousemove 1919 1079
sleep 3
import -window root -crop 1920x1080+0+0 screenshots/presenter-view.png
kill "$app"; wait "$app" 2>/dev/null || true
echo "wrote screenshots/presenter-view.png"
