#!/usr/bin/env python3
"""PyTorch reference fixtures for torchvision ResNet-18/34/50/101 and DenseNet-121,
WITHOUT any stored weights: every parameter and buffer is produced by a deterministic
formula (below) that the Rust tests re-implement exactly, so only the input and the
outputs are committed.

Generator (all integer arithmetic on uint64, wrapping; MASK = 2**64 - 1):
  fnv1a64(name): h = 0xcbf29ce484222325; for each byte b of name.encode("utf-8"):
                 h ^= b; h = (h * 0x100000001b3) & MASK
  for element i = 0..n-1 (row-major):
      s = (fnv1a64(name) + (i + 1) * 0x9E3779B97F4A7C15) & MASK
      z = s
      z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
      z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
      z = z ^ (z >> 31)
      u = (z >> 11) / 2**53                       # float64 in [0, 1), exact
  value, computed in float64 then cast (round-to-nearest) to float32:
      4-D [o,i,kh,kw] (conv weight)        (2u - 1) * sqrt(3 / (i*kh*kw))
      2-D [o,i]       (linear weight)      (2u - 1) * sqrt(3 / i)
      name ends with "running_var"         0.5 + u
      name ends with "running_mean"        (2u - 1) * 0.1
      other 1-D ending with "weight" (BN)  0.5 + u
      other 1-D ending with "bias"         (2u - 1) * 0.1
      "num_batches_tracked"                not generated (left as torchvision made it)
  name = the torchvision state_dict key, no prefix (e.g. "layer1.0.conv1.weight",
  "features.denseblock1.denselayer1.norm1.running_var", "classifier.weight").
  input: name "input", shape [1, 3, 64, 64], value (2u - 1) * 2.

Models: torchvision.models.resnet{18,34,50,101}(weights=None, num_classes=1000) and
densenet121(weights=None) with classifier = nn.Linear(1024, 14) (CheXNet-style head).
eval() mode, parameters requires_grad False, load_state_dict(strict=True).

Outputs: tests/fixtures/torchvision/{resnet18,resnet34,resnet50,resnet101,densenet121}.safetensors
      input         [1,3,64,64] f32   the generated input
      logits        [1,C] f32         pre-softmax / pre-sigmoid
      target        [1] i64           argmax(logits)
      grad_vanilla  [1,3,64,64] f32   d logits[0,target] / d input, plain ReLU
      grad_guided   [1,3,64,64] f32   same with EVERY ReLU guided:
                                      backward grad_in = relu(grad_out) * (x > 0)
                                      (all nn.ReLU modules AND the functional F.relu in
                                      DenseNet.forward)
      grad_guided_hooks_only  (densenet121 only) nn.ReLU modules guided, the functional
                                      F.relu left plain (what module-hook tools compute)
  tests/fixtures/torchvision/fixtures.json  versions, generator spec, self-check values,
      per-model logit ranges / gradient stats / f32-vs-f64 diffs / weight digests / key lists,
      sha256 of every fixture.

Run (repo root, venv):  .venv-scripts/bin/python scripts/make_torchvision_fixtures.py
Tested with CPython 3.11.7, torch 2.7.1 (CPU), torchvision 0.22.1, numpy 2.2.6,
safetensors 0.6.2. About 1 minute on 2 cores.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import inspect
import json
import math
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchvision.models.densenet as tv_densenet
import torchvision.models.resnet as tv_resnet
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "torchvision"
MODELS = ["resnet18", "resnet34", "resnet50", "resnet101", "densenet121"]
INPUT_SHAPE = (1, 3, 64, 64)

MASK = (1 << 64) - 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


# ------------------------------------------------------------------ generator
def fnv1a64(name: str) -> int:
    h = FNV_OFFSET
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * FNV_PRIME) & MASK
    return h


def uniform01(name: str, n: int) -> np.ndarray:
    """u_i for i = 0..n-1 as float64, vectorised (numpy uint64 arithmetic wraps mod 2**64)."""
    i1 = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(fnv1a64(name)) + i1 * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def uniform01_scalar(name: str, i: int) -> float:
    """Plain-Python reference of one element (used to check the vectorised version)."""
    s = (fnv1a64(name) + (i + 1) * GOLDEN) & MASK
    z = s
    z = ((z ^ (z >> 30)) * MIX1) & MASK
    z = ((z ^ (z >> 27)) * MIX2) & MASK
    z = z ^ (z >> 31)
    return (z >> 11) / 2**53


def rule(name: str, shape: tuple[int, ...]) -> str:
    if name == "input":
        return "input"
    if len(shape) == 4:
        return "conv"
    if len(shape) == 2:
        return "linear"
    if name.endswith("running_var"):
        return "running_var"
    if name.endswith("running_mean"):
        return "running_mean"
    if len(shape) == 1 and name.endswith("weight"):
        return "bn_weight"
    if len(shape) == 1 and name.endswith("bias"):
        return "bias"
    raise ValueError(f"no generator rule for {name} {shape}")


def generate(name: str, shape: tuple[int, ...]) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape)) if shape else 1
    u = uniform01(name, n)
    r = rule(name, shape)
    if r == "input":
        v = (2.0 * u - 1.0) * 2.0
    elif r == "conv":
        v = (2.0 * u - 1.0) * math.sqrt(3.0 / (shape[1] * shape[2] * shape[3]))
    elif r == "linear":
        v = (2.0 * u - 1.0) * math.sqrt(3.0 / shape[1])
    elif r in ("running_var", "bn_weight"):
        v = 0.5 + u
    else:  # running_mean, bias
        v = (2.0 * u - 1.0) * 0.1
    return v.astype(np.float32).reshape(shape)


def self_check() -> dict:
    # vectorised vs plain Python, a few indices incl. the last
    for name, n in (("conv1.weight", 64 * 3 * 7 * 7), ("input", 3 * 64 * 64), ("fc.bias", 1000),
                    ("features.denseblock1.denselayer1.norm1.running_var", 64)):
        u = uniform01(name, n)
        for i in (0, 1, 2, 3, n // 2, n - 1):
            assert u[i] == uniform01_scalar(name, i), (name, i)
    out = {"fnv1a64": {}, "first4": {}}
    for name, shape in (("conv1.weight", (64, 3, 7, 7)), ("input", INPUT_SHAPE),
                        ("fc.weight", (1000, 512)),
                        ("bn1.running_var", (64,)), ("bn1.running_mean", (64,)),
                        ("bn1.weight", (64,)), ("bn1.bias", (64,))):
        v = generate(name, shape).reshape(-1)
        u = uniform01(name, 4)
        out["fnv1a64"][name] = f"0x{fnv1a64(name):016x}"
        out["first4"][name] = {
            "shape": list(shape),
            "rule": rule(name, shape),
            "u_f64": [float(x) for x in u],
            "value_f32": [float(x) for x in v[:4]],
            "value_f32_bits": [f"0x{int(b):08x}" for b in v[:4].view(np.uint32)],
        }
    out["fnv1a64"][""] = f"0x{fnv1a64(''):016x}"
    return out


# ------------------------------------------------------------------ models
def build(name: str) -> nn.Module:
    if name.startswith("resnet"):
        m = getattr(torchvision.models, name)(weights=None, num_classes=1000)
    else:
        m = torchvision.models.densenet121(weights=None)
        m.classifier = nn.Linear(1024, 14)
    return m


def fill(model: nn.Module) -> dict:
    sd = model.state_dict()
    new = {}
    digest = hashlib.sha256()
    keys = []
    counts = {}
    n_values = 0
    for k in sorted(sd.keys()):
        t = sd[k]
        if k.endswith("num_batches_tracked"):
            new[k] = t
            continue
        g = generate(k, tuple(t.shape))
        assert t.dtype == torch.float32, (k, t.dtype)
        new[k] = torch.from_numpy(g)
        r = rule(k, tuple(t.shape))
        counts[r] = counts.get(r, 0) + 1
        n_values += g.size
        digest.update(k.encode("utf-8") + b"\0" + g.astype("<f4").tobytes())
        keys.append(f"{k} {list(t.shape)}")
    model.load_state_dict(new, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return {
        "generated_tensors": len(keys),
        "generated_values": n_values,
        "num_batches_tracked_buffers": sum(1 for k in sd if k.endswith("num_batches_tracked")),
        "tensors_per_rule": counts,
        "weights_digest_sha256": digest.hexdigest(),
        "keys_sorted": keys,
    }


# ------------------------------------------------------------------ guided ReLU
class GuidedReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out.clamp_min(0) * (x > 0).to(grad_out.dtype)


class GuidedReLU(nn.Module):
    def forward(self, x):
        return GuidedReLUFn.apply(x)


def swap_relu_modules(model: nn.Module) -> int:
    n = 0
    for parent in list(model.modules()):
        for cname, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, cname, GuidedReLU())
                n += 1
    return n


@contextmanager
def patched_functional_relu(counter: list):
    """Replace torch.nn.functional.relu (which torchvision's densenet.py reaches as `F.relu`)
    by a guided one for the duration. nn.ReLU modules call F.relu too, so swap the
    modules BEFORE entering this (then every call seen here is a functional call)."""
    orig = F.relu

    def guided(x, inplace=False):
        counter[0] += 1
        return GuidedReLUFn.apply(x)

    F.relu = guided
    try:
        assert tv_densenet.F.relu is guided  # resnet.py does not even import F
        yield
    finally:
        F.relu = orig


def graph_op_counts(root) -> dict:
    counts, seen, stack = {}, set(), [root]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        nm = type(fn).__name__
        if "Relu" in nm or "Threshold" in nm or "GuidedReLU" in nm or "Clamp" in nm:
            counts[nm] = counts.get(nm, 0) + 1
        for nxt, _ in fn.next_functions:
            stack.append(nxt)
    return counts


def input_grad(model: nn.Module, x: torch.Tensor, target: int | None):
    xi = x.clone().requires_grad_(True)
    out = model(xi)
    t = int(out.argmax(1).item()) if target is None else target
    ops = graph_op_counts(out.grad_fn)
    out[0, t].backward()
    return out.detach(), t, xi.grad.detach().clone(), ops


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double().reshape(-1), b.double().reshape(-1)
    return float((a64 @ b64) / (a64.norm() * b64.norm()))


def functional_relus_in_source() -> dict:
    """List every functional relu-like call in torchvision's densenet.py / resnet.py."""
    pat = re.compile(r"(F\.relu|torch\.relu|\.relu_?\(|F\.threshold|clamp)")
    found = {}
    for mod in (tv_densenet, tv_resnet):
        src = inspect.getsource(mod).splitlines()
        hits = [f"{i + 1}: {ln.strip()}" for i, ln in enumerate(src)
                if pat.search(ln) and "self.relu" not in ln and "nn.ReLU" not in ln]
        found[Path(mod.__file__).name] = hits
    return found


def stats(t: torch.Tensor) -> dict:
    t = t.double()
    return {"min": float(t.min()), "max": float(t.max()), "mean": float(t.mean()),
            "std": float(t.std()), "absmax": float(t.abs().max())}


def rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).abs().max() / ref.abs().max())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ main
def run_model(name: str, x: torch.Tensor) -> tuple[dict, dict]:
    t0 = time.time()
    model = build(name)
    info = fill(model)
    # vanilla
    logits, target, g_van, ops_van = input_grad(model, x, None)
    assert torch.isfinite(logits).all()
    # guided: every nn.ReLU module + functional F.relu
    n_mod = swap_relu_modules(model)
    counter = [0]
    with patched_functional_relu(counter):
        logits_g, _, g_gd, ops_gd = input_grad(model, x, target)
    n_func_calls = counter[0]
    assert torch.equal(logits_g, logits), "guided forward must equal plain forward"
    assert not any(("Relu" in k or "Threshold" in k) for k in ops_gd), ops_gd
    tensors = {"input": x, "logits": logits, "target": torch.tensor([target], dtype=torch.int64),
               "grad_vanilla": g_van, "grad_guided": g_gd}
    res = {"module_relu_instances_replaced": n_mod,
           "functional_relu_calls_patched": n_func_calls,
           "autograd_nodes_vanilla": ops_van, "autograd_nodes_guided": ops_gd}
    if name == "densenet121":
        logits_h, _, g_hk, ops_hk = input_grad(model, x, target)  # modules guided, F.relu plain
        assert torch.equal(logits_h, logits)
        tensors["grad_guided_hooks_only"] = g_hk
        res["autograd_nodes_guided_hooks_only"] = ops_hk
        res["cosine_guided_vs_guided_hooks_only"] = cosine(g_gd, g_hk)
        res["max_rel_diff_guided_vs_guided_hooks_only"] = rel_diff(g_hk, g_gd.double())
        res["frac_elements_rel_diff_gt_1e-3_guided_vs_hooks_only"] = float(
            ((g_hk - g_gd).abs() > 1e-3 * g_gd.abs().max()).double().mean())
        res["cosine_guided_vs_vanilla"] = cosine(g_gd, g_van)
        res["cosine_guided_hooks_only_vs_vanilla"] = cosine(g_hk, g_van)
        res["grad_guided_hooks_only"] = stats(g_hk)
        res["grad_guided_hooks_only_negative_fraction"] = float((g_hk < 0).double().mean())
    else:
        res["cosine_guided_vs_vanilla"] = cosine(g_gd, g_van)

    # float64 reference on the same (float32-valued) weights: tolerance guidance
    m64 = build(name)
    fill(m64)
    m64.double()
    l64, t64, gv64, _ = input_grad(m64, x.double(), target)
    swap_relu_modules(m64)
    with patched_functional_relu([0]):
        _, _, gg64, _ = input_grad(m64, x.double(), target)
    f64 = {"max_abs_logit_diff": float((logits.double() - l64).abs().max()),
           "argmax_f64": int(l64.argmax(1).item()),
           "grad_vanilla_max_rel_diff": rel_diff(g_van, gv64),
           "grad_guided_max_rel_diff": rel_diff(g_gd, gg64),
           "note": "max|f32 - f64| / max|f64|, f64 = same weights/input upcast"}
    if name == "densenet121":
        _, _, gh64, _ = input_grad(m64, x.double(), target)
        f64["grad_guided_hooks_only_max_rel_diff"] = rel_diff(tensors["grad_guided_hooks_only"], gh64)

    for k, v in tensors.items():
        tensors[k] = v.contiguous()
        assert v.dtype == (torch.int64 if k == "target" else torch.float32), k
    path = OUT / f"{name}.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    back = load_file(str(path))
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)

    sm = torch.softmax(logits.double(), 1) if name.startswith("resnet") else torch.sigmoid(logits.double())
    res.update({
        "file": str(path.relative_to(REPO)),
        "bytes": path.stat().st_size,
        "sha256": sha256(path),
        "num_classes": int(logits.shape[1]),
        "target": target,
        "logits": stats(logits),
        "logits_top5": [[int(i), float(logits[0, i])] for i in logits[0].argsort(descending=True)[:5]],
        "logits_first8": [float(v) for v in logits[0, :8]],
        "target_prob": float(sm[0, target]),
        "grad_vanilla": stats(g_van),
        "grad_guided": stats(g_gd),
        "grad_guided_negative_fraction": float((g_gd < 0).double().mean()),
        "f32_vs_f64": f64,
    })
    print(f"  ({name}: {time.time() - t0:.1f} s)")
    res["weights"] = info
    return res, tensors


