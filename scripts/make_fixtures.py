#!/usr/bin/env python3
"""PyTorch reference fixtures for the Rust (candle) EfficientNet-Lite0 engine.

The network is rebuilt here from scratch (an nn.Module written for this
script, independent of the Rust code), loads models/efficientnet-lite0.safetensors
with strict=True, and is cross-checked against the model class of the PyPI
package efficientnet-lite-pytorch==0.1.0 (logits and vanilla gradient).

Architecture (EfficientNet-Lite0, inference / eval mode):
  stem     conv3x3 s2 3->32 (no bias) + BN + ReLU6
  16 MBConv blocks, no squeeze-excite:
           [expand conv1x1 + BN + ReLU6]   (absent when expand ratio 1: block 0)
           depthwise kxk stride s + BN + ReLU6
           project conv1x1 + BN            (no activation)
           + identity skip when stride 1 and in == out
  head     conv1x1 320->1280 (no bias) + BN + ReLU6
  global average pool, dropout (identity in eval), fc 1280->1000
  BatchNorm eps = 1e-3 (efficientnet_lite() in efficientnet_lite_pytorch/utils.py).
  TensorFlow "SAME" padding for every conv with k > 1, as an explicit zero pad:
      out = ceil(in / s); pad_total = max((out - 1) * s + k - in, 0)
      pad_before = pad_total // 2, pad_after = pad_total - pad_before
  (so stride-2 convs on even sizes pad 0 before / 1 after for k=3, 1 / 2 for k=5).

Preprocessing: PIL open -> RGB -> resize straight to 224x224 (no crop) with
Image.BILINEAR (Pillow's antialiased bilinear) -> float32 / 255 ->
(x - 0.5) / 0.5 -> NCHW float32 [1, 3, 224, 224].

Outputs:
  tests/fixtures/efficientnet_lite0.safetensors
      input          [1,3,224,224] f32  assets/chelsea.png preprocessed
      logits         [1,1000] f32       pre-softmax
      target         [1] i64            argmax(logits)
      grad_vanilla   [1,3,224,224] f32  d logits[0,target] / d input, plain ReLU6
      grad_guided    [1,3,224,224] f32  same, every ReLU6 -> guided ReLU6
      features_pooled [1,1280] f32      (extra) global-average-pooled head output
  tests/fixtures/efficientnet_lite0.json  versions, top-5 for both sample images,
      padding table, sha256 of the safetensors fixture
  tests/fixtures/guided_relu6.safetensors  small op-level fixture:
      x [2,3,4,5], grad_out [2,3,4,5], y = relu6(x),
      grad_in_guided = relu(grad_out) * ((x > 0) & (x < 6)),
      grad_in_plain  = grad_out * ((x > 0) & (x < 6))

Run (from the repo root, after convert_efficientnet_lite0.py and fetch_samples.py):
    .venv-scripts/bin/python scripts/make_fixtures.py
Tested with CPython 3.11.7, torch 2.7.1 (CPU), Pillow 11.3.0, numpy 2.2.6,
safetensors 0.6.2, efficientnet-lite-pytorch 0.1.0.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "efficientnet-lite0.safetensors"
CLASSES = REPO / "assets" / "imagenet_classes.txt"
IMAGES = {"chelsea.png": REPO / "assets" / "chelsea.png", "coffee.png": REPO / "assets" / "coffee.png"}
FIX_DIR = REPO / "tests" / "fixtures"
FIX_MODEL = FIX_DIR / "efficientnet_lite0.safetensors"
FIX_JSON = FIX_DIR / "efficientnet_lite0.json"
FIX_GUIDED = FIX_DIR / "guided_relu6.safetensors"

INPUT_SIZE = 224
BN_EPS = 1e-3
SEED = 0

# EfficientNet-Lite0 stages: (repeats, kernel, stride of first block, expand ratio, in, out)
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


# --------------------------------------------------------------------------- ops
class GuidedReLU6(torch.autograd.Function):
    """forward: clamp(x, 0, 6); backward: relu(grad_out) * ((x > 0) & (x < 6))."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0.0, 6.0)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        gate = ((x > 0) & (x < 6)).to(grad_out.dtype)
        return grad_out.clamp_min(0.0) * gate


