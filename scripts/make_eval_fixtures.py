#!/usr/bin/env python3
"""Independent reference for unveil's faithfulness and sanity-check numbers: tests/fixtures/eval/.

For two photos (assets/chelsea.png, assets/coffee.png) and the bundled EfficientNet-Lite0 (the
PyTorch model of make_fixtures.py), with guided and vanilla SmoothGrad (4 copies, noise 0.15,
seed 0; unveil's noise generator ported to numpy, as in make_method_fixtures.py), this script
recomputes from scratch, in numpy / PyTorch / scipy / scikit-image:

  deletion and insertion curves of iteration 0 (Petsiuk et al. 2018, as unveil defines them):
      pixels in descending saliency order, ties by index; step k (0..32) covers the first
      k * n // 32 pixels; deletion puts the fill (ImageNet's mean colour, normalised) there,
      insertion puts the input back into its blur (a 29 x 29 box blur, radius min(h, w) // 16,
      three passes, windows clipped at the border and divided by their in-image area);
      AUC = the trapezoid rule's mean over the 33 values of p(target);
  the model-randomisation check: the same layers as unveil re-initialised (found again here
      from the state_dict's order: a layer starts at each weight of 2+ dims, the 1-D tensors
      after it belong to it; head = trailing linear layers; last stage = _blocks.15, _conv_head,
      _bn1; last quarter = the last ceil(layers / 4) layers, at least the last stage), with
      unveil's seeded values (He-normal weights, BatchNorm scale and running variance
      U(0.5, 1.5), shift and running mean N(0, 0.1), other biases 0; one stream per tensor,
      seeded by FNV-1a of its name); Spearman (scipy.stats.spearmanr) of the unscaled maps,
      SSIM (skimage.metrics.structural_similarity, data_range=1) of the maps as shown;
  class sensitivity: Spearman of the target's and the runner-up's maps.

Maps: max over channels of |mean gradient|; shown maps divided by their 99th percentile
(index round((n - 1) * 0.99) of the sorted values, in float32 as unveil computes it) and
clipped to 1.

Outputs:
  tests/fixtures/eval/inputs.safetensors   images [2, 224, 224, 3] uint8 (PIL BILINEAR resize);
      the model input is (x / 255 - 0.5) / 0.5 in float32, on both sides
  tests/fixtures/eval/expected.json        per image and method: target, curves, AUCs,
      randomisation rows, runner-up class and its correlation, tensors re-initialised

Run (repo root, scripts venv):  .venv-scripts/bin/python scripts/make_eval_fixtures.py
Tested with CPython 3.11.7, torch 2.7.1 (CPU), numpy 2.2.6, scipy 1.17.1, scikit-image 0.25.2,
Pillow 11.3.0, safetensors 0.6.2. About a minute on 2 cores.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import make_fixtures as lite  # noqa: E402
from make_method_fixtures import normal_stream, noisy_copy  # noqa: E402

OUT = REPO / "tests" / "fixtures" / "eval"
IMAGES = ["chelsea.png", "coffee.png"]
STEPS = 32
SAMPLES, NOISE, SEED = 4, 0.15, 0
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
LAST_STAGE = ("_blocks.15.", "_conv_head.", "_bn1.")


# ---------------------------------------------------------------- inputs and maps
def load_u8(name: str) -> np.ndarray:
    img = Image.open(REPO / "assets" / name).convert("RGB").resize((224, 224), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def model_input(u8: np.ndarray) -> torch.Tensor:
    x = (u8.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def smoothgrad(model, x: torch.Tensor, target: int, guided: bool) -> np.ndarray:
    """Mean gradient over unveil's noisy copies, [3, h, w]."""
    model.guided = guided
    total = torch.zeros_like(x[0])
    for i in range(SAMPLES):
        xi = noisy_copy(x, NOISE, SEED, i).requires_grad_(True)
        model(xi)[0, target].backward()
        total += xi.grad[0]
    model.guided = False
    return (total / SAMPLES).numpy()


def magnitude(g: np.ndarray) -> np.ndarray:
    return np.abs(g).max(axis=0).reshape(-1)


def shown(m: np.ndarray) -> np.ndarray:
    s = np.sort(m)
    last = len(m) - 1
    p99 = s[int(round(float(np.float32(last) * np.float32(0.99))))]
    scale = p99 if p99 > 0 else s[last]
    return np.minimum(m / scale, 1.0).astype(np.float32) if scale > 0 else m


# ---------------------------------------------------------------- deletion / insertion
def box_blur(plane: np.ndarray, r: int, passes: int) -> np.ndarray:
    """Mean over the (2r+1)^2 window clipped to the image, `passes` times, in float64."""
    h, w = plane.shape
    cur = plane.astype(np.float64)
    ys, xs = np.arange(h), np.arange(w)
    area = ((np.minimum(ys + r, h - 1) - np.maximum(ys - r, 0) + 1)[:, None]
            * (np.minimum(xs + r, w - 1) - np.maximum(xs - r, 0) + 1)[None, :])
    for _ in range(passes):
        c = np.zeros((h + 1, w + 1))
        c[1:, 1:] = cur.cumsum(0).cumsum(1)
        y0, y1 = np.maximum(ys - r, 0), np.minimum(ys + r, h - 1) + 1
        x0, x1 = np.maximum(xs - r, 0), np.minimum(xs + r, w - 1) + 1
        s = c[y1][:, x1] - c[y0][:, x1] - c[y1][:, x0] + c[y0][:, x0]
        cur = s / area
    return cur.astype(np.float32)


def probabilities(model, images: list[np.ndarray], target: int) -> list[float]:
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 11):
            batch = torch.from_numpy(np.stack(images[i:i + 11]))
            out += torch.softmax(model(batch), dim=1)[:, target].tolist()
    return out


