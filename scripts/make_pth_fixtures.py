#!/usr/bin/env python3
"""Real `torch.save` files for the Rust safe pickle / .pth reader: tests/fixtures/pth/.

  plain.pth              OrderedDict state_dict of nn.Sequential(Conv2d(3,8,3), BatchNorm2d(8),
                         ReLU(), Flatten(), Linear(8*6*6, 5)), seeded weights, BN running stats from
                         3 train-mode batches (num_batches_tracked = 3, a 0-d int64 tensor)
  varied.pth             plain dict: float16, float64, bfloat16, int64, a transposed view saved as
                         is (non-contiguous strides), a base tensor plus two views of it that share
                         its storage (storage offset != 0, one of them also non-contiguous)
  module_prefix.pth      plain's state through nn.DataParallel: keys "module.0.weight", ...
  nested_checkpoint.pth  {"epoch": 7, "state_dict": plain's state with prefix "densenet121.",
                         "best_auc": 0.81, "arch": "densenet121"}
  legacy_format.pth      plain's state with _use_new_zipfile_serialization=False (pre-1.6 format)
  evil_os_system.pth     {"weight": tensor, "payload": obj} where obj.__reduce__ ->
                         (os.system, ("echo PWNED > /tmp/unveil-pwned",))
  evil_eval.pth          same with (builtins.eval, ("'unveil: harmless string'",))
  truncated.pth          the first half of plain.pth's bytes
  huge_view.pth          {"weight": torch.zeros(1).expand(200000, 100000)}: a real torch.save of a
                         zero-stride view claiming 2e10 elements over a 1-element storage (1.5 KB;
                         materialising it would take 80 GB)
  expected.safetensors   every tensor of plain.pth / varied.pth: "plain/<key>", "varied/<key>"
                         (floating -> float32, int64 -> int64); "varied_native/<key>" keeps
                         varied's own dtype (f16/bf16/f64/f32/i64), contiguous
  README.md is written by hand; `--describe` prints the per-file tables it is built from
  (zip entries, pickle GLOBALs, tensor records).

The evil files are never unpickled with weights_only=False: they are checked with
pickletools (GLOBAL opcodes), with a restricted Unpickler (allow-list, the reference
behaviour for the Rust reader) and torch.load(weights_only=True), which must refuse them.

Byte reproducibility: every zip-format file is byte-for-byte reproducible (torch 2.7.1 writes
fixed zip timestamps and a content-derived .data/serialization_id). legacy_format.pth is NOT:
the legacy format names storages by their memory address (str(storage._cdata)), so it is
only rewritten when the existing file does not load to plain's tensors (or with --force).

Run (repo root, venv):  .venv-scripts/bin/python scripts/make_pth_fixtures.py [--force] [--describe]
Tested with CPython 3.11.7, torch 2.7.1 (CPU), safetensors 0.6.2.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import io
import os
import pickle
import pickletools
import sys
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "pth"
SEED = 20240611
MAX_BYTES = 200_000


# ------------------------------------------------------------------ payloads
class EvilSystem:
    def __reduce__(self):
        return (os.system, ("echo PWNED > /tmp/unveil-pwned",))


class EvilEval:
    def __reduce__(self):
        import builtins
        return (builtins.eval, ("'unveil: harmless string'",))


# ------------------------------------------------------------------ builders
def make_plain() -> tuple[nn.Module, collections.OrderedDict]:
    torch.manual_seed(SEED)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                      nn.Linear(8 * 6 * 6, 5))
    with torch.no_grad():
        m.train()
        for _ in range(3):
            m(torch.randn(4, 3, 8, 8) * 2.0 + 0.5)
        m.eval()
    sd = m.state_dict()
    assert int(sd["1.num_batches_tracked"]) == 3 and sd["1.num_batches_tracked"].dtype == torch.int64
    return m, sd


def make_varied() -> dict:
    g = torch.Generator().manual_seed(SEED + 1)
    mat = torch.randn(3, 5, generator=g)
    base = torch.randn(4, 6, generator=g)
    d = {
        "f16": (torch.randn(3, 4, generator=g) * 3).to(torch.float16),
        "f64": torch.randn(5, generator=g, dtype=torch.float64) * 1e3 + torch.tensor(1 / 3, dtype=torch.float64),
        "bf16": (torch.randn(2, 3, generator=g) * 7).to(torch.bfloat16),
        "i64": torch.tensor([[-(2**40), -3, -1, 0], [1, 2, 3, 2**53 + 1], [7, 8, 9, 2**62]], dtype=torch.int64),
        "transposed": mat.t(),           # [5,3], stride (1,5): only this view references mat's storage
        "base": base,                    # [4,6] contiguous
        "row_slice": base[2],            # [6], storage offset 12, shares base's storage
        "window": base[1:3, 2:5],        # [2,3], offset 8, stride (6,1): shares storage, non-contiguous
    }
    assert not d["transposed"].is_contiguous() and d["transposed"].stride() == (1, 5)
    assert d["row_slice"].storage_offset() == 12 and d["window"].storage_offset() == 8
    assert not d["window"].is_contiguous()
    assert d["row_slice"].untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
    return d


def prefixed(sd: collections.OrderedDict, prefix: str) -> collections.OrderedDict:
    out = collections.OrderedDict((prefix + k, v) for k, v in sd.items())
    meta = getattr(sd, "_metadata", None)
    if meta is not None:
        # as a wrapper module (DataParallel's `module`, a CheXNet-style `densenet121`) records it
        out._metadata = collections.OrderedDict([("", {"version": 1})] + [
            (prefix[:-1] + ("." + k if k else ""), v) for k, v in meta.items()])
    return out


# ------------------------------------------------------------------ inspection
def pickles_in(path: Path) -> list[tuple[str, bytes]]:
    """(label, pickle bytes) of every pickle in a .pth (zip: data.pkl; legacy: the 5 pickles)."""
    raw = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return [(n, z.read(n)) for n in z.namelist() if n.endswith(".pkl")]
    out, f = [], io.BytesIO(raw)
    labels = ["magic_number", "protocol_version", "sys_info", "main", "storage_keys"]
    for lab in labels:
        start = f.tell()
        for _ in pickletools.genops(f):
            pass
        out.append((lab, raw[start:f.tell()]))
    return out


def globals_in(pkl: bytes) -> list[str]:
    """Every GLOBAL / STACK_GLOBAL reference, in order of first appearance ("module.name")."""
    seen, strings = [], []
    for op, arg, _ in pickletools.genops(pkl):
        if op.name == "GLOBAL":
            mod, name = arg.split(" ", 1)
            ref = f"{mod}.{name}"
        elif op.name == "STACK_GLOBAL":
            ref = f"{strings[-2]}.{strings[-1]}"
        else:
            if isinstance(arg, str):
                strings.append(arg)
            continue
        if ref not in seen:
            seen.append(ref)
    return seen


ALLOWED = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch", "FloatStorage"), ("torch", "DoubleStorage"), ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"), ("torch", "LongStorage"), ("torch", "IntStorage"),
    ("torch", "ByteStorage"), ("torch", "BoolStorage"),
}


class SafeUnpickler(pickle.Unpickler):
    """Reference for what the Rust reader does: allow-list of globals, tensors as records."""

    def find_class(self, module, name):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}")
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if name == "_rebuild_tensor_v2":
            def rebuild(storage, offset, size, stride, requires_grad, hooks, metadata=None):
                return {"storage": storage, "offset": offset, "size": tuple(size),
                        "stride": tuple(stride)}
            return rebuild
        return f"{module}.{name}"

    def persistent_load(self, pid):
        return {"type": pid[1], "key": pid[2], "location": pid[3], "numel": pid[4]}


def safe_describe(path: Path) -> object:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
            return SafeUnpickler(io.BytesIO(z.read(pkl))).load()
    f = io.BytesIO(path.read_bytes())
    magic, proto, sys_info = (SafeUnpickler(f).load() for _ in range(3))
    assert magic == 0x1950A86A20F9469CFC6C and proto == 1001, (magic, proto)
    return SafeUnpickler(f).load()


def tensor_records(obj, prefix="") -> list[str]:
    rows = []
    if isinstance(obj, dict) and "storage" in obj and "stride" in obj:
        s = obj["storage"]
        return [f"{prefix or '(root)'}: {s['type']} key={s['key']} numel={s['numel']} "
                f"offset={obj['offset']} size={list(obj['size'])} stride={list(obj['stride'])}"]
    if isinstance(obj, dict):
        for k, v in obj.items():
            rows += tensor_records(v, f"{prefix}{k}" if not prefix else f"{prefix}/{k}")
    return rows


def zip_entries(path: Path) -> list[str]:
    """name, size, and the absolute file offset of each entry's data (from its LOCAL header)."""
    if not zipfile.is_zipfile(path):
        return []
    raw = path.read_bytes()
    rows = []
    with zipfile.ZipFile(path) as z:
        for i in z.infolist():
            h = i.header_offset
            assert raw[h:h + 4] == b"PK\x03\x04"
            n_len = int.from_bytes(raw[h + 26:h + 28], "little")
            x_len = int.from_bytes(raw[h + 28:h + 30], "little")
            start = h + 30 + n_len + x_len
            method = "stored" if i.compress_type == zipfile.ZIP_STORED else f"method {i.compress_type}"
            rows.append(f"{i.filename} ({method}, {i.file_size} B at offset {start}, "
                        f"offset % 64 = {start % 64})")
    return rows