def same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding (asymmetric, extra on bottom/right)."""
    if k == 1:
        return x
    ih, iw = x.shape[-2:]
    pads = []
    for size in (iw, ih):  # F.pad order: (left, right, top, bottom)
        out = math.ceil(size / s)
        total = max((out - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def pad_table() -> list[dict]:
    """Padding of every k>1 conv for a 224x224 input (documentation for the Rust side)."""
    rows = []
    size = INPUT_SIZE
    def one(name, k, s, size):
        out = math.ceil(size / s)
        total = max((out - 1) * s + k - size, 0)
        rows.append({"conv": name, "k": k, "stride": s, "in": size, "out": out,
                     "pad_before": total // 2, "pad_after": total - total // 2})
        return out
    size = one("_conv_stem", 3, 2, size)
    i = 0
    for reps, k, s, _e, _cin, _cout in STAGES:
        for r in range(reps):
            size = one(f"_blocks.{i}._depthwise_conv", k, s if r == 0 else 1, size)
            i += 1
    return rows


# ------------------------------------------------------------------------ model
class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, s: int, e: int):
        super().__init__()
        mid = cin * e
        self.k, self.s = k, s
        self.has_expand = e != 1
        self.skip = s == 1 and cin == cout
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride=s, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x, act):
        h = x
        if self.has_expand:
            h = act(self._bn0(self._expand_conv(h)))
        h = act(self._bn1(self._depthwise_conv(same_pad(h, self.k, self.s))))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for reps, k, s, e, cin, cout in STAGES:
            for r in range(reps):
                blocks.append(MBConv(cin if r == 0 else cout, cout, k, s if r == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)
        self.guided = False

    def act(self, x):
        return GuidedReLU6.apply(x) if self.guided else F.relu6(x)

    def pooled(self, x):
        x = self.act(self._bn0(self._conv_stem(same_pad(x, 3, 2))))
        for b in self._blocks:
            x = b(x, self.act)
        x = self.act(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x):
        return self._fc(self._dropout(self.pooled(x)))


def load_model() -> EfficientNetLite0:
    m = EfficientNetLite0()
    sd = load_file(str(MODEL))
    missing, unexpected = m.load_state_dict(sd, strict=False)
    # num_batches_tracked were dropped by the converter; nothing else may differ.
    assert all(k.endswith("num_batches_tracked") for k in missing), missing
    assert not unexpected, unexpected
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


# ---------------------------------------------------------------- preprocessing
def preprocess(path: Path, norm: str = "half") -> torch.Tensor:
    img = Image.open(path).convert("RGB")
    img = img.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / np.float32(255.0)  # HWC in [0,1]
    if norm == "half":
        x = (x - np.float32(0.5)) / np.float32(0.5)
    elif norm == "imagenet":  # only for the diagnostic comparison below
        x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    else:
        raise ValueError(norm)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(torch.float32)


def top5(logits: torch.Tensor, labels: list[str]) -> list[dict]:
    p = torch.softmax(logits.double(), dim=1)[0]
    vals, idx = torch.topk(p, 5)
    return [{"class": int(i), "label": labels[int(i)], "prob": round(float(v), 6)} for v, i in zip(vals, idx)]


def input_grad(model: EfficientNetLite0, x: torch.Tensor, target: int, guided: bool) -> torch.Tensor:
    model.guided = guided
    xi = x.clone().requires_grad_(True)
    out = model(xi)
    out[0, target].backward()
    model.guided = False
    return xi.grad.detach().clone()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------- package cross-check
def package_crosscheck(model: EfficientNetLite0, x: torch.Tensor, logits: torch.Tensor,
                       target: int, grad_vanilla: torch.Tensor) -> dict:
    """Compare with efficientnet_lite_pytorch's own model class (same weights)."""
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import get_model_params

    _, gp = get_model_params("efficientnet-lite0", None)
    assert gp.batch_norm_epsilon == BN_EPS, gp.batch_norm_epsilon
    assert gp.relu_fn == "relu6" and gp.use_se is False
    ref = EfficientNet.from_name("efficientnet-lite0")
    sd = load_file(str(MODEL))
    ref.load_state_dict(sd, strict=False)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    for mod in ref.modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert mod.eps == BN_EPS
    xi = x.clone().requires_grad_(True)
    out = ref(xi)
    out[0, target].backward()
    d_logits = (out.detach() - logits).abs().max().item()
    d_grad = (xi.grad - grad_vanilla).abs().max().item()
    rel_grad = d_grad / grad_vanilla.abs().max().item()
    print(f"package cross-check: max|dlogits|={d_logits:.3e}  max|dgrad|={d_grad:.3e} (rel {rel_grad:.3e})")
    assert d_logits < 1e-4 and rel_grad < 1e-4
    return {"package": "efficientnet-lite-pytorch==" + md.version("efficientnet-lite-pytorch"),
            "max_abs_logit_diff": d_logits, "max_abs_grad_vanilla_diff": d_grad,
            "package_bn_eps": gp.batch_norm_epsilon}


