#!/usr/bin/env python3
"""Reference attributions for unveil's rival saliency methods: tests/fixtures/methods/.

Independent of the Rust code: Captum computes integrated gradients, plain PyTorch computes
Grad-CAM (hooks-free: each model's feature map and head are called explicitly), and
SmoothGrad is recomputed in PyTorch with unveil's noise generator ported to numpy
(SplitMix64 + Box-Muller, one stream per noisy copy), so the noisy paths are checked too.

Models and inputs are the existing fixtures':
  * EfficientNet-Lite0 (the independent PyTorch model of make_fixtures.py, bundled weights),
    input = tests/fixtures/efficientnet_lite0.safetensors "input" (chelsea, 224 x 224);
  * torchvision ResNet-18, ResNet-50 and DenseNet-121 with the generated weights of
    make_torchvision_fixtures.py, input = its generated [1, 3, 64, 64];
  * the chest X-ray Xception (the PyTorch port of make_pneumonia_fixtures.py; needs the
    fetched weights, see scripts/fetch_pneumonia_xception.sh), input = the first image of
    tests/fixtures/pneumonia_xception.safetensors.
Target: each fixture's own target (the top-1 class).

Definitions (what the Rust side must match):
  integrated gradients: baseline b = the run's fill image in model-input space (Lite0:
      ImageNet's mean colour normalised by (x - 0.5) / 0.5; torchvision models (ImageNet mean,
      ImageNet normalisation) and Xception (mid-gray, (x - 0.5) / 0.5): zeros);
      Captum IntegratedGradients(method="riemann_middle", n_steps=32): (x - b) * mean of the
      gradient at b + (k + 0.5) / 32 (x - b), k = 0..31.
  integrated gradients with SmoothGrad (Lite0 only): 2 noisy copies x_i (sigma 0.15 x range,
      seed 3), 8 steps each, attributions averaged over the copies (plain PyTorch).
  Grad-CAM: A = the last convolutional feature map after its activation (Lite0: ReLU6 of the
      head conv; ResNet: layer4's output; DenseNet: relu(norm5); Xception: the ReLU after
      block14_sepconv2_bn); w_c = mean over space of d logit[target] / d A_c;
      cam = relu(sum_c w_c A_c); F.interpolate(bilinear, align_corners=False) to the input.
  SmoothGrad (Lite0): 4 noisy copies (sigma 0.15 x (max - min of x), seed 7), guided ReLU6;
      "mean" = mean of the gradients, "squared" = mean of their squares.

Outputs (float32; attributions [3, h, w], cams [1, h, w]):
  tests/fixtures/methods/efficientnet_lite0.safetensors   ig, ig_smooth, gradcam,
      smoothgrad_guided_mean, smoothgrad_guided_squared, baseline_colour (the fill, per
      channel), ig_delta (Captum's convergence delta), logit_difference
  tests/fixtures/methods/{resnet18,resnet50,densenet121}.safetensors   ig, gradcam
  tests/fixtures/methods/pneumonia_xception.safetensors   ig, gradcam  (derived from weights
      that may not be redistributed: attributions only, as the gradients in
      pneumonia_xception.safetensors)

Run (repo root, scripts venv + captum):  .venv-scripts/bin/python scripts/make_method_fixtures.py
Tested with CPython 3.11.7, torch 2.7.1 (CPU), torchvision 0.22.1, captum 0.9.0,
safetensors 0.6.2. About a minute on 2 cores.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients
from safetensors import safe_open
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import make_fixtures as lite  # noqa: E402
import make_torchvision_fixtures as tv  # noqa: E402

OUT = REPO / "tests" / "fixtures" / "methods"
IG_STEPS = 32


# ---------------------------------------------------------------- unveil's noise
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def normal_stream(seed: int, stream: int, n: int) -> np.ndarray:
    """unveil's `saliency::Normal::new(seed, stream)`: the first `n` samples, as float32."""
    mixed = (stream * GOLDEN) & MASK64
    state0 = seed ^ (((mixed << 17) | (mixed >> 47)) & MASK64)
    pairs = (n + 1) // 2
    k = np.arange(1, 2 * pairs + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(state0) + k * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = ((z >> np.uint64(11)) + np.uint64(1)).astype(np.float64) / float(1 << 53)
    u1, u2 = u[0::2], u[1::2]
    r = np.sqrt(-2.0 * np.log(u1))
    t = 2.0 * math.pi * u2
    out = np.empty(2 * pairs, dtype=np.float32)
    out[0::2] = (r * np.cos(t)).astype(np.float32)  # returned first
    out[1::2] = (r * np.sin(t)).astype(np.float32)  # the spare, returned next
    return out[:n]


def noisy_copy(x: torch.Tensor, noise: float, seed: int, i: int) -> torch.Tensor:
    """Copy `i` of the single image `x` [1, c, h, w], as unveil's SmoothGrad draws it."""
    sigma = np.float32(noise) * np.float32(float(x.max() - x.min()))
    z = normal_stream(seed, i, x.numel()).reshape(x.shape)
    return x + torch.from_numpy(np.float32(sigma) * z)


# ---------------------------------------------------------------- the methods
def integrated_gradients(forward, x, baseline, target):
    ig = IntegratedGradients(forward)
    attr, delta = ig.attribute(x, baselines=baseline, target=target, n_steps=IG_STEPS,
                               method="riemann_middle", return_convergence_delta=True)
    return attr[0].detach(), float(delta[0])


def ig_by_hand(forward, x, baseline, target, steps):
    """(x - b) * mean gradient at b + (k + 0.5) / steps (x - b): plain PyTorch."""
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    points = (baseline + alphas.view(-1, 1, 1, 1) * (x - baseline)).requires_grad_(True)
    forward(points)[:, target].sum().backward()
    return ((x - baseline) * points.grad.mean(dim=0, keepdim=True))[0].detach()


def grad_cam(features, head, x, target):
    a = features(x).detach().requires_grad_(True)
    head(a)[0, target].backward()
    w = a.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((w * a).sum(dim=1, keepdim=True))
    up = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return up[0].detach()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


# ---------------------------------------------------------------- per model
def lite0() -> dict:
    model = lite.load_model()
    f = load_file(str(REPO / "tests/fixtures/efficientnet_lite0.safetensors"))
    x, target = f["input"], int(f["target"][0])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    baseline = ((mean - 0.5) / 0.5).expand_as(x).contiguous()

    def features(z):
        z = model.act(model._bn0(model._conv_stem(lite.same_pad(z, 3, 2))))
        for b in model._blocks:
            z = b(z, model.act)
        return model.act(model._bn1(model._conv_head(z)))

    def head(a):
        return model._fc(a.mean(dim=(2, 3)))

    assert torch.allclose(head(features(x)), model(x), atol=1e-4)
    ig, delta = integrated_gradients(model, x, baseline, target)
    by_hand = ig_by_hand(model, x, baseline, target, IG_STEPS)
    assert cosine(ig, by_hand) > 0.99999, "Captum and the formula agree"
    with torch.no_grad():
        logit_difference = float(model(x)[0, target] - model(baseline)[0, target])
    copies = [noisy_copy(x, 0.15, 3, i) for i in range(2)]
    ig_smooth = sum(ig_by_hand(model, c, baseline, target, 8) for c in copies) / 2
    model.guided = True
    grads = []
    for i in range(4):
        xi = noisy_copy(x, 0.15, 7, i).requires_grad_(True)
        model(xi)[0, target].backward()
        grads.append(xi.grad[0].detach())
    model.guided = False
    return {
        "ig": ig, "ig_smooth": ig_smooth, "gradcam": grad_cam(features, head, x, target),
        "smoothgrad_guided_mean": sum(grads) / 4,
        "smoothgrad_guided_squared": sum(g * g for g in grads) / 4,
        "baseline_colour": baseline[0, :, 0, 0], "ig_delta": torch.tensor([delta]),
        "logit_difference": torch.tensor([logit_difference]),
    }


def torchvision_model(name: str) -> dict:
    model = tv.build(name)
    tv.fill(model)
    f = load_file(str(REPO / f"tests/fixtures/torchvision/{name}.safetensors"))
    x, target = f["input"], int(f["target"][0])
    if name.startswith("resnet"):
        def features(z):
            z = model.maxpool(model.relu(model.bn1(model.conv1(z))))
            return model.layer4(model.layer3(model.layer2(model.layer1(z))))

        def head(a):
            return model.fc(a.mean(dim=(2, 3)))
    else:
        def features(z):
            return torch.relu(model.features(z))

        def head(a):
            return model.classifier(a.mean(dim=(2, 3)))

    assert torch.allclose(head(features(x)), model(x), atol=1e-4)
    ig, _ = integrated_gradients(model, x, torch.zeros_like(x), target)
    return {"ig": ig, "gradcam": grad_cam(features, head, x, target)}


def xception() -> dict | None:
    weights_path = Path.home() / ".local/share/unveil/models/pneumonia-xception.safetensors"
    if not weights_path.is_file():
        print(f"skipping Xception: {weights_path} not found (unveil models fetch pneumonia-xception)")
        return None
    import make_pneumonia_fixtures as px  # noqa: E402  (imports keras; only needed here)
    with safe_open(str(weights_path), "pt") as fh:
        port = px.XceptionPort({k: fh.get_tensor(k) for k in fh.keys()})
    f = load_file(str(REPO / "tests/fixtures/pneumonia_xception.safetensors"))
    x, target = f["inputs"][:1], int(f["target"][0])

    def head(a):
        h = port.relu(F.linear(a.mean(dim=(2, 3)), port.w["dense.weight"], port.w["dense.bias"]))
        return F.linear(h, port.w["dense_1.weight"], port.w["dense_1.bias"])

    assert torch.allclose(head(port.features(x)), port(x), atol=1e-4)
    ig, _ = integrated_gradients(port, x, torch.zeros_like(x), target)
    return {"ig": ig, "gradcam": grad_cam(port.features, head, x, target)}


def main() -> None:
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    made = {"efficientnet_lite0": lite0()}
    for name in ("resnet18", "resnet50", "densenet121"):
        made[name] = torchvision_model(name)
    x = xception()
    if x is not None:
        made["pneumonia_xception"] = x
    info = {"generated_by": "scripts/make_method_fixtures.py",
            "versions": {p: md.version(p) for p in ("torch", "torchvision", "captum", "safetensors")},
            "ig_steps": IG_STEPS, "files": {}}
    for name, tensors in made.items():
        path = OUT / f"{name}.safetensors"
        save_file({k: v.contiguous().to(torch.float32) for k, v in tensors.items()}, str(path),
                  metadata={"format": "pt"})
        info["files"][path.name] = {k: list(v.shape) for k, v in tensors.items()}
        extra = ""
        if "ig_delta" in tensors:
            extra = (f" ig sum {float(tensors['ig'].sum()):.4f} vs logit difference "
                     f"{float(tensors['logit_difference']):.4f} (captum delta {float(tensors['ig_delta']):.4f})")
        print(f"{path.name}: {path.stat().st_size} B{extra}")
    (OUT / "README.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
