#!/usr/bin/env bash
# The GPU check, in one run of at most 8 minutes (each step has its own time limit; they add
# up to 475 s) on a machine with an NVIDIA GPU, its driver,
# the CUDA 13 libraries (e.g. PyTorch's nvidia-* wheels) and PyTorch, but no Rust. It runs
# binaries built elsewhere by scripts/bench/gpu_bundle.sh (carried in gpu-bundle/):
#
#   1. the path-equality tests on the GPU: every architecture's logits and guided / vanilla
#      input gradients on the device-generic path against the fast CPU kernels
#      (tests/engine/generic.rs with UNVEIL_TEST_DEVICE=cuda; the chest X-ray Xception's weights
#      are not carried, its ops are covered by the others);
#   2. per-sample guided SmoothGrad for EfficientNet-Lite0, ResNet-50 and Xception, one
#      25-sample ResNet-50 map, and an end-to-end loop (benches/saliency.rs --device cuda);
#   3. a default `unveil run` end to end, three times (the process's wall time and the run's
#      own total_ms from summary.json);
#   4. PyTorch CUDA doing the same work on the same GPU (scripts/bench/bench_pytorch.py
#      --device cuda);
#
# and writes $OUT/gpu-check.json and $OUT/gpu-check.md (a section for BENCHMARKS.md).
#
#   bash scripts/bench/gpu_check.sh        # on the GPU machine, from the repository root
#   bash scripts/bench/gpu_check.sh --cpu  # the same plumbing on the CPU, with gpu-bundle-cpu/
#                                          # (bash scripts/bench/gpu_bundle.sh --cpu), to try it
#                                          # here
set -uo pipefail
cd "$(dirname "$0")/../.."
repo="$(pwd)"
device=cuda
bundle="$repo/gpu-bundle"
slow=1  # the CPU rehearsal gets 4x the time limits
if [ "${1:-}" = --cpu ]; then
    device=cpu
    bundle="$repo/gpu-bundle-cpu"
    slow=4
fi
# The device tool's $OUT (what comes back) when run there; else gpu-check-out/.
OUT="${OUT:-$repo/gpu-check-out}"
mkdir -p "$OUT"
log="$OUT/gpu-check.log"
: >"$log"
say() { echo "gpu_check: $*" | tee -a "$log" >&2; }
started=$SECONDS
bin="$(mktemp -d)"  # not under $OUT: the device tool sends $OUT back
trap 'rm -rf "$bin"' EXIT
for b in unveil engine-tests saliency-bench; do
    [ -f "$bundle/$b.xz" ] || { say "missing $bundle/$b.xz: run scripts/bench/gpu_bundle.sh first"; exit 1; }
    xz -dc "$bundle/$b.xz" >"$bin/$b" && chmod +x "$bin/$b"
done
bundle="$bin"
export UNVEIL_REPO="$repo"
python="${PYTHON:-python3}"  # one with torch (and CUDA) for step 4
command -v "$python" >/dev/null || { say "$python not found"; exit 1; }

# --- the GPU and its libraries --------------------------------------------------------------
if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
        >"$OUT/gpu.txt" 2>&1 || say "nvidia-smi failed: $(cat "$OUT/gpu.txt")"
    say "GPU: $(cat "$OUT/gpu.txt")"
    # The binaries link libcublas, libcublasLt, libcurand and libnvrtc of CUDA 13 (candle's
    # kernels are PTX, loaded by the driver): find them where pip put them (PyTorch's
    # nvidia-* wheels) or in a system toolkit.
    missing() { ldd "$bundle/unveil" 2>/dev/null | awk '/not found/ {print $1}'; }
    if [ -n "$(missing)" ]; then
        dirs=$($python - <<'EOF'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + ["/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu"]
seen = []
for r in roots:
    for pat in ("nvidia/*/lib", "nvidia/*/*/lib", "nvidia/cu13/lib", ""):
        for d in glob.glob(os.path.join(r, pat)):
            if os.path.isdir(d) and d not in seen and glob.glob(os.path.join(d, "lib*.so*")):
                seen.append(d)
print(":".join(seen))
EOF
)
        export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    if [ -n "$(missing)" ]; then
        say "libraries not found: $(missing | tr '\n' ' ')(searched pip's nvidia wheels and /usr/local/cuda)"
        ldd "$bundle/unveil" >>"$log" 2>&1
        exit 1
    fi
fi

# --- 1. path equality on the device -----------------------------------------------------------
say "1/4 path-equality tests on $device"
UNVEIL_TEST_DEVICE=$device timeout $((80 * slow)) "$bundle/engine-tests" generic:: --skip xception \
    --test-threads 1 --nocapture >"$OUT/tests.log" 2>&1
tests_rc=$?
grep -E "gradient cosine|^test |test result" "$OUT/tests.log" | tee -a "$log" >&2

# --- 2. unveil's bench ------------------------------------------------------------------------
say "2/4 unveil bench on $device"
timeout $((140 * slow)) "$bundle/saliency-bench" --device "$device" \
    --only e2e,efficientnet-lite0,resnet50,xception,smoothgrad25 \
    --json "$OUT/unveil-bench.json" >"$OUT/unveil-bench.log" 2>&1
bench_rc=$?
tee -a "$log" <"$OUT/unveil-bench.log" >&2

# --- 3. a default run, end to end -------------------------------------------------------------
say "3/4 default unveil run, end to end, three times"
: >"$OUT/runs.txt"
for i in 1 2 3; do
    rm -rf "$OUT/run-$i"
    t0=$(date +%s.%N)
    timeout $((40 * slow)) "$bundle/unveil" run "$repo/assets/chelsea.png" --device "$device" \
        --out "$OUT/run-$i" >"$OUT/run-$i.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    echo "$i $rc $t0 $t1" >>"$OUT/runs.txt"
