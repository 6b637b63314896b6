//! A corpus of bad and odd inputs, generated (not hand-waved) into a folder; shared by the CLI
//! and app tests so both walk the very same files.

use std::path::{Path, PathBuf};

/// What a file should do: load fine, or fail with an error containing the text.
pub(crate) enum Expect {
    Loads,
    Fails(&'static str),
}

pub(crate) struct Case {
    pub path: PathBuf,
    pub expect: Expect,
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG whose header claims `w` x `h` pixels, with no image data worth the name.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    out.extend(13u32.to_be_bytes());
    out.extend(&ihdr);
    out.extend(crc32(&ihdr).to_be_bytes());
    // An empty IDAT: decoders read the header up to the first data chunk.
    out.extend(0u32.to_be_bytes());
    out.extend(b"IDAT");
    out.extend(crc32(b"IDAT").to_be_bytes());
    out.extend(0u32.to_be_bytes());
    out.extend(b"IEND");
    out.extend(crc32(b"IEND").to_be_bytes());
    out
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let mut body = kind.to_vec();
    body.extend(data);
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(&body);
    out.extend(crc32(&body).to_be_bytes());
}

/// The colours of [`palette_png`]: index `(x + y) % 4`.
pub(crate) const PALETTE: [[u8; 3]; 4] =
    [[230, 20, 20], [20, 200, 40], [30, 40, 220], [250, 250, 250]];

/// An 8-bit palette (colour type 3) PNG, pixel `(x, y)` = `PALETTE[(x + y) % 4]`. Written by
/// hand (zlib with stored blocks) because the image crate's encoder writes no palette PNGs.
pub(crate) fn palette_png(w: u32, h: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0); // filter: none
        raw.extend((0..w).map(|x| ((x + y) % 4) as u8));
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65535).collect();
    for (i, block) in blocks.iter().enumerate() {
        z.push((i + 1 == blocks.len()) as u8);
        z.extend((block.len() as u16).to_le_bytes());
        z.extend((!(block.len() as u16)).to_le_bytes());
        z.extend(*block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &v in &raw {
        a = (a + v as u32) % 65521;
        b = (b + a) % 65521;
    }
    z.extend(((b << 16) | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 3, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"PLTE", &PALETTE.concat());
    png_chunk(&mut out, b"IDAT", &z);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A JPEG with an EXIF APP1 segment saying "rotate 90 degrees clockwise" (orientation 6).
pub(crate) fn jpeg_with_orientation_6(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, _| {
        if x < w / 2 {
            image::Rgb([220, 30, 30])
        } else {
            image::Rgb([30, 30, 220])
        }
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(&img)
        .unwrap();
    let mut tiff = b"II*\0".to_vec();
    tiff.extend(8u32.to_le_bytes());
    tiff.extend(1u16.to_le_bytes());
    tiff.extend(0x0112u16.to_le_bytes());
    tiff.extend(3u16.to_le_bytes());
    tiff.extend(1u32.to_le_bytes());
    tiff.extend(6u16.to_le_bytes());
    tiff.extend([0, 0]);
    tiff.extend(0u32.to_le_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

fn save(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn png(img: image::DynamicImage) -> Vec<u8> {
    let mut v = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut v), image::ImageFormat::Png)
        .unwrap();
    v
}

/// Writes the image corpus into `dir`.
pub(crate) fn images(dir: &Path, repo: &Path) -> Vec<Case> {
    std::fs::create_dir_all(dir).unwrap();
    let chelsea = std::fs::read(repo.join("assets/chelsea.png")).unwrap();
    let jpeg = std::fs::read(repo.join("assets/chest-xray-pneumonia.jpeg")).unwrap();
    let dcm = |n: &str| repo.join(format!("tests/fixtures/dicom/{n}.dcm"));
    let fails = |path, m| Case {
        path,
        expect: Expect::Fails(m),
    };
    let loads = |path| Case {
        path,
        expect: Expect::Loads,
    };
    vec![
        fails(
            save(dir, "zero-bytes.png", b""),
            "not a PNG, JPEG, TIFF or DICOM",
        ),
        fails(
            save(
                dir,
                "text-renamed.png",
                b"Dear diary, this is not a picture.",
            ),
            "not a PNG, JPEG, TIFF or DICOM",
        ),
        fails(
            save(dir, "truncated.png", &chelsea[..chelsea.len() / 2]),
            "cannot read image",
        ),
        fails(
            save(dir, "truncated.jpeg", &jpeg[..jpeg.len() / 3]),
            "cannot read image",
        ),
        fails(
            save(
                dir,
                "claims-100000x100000.png",
                &png_header_only(100_000, 100_000),
            ),
            "the limit is 100000000 pixels",
        ),
        loads(save(
            dir,
            "one-pixel.png",
            &png(image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
                1,
                1,
                image::Rgb([9, 99, 199]),
            ))),
        )),
        loads(save(
            dir,
            "1x10000.png",
            &png(image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(
                1,
                10000,
                |_, y| image::Luma([(y % 256) as u8]),
            ))),
        )),
        loads(save(
            dir,
            "alpha.png",
            &png(image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(
                64,
                48,
                |x, y| image::Rgba([x as u8 * 4, y as u8 * 5, 7, (x * 3) as u8]),
            ))),
        )),
        loads(save(
            dir,
            "gray16.png",
            &png(image::DynamicImage::ImageLuma16(
                image::ImageBuffer::from_fn(50, 40, |x, y| image::Luma([(x * 1000 + y) as u16])),
            )),
        )),
        loads(save(
            dir,
            "exif-rotated.jpeg",
            &jpeg_with_orientation_6(40, 20),
        )),
        loads(save(dir, "palette.png", &palette_png(30, 20))),
        loads(repo.join("tests/fixtures/images/cmyk.jpeg")),
        fails(dcm("no_pixel_data"), "no pixel data"),
        fails(dcm("unsupported_syntax"), "JPEG 2000"),
        fails(dcm("absurd_dims"), "60000 x 60000"),
    ]
}

/// Writes the weights corpus into `dir`: files that must be refused as resnet18 weights.
pub(crate) fn weights(dir: &Path, repo: &Path) -> Vec<Case> {
    use candle_core::{DType, Device, Tensor};
    std::fs::create_dir_all(dir).unwrap();
    let lite = std::fs::read(repo.join("models/efficientnet-lite0.safetensors")).unwrap();
    let t = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    let st = |name: &str, tensors: Vec<(&str, Tensor)>| {
        let p = dir.join(name);
        candle_core::safetensors::save(
            &tensors
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            &p,
        )
        .unwrap();
        p
    };
    let pth = |n: &str| repo.join(format!("tests/fixtures/pth/{n}.pth"));
    let fails = |path, m| Case {
        path,
        expect: Expect::Fails(m),
    };
    vec![
        fails(
            save(dir, "truncated.safetensors", &lite[..lite.len() / 2]),
            "not a valid safetensors file",
        ),
        fails(
            st(
                "wrong-shape.safetensors",
                vec![
                    ("conv1.weight", t(&[64, 3, 3, 3])),
                    ("fc.weight", t(&[10, 512])),
                ],
            ),
            "'conv1.weight' has shape [64, 3, 3, 3]",
        ),
        fails(
            st(
                "missing.safetensors",
                vec![("fc.weight", t(&[10, 512])), ("fc.bias", t(&[10]))],
            ),
            "'conv1.weight' is missing",
        ),
        fails(pth("evil_os_system"), "refused"),
        fails(pth("evil_eval"), "refused"),
        fails(pth("truncated"), "truncated or corrupt"),
        fails(
            repo.join("tests/fixtures/xray/legacy_truncated.pth"),
            "truncated",
        ),
        fails(
            repo.join("tests/fixtures/xray/evil_whole_model_legacy.pth"),
            "refused",
        ),
        fails(save(dir, "empty.pth", &[]), "an empty file"),
        fails(
            save(dir, "text.ckpt", b"this is not a checkpoint\n"),
            "not a weights file unveil can read",
        ),
    ]
}
