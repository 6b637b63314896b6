#!/usr/bin/env python3
"""Chest X-ray checkpoint fixtures for the Rust safe checkpoint reader: tests/fixtures/xray/.

Real-world layouts of DenseNet chest X-ray classifiers, with a SMALL DenseNet configuration
(growth_rate=8, block_config=(2,3,2,2), num_init_features=16, bn_size=2: the loader infers all
of these from tensor shapes) so the files stay small:

  chexnet_legacy.pth.tar          arnoweng/CheXNet layout: {"epoch": 12, "arch": "densenet121",
                                  "state_dict": ..., "best_loss": 0.1523, "optimizer": Adam
                                  state after one step}; keys "module.densenet121.features...."
                                  with the LEGACY dense-layer names ("denselayer1.norm.1.weight",
                                  no num_batches_tracked, no _metadata: what torch < 0.4 wrote);
                                  pre-1.6 (non-zip) torch.save format
  chexnet_whole_model.pth         jrzech/reproduce-chexnet layout: {"model": <whole torchvision
                                  DenseNet object, classifier = Sequential(Linear, Sigmoid)>,
                                  "best_loss", "epoch", "rng_state": ByteTensor, "LR"}; zip format
  chexnet_whole_model_legacy.pth  the same dict, legacy format (module classes are saved as
                                  ('module', class, source_file, source) persistent ids)
  xrv_densenet.pt                 whole torchxrayvision.models.DenseNet object (legacy format, as
                                  xrv's published weights), attributes as xrv sets them for
                                  "densenet121-res224-nih" but op_threshs = None (buffer)
  xrv_densenet_opthreshs.pt       same weights, "densenet121-res224-all" labels and op_threshs
  xrv_densenet_nih_opthreshs.pt   same weights, "densenet121-res224-nih" labels and op_threshs
                                  (4 NaN thresholds: op_norm returns exactly 0.5 there)
  evil_legacy_os_system.pth       legacy {"state_dict": OrderedDict(weight=...), "payload": obj},
                                  obj.__reduce__ -> (os.system, ("echo PWNED > /tmp/unveil-pwned",))
  evil_whole_model.pth            whole (even smaller) torchvision DenseNet, features.norm0.__dict__["calibration"]
                                  = the same os.system payload (zip format)
  evil_whole_model_legacy.pth     the same, legacy format
  legacy_truncated.pth            chexnet_legacy.pth.tar cut inside its storage data
  legacy_missing_storage.pth      legacy 2-tensor state dict whose key list / data lack storage "1"
  legacy_view_past_storage.pth    legacy; tensor "a" [2,3] stride (3,1) offset 1 over a 6-element
                                  storage (needs 7)
  legacy_huge_dims.pth            legacy; tensor "a" size (2**31, 2**31, 2**31) over 6 elements
  legacy_huge_count.pth           legacy; the u64 element count before storage "1" says 2**60
  legacy_cuda_storage.pth         the honest 2-tensor legacy file with torch.cuda.FloatStorage
                                  storages at 'cuda:0' (as GPU-saved pre-1.6 checkpoints are)
  xray_8bit.png                   8-bit grayscale 577x448 (W x H) from assets/chest-xray-normal.jpeg
  xray_16bit.png                  16-bit grayscale 281x350, values 2970..63444 (not k*257)
                                  (both run through xrv's documented normalize / XRayCenterCrop /
                                  XRayResizer(224) pipeline -> preprocess/8bit, preprocess/16bit)
  expected.safetensors            reference outputs (float32; targets int64)
  fixtures.json                   versions, sizes, sha256s, state-dict digests, pickle GLOBALs and
                                  opcodes, torch.load(weights_only=True) verdicts, ...
  (README.md is written by hand from this script's output / fixtures.json.)

Every legacy-format file is made byte-reproducible: torch's legacy writer names storages by
memory address (str(storage._cdata)); the script renames them "0", "1", ... in order of first
use in the main pickle, rewrites the key list (sorted as strings, as torch does) and reorders the
raw storages to match. Zip files are byte-reproducible as torch 2.7.1 writes them.

The crafted files are written with the standard pickler from stand-in objects that reduce
exactly like torch tensors; the script checks that the honest variant is byte-identical to
torch.save's own (key-canonicalised) output. The evil and crafted files are never unpickled
with weights_only=False; they are checked with pickletools, a restricted allow-list Unpickler
(the reference for the Rust data-only VM) and torch.load(weights_only=True) (in a subprocess).

Run (repo root, venv):  .venv-scripts/bin/python scripts/make_xray_checkpoint_fixtures.py
Tested with CPython 3.11.7, torch 2.7.1 (CPU), torchvision 0.22.1, torchxrayvision 1.5.7,
numpy 2.2.6, scikit-image 0.25.2, scipy 1.17.1, pillow 11.3.0, safetensors 0.6.2.
No network access: xrv.models.DenseNet(weights=None, ...) never downloads anything.
"""
from __future__ import annotations

import collections
import hashlib
import importlib.metadata as md
import io
import json
import math
import os
import pickle
import pickletools
import re
import struct
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchxrayvision as xrv
from PIL import Image
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "xray"
SRC_JPEG = REPO / "assets" / "chest-xray-normal.jpeg"
PWNED = Path("/tmp/unveil-pwned")
SEED = 20250117
CFG = dict(growth_rate=8, block_config=(2, 3, 2, 2), num_init_features=16, bn_size=2)
NUM_FTRS = 34  # 16 -> +16 = 32 -> 16 -> +24 = 40 -> 20 -> +16 = 36 -> 18 -> +16 = 34
MAX_FOLDER_BYTES = 3_400_000  # incl. README.md
PNG8_SIZE = (577, 448)    # (width, height): crop 448 at x = 288 - 224 = 64, resize factor 2
PNG16_SIZE = (281, 350)   # crop 281 at y = 175 - 140 = 35, resize factor 281/224
EVIL_CFG = dict(growth_rate=4, block_config=(1, 1), num_init_features=8, bn_size=1, num_classes=2)
NO_GRADS = ("xrv_densenet_nih_opthreshs",)  # grads == xrv_densenet's (same weights and target)

ELEMENT_SIZE = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2,
                "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1,
                "ByteStorage": 1, "BoolStorage": 1}
STORAGE_DTYPE = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                 "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8,
                 "BoolStorage": np.bool_}
