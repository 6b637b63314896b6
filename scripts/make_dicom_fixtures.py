#!/usr/bin/env python3
"""DICOM test files for the Rust DICOM loader, made from assets/chest-xray-normal.jpeg.

The JPEG (CC BY 4.0, see assets/ATTRIBUTION.md) is resized straight to 256x256 with
PIL LANCZOS and converted to 8-bit grayscale ("gray", 0..255). From it:

  mono2_16bit.dcm       MONOCHROME2, 16/16/15 unsigned, stored = round(gray/255*4000) + 100,
                        RescaleSlope 1.5, RescaleIntercept -1024, window C 2126.5 / W 6001
                        (maps the full rescaled range [-874, 5126] onto [0, 1])
  mono1_16bit.dcm       same image as MONOCHROME1: stored = 4200 - stored(mono2) (= max+min of
                        the nominal stored range 100..4100 minus the value), same rescale and window.
                        Under PS3.3 (windowed value inverted for MONOCHROME1) its display /
                        model input equals mono2_16bit's (exactly in real arithmetic)
  mono2_8bit.dcm        MONOCHROME2, 8/8/7, stored = gray, no rescale, NO window
                        (expected = min-max of the actual values)
  mono2_12bit.dcm       MONOCHROME2, 16/12/11 unsigned, stored = round(gray/255*4095), bits 12-15
                        zero, no rescale, TWO windows: C [2048, 1000] / W [4096, 500]; the first
                        must be used
  signed_16bit.dcm      MONOCHROME2, 16/16/15 signed (PixelRepresentation 1), stored =
                        round(gray/255*4000) - 2000 (negative values), RescaleSlope 1,
                        RescaleIntercept 0, window C 0.5 / W 4001 (maps [-2000, 2000] onto [0, 1])
  unsupported_syntax.dcm  Transfer Syntax JPEG 2000 Lossless (1.2.840.10008.1.2.4.90),
                        encapsulated PixelData holding one fragment of junk bytes
  no_pixel_data.dcm     a valid CR image header (Rows/Columns/...) without (7FE0,0010)
  absurd_dims.dcm       Rows = Columns = 60000, 16-bit, PixelData of only 16 bytes

All but unsupported_syntax.dcm are Explicit VR Little Endian with a proper file meta
header (preamble + DICM), SOP class Computed Radiography Image Storage, Modality CR.
UIDs are deterministic (pydicom generate_uid with fixed entropy), so re-running gives
byte-identical files.

expected.safetensors: for each of the 5 valid image files, key = file stem, float32
[256, 256] = the windowed image in [0, 1] under the file's DEFAULT window (first value
if multi-valued; with no window: (x - min) / (max - min) over the file's modality values),
computed in float64 with PS3.3 C.11.2.1.2.1 (LINEAR) on x = stored * slope + intercept:
    x <= c - 0.5 - (w-1)/2 -> 0;  x > c - 0.5 + (w-1)/2 -> 1;  else (x - (c - 0.5)) / (w - 1) + 0.5
and 1 - that for MONOCHROME1. Cross-checked against pydicom's apply_modality_lut +
apply_voi_lut (normalised by its output range). Metadata "windows" lists what was used.

Run (repo root, venv; after scripts/fetch_pneumonia_samples.py made the asset):
    .venv-scripts/bin/python scripts/make_dicom_fixtures.py
Tested with CPython 3.11.7, pydicom 3.0.1, Pillow 11.3.0, numpy 2.2.6, safetensors 0.6.2.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "assets" / "chest-xray-normal.jpeg"
SRC_SHA256 = "95fe6dd24fc010ee526e40457ff34ef057d257c71b22ac9fd312094d4d7b2a37"
OUT = REPO / "tests" / "fixtures" / "dicom"
SIZE = 256


def uid(tag: str) -> str:
    return generate_uid(entropy_srcs=["unveil-dicom-fixtures", tag])


def base_dataset(stem: str, rows: int, cols: int, photometric: str = "MONOCHROME2") -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = uid(stem + "/sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "UNVEIL_FIXTURE"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = "20240101"
    ds.ContentDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.Manufacturer = "unveil test fixture"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic; from CC BY 4.0 chest X-ray (Kermany 2018)"
    ds.SeriesDescription = stem
    ds.PatientName = "Fixture^Anonymous"
    ds.PatientID = "UNVEIL-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid(stem + "/series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = cols
    return ds


def set_pixels(ds: Dataset, arr: np.ndarray, bits_alloc: int, bits_stored: int, signed: bool) -> None:
    ds.BitsAllocated = bits_alloc
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    dt = {(8, False): "<u1", (16, False): "<u2", (16, True): "<i2"}[(bits_alloc, signed)]
    a = np.ascontiguousarray(arr.astype(dt))
    assert a.shape == (ds.Rows, ds.Columns)
    ds.PixelData = a.tobytes()
    ds["PixelData"].VR = "OB" if bits_alloc == 8 else "OW"


def save(ds: Dataset, name: str) -> Path:
    p = OUT / name
    ds.save_as(p, enforce_file_format=True)
    return p


def linear_window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    lo = c - 0.5 - (w - 1) / 2
    hi = c - 0.5 + (w - 1) / 2
    y = (x - (c - 0.5)) / (w - 1) + 0.5
    return np.where(x <= lo, 0.0, np.where(x > hi, 1.0, y))


def expected_for(path: Path) -> tuple[np.ndarray, dict]:
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.float64)
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    x = stored * slope + intercept
    if "WindowCenter" in ds:
        wc, ww = ds.WindowCenter, ds.WindowWidth
        c = float(wc[0] if ds["WindowCenter"].VM > 1 else wc)
        w = float(ww[0] if ds["WindowWidth"].VM > 1 else ww)
        y = linear_window(x, c, w)
        used = {"center": c, "width": w, "source": "first WindowCenter/WindowWidth" if ds["WindowCenter"].VM > 1 else "WindowCenter/WindowWidth"}
        # cross-check with pydicom (output range y_min..y_max -> normalise)
        ref = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=0)
        bits = ds.BitsStored
        ymin, ymax = (0, 2**bits - 1) if ds.PixelRepresentation == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        if "RescaleSlope" in ds:
            ymin, ymax = ymin * slope + intercept, ymax * slope + intercept
        ref = (ref - ymin) / (ymax - ymin)
        assert np.abs(ref - y).max() < 1e-12, (path, np.abs(ref - y).max())
    else:
        lo, hi = float(x.min()), float(x.max())
        y = (x - lo) / (hi - lo)
        used = {"min": lo, "max": hi, "source": "no window: min-max of the modality values"}
    if ds.PhotometricInterpretation == "MONOCHROME1":
        y = 1.0 - y
        used["inverted"] = True
    return y.astype(np.float32), used


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    assert hashlib.sha256(SRC.read_bytes()).hexdigest() == SRC_SHA256
    with Image.open(SRC) as im:
        gray = np.asarray(im.resize((SIZE, SIZE), Image.LANCZOS).convert("L")).astype(np.int64)
    print(f"gray 256x256 from {SRC.name}: min {gray.min()} max {gray.max()}")

    # mono2_16bit
    s2 = np.round(gray / 255 * 4000).astype(np.int64) + 100
    ds = base_dataset("mono2_16bit", SIZE, SIZE)
    set_pixels(ds, s2, 16, 16, False)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1.5", "US"
    ds.WindowCenter, ds.WindowWidth = "2126.5", "6001"
    ds.WindowCenterWidthExplanation = "FULL RANGE"
    save(ds, "mono2_16bit.dcm")

    # mono1_16bit: s1 = (100 + 4100) - s2, same rescale + window
    s1 = 4200 - s2
    ds = base_dataset("mono1_16bit", SIZE, SIZE, "MONOCHROME1")
    set_pixels(ds, s1, 16, 16, False)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1.5", "US"
    ds.WindowCenter, ds.WindowWidth = "2126.5", "6001"
    ds.WindowCenterWidthExplanation = "FULL RANGE"
    save(ds, "mono1_16bit.dcm")

    # mono2_8bit: no rescale, no window
    ds = base_dataset("mono2_8bit", SIZE, SIZE)
    set_pixels(ds, gray, 8, 8, False)
    save(ds, "mono2_8bit.dcm")

    # mono2_12bit: two windows, first = full range
    s12 = np.round(gray / 255 * 4095).astype(np.int64)
    ds = base_dataset("mono2_12bit", SIZE, SIZE)
    set_pixels(ds, s12, 16, 12, False)
    ds.WindowCenter, ds.WindowWidth = ["2048", "1000"], ["4096", "500"]
    ds.WindowCenterWidthExplanation = ["FULL RANGE", "NARROW"]
    save(ds, "mono2_12bit.dcm")

    # signed_16bit
    ss = np.round(gray / 255 * 4000).astype(np.int64) - 2000
    ds = base_dataset("signed_16bit", SIZE, SIZE)
    set_pixels(ds, ss, 16, 16, True)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.WindowCenter, ds.WindowWidth = "0.5", "4001"
    save(ds, "signed_16bit.dcm")

    # unsupported_syntax: JPEG 2000 with junk fragment
    ds = base_dataset("unsupported_syntax", SIZE, SIZE)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.LossyImageCompression = "00"
    junk = b"\xff\x4f\xff\x51" + b"this is not a JPEG 2000 codestream" + bytes(range(26))
    ds.PixelData = encapsulate([junk])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    save(ds, "unsupported_syntax.dcm")

    # no_pixel_data
    ds = base_dataset("no_pixel_data", SIZE, SIZE)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    save(ds, "no_pixel_data.dcm")

    # absurd_dims
    ds = base_dataset("absurd_dims", 60000, 60000)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = bytes(16)
    ds["PixelData"].VR = "OW"
    save(ds, "absurd_dims.dcm")

    # expected windowed images
    expected, windows = {}, {}
    for stem in ("mono2_16bit", "mono1_16bit", "mono2_8bit", "mono2_12bit", "signed_16bit"):
        y, used = expected_for(OUT / f"{stem}.dcm")
        expected[stem] = y
        windows[stem] = used
    d12 = float(np.abs(expected["mono1_16bit"] - expected["mono2_16bit"]).max())
    assert d12 < 1e-6, d12
    g = (gray / 255).astype(np.float32)
    for k in ("mono2_16bit", "mono2_12bit", "signed_16bit"):
        assert np.abs(expected[k] - g).max() < 1.5e-4, k
    save_file(expected, str(OUT / "expected.safetensors"),
              # ONE metadata key: safetensors keeps metadata in a hash map, so several keys
              # would be written in a random order (non-reproducible bytes)
              metadata={"info": json.dumps({
                  "generated_by": "scripts/make_dicom_fixtures.py",
                  "rule": "PS3.3 C.11.2.1.2.1 LINEAR on x = stored*slope + intercept; MONOCHROME1: 1 - y; "
                          "no window: (x - min) / (max - min)",
                  "windows": windows}, sort_keys=True)})

    # re-read every file to make sure it parses
    for p in sorted(OUT.glob("*.dcm")):
        ds = pydicom.dcmread(p)
        print(f"{p.name:24s} {p.stat().st_size:7d} bytes  TS {ds.file_meta.TransferSyntaxUID.name}  "
              f"{ds.get('PhotometricInterpretation')}  {ds.get('Rows')}x{ds.get('Columns')}  "
              f"bits {ds.get('BitsAllocated')}/{ds.get('BitsStored')}/{ds.get('HighBit')} pr={ds.get('PixelRepresentation')} "
              f"pixeldata={'PixelData' in ds}  sha256 {hashlib.sha256(p.read_bytes()).hexdigest()[:16]}")
    print(f"expected.safetensors: {sorted(expected)}; windows {json.dumps(windows)}")
    print(f"max |mono1 - mono2| expected = {d12:.3g}")


if __name__ == "__main__":
    main()