def main() -> None:
    torch.manual_seed(0)  # unused by the generator; fixes torchvision's init (overwritten anyway)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)

    checks = self_check()
    c1 = checks["first4"]["conv1.weight"]["value_f32"]
    ci = checks["first4"]["input"]["value_f32"]
    print(f"self-check conv1.weight [64,3,7,7] first 4: {c1}")
    print(f"self-check input [1,3,64,64] first 4:       {ci}")

    x = torch.from_numpy(generate("input", INPUT_SHAPE))
    results = {}
    for name in MODELS:
        res, _ = run_model(name, x)
        results[name] = res
        lg = res["logits"]
        extra = ""
        if name == "densenet121":
            extra = (f"  cos(guided, hooks_only)={res['cosine_guided_vs_guided_hooks_only']:.6f}, "
                     f"max rel diff {res['max_rel_diff_guided_vs_guided_hooks_only']:.2e}")
        print(f"{name:12s} logits [{lg['min']:+.3f}, {lg['max']:+.3f}] std {lg['std']:.3f} "
              f"target {res['target']}  relu modules {res['module_relu_instances_replaced']}, "
              f"functional calls {res['functional_relu_calls_patched']}  "
              f"f64 rel diff van {res['f32_vs_f64']['grad_vanilla_max_rel_diff']:.1e} "
              f"guided {res['f32_vs_f64']['grad_guided_max_rel_diff']:.1e}  "
              f"({res['bytes']} B){extra}")
        # "not absurdly large": well inside f32 and softmax-friendly
        assert lg["absmax"] < 1e3, lg

    info = {
        "generated_by": "scripts/make_torchvision_fixtures.py",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "safetensors": md.version("safetensors"),
        "torch_threads": torch.get_num_threads(),
        "generator": {
            "fnv1a64": "h = 0xcbf29ce484222325; for b in name.encode('utf-8'): h ^= b; h = (h * 0x100000001b3) mod 2**64",
            "element": "s = (fnv1a64(name) + (i+1) * 0x9E3779B97F4A7C15) mod 2**64; z = s; "
                       "z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) mod 2**64; "
                       "z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) mod 2**64; z ^= z >> 31; "
                       "u = (z >> 11) / 2**53 (f64); i = row-major element index from 0",
            "values_f64_then_f32": {
                "4-D conv weight [o,i,kh,kw]": "(2u-1) * sqrt(3 / (i*kh*kw))",
                "2-D linear weight [o,i]": "(2u-1) * sqrt(3 / i)",
                "*running_var": "0.5 + u",
                "*running_mean": "(2u-1) * 0.1",
                "other 1-D *weight (BatchNorm gamma)": "0.5 + u",
                "other 1-D *bias (BatchNorm beta, Linear bias)": "(2u-1) * 0.1",
                "*num_batches_tracked": "not generated (int64 0 as torchvision creates it; unused in eval)",
                "input [1,3,64,64]": "name 'input': (2u-1) * 2",
            },
            "names": "torchvision state_dict keys without prefix (modern DenseNet names norm1/conv1/..., "
                     "NOT the legacy 'norm.1' of torchvision's published checkpoints)",
            "weights_digest": "sha256 over sorted keys of key.utf8 + b'\\0' + f32 little-endian bytes",
        },
        "self_check": checks,
        "guided_relu": "backward grad_in = relu(grad_out) * (x > 0), every ReLU (nn.ReLU modules and "
                       "functional F.relu); plain ReLU backward grad_out * (x > 0)",
        "functional_relus_in_torchvision_source": functional_relus_in_source(),
        "bn_eps": 1e-5,
        "models": results,
    }
    jpath = OUT / "fixtures.json"
    jpath.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {jpath.relative_to(REPO)} ({jpath.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