LEGACY_PICKLES = ["magic_number", "protocol_version", "sys_info", "main", "storage_keys"]
TV_DENSE_RE = re.compile(  # torchvision.models.densenet._load_state_dict
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
TO_LEGACY_RE = re.compile(  # its inverse
    r"^(.*denselayer\d+\.(?:norm|relu|conv))([12])\.(weight|bias|running_mean|running_var)$")


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def sha256(path: Path) -> str:
    return sha256_bytes(path.read_bytes())


# ------------------------------------------------------------------ payloads
class EvilSystem:
    def __reduce__(self):
        return (os.system, ("echo PWNED > /tmp/unveil-pwned",))


# ------------------------------------------------------------------ models
class DenseNet121(nn.Module):
    """arnoweng/CheXNet's wrapper (model.py), with the small config instead of densenet121."""

    def __init__(self, out_size: int):
        super().__init__()
        self.densenet121 = torchvision.models.DenseNet(**CFG)
        num_ftrs = self.densenet121.classifier.in_features
        self.densenet121.classifier = nn.Sequential(nn.Linear(num_ftrs, out_size), nn.Sigmoid())

    def forward(self, x):
        return self.densenet121(x)


def randomise(model: nn.Module, seed: int, classifier: nn.Linear, conv0_scale: float = 1.0) -> None:
    """BN running_mean ~ N(0,0.1), running_var ~ U(0.5,1.5), weight ~ U(0.5,1.5), bias ~ N(0,0.1)
    (modules() order, one generator); classifier bias ~ N(0,0.1); conv0 weight *= conv0_scale."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
        classifier.bias.normal_(0.0, 0.1, generator=g)
        if conv0_scale != 1.0:
            for name, p in model.named_parameters():
                if name.endswith("features.conv0.weight"):
                    p.mul_(conv0_scale)


def tv_chexnet() -> torchvision.models.DenseNet:
    m = torchvision.models.DenseNet(**CFG)
    m.classifier = nn.Sequential(nn.Linear(m.classifier.in_features, 14), nn.Sigmoid())
    assert m.classifier[0].in_features == NUM_FTRS
    return m


def xrv_densenet() -> xrv.models.DenseNet:
    return xrv.models.DenseNet(weights=None, num_classes=18, in_channels=1, **CFG)


def xrv_as_loaded(model: xrv.models.DenseNet, weights: str, with_op_threshs: bool) -> None:
    """Set the instance attributes exactly as xrv.models.DenseNet.__init__ does after loading
    `weights` (models.py: targets/pathologies = model_urls[w]["labels"] (one list object),
    op_threshs = torch.tensor(model_urls[w]["op_threshs"]) into the registered buffer,
    input_resolution, weights, weights_filename_local), without downloading anything."""
    info = xrv.models.model_urls[weights]
    labels = list(info["labels"])
    model.weights = weights
    model.targets = labels
    model.pathologies = model.targets  # "keep to be backward compatible": the same list object
    model.weights_filename_local = os.path.join(
        "~", ".torchxrayvision", "models_data", os.path.basename(info["weights_url"]))  # unexpanded
    model.eval()
    if with_op_threshs:
        model.op_threshs = torch.tensor(info["op_threshs"])  # assigns the existing buffer
        assert "op_threshs" in model._buffers and model.op_threshs.dtype == torch.float32
    model.input_resolution = info["input_resolution"]


# ------------------------------------------------------------------ legacy format tools
def split_pickles(raw: bytes, n: int) -> list[tuple[int, int]]:
    f, spans = io.BytesIO(raw), []
    for _ in range(n):
        start = f.tell()
        for _ in pickletools.genops(f):
            pass
        spans.append((start, f.tell()))
    return spans


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")


def storage_refs(main: bytes) -> list[tuple[int, int, str, str]]:
    """(op index, byte pos, key, storage type) of every storage key in a persistent-id tuple
    ('storage', <GLOBAL torch.XStorage | BINGET>, key, location, numel[, view])."""
    ops = list(pickletools.genops(main))
    memo_globals = {}
    for i, (op, arg, _) in enumerate(ops):
        if op.name == "GLOBAL" and i + 1 < len(ops) and ops[i + 1][0].name in ("BINPUT", "LONG_BINPUT"):
            memo_globals[ops[i + 1][1]] = arg
    refs = []
    for i, (op, arg, pos) in enumerate(ops):
        if op.name != "BINUNICODE":
            continue
        j = i - 1
        if j >= 0 and ops[j][0].name in ("BINPUT", "LONG_BINPUT"):
            j -= 1
        if j < 0:
            continue
        prev_op, prev_arg, _ = ops[j]
        gl = prev_arg if prev_op.name == "GLOBAL" else (
            memo_globals.get(prev_arg) if prev_op.name in ("BINGET", "LONG_BINGET") else None)
        if gl and gl.startswith(("torch ", "torch.cuda ")) and gl.endswith("Storage"):
            refs.append((i, pos, arg, gl.split(" ", 1)[1]))
    return refs


def parse_legacy(raw: bytes, strict: bool = True) -> dict:
    spans = split_pickles(raw, 5)
    magic = _NoGlobals(io.BytesIO(raw[slice(*spans[0])])).load()
    proto = _NoGlobals(io.BytesIO(raw[slice(*spans[1])])).load()
    assert magic == 0x1950A86A20F9469CFC6C and proto == 1001, (magic, proto)
    main = raw[slice(*spans[3])]
    keys = _NoGlobals(io.BytesIO(raw[slice(*spans[4])])).load()
    refs = storage_refs(main)
    types = {}
    for _, _, k, t in refs:
        types.setdefault(k, t)
    pos, blobs, problems = spans[4][1], collections.OrderedDict(), []
    for k in keys:
        if pos + 8 > len(raw):
            problems.append(f"EOF before the count of storage {k!r} at byte {pos}")
            break
        (count,) = struct.unpack_from("<Q", raw, pos)
        nbytes = count * ELEMENT_SIZE[types[k]]
        if pos + 8 + nbytes > len(raw):
            problems.append(f"storage {k!r}: count {count} x {ELEMENT_SIZE[types[k]]} bytes at "
                            f"byte {pos} runs past EOF ({len(raw)})")
            break
        blobs[k] = (pos, count, raw[pos + 8:pos + 8 + nbytes])
        pos += 8 + nbytes
    if pos != len(raw) and not problems:
        problems.append(f"{len(raw) - pos} trailing bytes")
    if strict and problems:
        raise ValueError(problems)
    return {"spans": spans, "main": main, "keys": keys, "refs": refs, "types": types,
            "blobs": blobs, "data_start": spans[4][1], "problems": problems}


def canonicalise_legacy(raw: bytes) -> bytes:
    """Rename the memory-address storage keys to "0", "1", ... (first use in the main pickle)."""
    p = parse_legacy(raw)
    rename = {}
    for _, _, k, _ in p["refs"]:
        rename.setdefault(k, str(len(rename)))
    assert set(rename) == set(p["keys"]), "key list and main pickle disagree"
    main, out, last = p["main"], bytearray(), 0
    for _, pos, k, _ in p["refs"]:
        assert main[pos] == ord("X")
        (ln,) = struct.unpack_from("<I", main, pos + 1)
        assert main[pos + 5:pos + 5 + ln].decode() == k
        new = rename[k].encode()
        out += main[last:pos] + b"X" + struct.pack("<I", len(new)) + new
        last = pos + 5 + ln
    out += main[last:]
    new_keys = sorted(rename.values())  # torch: sorted(serialized_storages.keys()), as strings
    inv = {v: k for k, v in rename.items()}
    res = bytearray(raw[:p["spans"][3][0]]) + out + pickle.dumps(new_keys, protocol=2)
    for nk in new_keys:
        _, count, blob = p["blobs"][inv[nk]]
        res += struct.pack("<Q", count) + blob
    return bytes(res)


def legacy_save(obj, path: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    raw = canonicalise_legacy(buf.getvalue())
    path.write_bytes(raw)
    return raw


# stand-ins that pickle exactly like torch tensors (torch.Tensor.__reduce_ex__ -> _rebuild_tensor_v2)
class FakeStorage:
    def __init__(self, storage_type: str, key: str, numel: int):
        self.storage_type, self.key, self.numel = storage_type, key, numel


class FakeTensor:
    def __init__(self, storage: FakeStorage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce_ex__(self, protocol):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()))


class LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", getattr(torch, obj.storage_type), obj.key, "cpu", obj.numel, None)
        return None


def legacy_bytes(state: dict, key_list: list[str], blobs: list[tuple[int, bytes]]) -> bytes:
    head = (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps(dict(protocol_version=1001, little_endian=True,
                                type_sizes=dict(short=2, int=4, long=4)), protocol=2))
    buf = io.BytesIO()
    LegacyPickler(buf, protocol=2).dump(state)
    out = head + buf.getvalue() + pickle.dumps(key_list, protocol=2)
    for count, blob in blobs:
        out += struct.pack("<Q", count) + blob
    return out


# ------------------------------------------------------------------ restricted unpickler
class ModuleRec:
    """A whole nn.Module as data: NEWOBJ creates it, BUILD hands it its __dict__."""
    cls_name = "?"

    def __setstate__(self, state):
        self.state = state


class TensorRec:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


MODULE_PREFIXES = ("torch.nn.modules.", "torchvision.models.densenet", "torchxrayvision.models")


class SafeUnpickler(pickle.Unpickler):
    """What a data-only reader does: an allow-list of globals; tensors/modules become records."""

    def __init__(self, f):
        super().__init__(f)
        self.seen_globals = []
        self.module_pids = []

    def find_class(self, module, name):
        ref = f"{module}.{name}"
        self.seen_globals.append(ref)
        if ref == "collections.OrderedDict":
            return collections.OrderedDict
        if ref == "__builtin__.set":
            return set
        if ref == "torch._utils._rebuild_tensor_v2":
            return lambda st, off, size, stride, rg, hooks, meta=None: TensorRec(st, off, size, stride)
        if ref == "torch._utils._rebuild_parameter":
            return lambda data, requires_grad, hooks: data
        if module == "torch" and name.endswith("Storage") and name in ELEMENT_SIZE:
            return name
        if module.startswith(MODULE_PREFIXES):
            return type(name, (ModuleRec,), {"cls_name": ref})
        raise pickle.UnpicklingError(f"refusing global {ref}")

    def persistent_load(self, pid):
        if pid[0] == "storage":
            return {"type": pid[1], "key": pid[2], "location": pid[3], "numel": pid[4]}
        if pid[0] == "module":
            self.module_pids.append((pid[1].cls_name, pid[2], len(pid[3] or "")))
            return pid[1]
        raise pickle.UnpicklingError(f"unknown persistent id {pid[0]!r}")


def safe_load(path: Path):
    raw = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
            root = pkl[: -len("data.pkl")]
            u = SafeUnpickler(io.BytesIO(z.read(pkl)))
            obj = u.load()
            blobs = {n[len(root) + 5:]: z.read(n) for n in z.namelist() if n.startswith(root + "data/")}
        return obj, blobs, u
    p = parse_legacy(raw)
    u = SafeUnpickler(io.BytesIO(p["main"]))
    obj = u.load()
    return obj, {k: v[2] for k, v in p["blobs"].items()}, u


def materialise(t: TensorRec, blobs: dict) -> np.ndarray:
    st = t.storage
    arr = np.frombuffer(blobs[st["key"]], dtype=STORAGE_DTYPE[st["type"]])
    assert arr.size == st["numel"]
    if not t.size:
        return arr[t.offset].copy()
    need = t.offset + sum((s - 1) * d for s, d in zip(t.size, t.stride)) + 1
    assert need <= arr.size
    it = np.dtype(arr.dtype).itemsize
    return np.lib.stride_tricks.as_strided(arr[t.offset:], shape=t.size,
                                           strides=[d * it for d in t.stride]).copy()


def module_state(rec: ModuleRec, prefix: str = "") -> collections.OrderedDict:
    """state_dict() of a ModuleRec: _parameters, persistent _buffers (not None), recursively."""
    out = collections.OrderedDict()
    st = rec.state
    for k, v in st["_parameters"].items():
        if v is not None:
            out[prefix + k] = v
    nonpersistent = st.get("_non_persistent_buffers_set", set())
    for k, v in st["_buffers"].items():
        if v is not None and k not in nonpersistent:
            out[prefix + k] = v
    for k, child in st["_modules"].items():
        if child is not None:
            out.update(module_state(child, prefix + k + "."))
    return out


def compare_safe_state(path: Path, get_state, torch_sd: dict) -> int:
    obj, blobs, _ = safe_load(path)
    recs = get_state(obj)
    assert list(recs.keys()) == list(torch_sd.keys()), (path.name, list(recs)[:5], list(torch_sd)[:5])
    for k, r in recs.items():
        a = materialise(r, blobs)
        b = torch_sd[k].detach().numpy()
        assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), (path.name, k)
    return len(recs)


# ------------------------------------------------------------------ pickle inspection
def pickles_in(path: Path) -> list[tuple[str, bytes]]:
    raw = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return [(n, z.read(n)) for n in z.namelist() if n.endswith(".pkl")]
    spans = split_pickles(raw, 5)
    return [(lab, raw[a:b]) for lab, (a, b) in zip(LEGACY_PICKLES, spans)]


def describe_pickle(pkl: bytes) -> dict:
    globs, counts, opcodes, pids, max_memo = [], collections.Counter(), set(), collections.Counter(), -1
    ops = list(pickletools.genops(pkl))
    memo_str = {ops[i + 1][1]: arg for i, (op, arg, _) in enumerate(ops[:-1])
                if op.name == "BINUNICODE" and ops[i + 1][0].name in ("BINPUT", "LONG_BINPUT")}
    for i, (op, arg, _) in enumerate(ops):
        opcodes.add(op.name)
        if op.name == "GLOBAL":
            ref = arg.replace(" ", ".", 1)
            counts[ref] += 1
            if ref not in globs:
                globs.append(ref)
        if op.name == "STACK_GLOBAL":
            raise AssertionError("STACK_GLOBAL not expected at protocol 2")
        if op.name in ("BINPUT", "LONG_BINPUT"):
            max_memo = max(max_memo, arg)
        if op.name == "BINPERSID":
            # the pid tuple starts at the matching MARK; its first element is the typename
            depth, j = 0, i - 1
            while j >= 0:
                if ops[j][0].name == "TUPLE":
                    depth += 1
                if ops[j][0].name == "MARK":
                    depth -= 1
                    if depth == 0:
                        break
                j -= 1
            nxt_op, nxt_arg, _ = ops[j + 1]
            if nxt_op.name in ("BINGET", "LONG_BINGET"):  # the typename string, memoised
                nxt_arg = memo_str.get(nxt_arg, f"(memo {nxt_arg})")
            pids[nxt_arg] += 1
    return {"bytes": len(pkl), "globals": globs, "global_counts": dict(counts),
            "opcodes": sorted(opcodes), "persistent_ids": dict(pids), "max_memo_index": max_memo,
            "protocol": ops[0][1] if ops[0][0].name == "PROTO" else None}


def describe_file(path: Path) -> dict:
    raw = path.read_bytes()
    d = {"bytes": len(raw), "sha256": sha256_bytes(raw),
         "format": "zip" if zipfile.is_zipfile(path) else "legacy"}
    d["pickles"] = {lab: describe_pickle(b) for lab, b in pickles_in(path)}
    if d["format"] == "zip":
        with zipfile.ZipFile(path) as z:
            names = [i.filename for i in z.infolist()]
            data = [n for n in names if "/data/" in n]
            d["zip_entries"] = [n for n in names if "/data/" not in n] + [
                f"{len(data)} storages {data[0]} .. {data[-1]}" if data else "no storages"]
            d["zip_root"] = names[0].split("/", 1)[0]
    else:
        p = parse_legacy(raw, strict=False)
        d["legacy"] = {
            "pickle_spans": dict(zip(LEGACY_PICKLES, [list(s) for s in p["spans"]])),
            "storage_keys_first8": p["keys"][:8],
            "storage_key_count": len(p["keys"]),
            "referenced_keys_first8": list(dict.fromkeys(k for _, _, k, _ in p["refs"]))[:8],
            "referenced_key_count": len(set(k for _, _, k, _ in p["refs"])),
            "data_start": p["data_start"],
            "storages_read": len(p["blobs"]),
            "storage_bytes": sum(8 + len(v[2]) for v in p["blobs"].values()),
            "storage_types_used": dict(collections.Counter(p["types"].values())),
            "problems": p["problems"],
        }
    return d


# ------------------------------------------------------------------ guided backprop
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
    """torch.nn.functional.relu -> guided (torchvision's densenet.py and xrv's models.py both
    call `F.relu(features, inplace=True)`, looked up on the module at call time)."""
    orig = F.relu

    def guided(x, inplace=False):
        counter[0] += 1
        return GuidedReLUFn.apply(x)

    F.relu = guided
    try:
        assert torchvision.models.densenet.F.relu is guided and xrv.models.F.relu is guided
        yield
    finally:
        F.relu = orig


def graph_op_counts(root) -> dict:
    counts, seen, stack = collections.Counter(), set(), [root]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        nm = type(fn).__name__
        if any(s in nm for s in ("Relu", "Threshold", "Guided", "Clamp")):
            counts[nm] += 1
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return dict(counts)


def run_with_logits(model: nn.Module, classifier: nn.Linear, x: torch.Tensor):
    """model(x) plus the classifier Linear's output captured by a forward hook."""
    cap = {}
    h = classifier.register_forward_hook(lambda m, i, o: cap.__setitem__("logits", o))
    try:
        out = model(x)
    finally:
        h.remove()
    return out, cap["logits"]


def input_grad(model, classifier, x, target):
    xi = x.clone().requires_grad_(True)
    _, logits = run_with_logits(model, classifier, xi)
    ops = graph_op_counts(logits.grad_fn)
    logits[0, target].backward()
    return xi.grad.detach().clone(), ops


def cosine(a, b) -> float:
    a64, b64 = a.double().reshape(-1), b.double().reshape(-1)
    return float((a64 @ b64) / (a64.norm() * b64.norm()))


def sd_digest(sd: dict) -> dict:
    """sha256 over sorted keys of: key utf-8 + b"\\0" + tensor as contiguous little-endian f32."""
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode() + b"\0" + sd[k].detach().to(torch.float32).contiguous().numpy()
                 .astype("<f4").tobytes())
    return {"count": len(sd), "sha256": h.hexdigest()}


