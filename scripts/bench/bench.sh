#!/usr/bin/env bash
# unveil vs PyTorch: saliency throughput (forward + guided backward to the input per noisy
# 224x224 sample, chunks of 4), run back to back on this machine, then a comparison table.
#
#   [ROUNDS=3] bash scripts/bench/bench.sh [ARGS for bench_pytorch.py, e.g. --samples 16]
#
#   0. (optional) PY scripts/bench/export_bench_onnx.py: the ONNX rows (onnx-resnet50, onnx-lite0,
#      onnx-vit_b_16, onnx-convnext_tiny) run only when target/bench-onnx/ holds the graphs
#   1. cargo bench --bench saliency -- --json target/bench-unveil.json
#   2. .venv-scripts/bin/python scripts/bench/bench_pytorch.py --threads N --json target/bench-pytorch.json
#   3. with ROUNDS > 1: steps 1 (saliency sections only) and 2 again, alternating, ROUNDS times
#      in all, so that a noisy minute on a shared machine hits both sides alike
#   4. table: per model unveil ms/sample, PyTorch ms/sample, PyTorch/unveil (> 1: unveil
#      faster) per round, and the median ratio
#
# Threads: PyTorch gets --threads $THREADS (default: nproc, i.e. every core, which is what
# candle uses by default). Setting THREADS also exports RAYON_NUM_THREADS=$THREADS for the
# Rust bench, so both sides use the same number of threads. Needs the scripts venv
# (bash scripts/setup_venv.sh); VENV=... overrides its location. Close other heavy programs
# first: both numbers are wall-clock times.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
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

ROUNDS="${ROUNDS:-1}"
PAIRS=()
for ((round = 1; round <= ROUNDS; round++)); do
    u_json="$UNVEIL_JSON" t_json="$TORCH_JSON" only=()
    if [ "$round" -gt 1 ]; then
        u_json="$OUT_DIR/bench-unveil-r$round.json" t_json="$OUT_DIR/bench-pytorch-r$round.json"
        only=(--only efficientnet-lite0,resnet50,resnet50-random-bn,xception,densenet121,onnx-resnet50,onnx-lite0,onnx-vit_b_16,onnx-convnext_tiny)
        rm -f "$u_json" "$t_json"
    fi
    echo "== round $round/$ROUNDS, unveil: cargo bench --bench saliency -- ${only[*]} --json $u_json"
    (cd "$REPO" && cargo bench --bench saliency -- "${only[@]}" --json "$u_json")
    [ -s "$u_json" ] || die "the saliency bench did not write $u_json (does benches/saliency.rs accept --json PATH?)"

    echo "== round $round/$ROUNDS, PyTorch: scripts/bench/bench_pytorch.py --threads $THREADS --json $t_json $*"
    (cd "$REPO" && "$PY" scripts/bench/bench_pytorch.py --threads "$THREADS" --json "$t_json" "$@")
    [ -s "$t_json" ] || die "bench_pytorch.py did not write $t_json"
    PAIRS+=("$u_json" "$t_json")
done

echo
"$PY" - "$NPROC" "$CPU" "$THREADS" "${PAIRS[@]}" <<'EOF'
import json, statistics, sys

nproc, cpu, threads = sys.argv[1:4]
paths = sys.argv[4:]
rounds = [
    (json.load(open(u, encoding="utf-8")), json.load(open(t, encoding="utf-8")))
    for u, t in zip(paths[0::2], paths[1::2])
]
u, t = rounds[0]
um, tm = u.get("models", {}), t.get("models", {})


def ms(d, name):
    v = d.get("models", {}).get(name, {}).get("ms_per_sample")
    return float(v) if isinstance(v, (int, float)) else None


def fmt(v):
    return "-" if v is None else f"{v:.1f}"


# unveil's time depends on the weights (it skips dead channels), PyTorch's does not: the
# ResNet-50 variants with other untrained weights are compared with PyTorch's resnet50. The
# ONNX rows (graphs from scripts/bench/export_bench_onnx.py; skipped without them) against the
# same PyTorch model.
REFERENCE = {"resnet50-random-bn": "resnet50", "onnx-resnet50": "resnet50",
             "onnx-lite0": "efficientnet-lite0", "onnx-vit_b_16": "vit_b_16",
             "onnx-convnext_tiny": "convnext_tiny"}

print(f"machine: {cpu}, nproc {nproc}; PyTorch {t.get('torch')} with {t.get('threads')} thread(s)"
      f" (requested {threads}); {len(rounds)} round(s), unveil and PyTorch alternating")
print("\n| model | round | unveil ms/sample | PyTorch ms/sample | PyTorch / unveil |")
print("|---|---|---|---|---|")
names = list(um) + [n for n in tm if n not in um]
missing = []
for name in names:
    ratios = []
    for i, (ur, tr) in enumerate(rounds, 1):
        a, b = ms(ur, name), ms(tr, REFERENCE.get(name, name))
        if a and b:
            ratios.append(b / a)
        ratio = f"{b / a:.2f}x" if a and b else "-"
        print(f"| {name} | {i} | {fmt(a)} | {fmt(b)} | {ratio} |")
    if len(rounds) > 1 and ratios:
        print(f"| {name} | median | | | **{statistics.median(ratios):.2f}x** |")
    if not ratios:
        missing.append(name)
print("\nPyTorch / unveil > 1 means unveil is faster.")
if missing:
    print("no comparison for: " + ", ".join(missing) + " (missing on one side)")
for key in ("end_to_end", "mask"):
    if key in u:
        print(f"\nunveil {key}: {json.dumps(u[key])}")
print("\nraw results: " + ", ".join(paths))
EOF
