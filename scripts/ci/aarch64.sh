#!/usr/bin/env bash
# CI, after the x86 suites: the kernels as an ARM CPU runs them. Cross-compiles the lib's tests
# and the engine suite for aarch64-unknown-linux-gnu (Linux on ARM; Apple silicon runs the same
# portable Rust) and runs kernel_paths.sh's core subset (every op, the model equality tests
# against PyTorch, Keras and the ONNX exports) under qemu-user. Then checks that the portable
# GEMM and depthwise kernels compiled to NEON fused multiply-adds: aarch64 has no run-time
# kernel switch, so auto-vectorisation is what makes that path usable, and a change that
# loses it would otherwise go unnoticed (the tests only see values).
#
#   bash scripts/ci/aarch64.sh
#
# Needs the Rust target (`rustup target add aarch64-unknown-linux-gnu`), a cross linker and
# qemu-user (Debian: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user; .ci/run installs
# them). From nothing on 2 cores: about 11 min to build (the dependencies once more, for ARM),
# 2-3 min to run; after a change to unveil only, about 3 + 2.
set -euo pipefail
cd "$(dirname "$0")/../.."

target=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu
missing=()
rustup target list --installed 2>/dev/null | grep -qx "$target" || rustup target add "$target" \
  || missing+=("the Rust target $target")
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=("aarch64-linux-gnu-gcc")
command -v qemu-aarch64 >/dev/null || missing+=("qemu-aarch64")
[ -d "$sysroot/lib" ] || missing+=("the ARM C library in $sysroot")
if [ "${#missing[@]}" -gt 0 ]; then
  printf 'aarch64: missing %s\n' "${missing[@]}" >&2
  exit 1
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $sysroot"
KERNEL_PATHS_CORE=1 bash scripts/ci/kernel_paths.sh --target "$target"

# NEON: count 4-lane fused multiply-adds (`fmla vN.4s`) in the portable kernels of the ARM
# engine suite. Each kernel has dozens when vectorised, none when scalar.
binary=$(cargo test --release --target "$target" --test engine --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$binary" ] || { echo "aarch64: the engine suite's binary was not found" >&2; exit 1; }
aarch64-linux-gnu-objdump -d -C --no-show-raw-insn "$binary" | awk '
  /^[0-9a-f]+ <.*>:$/ { name = $0 }
  /\tfmla\tv[0-9]+\.4s/ {
    if (name ~ /<unveil::engine::ops::packed_gemm::gemm>/) gemm++
    if (name ~ /<unveil::engine::ops::depthwise::kernel::tap_sums>/) depthwise++
  }
  END {
    printf "aarch64 NEON: %d fmla v.4s in the packed GEMM, %d in the depthwise kernel\n", gemm, depthwise
    if (gemm < 16 || depthwise < 4) { print "aarch64: a portable kernel is not vectorised with NEON" > "/dev/stderr"; exit 1 }
  }'