def references(name: str, model: nn.Module, classifier: nn.Linear, x: torch.Tensor,
               names: list[str], tensors: dict) -> dict:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        probs, logits = run_with_logits(model, classifier, x)
    valid = [i for i, n in enumerate(names) if n]
    target = valid[int(logits[0, valid].argmax())]
    g_van, ops_van = input_grad(model, classifier, x, target)
    n_mod = swap_relu_modules(model)
    counter = [0]
    with patched_functional_relu(counter):
        g_gd, ops_gd = input_grad(model, classifier, x, target)
        with torch.no_grad():
            probs_g, logits_g = run_with_logits(model, classifier, x)
    assert torch.equal(logits_g, logits) and torch.equal(probs_g, probs), "guided forward = plain forward"
    assert not any("Relu" in k or "Threshold" in k for k in ops_gd), ops_gd
    assert ops_gd.get("GuidedReLUFnBackward", 0) == ops_van.get("ReluBackward0", 0), (ops_van, ops_gd)
    tensors[f"{name}/logits"] = logits.detach().clone()
    tensors[f"{name}/probabilities"] = probs.detach().clone()
    tensors[f"{name}/target"] = torch.tensor([target], dtype=torch.int64)
    if name not in NO_GRADS:
        tensors[f"{name}/grad_guided"] = g_gd
        tensors[f"{name}/grad_vanilla"] = g_van
    else:  # not stored: asserted equal to the xrv_densenet ones
        assert torch.equal(g_gd, tensors["xrv_densenet/grad_guided"])
        assert torch.equal(g_van, tensors["xrv_densenet/grad_vanilla"])
    return {"target": target, "target_name": names[target],
            "logits": [round(float(v), 6) for v in logits[0]],
            "probabilities": [round(float(v), 6) for v in probs[0]],
            "relu_modules_replaced": n_mod, "functional_relu_calls_patched": counter[0] // 2,
            "autograd_nodes_vanilla": ops_van, "autograd_nodes_guided": ops_gd,
            "cosine_guided_vs_vanilla": cosine(g_gd, g_van),
            "grad_guided_absmax": float(g_gd.abs().max()), "grad_vanilla_absmax": float(g_van.abs().max())}


