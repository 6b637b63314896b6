#!/usr/bin/env python3
"""ONNX exports for the ONNX sections of `cargo bench --bench saliency` (issue 24, "Fast").

Writes into target/bench-onnx/ (build output, never committed; `--out DIR` to change):

  resnet50.onnx          torchvision resnet50 with the SAME seeded weights as the native
                         bench's `resnet50` section (benches/saliency.rs `seeded(..,
                         ResNetInit::Torchvision)`: one xorshift64 stream over the tensors of
                         tests/fixtures/torchvision/fixtures.json in their sorted order;
                         convolutions Kaiming normal (fan out, Box-Muller in f32), BatchNorm the
                         identity, fc uniform(+-1/sqrt(fan_in))). Reproduced here bit for bit in
                         the integer stream; the f32 ln/cos may differ from Rust's libm by an
                         ulp, which the bench's native-vs-ONNX logit check shows (~1e-6).
  efficientnet-lite0.onnx  the bundled model: scripts/fixtures/make_fixtures.py's
                         EfficientNetLite0 (the PyTorch twin of
                         src/engine/models/arch/efficientnet_lite.rs: TF-SAME padding as
                         explicit Pad, BN eps 1e-3, ReLU6 = Clip(0, 6)) with
                         models/efficientnet-lite0.safetensors loaded strictly.
  vit_b_16.onnx          torchvision vit_b_16, torch.manual_seed(0) random init.
  convnext_tiny.onnx     torchvision convnext_tiny, torch.manual_seed(0) random init.

Every export: the TorchScript exporter (dynamo=False), opset 17, input "input" [batch, 3, 224,
224] with a dynamic batch, output "logits" [batch, 1000], eval mode, constant folding on
(the exporter folds each BatchNorm into the convolution before it, as PyTorch users get by
default). Each file is then run with onnxruntime (CPU) on a seeded batch of 2 and compared
with PyTorch: the max |logit diff| and that divided by the largest |logit| are printed, and
the script fails (exit 1) when the relative difference exceeds 1e-4 (issue 24's tolerance).

Deterministic: seeded weights and inputs, no downloads. Run from the repo root with the
pinned ONNX venv of scripts/onnx-requirements.txt (tested with CPython 3.11.7, torch 2.7.1,
torchvision 0.22.1, onnx 1.23.2, onnxruntime 1.32.0, numpy 2.2.6), e.g. PY=/work/venv-onnx/bin/python:

    PY scripts/bench/export_bench_onnx.py [--out target/bench-onnx] [--model NAME ...]

then `cargo bench --bench saliency -- --only onnx-resnet50,onnx-lite0,onnx-vit_b_16,onnx-convnext_tiny`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "fixtures"))  # make_fixtures (EfficientNet-Lite0)

OPSET = 17
SIZE = 224
MODELS = ("resnet50", "efficientnet-lite0", "vit_b_16", "convnext_tiny")
MASK64 = (1 << 64) - 1


# --------------------------------------------- the native bench's seeded ResNet-50 weights
def xorshift(s: int) -> int:
    """One step of the bench's generator (state ^= state << 13; >> 7; << 17, on u64)."""
    s ^= (s << 13) & MASK64
    s ^= s >> 7
    s ^= (s << 17) & MASK64
    return s


def jump_table(steps: int) -> list[list[int]]:
    """xorshift is linear over GF(2): the map 'advance `steps` steps' as 8 byte tables
    (table[b][v] = image of byte value v at byte position b), built from the basis images."""
    basis = []
    for bit in range(64):
        s = 1 << bit
        for _ in range(steps):
            s = xorshift(s)
        basis.append(s)
    tables = []
    for b in range(8):
        t = [0] * 256
        for v in range(1, 256):
            low = v & -v  # t[v] = t[v without its lowest bit] ^ image of that bit
            t[v] = t[v ^ low] ^ basis[8 * b + low.bit_length() - 1]
        tables.append(t)
    return tables


LANE = 1024
JUMP = jump_table(LANE)


def jump(s: int) -> int:
    out = 0
    for b in range(8):
        out ^= JUMP[b][(s >> (8 * b)) & 0xFF]
    return out


