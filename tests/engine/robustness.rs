//! Every file of the bad-input corpus (tests/support/corpus.rs) through the command line:
//! a one-line message and exit status 1, or a normal run; never a panic.

use std::process::Command;

use crate::common::repo;
use crate::corpus::{self, Expect};

fn check(args: &[&str], expect: &Expect, what: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_unveil"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{what}: {err}"
    );
    match expect {
        Expect::Loads => assert!(o.status.success(), "{what}: {err}"),
        Expect::Fails(msg) => {
            assert_eq!(o.status.code(), Some(1), "{what}: {err}");
            assert_eq!(
                err.trim_end().lines().count(),
                1,
                "{what}: one line, got {err}"
            );
            assert!(
                err.starts_with("unveil: ") && err.contains(msg),
                "{what}: expected '{msg}' in {err}"
            );
        }
    }
}

#[test]
fn every_bad_image_gets_a_clear_error_or_works() {
    let dir = std::env::temp_dir().join(format!("unveil-corpus-cli-{}", std::process::id()));
    for case in corpus::images(&dir.join("in"), &repo("")) {
        let out = dir.join("out").join(case.path.file_name().unwrap());
        let args = [
            "run",
            case.path.to_str().unwrap(),
            "--samples",
            "1",
            "--max-iter",
            "1",
            "-q",
            "--out",
            out.to_str().unwrap(),
        ];
        check(&args, &case.expect, &case.path.display().to_string());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_bad_weights_file_is_refused_clearly() {
    let dir = std::env::temp_dir().join(format!("unveil-corpus-weights-{}", std::process::id()));
    let chelsea = repo("assets/chelsea.png");
    for case in corpus::weights(&dir.join("in"), &repo("")) {
        let out = dir.join("out");
        let args = [
            "run",
            chelsea.to_str().unwrap(),
            "--weights",
            case.path.to_str().unwrap(),
            "--arch",
            "resnet18",
            "--out",
            out.to_str().unwrap(),
        ];
        check(&args, &case.expect, &case.path.display().to_string());
        assert!(!out.exists(), "nothing written for a refused model");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exif_orientation_is_applied() {
    let dir = std::env::temp_dir().join(format!("unveil-exif-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("rotated.jpeg");
    std::fs::write(&p, corpus::jpeg_with_orientation_6(40, 20)).unwrap();
    let img = unveil::engine::image::load(&p).unwrap();
    // 40 x 20, red left half, rotated 90 degrees clockwise: 20 x 40, red on top.
    assert_eq!((img.width(), img.height()), (20, 40));
    let (top, bottom) = (img.rgb.get_pixel(10, 5).0, img.rgb.get_pixel(10, 35).0);
    assert!(
        top[0] > 0.6 && top[2] < 0.3 && bottom[2] > 0.6,
        "top {top:?}, bottom {bottom:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Palette PNGs expand to their palette's colours.
#[test]
fn palette_png_decodes_to_its_colours() {
    let img = unveil::engine::image::decode(&corpus::palette_png(30, 20)).unwrap();
    assert_eq!((img.width(), img.height()), (30, 20));
    for (x, y) in [(0, 0), (1, 0), (2, 0), (3, 0), (5, 7), (29, 19)] {
        let want = corpus::PALETTE[(x + y) as usize % 4].map(|v| v as f32 / 255.0);
        let got = img.rgb.get_pixel(x, y).0;
        assert!(
            got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6),
            "({x}, {y}): {got:?} != {want:?}"
        );
    }
}

/// CMYK JPEGs (Adobe's inverted encoding, as Photoshop and Pillow write them) come out in the
/// right colours, not inverted or channel-swapped (scripts/fixtures/make_image_fixtures.py).
#[test]
fn cmyk_jpeg_decodes_to_the_right_colours() {
    let img = unveil::engine::image::load(&repo("tests/fixtures/images/cmyk.jpeg")).unwrap();
    assert_eq!((img.width(), img.height()), (32, 16));
    let want = [
        [0.0, 1.0, 1.0],
        [1.0, 0.0, 1.0],
        [1.0, 1.0, 0.0],
        [0.5, 0.5, 0.5],
    ];
    for (band, want) in want.iter().enumerate() {
        let got = img.rgb.get_pixel(8 * band as u32 + 4, 8).0;
        assert!(
            got.iter().zip(want).all(|(g, w)| (g - w).abs() < 0.06),
            "band {band}: {got:?} != {want:?}"
        );
    }
}

mod numeric_faults {
    use std::sync::atomic::AtomicBool;

    use candle_core::{Device, Tensor};
    use unveil::Error;
    use unveil::engine::explainer::Explainer;
    use unveil::engine::models::{Classifier, ModelInfo};
    use unveil::engine::ops::activation::ReluMode;
    use unveil::engine::outcome::{Outcome, StopReason};
    use unveil::engine::params::{SaliencyParams, StopParams, UnveilParams};

    use crate::common::{lite0, to_vec};

    /// The bundled model with its logits replaced.
    #[derive(Clone, Copy)]
    enum Broken {
        /// NaN everywhere.
        Nan,
        /// Constants cut off from the input (no gradient path at all).
        Blind,
        /// The logits minus themselves: connected to the input, but every gradient is 0.
        Flat,
        /// Finite logits whose gradient is NaN: `sqrt|x| - sqrt|x|` added in, at x = 0
        /// (the gray test image) its derivative is inf - inf.
        NanGradient,
    }

    impl Classifier for Broken {
        fn info(&self) -> &ModelInfo {
            lite0_info()
        }
        fn device(&self) -> &Device {
            &Device::Cpu
        }
        fn forward(&self, x: &Tensor, mode: ReluMode) -> unveil::Result<Tensor> {
            let logits = lite0().forward(x, mode)?;
            Ok(match self {
                Broken::Nan => (logits * f64::NAN)?,
                Broken::Blind => logits.detach().zeros_like()?,
                Broken::Flat => logits.sub(&logits)?,
                Broken::NanGradient => {
                    let r = x.abs()?.sqrt()?;
                    let zero = r.sub(&x.abs()?.sqrt()?)?.sum((1, 2, 3))?.unsqueeze(1)?;
                    logits.broadcast_add(&zero)?
                }
            })
        }
    }

    fn lite0_info() -> &'static ModelInfo {
        static INFO: std::sync::OnceLock<ModelInfo> = std::sync::OnceLock::new();
        INFO.get_or_init(|| lite0().info().clone())
    }

    fn quick() -> UnveilParams {
        UnveilParams {
            saliency: SaliencyParams {
                samples: 1,
                noise: 0.0,
                ..Default::default()
            },
            stop: StopParams {
                threshold: 0.0,
                max_iter: 2,
            },
            ..Default::default()
        }
    }

    fn gray() -> Tensor {
        Tensor::zeros((3, 224, 224), candle_core::DType::F32, &Device::Cpu).unwrap()
    }

    /// A run with `model` must fail with a numerical fault whose message contains `text`.
    fn assert_numeric_fault(model: Broken, text: &str) {
        let r = run_on_gray(std::sync::Arc::new(model));
        assert!(
            matches!(&r, Err(Error::Numeric(m)) if m.contains(text)),
            "{:?}",
            r.map(|_| ())
        );
    }

    /// A quick run of `model` on a uniform gray image.
    fn run_on_gray(model: std::sync::Arc<dyn Classifier>) -> unveil::Result<Outcome> {
        Explainer::new(model).explain_input(&gray(), &quick(), &mut |_| {}, &AtomicBool::new(false))
    }

    #[test]
    fn a_model_that_outputs_nan_is_reported_not_drawn() {
        assert_numeric_fault(Broken::Nan, "NaN");
    }

    #[test]
    fn a_nan_gradient_is_reported_not_drawn() {
        assert_numeric_fault(Broken::NanGradient, "gradient contains NaN");
    }

    #[test]
    fn a_model_blind_to_its_input_is_reported() {
        assert_numeric_fault(Broken::Blind, "does not depend on its input");
    }

    /// An all-zero gradient has no salient region: the run stops after one iteration with a
    /// reason that says so (shown in the app's status line and printed by the CLI).
    #[test]
    fn an_all_zero_gradient_stops_with_its_own_reason() {
        let out = run_on_gray(std::sync::Arc::new(Broken::Flat)).unwrap();
        assert_eq!(out.stop, StopReason::ZeroGradient);
        assert!(out.stop.describe().contains("gradient is zero everywhere"));
        assert_eq!(out.steps.len(), 1);
        let s = &out.steps[0];
        assert!(to_vec(&s.attribution).iter().all(|&v| v == 0.0));
        assert!(s.saliency.data.iter().all(|&v| v == 0.0));
        assert_eq!(s.mask.count(), 0);
    }

    #[test]
    fn a_constant_image_runs_without_nan_anywhere() {
        let out = run_on_gray(lite0()).unwrap();
        for s in &out.steps {
            assert!(
                s.saliency
                    .data
                    .iter()
                    .all(|v| v.is_finite() && (0.0..=1.0).contains(v))
            );
            assert!(to_vec(&s.masked).iter().all(|v| v.is_finite()));
            assert!(s.p_target.is_finite());
        }
    }
}

/// Found by `fuzz/run.sh` (dicom target): a mutated header whose element (4955,0014) has the
/// invalid VR "1.", which dicom-rs reads as UN with a 4-byte length of ~800 MB and reserved
/// that much before failing. The pre-parse length check now reads such VRs the same way and
/// refuses the file first (its message, not the parser's).
/// The error loading `path` must give (it must not load).
fn load_error(path: &std::path::Path) -> String {
    match unveil::engine::image::load(path) {
        Ok(_) => panic!("{} loaded, but it is damaged", path.display()),
        Err(e) => e.to_string(),
    }
}

/// DICOM files found by `fuzz/run.sh` (dicom target) that made the parser reserve 0.8-4.2 GB
/// (10-15 s) before failing. Each is now refused by the pre-parse length check, which names the
/// element whose length runs past the end of the file.
#[test]
fn fuzz_found_dicom_files_are_refused_before_parsing() {
    for (file, element) in [
        // Element with the invalid VR "1.", read as UN with a 4-byte length of 775 MB.
        ("dicom-mutated-dims.dcm", "(4955,0014)"),
        // A 1 KB file whose data set repeats the transfer syntax element with garbage: only
        // the meta group's syntax counts, so the unknown-VR element after it is checked.
        ("dicom-ts-in-dataset.dcm", "(BEBE,BEBE)"),
        // Two transfer syntaxes in the meta group, garbage then JPEG 2000: the last one counts,
        // as in the parser.
        ("dicom-repeated-syntax.dcm", "(E002,107F)"),
        // A JPEG 2000 pixel data fragment claiming 4.2 GB.
        ("dicom-huge-fragment.dcm", "(FFFE,E000)"),
        // A big endian data set (the check used to leave those to the parser).
        ("dicom-big-endian-huge.dcm", "(0000,0000)"),
    ] {
        let err = load_error(&repo(&format!("tests/fixtures/fuzz/{file}")));
        assert!(
            err.contains(&format!("{element} claims")) && err.contains("damaged"),
            "{file}: {err}"
        );
    }
}

#[test]
fn a_dicom_with_an_unknown_transfer_syntax_is_refused_before_parsing() {
    let mut bytes = std::fs::read(repo("tests/fixtures/dicom/mono2_16bit.dcm")).unwrap();
    let at = bytes
        .windows(19)
        .position(|w| w == b"1.2.840.10008.1.2.1")
        .unwrap();
    bytes[at + 4] = b'9'; // 1.2.940...
    let p = std::env::temp_dir().join(format!("unveil-unknown-ts-{}.dcm", std::process::id()));
    std::fs::write(&p, &bytes).unwrap();
    let err = load_error(&p);
    let _ = std::fs::remove_file(&p);
    assert!(
        err.contains("unknown transfer syntax '1.2.940.10008.1.2.1"),
        "{err}"
    );
}

#[test]
fn a_dicom_cut_short_is_refused_before_parsing() {
    let dir = std::env::temp_dir().join(format!("unveil-cut-dcm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(repo("tests/fixtures/dicom/mono2_16bit.dcm")).unwrap();
    let p = dir.join("cut.dcm");
    std::fs::write(&p, &bytes[..60000]).unwrap();
    let err = load_error(&p);
    assert!(
        err.contains("(7FE0,0010) claims") && err.contains("damaged"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