# ------------------------------------------------------------------------- main
def make_guided_relu6_fixture() -> dict:
    g = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float32) * 4.0
    grad_out = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float32)
    xg = x.clone().requires_grad_(True)
    y = GuidedReLU6.apply(xg)
    y.backward(grad_out)
    grad_in_guided = xg.grad.detach().clone()
    xp = x.clone().requires_grad_(True)
    yp = F.relu6(xp)
    yp.backward(grad_out)
    grad_in_plain = xp.grad.detach().clone()
    gate = ((x > 0) & (x < 6)).float()
    assert torch.equal(y.detach(), yp.detach())
    assert torch.equal(grad_in_plain, grad_out * gate)
    assert torch.equal(grad_in_guided, grad_out.clamp_min(0) * gate)
    assert (x < 0).any() and (x > 6).any() and ((x > 0) & (x < 6)).any()
    t = {"x": x, "grad_out": grad_out, "y": y.detach().contiguous(),
         "grad_in_guided": grad_in_guided, "grad_in_plain": grad_in_plain}
    save_file(t, str(FIX_GUIDED), metadata={"format": "pt"})
    return {"file": str(FIX_GUIDED.relative_to(REPO)), "sha256": sha256(FIX_GUIDED),
            "x_below_0": int((x <= 0).sum()), "x_in_0_6": int(((x > 0) & (x < 6)).sum()),
            "x_above_6": int((x >= 6).sum())}


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    FIX_DIR.mkdir(parents=True, exist_ok=True)

    labels = CLASSES.read_text(encoding="utf-8").splitlines()
    assert len(labels) == 1000
    model = load_model()

    results = {}
    with torch.no_grad():
        for name, path in IMAGES.items():
            lg = model(preprocess(path))
            results[name] = top5(lg, labels)
            print(f"{name} top-5 (x/255-0.5)/0.5:")
            for r in results[name]:
                print(f"   {r['class']:4d} {r['prob']:.4f}  {r['label']}")
        # Diagnostic only: the package README's ImageNet mean/std normalisation.
        alt = {}
        for name, path in IMAGES.items():
            alt[name] = top5(model(preprocess(path, "imagenet")), labels)
            print(f"{name} top-5 with ImageNet mean/std (diagnostic, not used): "
                  + ", ".join(f"{r['class']}:{r['label']}:{r['prob']:.3f}" for r in alt[name]))

    x = preprocess(IMAGES["chelsea.png"])
    with torch.no_grad():
        pooled = model.pooled(x)
        logits = model._fc(pooled)
    target = int(logits.argmax(dim=1).item())
    grad_vanilla = input_grad(model, x, target, guided=False)
    grad_guided = input_grad(model, x, target, guided=True)
    # The guided forward pass must be identical to the plain one.
    model.guided = True
    with torch.no_grad():
        assert torch.equal(model(x), logits)
    model.guided = False
    assert not torch.equal(grad_vanilla, grad_guided)
    print(f"target={target} ({labels[target]}), |grad_vanilla|max={grad_vanilla.abs().max():.4e}, "
          f"|grad_guided|max={grad_guided.abs().max():.4e}, "
          f"cos(vanilla,guided)={F.cosine_similarity(grad_vanilla.flatten(), grad_guided.flatten(), dim=0):.4f}")

    cross = package_crosscheck(model, x, logits, target, grad_vanilla)

    tensors = {
        "input": x.contiguous(),
        "logits": logits.contiguous(),
        "target": torch.tensor([target], dtype=torch.int64),
        "grad_vanilla": grad_vanilla.contiguous(),
        "grad_guided": grad_guided.contiguous(),
        "features_pooled": pooled.contiguous(),
    }
    for k, v in tensors.items():
        assert v.dtype == (torch.int64 if k == "target" else torch.float32), k
    save_file(tensors, str(FIX_MODEL), metadata={"format": "pt"})
    guided_info = make_guided_relu6_fixture()

    info = {
        "generated_by": "scripts/make_fixtures.py",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "pillow": md.version("pillow"),
        "numpy": np.__version__,
        "safetensors": md.version("safetensors"),
        "model_weights": {"file": str(MODEL.relative_to(REPO)), "sha256": sha256(MODEL)},
        "preprocessing": {
            "resize": "PIL Image.resize((224, 224), Image.BILINEAR) on the RGB image, no crop",
            "scale": "x / 255 (float32)",
            "normalise": "(x - 0.5) / 0.5 per channel",
            "layout": "NCHW float32 [1, 3, 224, 224]",
        },
        "architecture": {"bn_eps": BN_EPS, "activation": "relu6", "squeeze_excite": False,
                         "padding": "TensorFlow SAME, explicit zero pad before each k>1 conv",
                         "pad_table_224": pad_table()},
        "fixture": {
            "file": str(FIX_MODEL.relative_to(REPO)),
            "sha256": sha256(FIX_MODEL),
            "image": "assets/chelsea.png",
            "target": target,
            "target_label": labels[target],
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                        for k, v in tensors.items()},
            "grad_vanilla_absmax": float(grad_vanilla.abs().max()),
            "grad_guided_absmax": float(grad_guided.abs().max()),
        },
        "top5": results,
        "top5_imagenet_mean_std_diagnostic": alt,
        "package_crosscheck": cross,
        "guided_relu6_fixture": guided_info,
    }
    FIX_JSON.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    for p in (FIX_MODEL, FIX_JSON, FIX_GUIDED):
        print(f"wrote {p.relative_to(REPO)} ({p.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
