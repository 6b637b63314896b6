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