done
cat "$OUT/run-1.log" >>"$log"

# --- 4. PyTorch on the same device ------------------------------------------------------------
say "4/4 PyTorch on $device"
timeout $((90 * slow)) $python scripts/bench/bench_pytorch.py --device "$device" --samples 32 --chunk 32 \
    --json "$OUT/torch-bench.json" >"$OUT/torch-bench.log" 2>&1
torch_rc=$?
timeout $((45 * slow)) $python scripts/bench/bench_pytorch.py --device "$device" --samples 25 --chunk 25 --model resnet50 \
    --json "$OUT/torch-sg25.json" >"$OUT/torch-sg25.log" 2>&1
tail -n 20 "$OUT/torch-bench.log" >>"$log"

# --- the record -------------------------------------------------------------------------------
$python - "$OUT" "$device" "$tests_rc" "$bench_rc" "$torch_rc" "$((SECONDS - started))" <<'EOF'
import json, os, re, sys
out, device, tests_rc, bench_rc, torch_rc, seconds = sys.argv[1:]
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception:
        return None
gpu = open(os.path.join(out, "gpu.txt")).read().strip() if os.path.exists(os.path.join(out, "gpu.txt")) else "cpu"
equality = []
for line in open(os.path.join(out, "tests.log"), errors="replace"):
    m = re.search(r"(\S+) (Guided|Plain) on (\S+): logits (\S+), gradient cosine (\S+), max diff (\S+)", line)
    if m:
        equality.append({"model": m[1], "mode": m[2].lower(), "device": m[3],
                         "logits_rel_diff": float(m[4]), "gradient_cosine": float(m[5]),
                         "gradient_max_rel_diff": float(m[6])})
passed = re.search(r"test result: (\w+)\. (\d+) passed; (\d+) failed", open(os.path.join(out, "tests.log"), errors="replace").read())
runs = []
for line in open(os.path.join(out, "runs.txt")):
    i, rc, t0, t1 = line.split()
    summ = None
    try:
        summ = json.load(open(os.path.join(out, f"run-{i}", "summary.json")))
    except Exception:
        pass
    runs.append({"run": int(i), "exit": int(rc), "wall_s": float(t1) - float(t0),
                 "total_ms": summ.get("total_ms") if summ else None,
                 "device": summ.get("device") if summ else None,
                 "iterations": len(summ.get("iterations", [])) if summ else None})
unveil = load("unveil-bench.json") or {}
torch = load("torch-bench.json") or {}
sg25 = load("torch-sg25.json") or {}
ratios = {}
for name in ("efficientnet-lite0", "resnet50", "xception"):
    u = unveil.get("models", {}).get(name, {}).get("ms_per_sample")
    t = torch.get("models", {}).get(name, {}).get("ms_per_sample")
    ratios[name] = {"unveil_ms": u, "pytorch_ms": t, "pytorch_over_unveil": (t / u) if u and t else None}
t25 = sg25.get("models", {}).get("resnet50", {}).get("ms_per_sample")
record = {
    "device": device, "gpu": gpu, "seconds": int(seconds),
    "exit_codes": {"tests": int(tests_rc), "bench": int(bench_rc), "pytorch": int(torch_rc)},
    "path_equality": {"result": passed.group(0) if passed else "no result", "rows": equality},
    "per_sample": ratios,
    "smoothgrad25_resnet50_ms": {"unveil": (unveil.get("smoothgrad25_resnet50") or {}).get("median_ms"),
                                 "pytorch": t25 * 25 if t25 else None},
    "end_to_end_bench": unveil.get("end_to_end"),
    "default_runs": runs,
    "pytorch": {k: torch.get(k) for k in ("torch", "cuda", "gpu", "tf32", "cudnn")},
    "unveil_bench": unveil, "pytorch_bench": torch,
}
json.dump(record, open(os.path.join(out, "gpu-check.json"), "w"), indent=2)
fmt = lambda v, d=1: "n/a" if v is None else f"{v:.{d}f}"
md = [f"## GPU check: {gpu} ({device})", "",
      f"`bash scripts/bench/gpu_check.sh` ({record['seconds']} s). Path equality: {record['path_equality']['result']}.", "",
      "| model | mode | logits (rel.) | gradient cosine | gradient max diff (rel.) |", "|---|---|---|---|---|"]
md += [f"| {r['model']} | {r['mode']} | {r['logits_rel_diff']:.1e} | {r['gradient_cosine']:.7f} | {r['gradient_max_rel_diff']:.1e} |" for r in equality]
md += ["", "| model | unveil ms / sample | PyTorch ms / sample | PyTorch / unveil |", "|---|---|---|---|"]
md += [f"| {k} | {fmt(v['unveil_ms'], 2)} | {fmt(v['pytorch_ms'], 2)} | {fmt(v['pytorch_over_unveil'], 2)}x |" for k, v in ratios.items()]
s = record["smoothgrad25_resnet50_ms"]
md += ["", f"One 25-sample guided SmoothGrad map, ResNet-50: unveil {fmt(s['unveil'])} ms, PyTorch {fmt(s['pytorch'])} ms.",
       "", "Default `unveil run` (vanilla SmoothGrad, faithfulness on), end to end:", ""]
md += [f"- run {r['run']}: process {r['wall_s']:.2f} s, run {fmt(r['total_ms'], 0)} ms on {r['device']}, {r['iterations']} iterations (exit {r['exit']})" for r in runs]
open(os.path.join(out, "gpu-check.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
say "done in $((SECONDS - started)) s: $OUT/gpu-check.json, $OUT/gpu-check.md"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