def uniforms(state: int, n: int) -> tuple[np.ndarray, int]:
    """The next n values of the bench's `uniform()` (f32) and the state after them. The
    stream is cut into lanes of LANE steps whose start states come from the jump map, so
    numpy advances all lanes at once."""
    lanes = -(-n // LANE)
    starts = np.empty(lanes, dtype=np.uint64)
    s = state
    for i in range(lanes):
        starts[i] = s
        s = jump(s)
    states = np.empty((lanes, LANE), dtype=np.uint64)
    cur = starts
    for j in range(LANE):
        cur = cur ^ (cur << np.uint64(13))
        cur = cur ^ (cur >> np.uint64(7))
        cur = cur ^ (cur << np.uint64(17))
        states[:, j] = cur
    flat = states.reshape(-1)[:n]
    # ((state >> 40) as f32 + 0.5) / 2^24: the f32 rounding of the + 0.5 included.
    u = ((flat >> np.uint64(40)).astype(np.float32) + np.float32(0.5)) / np.float32(1 << 24)
    return u, int(flat[-1])


def resnet50_bench_weights() -> dict[str, torch.Tensor]:
    """benches/saliency.rs `seeded(resnet50_keys(), ResNetInit::Torchvision)`."""
    j = json.loads((REPO / "tests/fixtures/torchvision/fixtures.json").read_text(encoding="utf-8"))
    state = 0x2545F4914F6CDD1D
    out = {}
    for entry in j["models"]["resnet50"]["weights"]["keys_sorted"]:
        name, dims = entry.split(" [")
        shape = tuple(int(d) for d in dims.rstrip("]").split(", ") if d)
        n = int(np.prod(shape))
        fan_in = max(int(np.prod(shape[1:])), 1)
        bn_scale = len(shape) == 1 and (name.endswith("weight") or name.endswith("var"))
        if len(shape) == 4:  # Kaiming normal, fan out, Box-Muller in f32
            u, state = uniforms(state, 2 * n)
            u1, u2 = u[0::2], u[1::2]
            std = np.sqrt(np.float32(2.0) / np.float32(shape[0] * shape[2] * shape[3]))
            v = std * np.sqrt(np.float32(-2.0) * np.log(u1)) * np.cos(np.float32(2 * np.pi) * u2)
        elif bn_scale:  # consumes no random numbers
            v = np.ones(n, np.float32)
        elif len(shape) == 1 and not name.startswith("fc"):
            v = np.zeros(n, np.float32)
        else:  # fc.weight, fc.bias
            u, state = uniforms(state, n)
            v = (np.float32(2.0) * u - np.float32(1.0)) / np.sqrt(np.float32(fan_in))
        out[name] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32).reshape(shape))
    return out


# --------------------------------------------------------------------------- models
def seeded_torchvision(name: str) -> torch.nn.Module:
    """torchvision `name` (vit_b_16, convnext_tiny) from torch.manual_seed(0). torchvision
    initialises ViT's head to zeros (all logits 0, every input gradient 0): it gets
    trunc_normal(std 0.02), drawn after the rest from the same seeded stream. Also what
    scripts/bench/bench_pytorch.py times."""
    import torchvision as tv

    torch.manual_seed(0)
    m = getattr(tv.models, name)(weights=None)
    if name == "vit_b_16":
        torch.nn.init.trunc_normal_(m.heads.head.weight, std=0.02)
    return m


def build(name: str) -> tuple[torch.nn.Module, str]:
    import torchvision as tv

    if name == "resnet50":
        m = tv.models.resnet50(weights=None)
        missing, unexpected = m.load_state_dict(resnet50_bench_weights(), strict=False)
        assert all(k.endswith("num_batches_tracked") for k in missing), missing
        assert not unexpected, unexpected
        how = "torchvision resnet50, the native bench's seeded weights (ResNetInit::Torchvision)"
    elif name == "efficientnet-lite0":
        import make_fixtures as mf

        m = mf.load_model()  # strict load of models/efficientnet-lite0.safetensors
        m.guided = False  # plain F.relu6 -> Clip(0, 6); unveil guides it itself
        how = "make_fixtures.EfficientNetLite0 + models/efficientnet-lite0.safetensors"
    elif name in ("vit_b_16", "convnext_tiny"):
        # nn.MultiheadAttention's inference fast path (one fused aten op) has no ONNX export:
        # the plain path exports MatMul / Softmax / Add.
        torch.backends.mha.set_fastpath_enabled(False)
        m = seeded_torchvision(name)
        how = f"torchvision {name}, torch.manual_seed(0) random init"
    else:
        raise ValueError(name)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m, how


def export(name: str, out_dir: Path) -> dict:
    import onnxruntime as ort

    model, how = build(name)
    path = out_dir / f"{name}.onnx"
    x = torch.rand((2, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0)) * 2 - 1
    t = time.perf_counter()
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=OPSET,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      do_constant_folding=True)
    export_s = time.perf_counter() - t
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    # a batch of 3 too: the batch dimension really is dynamic
    x3 = torch.rand((3, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref3 = model(x3).numpy()
    got3 = sess.run(None, {"input": x3.numpy()})[0]
    diff = max(float(np.abs(got - ref).max()), float(np.abs(got3 - ref3).max()))
    scale = max(float(np.abs(ref).max()), float(np.abs(ref3).max()))
    r = {"file": str(path), "how": how, "bytes": path.stat().st_size, "export_s": round(export_s, 1),
         "max_abs_logit_diff": diff, "max_abs_logit": scale, "relative": diff / scale}
    print(f"{name}: {path} ({r['bytes'] / 2**20:.1f} MiB, {how}); onnxruntime vs PyTorch, "
          f"batches 2 and 3: max |logit diff| {diff:.3g} (largest |logit| {scale:.3g}, "
          f"relative {diff / scale:.2g})", flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "target" / "bench-onnx",
                    help="output folder (default target/bench-onnx)")
    ap.add_argument("--model", action="append", choices=MODELS, help="only this model (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, opset {OPSET}, TorchScript exporter, dynamic batch", flush=True)
    results = {name: export(name, args.out) for name in args.model or MODELS}
    log = args.out / "exports.json"  # earlier runs' other models stay listed
    done = json.loads(log.read_text(encoding="utf-8")) if log.is_file() else {}
    log.write_text(json.dumps({**done, **results}, indent=2) + "\n", encoding="utf-8")
    bad = [n for n, r in results.items() if not r["relative"] <= 1e-4]
    if bad:
        print(f"export_bench_onnx.py: error: onnxruntime disagrees with PyTorch for {', '.join(bad)}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
