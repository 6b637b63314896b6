#!/usr/bin/env bash
# unveil vs PyTorch: saliency throughput (forward + guided backward to the input per noisy
# 224x224 sample, chunks of 4), run back to back on this machine, then a comparison table.
#
#   bash scripts/bench.sh [ARGS for bench_pytorch.py, e.g. --samples 16]
#
#   1. cargo bench --bench saliency -- --json target/bench-unveil.json
#   2. .venv-scripts/bin/python scripts/bench_pytorch.py --threads N --json target/bench-pytorch.json
#   3. table: per model unveil ms/sample, PyTorch ms/sample, PyTorch/unveil (> 1: unveil faster)
#
# Threads: PyTorch gets --threads $THREADS (default: nproc, i.e. every core, which is what
# candle uses by default). Setting THREADS also exports RAYON_NUM_THREADS=$THREADS for the
# Rust bench, so both sides use the same number of threads. Needs the scripts venv
# (bash scripts/setup_venv.sh); VENV=... overrides its location. Close other heavy programs
# first: both numbers are wall-clock times.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv-scripts}"
PY="$VENV/bin/python"
OUT_DIR="$REPO/target"
UNVEIL_JSON="$OUT_DIR/bench-unveil.json"
TORCH_JSON="$OUT_DIR/bench-pytorch.json"

die() { echo "bench.sh: error: $*" >&2; exit 1; }

if [ ! -x "$PY" ]; then
    die "no Python venv at $VENV: run 'bash scripts/setup_venv.sh' first (or set VENV=...)"
fi
if ! "$PY" -c 'import torch, torchvision, safetensors, PIL' 2>/dev/null; then
    die "the venv at $VENV lacks torch/torchvision/safetensors/pillow: run 'bash scripts/setup_venv.sh'"
fi
command -v cargo >/dev/null || die "cargo not found on PATH"
[ -f "$REPO/models/efficientnet-lite0.safetensors" ] || die "models/efficientnet-lite0.safetensors is missing"

NPROC="$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"
if [ -n "${THREADS:-}" ]; then
    export RAYON_NUM_THREADS="$THREADS"
else
    THREADS="$NPROC"
fi
CPU="$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
CPU="${CPU:-$(uname -m)}"
echo "== machine: $CPU, nproc $NPROC, threads $THREADS"

mkdir -p "$OUT_DIR"
rm -f "$UNVEIL_JSON" "$TORCH_JSON"  # never compare against a stale result

echo "== 1/2 unveil: cargo bench --bench saliency -- --json $UNVEIL_JSON"
(cd "$REPO" && cargo bench --bench saliency -- --json "$UNVEIL_JSON")
[ -s "$UNVEIL_JSON" ] || die "the saliency bench did not write $UNVEIL_JSON (does benches/saliency.rs accept --json PATH?)"

echo "== 2/2 PyTorch: scripts/bench_pytorch.py --threads $THREADS --json $TORCH_JSON $*"
(cd "$REPO" && "$PY" scripts/bench_pytorch.py --threads "$THREADS" --json "$TORCH_JSON" "$@")
[ -s "$TORCH_JSON" ] || die "bench_pytorch.py did not write $TORCH_JSON"

echo
"$PY" - "$UNVEIL_JSON" "$TORCH_JSON" "$NPROC" "$CPU" "$THREADS" <<'EOF'
import json, sys

unveil_path, torch_path, nproc, cpu, threads = sys.argv[1:6]
u = json.load(open(unveil_path, encoding="utf-8"))
t = json.load(open(torch_path, encoding="utf-8"))
um, tm = u.get("models", {}), t.get("models", {})


def ms(d, name):
    v = d.get(name, {}).get("ms_per_sample")
    return float(v) if isinstance(v, (int, float)) else None


def fmt(v):
    return "-" if v is None else f"{v:.1f}"


print(f"machine: {cpu}, nproc {nproc}; PyTorch {t.get('torch')} with {t.get('threads')} thread(s)"
      f" (requested {threads})")
print("\n| model | unveil ms/sample | PyTorch ms/sample | PyTorch / unveil |")
print("|---|---|---|---|")
# unveil's time depends on the weights (it skips dead channels), PyTorch's does not: the
# ResNet-50 variants with other untrained weights are compared with PyTorch's resnet50.
REFERENCE = {"resnet50-random-bn": "resnet50"}
names = list(um) + [n for n in tm if n not in um]
for name in names:
    a, b = ms(um, name), ms(tm, REFERENCE.get(name, name))
    ratio = f"{b / a:.2f}x" if a and b else "-"
    print(f"| {name} | {fmt(a)} | {fmt(b)} | {ratio} |")
print("\nPyTorch / unveil > 1 means unveil is faster.")
missing = [n for n in names if ms(um, n) is None or ms(tm, REFERENCE.get(n, n)) is None]
if missing:
    print("no comparison for: " + ", ".join(missing) + " (missing on one side)")
for key in ("end_to_end", "mask"):
    if key in u:
        print(f"\nunveil {key}: {json.dumps(u[key])}")
print(f"\nraw results: {unveil_path}, {torch_path}")
EOF