STORAGE_DTYPES = {"torch.FloatStorage": torch.float32, "torch.LongStorage": torch.int64,
                  "torch.DoubleStorage": torch.float64, "torch.HalfStorage": torch.float16,
                  "torch.BFloat16Storage": torch.bfloat16}


def check_legacy_layout(path: Path, expected: dict) -> list[str]:
    """Decode the legacy (non-zip) file by hand, as the Rust reader would: 3 header pickles
    (magic, protocol 1001, sys_info), main pickle (persistent ids are 6-tuples
    ('storage', type, key, 'cpu', numel, None)), a pickled list of storage keys, then per key in
    that order: u64 little-endian element count + the raw little-endian elements."""
    raw = path.read_bytes()
    f = io.BytesIO(raw)
    u = SafeUnpickler(f)
    magic, proto, sys_info = u.load(), SafeUnpickler(f).load(), SafeUnpickler(f).load()
    assert magic == 0x1950A86A20F9469CFC6C and proto == 1001 and sys_info["little_endian"]
    recs = SafeUnpickler(f).load()
    keys = SafeUnpickler(f).load()
    pos, blobs = f.tell(), {}
    for k in keys:
        n = int.from_bytes(raw[pos:pos + 8], "little")
        blobs[k] = pos + 8
        dt = next(STORAGE_DTYPES[r["storage"]["type"]] for r in recs.values() if r["storage"]["key"] == k)
        pos += 8 + n * torch.empty((), dtype=dt).element_size()
    assert pos == len(raw), (pos, len(raw))
    for name, r in recs.items():
        dt = STORAGE_DTYPES[r["storage"]["type"]]
        es = torch.empty((), dtype=dt).element_size()
        start = blobs[r["storage"]["key"]]
        flat = torch.frombuffer(bytearray(raw[start:start + r["storage"]["numel"] * es]), dtype=dt)
        t = flat.as_strided(r["size"], r["stride"], r["offset"])
        assert t.dtype == expected[name].dtype and torch.equal(t, expected[name]), name
    return [f"sys_info {sys_info}", f"storage keys (sorted as strings, memory addresses): {keys}",
            f"raw storages start at byte {f.tell()} of {len(raw)}"]


