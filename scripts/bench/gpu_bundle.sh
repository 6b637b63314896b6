#!/usr/bin/env bash
# Builds what scripts/bench/gpu_check.sh runs on a GPU machine (which has the NVIDIA driver, the
# CUDA 13 libraries and PyTorch, but no Rust): the headless `unveil` binary, the engine test
# binary and the saliency bench binary, built with `--features cuda`, stripped, into gpu-bundle/
# (git-ignored; small enough to carry: the device tool carries 64 MiB).
#
#   bash scripts/bench/gpu_bundle.sh       # CUDA build (runs scripts/ci/setup_cuda.sh first)
#   bash scripts/bench/gpu_bundle.sh --cpu # the same binaries without CUDA, to try gpu_check.sh
#                                          # here: bash scripts/bench/gpu_check.sh --cpu
#
# Then, on the GPU machine, from the repository root:
#   bash scripts/bench/gpu_check.sh        # <= 8 minutes; writes $OUT/gpu-check.{json,md}
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$(pwd)"
mode=cuda
[ "${1:-}" = --cpu ] && mode=cpu

if [ "$mode" = cuda ]; then
    cuda_dir="${UNVEIL_CUDA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/unveil-cuda}"
    bash scripts/ci/setup_cuda.sh "$cuda_dir" >&2
    # shellcheck disable=SC1091
    source "$cuda_dir/env.sh"
    export CARGO_TARGET_DIR="${UNVEIL_CUDA_TARGET:-${XDG_CACHE_HOME:-$HOME/.cache}/unveil-ci-cuda-target}"
    features=(--no-default-features --features cuda,lite0-from-file)
else
    export CARGO_TARGET_DIR="${UNVEIL_CPU_BUNDLE_TARGET:-$repo/target}"
    features=(--no-default-features --features lite0-from-file)
fi
# Headless. The test and bench binaries also build the dev-dependencies, whose windowing stack
# needs Wayland loaded at run time (eframe/wayland), as the app's default build has it (see
# scripts/ci/ci_cuda.sh); the same features as CI's, so its target folder is reused.
test_features=("${features[@]}")
test_features[-1]="${features[-1]},eframe/wayland"

# The executables cargo built, from its JSON messages.
built() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1" | tail -n1
}

echo "gpu_bundle.sh: building ($mode) in $CARGO_TARGET_DIR" >&2
unveil=$(cargo build --release "${features[@]}" --bin unveil --message-format=json | built unveil)
tests=$(cargo test --release "${test_features[@]}" --test engine --no-run --message-format=json | built engine)
bench=$(cargo bench "${test_features[@]}" --bench saliency --no-run --message-format=json | built saliency)

out="$repo/gpu-bundle"
[ "$mode" = cpu ] && out="$repo/gpu-bundle-cpu"
rm -rf "$out"
mkdir -p "$out"
for pair in "unveil:$unveil" "engine-tests:$tests" "saliency-bench:$bench"; do
    name="${pair%%:*}"
    src="${pair#*:}"
    [ -x "$src" ] || { echo "gpu_bundle.sh: no executable for $name" >&2; exit 1; }
    strip -o "$out/$name" "$src"
    # The device tool carries 64 MiB: PTX and code compress well.
    xz -T0 -6 "$out/$name"
done
{
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git rev-parse HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
    echo "mode: $mode"
    (cd "$out" && sha256sum unveil.xz engine-tests.xz saliency-bench.xz)
} >"$out/MANIFEST"
du -sh "$out"/* >&2
total=$(du -sm "$out" | cut -f1)
echo "gpu_bundle.sh: $out, ${total} MiB" >&2
if [ "$total" -gt 60 ]; then
    echo "gpu_bundle.sh: warning: over 60 MiB; the device tool carries 64 MiB in all" >&2
fi
