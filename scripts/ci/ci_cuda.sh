#!/usr/bin/env bash
# CI, after the CPU tests: keeps the `cuda` feature compiling and linking on machines without
# a GPU. Installs the pinned CUDA 13.0 toolkit from PyPI and a stub libcuda.so.1
# (scripts/ci/setup_cuda.sh), builds the app and CLI with `--features cuda`, runs that build's
# CPU-side tests against the stub, and smoke-tests the binary: `--device cuda` must fail with
# the driver's error, `--device auto` must fall back to the CPU.
#
#   bash scripts/ci/ci_cuda.sh
#
# It shares the CPU build's target folder (CARGO_TARGET_DIR): artifacts with different
# features coexist there, so only candle, its CUDA kernels and unveil are built again; the
# GUI stack and the tests' dev-dependencies are the CPU build's (a folder of its own rebuilt
# them: 14 of the 27 minutes this step took from nothing). From nothing on 2 cores: ~15 s
# setup (650 MB download), ~8-10 min build (most of it candle's CUDA kernels), ~4 min tests.
#   UNVEIL_CUDA_DIR         toolkit + stub   (${XDG_CACHE_HOME:-$HOME/.cache}/unveil-cuda)
#   CARGO_TARGET_DIR        cargo target dir (default: ./target, as cargo's)
# UNVEIL_CI_CUDA_TEST_ARGS: more `cargo test` arguments to run with the cuda build, e.g.
#   "--test engine -- device" (empty: only --lib).
# On a machine with a real NVIDIA driver the stub is not used (see DIR/env.sh) and the
# `--device cuda` check only reports what happened.
set -euo pipefail
cd "$(dirname "$0")/../.."

CUDA_DIR="${UNVEIL_CUDA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/unveil-cuda}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR=never
# The default features (the app) plus CUDA: every crate but candle's and ours has the CPU
# build's features, so its artifacts are reused.
FEATURES=(--release --features cuda)
mkdir -p "$CARGO_TARGET_DIR"

t_start=$SECONDS
timings=()
step() { # NAME COMMAND...: run, time, remember
    local name="$1" t=$SECONDS
    shift
    echo "== $name"
    "$@"
    timings+=("$(printf '%5d s  %s' $((SECONDS - t)) "$name")")
    echo "== $name: $((SECONDS - t)) s"
}
report() {
    echo "== timings"
    printf '%s\n' "${timings[@]}"
    echo "$(printf '%5d s' $((SECONDS - t_start)))  total"
}
trap report EXIT

# nvcc needs a C++ host compiler (gcc also builds the stub); install it as .ci/run installs
# its packages, where apt-get is at hand.
if ! command -v g++ >/dev/null && command -v apt-get >/dev/null; then
    echo "installing: g++"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null; } ||
        echo "warning: could not install g++ (setup_cuda.sh will say what is missing)"
fi

step "setup toolkit + stub" bash scripts/ci/setup_cuda.sh "$CUDA_DIR"
# shellcheck source=/dev/null
source "$CUDA_DIR/env.sh"

# candle-kernels' PTX and cudarc's detected CUDA version are not rebuilt when the toolkit
# behind the same paths changes: clean them when it did.
id_file="$CARGO_TARGET_DIR/.unveil-cuda-toolkit-id"
id="$UNVEIL_CUDA_TOOLKIT_ID-cc$CUDA_COMPUTE_CAP"
if [ -f "$id_file" ] && [ "$(cat "$id_file")" != "$id" ]; then
    step "clean candle-kernels + cudarc (toolkit changed)" \
        cargo clean --release -p candle-kernels -p cudarc
fi

step "cargo build --features cuda" cargo build "${FEATURES[@]}"
echo "$id" >"$id_file"
bin="$CARGO_TARGET_DIR/release/unveil"

echo "== shared libraries of $bin"
ldd "$bin" | grep -E 'cuda|cublas|curand|nvrtc|not found' || true
if ldd "$bin" | grep -q 'not found'; then
    echo "error: $bin has unresolved shared libraries" >&2
    exit 1
fi

step "cargo test --features cuda --lib" cargo test "${FEATURES[@]}" --lib
if [ -n "${UNVEIL_CI_CUDA_TEST_ARGS:-}" ]; then
    # shellcheck disable=SC2086 # word splitting intended: a list of cargo test arguments
    step "cargo test --features cuda ${UNVEIL_CI_CUDA_TEST_ARGS}" \
        cargo test "${FEATURES[@]}" ${UNVEIL_CI_CUDA_TEST_ARGS}
fi

# Smoke tests of the binary: the bundled model, one cheap iteration.
out="$(mktemp -d)"
trap 'rm -rf "$out"; report' EXIT
# What a user sees: no RUST_BACKTRACE (with it, candle appends a backtrace to the error).
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
run=(run assets/chelsea.png --samples 1 --noise 0 --max-iter 1 --no-faithfulness --overwrite)

smoke_cuda() {
    local rc=0
    "$bin" "${run[@]}" --device cuda --out "$out/cuda" >"$out/cuda.log" 2>&1 || rc=$?
    echo "exit $rc: $(cat "$out/cuda.log")"
    if [ "$UNVEIL_CUDA_STUB_ACTIVE" = 1 ]; then
        if [ "$rc" = 0 ] || ! grep -q CUDA_ERROR_STUB_LIBRARY "$out/cuda.log"; then
            echo "error: with the stub driver, --device cuda must fail naming CUDA_ERROR_STUB_LIBRARY" >&2
            return 1
        fi
    else
        echo "(a real driver is installed: --device cuda not checked)"
    fi
}
smoke_auto() {
    local rc=0
    "$bin" "${run[@]}" --device auto --out "$out/auto" >"$out/auto.log" 2>&1 || rc=$?
    cat "$out/auto.log"
    if [ "$rc" != 0 ]; then
        echo "error: --device auto exited $rc" >&2
        return 1
    fi
    if [ "$UNVEIL_CUDA_STUB_ACTIVE" = 1 ] && ! grep -rqsE '"device": *"cpu"' "$out/auto"; then
        echo "error: --device auto did not fall back to the CPU (no \"device\": \"cpu\" in $out/auto)" >&2
        return 1
    fi
}
step "smoke: unveil run --device cuda (must fail)" smoke_cuda
step "smoke: unveil run --device auto (CPU fallback)" smoke_auto
echo "cuda build OK"