def curves(model, x: np.ndarray, saliency: np.ndarray, target: int) -> dict:
    c, h, w = x.shape
    n = h * w
    order = np.lexsort((np.arange(n), -saliency))  # descending, ties by index
    fill = np.broadcast_to(((MEAN - 0.5) / 0.5)[:, None, None], x.shape).astype(np.float32)
    blurred = np.stack([box_blur(x[ch], min(h, w) // 16, 3) for ch in range(c)])

    def trace(base, source):
        imgs = []
        for k in range(STEPS + 1):
            img = base.reshape(c, n).copy()
            take = order[: k * n // STEPS]
            img[:, take] = source.reshape(c, n)[:, take]
            imgs.append(img.reshape(c, h, w))
        return probabilities(model, imgs, target)

    deletion, insertion = trace(x, fill), trace(blurred, x)
    auc = lambda v: float(np.mean([(a + b) / 2 for a, b in zip(v[:-1], v[1:])]))  # noqa: E731
    return {"deletion_curve": deletion, "insertion_curve": insertion,
            "deletion_auc": auc(deletion), "insertion_auc": auc(insertion)}


# ---------------------------------------------------------------- re-initialisation
def fnv1a(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def uniform_stream(seed: int, stream: int, n: int) -> np.ndarray:
    mixed = (stream * GOLDEN) & MASK64
    state0 = seed ^ (((mixed << 17) | (mixed >> 47)) & MASK64)
    k = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(state0) + k * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)) + np.uint64(1)).astype(np.float64) / float(1 << 53)


def scopes(sd: dict) -> dict:
    names = [k for k in sd if not k.endswith("num_batches_tracked")]
    layers = []
    for k in names:
        if sd[k].dim() >= 2 or not layers:
            layers.append([k])
        else:
            layers[-1].append(k)
    head = 0
    for layer in reversed(layers):
        if sd[layer[0]].dim() != 2:
            break
        head += 1
    head = max(head, 1)
    start_head = len(layers) - head
    stage = next(i for i, l in enumerate(layers) if any(n.startswith(LAST_STAGE) for n in l))
    stage = min(stage, start_head)
    quarter = min(len(layers) - math.ceil(len(layers) / 4), stage)
    flat = lambda i: {n for l in layers[i:] for n in l}  # noqa: E731
    return {"head": flat(start_head), "head+last-stage": flat(stage), "last-quarter": flat(quarter)}


def reinitialised(sd: dict, names: set, seed: int) -> dict:
    new = dict(sd)
    for name in sorted(names):
        t = sd[name]
        n = t.numel()
        stream = fnv1a(name)
        stem = name.rsplit(".", 1)[0]
        is_bn = t.dim() == 1 and f"{stem}.running_var" in sd
        last = name.rsplit(".", 1)[1]
        if t.dim() >= 2:
            std = np.float32(math.sqrt(2.0 / max(int(np.prod(t.shape[1:])), 1)))
            v = std * normal_stream(seed, stream, n)
        elif is_bn and last in ("weight", "running_var"):
            v = (np.float32(0.5) + uniform_stream(seed, stream, n).astype(np.float32))
        elif is_bn:
            v = np.float32(0.1) * normal_stream(seed, stream, n)
        else:
            v = np.zeros(n, np.float32)
        new[name] = torch.from_numpy(np.asarray(v, np.float32).reshape(t.shape))
    return new


# ---------------------------------------------------------------- main
def main() -> None:
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    model = lite.load_model()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    scope = scopes(sd)
    u8 = np.stack([load_u8(n) for n in IMAGES])
    save_file({"images": torch.from_numpy(u8)}, str(OUT / "inputs.safetensors"))
    expected = {"generated_by": "scripts/make_eval_fixtures.py",
                "versions": {p: md.version(p) for p in ("torch", "numpy", "scipy", "scikit-image")},
                "samples": SAMPLES, "noise": NOISE, "seed": SEED,
                "tensors_reinitialised": {k: len(v) for k, v in scope.items()}, "images": {}}
    for name, img in zip(IMAGES, u8):
        x = model_input(img)
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)[0]
        top = torch.argsort(probs, descending=True)[:2].tolist()
        target, runner_up = top[0], top[1]
        per = {"target": target, "runner_up": runner_up}
        for method, guided in (("guided", True), ("vanilla", False)):
            g = smoothgrad(model, x, target, guided)
            raw, vis = magnitude(g), shown(magnitude(g))
            row = curves(model, x[0].numpy(), vis, target)
            row["randomisation"] = []
            for level in ("head", "head+last-stage", "last-quarter"):
                model.load_state_dict(reinitialised(sd, scope[level], SEED))
                gr = smoothgrad(model, x, target, guided)
                model.load_state_dict(sd)
                rr, rv = magnitude(gr), shown(magnitude(gr))
                row["randomisation"].append({
                    "reinitialised": level,
                    "spearman": float(spearmanr(raw, rr).statistic),
                    "ssim": float(structural_similarity(vis.reshape(224, 224).astype(np.float64),
                                                        rv.reshape(224, 224).astype(np.float64),
                                                        data_range=1.0)),
                })
            go = smoothgrad(model, x, runner_up, guided)
            row["other_class_spearman"] = float(spearmanr(raw, magnitude(go)).statistic)
            per[method] = row
            rho = ", ".join(f"{r['spearman']:.3f}" for r in row["randomisation"])
            print(f"{name} {method}: target {target}, deletion AUC {row['deletion_auc']:.4f}, "
                  f"insertion AUC {row['insertion_auc']:.4f}, randomisation rho {rho}, "
                  f"runner-up {runner_up} rho {row['other_class_spearman']:.3f}")
        expected["images"][name] = per
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