# ------------------------------------------------------------------ preprocessing
def make_pngs() -> dict:
    src = Image.open(SRC_JPEG)
    assert src.mode == "L", src.mode
    W, H = src.size
    # 8-bit: whole image, resized to 577x448 (aspect 1.288 vs 1.254)
    im8 = src.resize(PNG8_SIZE, Image.LANCZOS)
    im8.save(OUT / "xray_8bit.png", optimize=False, compress_level=9)
    # 16-bit: a central portrait crop (aspect 333/410), float resize, scaled to 0..59000 plus a
    # smooth 0..6000 gradient so most of the 16-bit range is used and values are not k*257
    w16, h16 = PNG16_SIZE
    cw = round(H * w16 / h16)
    box = ((W - cw) // 2, 0, (W - cw) // 2 + cw, H)
    f = np.asarray(src.crop(box).convert("F").resize(PNG16_SIZE, Image.LANCZOS), dtype=np.float64)
    f = (f - f.min()) / (f.max() - f.min())  # stretch the crop to 0..1
    yy, xx = np.mgrid[0:h16, 0:w16]
    grad = 6000.0 * (0.6 * xx / (w16 - 1) + 0.4 * yy / (h16 - 1))
    v16 = np.clip(np.round(f * 59000.0 + grad), 0, 65535).astype(np.uint16)
    Image.fromarray(v16).save(OUT / "xray_16bit.png", optimize=False, compress_level=9)
    return {"8bit_from": f"whole {W}x{H} JPEG, PIL LANCZOS resize to {PNG8_SIZE}",
            "16bit_from": f"JPEG crop box {box}, PIL 'F' LANCZOS resize to {PNG16_SIZE}, f = (v - min)/(max - min), "
                          "round(f*59000 + 6000*(0.6*x/(W-1) + 0.4*y/(H-1)))",
            "16bit_min": int(v16.min()), "16bit_max": int(v16.max()),
            "16bit_fraction_multiple_of_257": float((v16 % 257 == 0).mean())}


def preprocess(path: Path, maxval: int) -> tuple[np.ndarray, dict]:
    import skimage.io
    import torchvision.transforms
    img = skimage.io.imread(str(path))
    info = {"imread_dtype": str(img.dtype), "imread_shape": list(img.shape),
            "min": int(img.min()), "max": int(img.max())}
    img = xrv.datasets.normalize(img, maxval, reshape=True)  # [1,H,W] float32
    info["normalized_shape"] = list(img.shape)
    info["normalized_dtype"] = str(img.dtype)
    _, h, w = img.shape
    c = min(h, w)
    info["crop"] = {"size": c, "starty": h // 2 - c // 2, "startx": w // 2 - c // 2}
    factors = np.divide((1, c, c), (1, 224, 224))
    sigma = np.maximum(0, (factors - 1) / 2)
    info["resize"] = {"factors": factors.tolist(), "anti_aliasing_sigma": sigma.tolist(),
                      "gaussian_radius": [int(4.0 * s + 0.5) for s in sigma]}
    tf = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)])
    out = tf(img)
    assert out.shape == (1, 224, 224) and out.dtype == np.float32
    info["out_min"], info["out_max"] = float(out.min()), float(out.max())
    # independent numpy re-implementation of the formulas documented in README.md
    ref = reference_preprocess(skimage.io.imread(str(path)), maxval)
    info["numpy_reference_max_abs_diff"] = float(np.abs(ref - out[0]).max())
    info["numpy_reference_pearson"] = float(np.corrcoef(ref.reshape(-1), out.reshape(-1))[0, 1])
    assert info["numpy_reference_max_abs_diff"] < 0.05, info
    return out, info


