#!/usr/bin/env python3
"""Odd-but-valid image files for the bad-input corpus that the Rust test helper cannot write
itself (tests/support/corpus.rs generates the rest):

  tests/fixtures/images/cmyk.jpeg   32 x 16 CMYK JPEG (Adobe APP14, as Photoshop and Pillow
                                    write them), four 8 x 16 solid bands:
                                    cyan (255,0,0,0), magenta (0,255,0,0), yellow (0,0,255,0),
                                    50% black (0,0,0,128). Expected RGB = 255 * (1 - c)(1 - k),
                                    i.e. (0,255,255), (255,0,255), (255,255,0), (127,127,127).

  tests/fixtures/dicom/mono2_16bit_rle.dcm
                                    tests/fixtures/dicom/mono2_16bit.dcm (made by
                                    make_dicom_fixtures.py) re-encoded as RLE Lossless:
                                    encapsulated pixel data (offset table + fragments), same
                                    pixel values.

Run from the repo root: .venv-scripts/bin/python scripts/make_image_fixtures.py
Pinned: Pillow 11.3.0, pydicom 3.0.1, numpy (scripts/requirements.txt). Output is deterministic for that version.
"""
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "images"
BANDS = [(255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 128)]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    img = Image.new("CMYK", (32, 16))
    for i, colour in enumerate(BANDS):
        img.paste(colour, (8 * i, 0, 8 * i + 8, 16))
    img.save(OUT / "cmyk.jpeg", quality=95, subsampling=0)
    back = Image.open(OUT / "cmyk.jpeg")
    assert back.mode == "CMYK", back.mode
    print("wrote", OUT / "cmyk.jpeg", [back.convert("RGB").getpixel((8 * i + 4, 8)) for i in range(4)])
    rle_dicom()


def rle_dicom() -> None:
    import numpy as np
    import pydicom
    from pydicom.uid import RLELossless

    dicom = OUT.parent / "dicom"
    ds = pydicom.dcmread(dicom / "mono2_16bit.dcm")
    plain = ds.pixel_array.copy()
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(dicom / "mono2_16bit_rle.dcm", enforce_file_format=True)
    back = pydicom.dcmread(dicom / "mono2_16bit_rle.dcm")
    assert back.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(back.pixel_array, plain)
    print("wrote", dicom / "mono2_16bit_rle.dcm")


if __name__ == "__main__":
    main()