# ------------------------------------------------------------------ helpers
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_tensors(a: dict, b: dict) -> bool:
    return list(a.keys()) == list(b.keys()) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def must_refuse(path: Path, needle: str) -> dict:
    pkls = pickles_in(path)
    refs = [r for _, p in pkls for r in globals_in(p)]
    assert needle in refs, (path.name, refs)
    raw = b"".join(p for _, p in pkls)
    assert b"c" + needle.replace(".", "\n").encode() + b"\n" in raw, needle  # GLOBAL opcode 'c'
    try:
        safe_describe(path)
        raise AssertionError(f"{path.name}: restricted unpickler accepted it")
    except pickle.UnpicklingError as e:
        safe_err = str(e)
    try:
        torch.load(path, weights_only=True)
        raise AssertionError(f"{path.name}: torch.load(weights_only=True) accepted it")
    except pickle.UnpicklingError as e:
        torch_err = str(e).strip().splitlines()
    torch_err = [ln for ln in torch_err if "GLOBAL" in ln or "Unsupported" in ln][:1] or torch_err[:1]
    return {"globals": refs, "restricted_unpickler": safe_err, "torch_weights_only": torch_err[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--force", action="store_true", help="rewrite legacy_format.pth even if equivalent")
    ap.add_argument("--describe", action="store_true", help="print zip entries / GLOBALs / tensor records")
    args = ap.parse_args()
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)

    _, plain = make_plain()
    varied = make_varied()

    torch.save(plain, OUT / "plain.pth")
    torch.save(varied, OUT / "varied.pth")
    torch.save(prefixed(plain, "module."), OUT / "module_prefix.pth")
    torch.save({"epoch": 7, "state_dict": prefixed(plain, "densenet121."), "best_auc": 0.81,
                "arch": "densenet121"}, OUT / "nested_checkpoint.pth")
    legacy = OUT / "legacy_format.pth"
    keep = False
    if legacy.exists() and not args.force:
        try:
            keep = same_tensors(torch.load(legacy, weights_only=True), plain)
        except Exception:
            keep = False
    if not keep:
        torch.save(plain, legacy, _use_new_zipfile_serialization=False)
    print(f"legacy_format.pth: {'kept existing (equivalent)' if keep else 'written'}")
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    torch.save({"weight": w, "payload": EvilSystem()}, OUT / "evil_os_system.pth")
    torch.save({"weight": w, "payload": EvilEval()}, OUT / "evil_eval.pth")
    pb = (OUT / "plain.pth").read_bytes()
    (OUT / "truncated.pth").write_bytes(pb[: len(pb) // 2])
    torch.save({"weight": torch.zeros(1).expand(200000, 100000)}, OUT / "huge_view.pth")

    # --- checks: the good files load with weights_only=True and match
    assert same_tensors(torch.load(OUT / "plain.pth", weights_only=True), plain)
    assert same_tensors(torch.load(legacy, weights_only=True), plain)
    legacy_notes = check_legacy_layout(legacy, plain)
    vb = torch.load(OUT / "varied.pth", weights_only=True)
    assert same_tensors(vb, varied)
    assert vb["transposed"].stride() == (1, 5) and vb["window"].storage_offset() == 8
    assert vb["row_slice"].untyped_storage().data_ptr() == vb["base"].untyped_storage().data_ptr()
    mp = torch.load(OUT / "module_prefix.pth", weights_only=True)
    assert same_tensors(mp, prefixed(plain, "module."))
    m2 = nn.DataParallel(make_plain()[0])  # the prefix is exactly what DataParallel produces
    assert list(m2.state_dict().keys()) == list(mp.keys())
    assert dict(m2.state_dict()._metadata) == dict(mp._metadata)
    hv = torch.load(OUT / "huge_view.pth", weights_only=True)["weight"]
    assert hv.shape == (200000, 100000) and hv.stride() == (0, 0)
    assert hv.untyped_storage().nbytes() == 4
    nc = torch.load(OUT / "nested_checkpoint.pth", weights_only=True)
    assert nc["epoch"] == 7 and nc["best_auc"] == 0.81 and nc["arch"] == "densenet121"
    assert same_tensors(nc["state_dict"], prefixed(plain, "densenet121."))
    try:
        torch.load(OUT / "truncated.pth", weights_only=True)
        raise AssertionError("truncated.pth loaded")
    except (RuntimeError, OSError) as e:
        trunc_err = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    refuse = {
        "evil_os_system.pth": must_refuse(OUT / "evil_os_system.pth", "posix.system"),
        "evil_eval.pth": must_refuse(OUT / "evil_eval.pth", "__builtin__.eval"),
    }
    assert not Path("/tmp/unveil-pwned").exists()

    # --- expected values
    exp = {}
    for k, v in plain.items():
        exp["plain/" + k] = v.to(torch.float32 if v.is_floating_point() else torch.int64).contiguous().clone()
    for k, v in varied.items():
        exp["varied/" + k] = v.to(torch.float32 if v.is_floating_point() else torch.int64).contiguous().clone()
        exp["varied_native/" + k] = v.contiguous().clone()
    save_file(exp, str(OUT / "expected.safetensors"), metadata={"format": "pt"})
    back = load_file(str(OUT / "expected.safetensors"))
    assert all(torch.equal(back[k], exp[k]) and back[k].dtype == exp[k].dtype for k in exp)

    files = ["plain.pth", "varied.pth", "module_prefix.pth", "nested_checkpoint.pth",
             "legacy_format.pth", "evil_os_system.pth", "evil_eval.pth", "truncated.pth",
             "huge_view.pth", "expected.safetensors"]
    for name in files:
        p = OUT / name
        assert p.stat().st_size < MAX_BYTES, (name, p.stat().st_size)
        print(f"{name:24s} {p.stat().st_size:7d} B  sha256 {sha256(p)}")
    print(f"truncated.pth: torch.load -> {trunc_err}")
    for name, r in refuse.items():
        print(f"{name}: restricted unpickler -> {r['restricted_unpickler']}; "
              f"torch weights_only -> {r['torch_weights_only']}")

    if args.describe:
        for name in [n for n in files if n not in ("truncated.pth", "expected.safetensors")]:
            p = OUT / name
            print(f"\n## {name}")
            for e in zip_entries(p):
                print("  zip:", e)
            for lab, pkl in pickles_in(p):
                proto = pkl[1] if pkl[0] == 0x80 else "<2"
                ops = sorted({op.name for op, _, _ in pickletools.genops(pkl)})
                print(f"  pickle {lab}: protocol {proto}, {len(pkl)} B, GLOBALs {globals_in(pkl)}")
                print(f"    opcodes: {' '.join(ops)}")
            if name == "legacy_format.pth":
                for row in legacy_notes:
                    print("  legacy:", row)
            if not name.startswith("evil"):
                for row in tensor_records(safe_describe(p)):
                    print("  tensor", row)
        print(f"\nexpected.safetensors keys: {sorted(exp)}")


if __name__ == "__main__":
    sys.exit(main())
