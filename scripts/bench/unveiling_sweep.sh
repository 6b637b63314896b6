#!/usr/bin/env bash
# When does unveiling find evidence that one map misses? For the photos the ImageNet model is
# confident about (p >= 0.4 in EVALUATION.md), runs `unveil batch` under each setting of
# method x kernel x fill and tabulates, per setting, how often and by how much hiding the
# unveiled union lowers p(target) more than hiding a region of the same area from iteration 0's
# map alone (summary.json's "unveiling").
# Usage (repo root): bash scripts/bench/unveiling_sweep.sh [OUT (default target/unveiling-sweep)]
# Needs the scripts venv (scikit-image's photos). About 15 minutes on 2 cores.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-$REPO/target/unveiling-sweep}"
DATA="$REPO/.venv-scripts/lib/python3.11/site-packages/skimage/data"
mkdir -p "$OUT"
for f in camera.png chelsea.png chessboard_GRAY.png chessboard_RGB.png coffee.png logo.png \
         motorcycle_left.png motorcycle_right.png page.png rocket.jpg; do
  echo "$DATA/$f"
done > "$OUT/images.txt"
cd "$REPO"
cargo build --release --quiet
for method in guided vanilla; do
  for kernel in 5 11 31; do
    for fill in mean blur; do
      ./target/release/unveil batch "$OUT/images.txt" --method "$method" --kernel "$kernel" \
        --fill "$fill" --out "$OUT/$method-k$kernel-$fill" >/dev/null 2>&1 || true
    done
  done
done
python3 - "$OUT" <<'PY'
import json, pathlib, statistics as st, sys
out = pathlib.Path(sys.argv[1])
print("| method | kernel | fill | images | iterations | unveiled area | p, union hidden / single-map region hidden | union hides more | p, only union visible / only single-map region | union keeps more |")
print("|---|---|---|---|---|---|---|---|---|---|")
for d in sorted(p for p in out.iterdir() if p.is_dir()):
    method, kernel, fill = d.name.split("-")
    runs = [json.load(open(s)) for s in d.glob("*/summary.json")]
    us = [r["unveiling"] for r in runs if r.get("unveiling")]
    mean = lambda key: st.mean(u[key] for u in us)
    hides = sum(u["unveiled_hidden_p"] < u["single_map_hidden_p"] for u in us)
    keeps = sum(u["unveiled_only_p"] > u["single_map_only_p"] for u in us)
    print(f"| {method} | {kernel[1:]} | {fill} | {len(us)} | {st.mean(len(r['iterations']) for r in runs):.1f} "
          f"| {mean('unveiled_area'):.2f} | {mean('unveiled_hidden_p'):.3f} / {mean('single_map_hidden_p'):.3f} "
          f"| {hides} | {mean('unveiled_only_p'):.3f} / {mean('single_map_only_p'):.3f} | {keeps} |")
PY
