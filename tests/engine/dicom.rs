//! DICOM and grayscale input: windowing per DICOM PS3.3 against fixtures made with pydicom and
//! cross-checked with dcmtk (scripts/fixtures/make_dicom_fixtures.py,
//! tests/fixtures/dicom/README.md).

use candle_core::Device;
use unveil::Error;
use unveil::engine::image;
use unveil::engine::source_image::{SourceImage, Window};

use crate::common::{fixture, lite0, max_abs_diff, repo, to_vec};

fn dcm(name: &str) -> std::path::PathBuf {
    repo(&format!("tests/fixtures/dicom/{name}.dcm"))
}

fn first_channel(img: &SourceImage) -> Vec<f32> {
    img.rgb.pixels().map(|p| p.0[0]).collect()
}

#[test]
fn every_variant_matches_the_reference_windowing() {
    let expected = fixture("dicom/expected.safetensors");
    for name in [
        "mono2_16bit",
        "mono1_16bit",
        "mono2_8bit",
        "mono2_12bit",
        "signed_16bit",
    ] {
        let img = image::load(&dcm(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(img.grayscale && img.gray.is_some(), "{name}");
        assert_eq!((img.width(), img.height()), (256, 256));
        let d = max_abs_diff(&first_channel(&img), &to_vec(&expected[name]));
        assert!(d < 1e-6, "{name}: max abs difference {d}");
        assert!(
            img.rgb
                .pixels()
                .all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]),
            "{name}: gray replicated"
        );
    }
}

#[test]
fn rescale_is_applied_before_the_window_and_the_first_window_is_used() {
    let g = image::load(&dcm("mono2_16bit")).unwrap().gray.unwrap();
    // Stored 100..4100, slope 1.5, intercept -1024.
    assert_eq!(g.range, (-874.0, 5126.0));
    assert_eq!(
        g.default_window,
        Window {
            center: 2126.5,
            width: 6001.0
        }
    );
    let g = image::load(&dcm("mono2_12bit")).unwrap().gray.unwrap();
    assert_eq!(
        g.default_window,
        Window {
            center: 2048.0,
            width: 4096.0
        },
        "first of two windows"
    );
    let g = image::load(&dcm("signed_16bit")).unwrap().gray.unwrap();
    assert_eq!(g.range, (-2000.0, 2000.0), "two's complement");
}

#[test]
fn monochrome1_gives_the_same_model_input_as_monochrome2() {
    let info = lite0().info().clone();
    let m1 = image::to_model_input(
        &image::load(&dcm("mono1_16bit")).unwrap(),
        &info,
        &Device::Cpu,
    )
    .unwrap();
    let m2 = image::to_model_input(
        &image::load(&dcm("mono2_16bit")).unwrap(),
        &info,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(max_abs_diff(&to_vec(&m1), &to_vec(&m2)), 0.0);
    // And the image is not trivially flat.
    let v = to_vec(&m2);
    assert!(
        v.iter().cloned().fold(f32::MIN, f32::max) - v.iter().cloned().fold(f32::MAX, f32::min)
            > 1.5
    );
}

#[test]
fn a_custom_window_changes_what_the_model_sees() {
    let img = image::load(&dcm("mono2_16bit")).unwrap();
    let narrow = img.windowed(Window {
        center: 2000.0,
        width: 500.0,
    });
    let v = first_channel(&narrow);
    let black = v.iter().filter(|&&x| x == 0.0).count();
    let white = v.iter().filter(|&&x| x == 1.0).count();
    assert!(
        black > 1000 && white > 1000,
        "a narrow window saturates: {black} black, {white} white"
    );
    assert_ne!(v, first_channel(&img));
}

/// Encapsulated pixel data (RLE Lossless: offset table item + fragment) goes through the
/// pre-parse length check and decodes to exactly the uncompressed file's values.
#[test]
fn rle_compressed_dicom_matches_the_uncompressed_file() {
    let plain = image::load(&dcm("mono2_16bit")).unwrap().gray.unwrap();
    let rle = image::load(&dcm("mono2_16bit_rle")).unwrap().gray.unwrap();
    assert_eq!((rle.width, rle.height), (plain.width, plain.height));
    assert_eq!(rle.values, plain.values);
}

/// A big endian data set is walked by the pre-parse check in its own byte order and decodes to
/// the little endian file's values.
#[test]
fn big_endian_dicom_matches_the_little_endian_file() {
    let plain = image::load(&dcm("mono2_16bit")).unwrap().gray.unwrap();
    let be = image::load(&dcm("mono2_16bit_be")).unwrap().gray.unwrap();
    assert_eq!(be.values, plain.values);
}

#[test]
fn bad_dicom_files_give_clear_errors() {
    let msg = |name: &str| {
        image::load(&dcm(name))
            .map(|_| ())
            .expect_err("must fail")
            .to_string()
    };
    let m = msg("unsupported_syntax");
    assert!(
        m.contains("1.2.840.10008.1.2.4.90")
            && m.contains("JPEG 2000")
            && m.contains("not supported"),
        "{m}"
    );
    assert!(msg("no_pixel_data").contains("no pixel data"));
    assert!(matches!(
        image::load(&dcm("absurd_dims")),
        Err(Error::ImageTooLarge {
            width: 60000,
            height: 60000,
            ..
        })
    ));
}

#[test]
fn sixteen_bit_grayscale_png_keeps_its_precision() {
    let dir = std::env::temp_dir().join(format!("unveil-png16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("xray16.png");
    let img = ::image::ImageBuffer::<::image::Luma<u16>, _>::from_fn(64, 48, |x, y| {
        ::image::Luma([(x * 1000 + y) as u16])
    });
    img.save(&path).unwrap();
    let s = image::load(&path).unwrap();
    assert!(s.grayscale);
    let g = s.gray.as_ref().unwrap();
    assert_eq!(
        g.default_window,
        Window {
            center: 0.5,
            width: 1.0
        }
    );
    for (i, p) in s.rgb.pixels().enumerate() {
        let (x, y) = (i % 64, i / 64);
        let want = (x * 1000 + y) as f32 / 65535.0;
        assert!(
            (p.0[0] - want).abs() < 1e-6,
            "pixel {x},{y}: {} vs {want}",
            p.0[0]
        );
    }
    // 1001 and 1000 differ in 16 bits but would collapse to one 8-bit level.
    assert_ne!(s.rgb.get_pixel(1, 1).0[0], s.rgb.get_pixel(1, 0).0[0]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A DICOM file is read once: the length check and the parser see the same bytes, so the file
/// decodes from memory exactly as from disk, and a damaged one is refused from memory too.
#[test]
fn dicom_bytes_in_memory_decode_exactly_like_the_file() {
    for name in [
        "mono2_16bit",
        "mono1_16bit",
        "mono2_16bit_be",
        "mono2_16bit_rle",
    ] {
        let bytes = std::fs::read(dcm(name)).unwrap();
        let (mem, file) = (
            image::decode(&bytes).unwrap(),
            image::load(&dcm(name)).unwrap(),
        );
        assert_eq!(mem.rgb, file.rgb, "{name}");
        let (gm, gf) = (mem.gray.unwrap(), file.gray.unwrap());
        assert_eq!(
            (gm.values, gm.default_window, gm.invert),
            (gf.values, gf.default_window, gf.invert),
            "{name}"
        );
    }
    let crash = std::fs::read(repo("tests/fixtures/fuzz/dicom-huge-fragment.dcm")).unwrap();
    let err = image::decode(&crash).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("the file is damaged"), "{err}");
}