def reference_preprocess(u: np.ndarray, maxval: int, size: int = 224) -> np.ndarray:
    """normalize -> center crop -> skimage.transform.resize(mode='constant', order=1, AA), by hand."""
    x = (np.float32(2) * (u.astype(np.float32) / np.float32(maxval)) - np.float32(1)) * np.float32(1024)
    h, w = x.shape
    c = min(h, w)
    sy, sx = h // 2 - c // 2, w // 2 - c // 2
    x = x[sy:sy + c, sx:sx + c].astype(np.float64)
    lo, hi = x.min(), x.max()
    f = c / size
    sigma = max(0.0, (f - 1) / 2)
    if sigma > 0:
        r = int(4.0 * sigma + 0.5)
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
        k /= k.sum()
        for axis in (0, 1):  # zero padding outside the image (mode='constant', cval=0)
            pad = [(0, 0), (0, 0)]
            pad[axis] = (r, r)
            xp = np.pad(x, pad)
            x = sum(k[i] * np.take(xp, np.arange(i, i + c), axis=axis) for i in range(2 * r + 1))
    pos = (np.arange(size) + 0.5) * f - 0.5  # half-pixel centres, always inside [0, c-1] here
    i0 = np.clip(np.floor(pos).astype(int), 0, c - 1)
    i1 = np.clip(i0 + 1, 0, c - 1)
    t = pos - i0
    x = x[i0] * (1 - t)[:, None] + x[i1] * t[:, None]          # rows
    x = x[:, i0] * (1 - t)[None, :] + x[:, i1] * t[None, :]    # columns
    return np.clip(x, lo, hi).astype(np.float32)


