#!/usr/bin/env bash
# Runs every fuzz target for a fixed budget (seconds each, default 60), seeded from the
# project's own sample files. Crashers land in fuzz/artifacts/<target>/; copy them to
# tests/fixtures/fuzz/ and add a regression test. cargo-fuzz needs nightly flags; on a stable
# toolchain RUSTC_BOOTSTRAP=1 enables them.   Usage: bash fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
budget="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
mkdir -p corpus/image_decode corpus/weights corpus/dicom corpus/onnx
cp ../tests/fixtures/dicom/*.dcm corpus/image_decode/ 2>/dev/null || true
cp ../tests/fixtures/pth/*.pth ../tests/fixtures/guided_relu6.safetensors corpus/weights/
cp ../tests/fixtures/onnx-reader/*.onnx corpus/onnx/
cp ../tests/fixtures/onnx/*.onnx corpus/onnx/ 2>/dev/null || true
for f in ../tests/fixtures/dicom/*.dcm; do tail -c +133 "$f" > "corpus/dicom/$(basename "$f")"; done
# Small images keep the fuzzer fast.
python3 - <<'PY' 2>/dev/null || true
import zlib, struct
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
raw = b"".join(b"\0" + bytes((x * 7 + y) % 256 for x in range(8 * 3)) for y in range(8))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
open("corpus/image_decode/small.png", "wb").write(png)
PY
for t in image_decode weights dicom onnx; do
  echo "== $t ($budget s)"
  cargo fuzz run --release -s none "$t" "corpus/$t" -- -max_total_time="$budget" -rss_limit_mb=4096 -max_len=65536
done