# ------------------------------------------------------------------ torch.load(weights_only=True)
WEIGHTS_ONLY_CHECK = r"""
import json, sys, resource, torch
resource.setrlimit(resource.RLIMIT_AS, (24 << 30, 24 << 30))
res = {}
for p in sys.argv[1:]:
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            desc = {k: type(v).__name__ for k, v in obj.items()}
            if "state_dict" in obj:
                desc["state_dict"] = f"{len(obj['state_dict'])} tensors"
        else:
            desc = type(obj).__name__
        res[p] = {"ok": True, "result": desc}
    except BaseException as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        key = [l for l in lines if "global" in l.lower() and "weights_only" not in l.lower()]
        res[p] = {"ok": False, "error": f"{type(e).__name__}: {(key or lines or [''])[0]}"}
print(json.dumps(res))
"""


def weights_only_verdicts(paths: list[Path]) -> dict:
    r = subprocess.run([sys.executable, "-c", WEIGHTS_ONLY_CHECK] + [str(p) for p in paths],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"weights_only check crashed: rc={r.returncode}\n{r.stderr[-3000:]}")
    return {Path(k).name: v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


# ------------------------------------------------------------------ main
def main() -> None:
    assert not PWNED.exists(), f"{PWNED} exists before the run; remove it and re-run"
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    report: dict = {"versions": {
        "python": sys.version.split()[0], "torch": torch.__version__,
        "torchvision": torchvision.__version__, "torchxrayvision": xrv.__version__,
        "numpy": np.__version__, **{p: md.version(p) for p in
                                    ("scikit-image", "scipy", "pillow", "safetensors")}},
        "config": {**CFG, "block_config": list(CFG["block_config"]), "num_features": NUM_FTRS},
        "seed": SEED, "models": {}, "files": {}}

    # ---- a) CheXNet legacy (arnoweng) -------------------------------------------------
    torch.manual_seed(SEED + 1)
    wrapper = DenseNet121(14)
    randomise(wrapper, SEED + 11, wrapper.densenet121.classifier[0])
    dp = nn.DataParallel(wrapper)
    dp.eval()
    opt = torch.optim.Adam(dp.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(SEED + 21)
    xb = torch.randn(2, 3, 64, 64, generator=g)
    yb = (torch.rand(2, 14, generator=g) > 0.8).float()
    loss = F.binary_cross_entropy(dp(xb), yb)
    loss.backward()
    opt.step()
    opt.zero_grad()
    sd_new = dp.state_dict()
    sd_legacy = collections.OrderedDict()
    for k, v in sd_new.items():
        if k.endswith("num_batches_tracked"):
            continue  # did not exist before torch 0.4.1
        sd_legacy[TO_LEGACY_RE.sub(r"\1.\2.\3", k)] = v.detach().clone()
    assert any(".norm.1." in k for k in sd_legacy) and not any("norm1" in k for k in sd_legacy)
    ckpt = {"epoch": 12, "arch": "densenet121", "state_dict": sd_legacy, "best_loss": 0.1523,
            "optimizer": opt.state_dict()}
    legacy_save(ckpt, OUT / "chexnet_legacy.pth.tar")

    # ---- b) CheXNet whole model (jrzech) ----------------------------------------------
    torch.manual_seed(SEED + 2)
    tvm = tv_chexnet()
    randomise(tvm, SEED + 12, tvm.classifier[0])
    tvm.eval()
    whole = {"model": tvm, "best_loss": 0.1523, "epoch": 12, "rng_state": torch.get_rng_state(), "LR": 0.001}
    torch.save(whole, OUT / "chexnet_whole_model.pth")
    legacy_save(whole, OUT / "chexnet_whole_model_legacy.pth")

    # ---- c, d) torchxrayvision --------------------------------------------------------
    torch.manual_seed(SEED + 3)
    xm = xrv_densenet()
    randomise(xm, SEED + 13, xm.classifier, conv0_scale=1.0 / 1024)
    xm.eval()
    assert xm.op_threshs is None and "op_threshs" in xm._buffers
    assert not hasattr(xm, "pathologies"), "weights=None models have no `pathologies`"
    xrv_state = {k: v.clone() for k, v in xm.state_dict().items()}
    xrv_variants = {
        "xrv_densenet": ("densenet121-res224-nih", False),
        "xrv_densenet_opthreshs": ("densenet121-res224-all", True),
        "xrv_densenet_nih_opthreshs": ("densenet121-res224-nih", True),
    }
    for fname, (weights, with_th) in xrv_variants.items():
        m = xrv_densenet()
        m.load_state_dict(xrv_state)
        xrv_as_loaded(m, weights, with_th)
        legacy_save(m, OUT / f"{fname}.pt")

    # ---- e) evil / broken -------------------------------------------------------------
    g = torch.Generator().manual_seed(SEED + 4)
    legacy_save({"state_dict": collections.OrderedDict(weight=torch.randn(2, 3, generator=g)),
                 "payload": EvilSystem()}, OUT / "evil_legacy_os_system.pth")
    torch.manual_seed(SEED + 5)
    em = torchvision.models.DenseNet(**EVIL_CFG)  # an even smaller DenseNet: only the payload matters
    em.eval()
    em.features.norm0.calibration = EvilSystem()  # a plain attribute: lands in norm0.__dict__
    assert "calibration" in em.features.norm0.__dict__
    torch.save(em, OUT / "evil_whole_model.pth")
    legacy_save(em, OUT / "evil_whole_model_legacy.pth")

    raw = (OUT / "chexnet_legacy.pth.tar").read_bytes()
    p = parse_legacy(raw)
    # cut in the middle of the first storage of >= 4 KiB (keeps the file small; all pickles intact)
    cut_key = next(k for k, (pos, cnt, blob) in p["blobs"].items() if len(blob) >= 4096)
    pos, cnt, blob = p["blobs"][cut_key]
    mid = pos + 8 + len(blob) // 2 + 2  # not on an element boundary
    (OUT / "legacy_truncated.pth").write_bytes(raw[:mid])
    truncated_info = {"cut_at": mid, "of": len(raw), "data_start": p["data_start"],
                      "inside_storage": cut_key, "storage_count_at": pos, "storage_bytes": len(blob),
                      "bytes_of_it_kept": mid - (pos + 8),
                      "storage_index_in_key_list": p["keys"].index(cut_key),
                      "storages_in_file": len(p["keys"])}

    # crafted: a 2-tensor legacy state dict written from stand-ins
    g = torch.Generator().manual_seed(SEED + 6)
    ta, tb = torch.randn(2, 3, generator=g), torch.randn(4, generator=g)
    honest_torch = io.BytesIO()
    torch.save(collections.OrderedDict(a=ta, b=tb), honest_torch, _use_new_zipfile_serialization=False)
    honest_torch = canonicalise_legacy(honest_torch.getvalue())
    blob_a, blob_b = ta.numpy().astype("<f4").tobytes(), tb.numpy().astype("<f4").tobytes()

    def crafted(a_off=0, a_size=(2, 3), a_stride=(3, 1), keys=("0", "1"), counts=(6, 4)):
        sa, sb = FakeStorage("FloatStorage", "0", 6), FakeStorage("FloatStorage", "1", 4)
        state = collections.OrderedDict(a=FakeTensor(sa, a_off, a_size, a_stride),
                                        b=FakeTensor(sb, 0, (4,), (1,)))
        blobs = [(c, {"0": blob_a, "1": blob_b}[k]) for k, c in zip(keys, counts)]
        return legacy_bytes(state, list(keys), blobs)

    assert crafted() == honest_torch, "stand-in pickler must reproduce torch.save byte for byte"
    (OUT / "legacy_missing_storage.pth").write_bytes(crafted(keys=("0",), counts=(6,)))
    (OUT / "legacy_view_past_storage.pth").write_bytes(crafted(a_off=1))
    (OUT / "legacy_huge_dims.pth").write_bytes(
        crafted(a_size=(2**31, 2**31, 2**31), a_stride=(2**62, 2**31, 1)))
    (OUT / "legacy_huge_count.pth").write_bytes(crafted(counts=(6, 2**60)))
    # A file saved on a GPU before PyTorch 1.6 (as the 2017-18 CheXNet checkpoints were): the
    # storages are torch.cuda.FloatStorage at 'cuda:0'. Byte edits of the honest file (GLOBAL
    # lines and BINUNICODE strings carry their own lengths; nothing else moves).
    cuda = honest_torch.replace(b"ctorch\nFloatStorage\n", b"ctorch.cuda\nFloatStorage\n")
    cuda = cuda.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    assert cuda.count(b"torch.cuda") == 1 and cuda.count(b"cuda:0") == 1
    (OUT / "legacy_cuda_storage.pth").write_bytes(cuda)
    report["crafted_base"] = {"a": "float32 [2,3] stride (3,1) offset 0, storage '0' numel 6",
                              "b": "float32 [4] stride (1,) offset 0, storage '1' numel 4",
                              "a_values": ta.reshape(-1).tolist(), "b_values": tb.tolist(),
                              "honest_sha256": sha256_bytes(honest_torch),
                              "honest_bytes": len(honest_torch)}

    # ---- references ---------------------------------------------------------------------
    g = torch.Generator().manual_seed(SEED + 7)
    x_chex = torch.randn(1, 3, 64, 64, generator=g)
    x_xrv = torch.rand(1, 1, 224, 224, generator=g) * 2048.0 - 1024.0
    tensors["chexnet/input"] = x_chex
    tensors["xrv/input"] = x_xrv
    chex_names = list(xrv.datasets.default_pathologies[:14])  # display only; CheXNet: all 14 valid

    # a
    ck = torch.load(OUT / "chexnet_legacy.pth.tar", map_location="cpu", weights_only=False)
    m = tv_chexnet()
    sd = collections.OrderedDict()
    for k, v in ck["state_dict"].items():
        assert k.startswith("module.densenet121.")
        sd[TV_DENSE_RE.sub(r"\1\2", k[len("module.densenet121."):])] = v
    missing, unexpected = m.load_state_dict(sd, strict=False)
    # no _metadata in the file -> BatchNorm's _load_from_state_dict (version None < 2) fills the
    # absent num_batches_tracked itself, so nothing is reported missing
    assert not unexpected and not missing, (missing, unexpected)
    file_sd = ck["state_dict"]
    for k, v in file_sd.items():
        assert torch.equal(v, sd_legacy[k])
    n = compare_safe_state(OUT / "chexnet_legacy.pth.tar", lambda o: o["state_dict"], file_sd)
    info = references("chexnet_legacy", m, m.classifier[0], x_chex, [f"class{i}" for i in range(14)], tensors)
    info.update({"file_state_dict": sd_digest(file_sd), "model_state_dict": sd_digest(m.state_dict()),
                 "safe_unpickler_tensors_checked": n,
                 "optimizer": {"state_entries": len(ck["optimizer"]["state"]),
                               "state_keys": sorted(ck["optimizer"]["state"][0].keys()),
                               "param_groups": [{k: v for k, v in pg.items() if k != "params"}
                                                | {"params": f"[0..{len(pg['params']) - 1}]"}
                                                for pg in ck["optimizer"]["param_groups"]]},
                 "checkpoint_keys": list(ck.keys()),
                 "state_dict_first_keys": list(file_sd)[:6]})
    report["models"]["chexnet_legacy"] = info

    # b
    for name in ("chexnet_whole_model", "chexnet_whole_model_legacy"):
        ck = torch.load(OUT / f"{name}.pth", map_location="cpu", weights_only=False)
        m = ck["model"]
        assert type(m) is torchvision.models.DenseNet and not m.training
        assert torch.equal(ck["rng_state"], whole["rng_state"])
        sd_file = m.state_dict()
        n = compare_safe_state(OUT / f"{name}.pth", lambda o: module_state(o["model"]), sd_file)
        info = references(name, m, m.classifier[0], x_chex, [f"class{i}" for i in range(14)], tensors)
        info.update({"file_state_dict": sd_digest(sd_file), "safe_unpickler_tensors_checked": n,
                     "checkpoint_keys": list(ck.keys()), "rng_state": [list(ck["rng_state"].shape),
                                                                        str(ck["rng_state"].dtype)]})
        report["models"][name] = info
    for k in ("logits", "probabilities", "grad_guided", "grad_vanilla"):
        assert torch.equal(tensors[f"chexnet_whole_model/{k}"], tensors[f"chexnet_whole_model_legacy/{k}"])

    # c, d
    for name, (weights, with_th) in xrv_variants.items():
        m = torch.load(OUT / f"{name}.pt", map_location="cpu", weights_only=False)
        assert type(m) is xrv.models.DenseNet
        assert m.pathologies is m.targets
        sd_file = m.state_dict()
        n = compare_safe_state(OUT / f"{name}.pt", module_state, sd_file)
        names = list(m.pathologies)
        assert xrv.utils.fix_resolution(x_xrv, m.input_resolution, m) is x_xrv, "224 input: no resampling"
        xrv.utils.warning_log.clear()
        info = references(name, m, m.classifier, x_xrv, names, tensors)
        with torch.no_grad():
            manual = m.classifier(m.features2(x_xrv))  # m's ReLUs are guided now: same forward
        assert torch.equal(manual, tensors[f"{name}/logits"])
        logits = tensors[f"{name}/logits"]
        tensors[f"{name}/sigmoid"] = torch.sigmoid(logits)
        th = m.op_threshs
        if th is not None:
            ref = xrv.models.op_norm(torch.sigmoid(logits), th)
            assert torch.equal(ref, tensors[f"{name}/probabilities"])
            nan = torch.isnan(th)
            if nan.any():
                assert torch.all(tensors[f"{name}/probabilities"][0, nan] == 0.5)
        else:
            assert torch.equal(tensors[f"{name}/probabilities"], logits), "no op_threshs: raw logits"
        info.update({
            "file_state_dict": sd_digest(sd_file), "safe_unpickler_tensors_checked": n,
            "weights": m.weights, "pathologies": names,
            "op_threshs": None if th is None else [None if math.isnan(v) else v for v in th.tolist()],
            "op_threshs_dtype": None if th is None else str(th.dtype),
            "op_threshs_in_state_dict": "op_threshs" in sd_file,
            "input_resolution": m.input_resolution, "apply_sigmoid": m.apply_sigmoid,
            "weights_filename_local": m.weights_filename_local,
            "instance_dict_keys": [k for k in m.__dict__],
            "norm_check_warning": xrv.utils.warning_log.get("norm_correct"),
        })
        report["models"][name] = info
    for k in ("logits", "sigmoid"):
        assert torch.equal(tensors[f"xrv_densenet/{k}"], tensors[f"xrv_densenet_opthreshs/{k}"])

    # ---- preprocessing ------------------------------------------------------------------
    report["pngs"] = make_pngs()
    pre = {}
    for key, fname, maxval in (("8bit", "xray_8bit.png", 255), ("16bit", "xray_16bit.png", 65535)):
        out, info = preprocess(OUT / fname, maxval)
        tensors[f"preprocess/{key}"] = torch.from_numpy(out.copy())
        info["maxval"] = maxval
        pre[key] = info
    report["preprocess"] = pre

    # ---- write references ---------------------------------------------------------------
    for k, v in tensors.items():
        tensors[k] = v.detach().contiguous()
        assert v.dtype == (torch.int64 if k.endswith("/target") else torch.float32), (k, v.dtype)
    save_file(dict(sorted(tensors.items())), str(OUT / "expected.safetensors"), metadata={"format": "pt"})
    back = load_file(str(OUT / "expected.safetensors"))
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    report["attribute_names"] = {
        "chexnet_legacy": "checkpoint dict keys epoch/arch/state_dict/best_loss/optimizer; state_dict keys "
                          "'module.' (DataParallel) + 'densenet121.' (wrapper attribute) + torchvision "
                          "DenseNet keys with legacy 'denselayerN.{norm,relu,conv}.{1,2}.' names; head "
                          "'classifier.0.{weight,bias}' (Sequential(Linear, Sigmoid))",
        "chexnet_whole_model": "checkpoint dict keys model/best_loss/epoch/rng_state/LR; model = "
                               "torchvision.models.densenet.DenseNet, head model._modules['classifier'] = "
                               "Sequential with _modules '0' (Linear) and '1' (Sigmoid)",
        "xrv": "torchxrayvision.models.DenseNet.__dict__: apply_sigmoid (bool), weights (str), targets (list "
               "of 18 str, '' = not predicted), pathologies (the SAME list object: memo BINGET), "
               "weights_filename_local (str), input_resolution (int 224); op_threshs lives in "
               "__dict__['_buffers']['op_threshs'] (None or float32 [18], NaN = no threshold); "
               "modules _modules['features'] (Sequential) and _modules['classifier'] (Linear 34->18)",
    }
    report["expected_keys"] = {k: [list(v.shape), str(v.dtype).replace("torch.", "")]
                               for k, v in sorted(tensors.items())}

    # ---- inspection -----------------------------------------------------------------------
    pickle_files = sorted(p for p in OUT.iterdir() if p.suffix in (".pth", ".pt", ".tar"))
    for pth in pickle_files:
        report["files"][pth.name] = describe_file(pth)
    report["legacy_truncated"] = truncated_info
    # the restricted unpickler refuses the evil files (never weights_only=False on them)
    refusals = {}
    for name in ("evil_legacy_os_system.pth", "evil_whole_model.pth", "evil_whole_model_legacy.pth"):
        try:
            safe_load(OUT / name)
            raise AssertionError(f"{name}: restricted unpickler accepted it")
        except pickle.UnpicklingError as e:
            refusals[name] = str(e)
        globs = [gl for d in report["files"][name]["pickles"].values() for gl in d["globals"]]
        assert "posix.system" in globs, globs
    report["restricted_unpickler_refusals"] = refusals
    crafted_checks = {}
    for name in ("legacy_missing_storage.pth", "legacy_view_past_storage.pth",
                 "legacy_huge_dims.pth", "legacy_huge_count.pth", "legacy_truncated.pth"):
        try:
            obj, blobs, _ = safe_load(OUT / name)
            recs = obj["state_dict"] if "state_dict" in obj else obj
            for k, r in recs.items():
                if isinstance(r, TensorRec):
                    materialise(r, blobs)
            crafted_checks[name] = "loaded?!"
        except (AssertionError, KeyError, ValueError) as e:
            crafted_checks[name] = f"{type(e).__name__}: {str(e)[:200]}"
    report["restricted_reader_on_broken"] = crafted_checks
    report["weights_only_true"] = weights_only_verdicts(pickle_files)
    assert not PWNED.exists(), "PWNED marker appeared!"

    # ---- sizes / hashes -------------------------------------------------------------------
    for pth in sorted(OUT.iterdir()):
        if pth.name in ("fixtures.json", "README.md"):
            continue
        report["files"].setdefault(pth.name, {"bytes": pth.stat().st_size, "sha256": sha256(pth)})
    (OUT / "fixtures.json").write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT.relative_to(REPO)}: {total} bytes in {len(list(OUT.iterdir()))} files")
    assert total <= MAX_FOLDER_BYTES, total
    for pth in sorted(OUT.iterdir()):
        print(f"  {pth.stat().st_size:>9}  {sha256(pth)}  {pth.name}")


if __name__ == "__main__":
    main()
