//! The installer without a network: its messages, its cancel, its files, with stand-in
//! Pythons.

use super::*;

fn temp(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "unveil-install-{what}-{}-{}",
        std::process::id(),
        unique()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn touch(p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, "").unwrap();
}

#[test]
fn the_interpreter_is_found_in_either_venv_layout() {
    let unix = temp("unix");
    touch(&unix.join("bin/python"));
    assert_eq!(venv_python(&unix), unix.join("bin").join("python"));
    let windows = temp("windows");
    touch(&windows.join("Scripts/python.exe"));
    assert_eq!(
        venv_python(&windows),
        windows.join("Scripts").join("python.exe")
    );
    // Before the environment exists: the platform's own layout.
    let empty = temp("empty");
    let want = if cfg!(windows) {
        empty.join("Scripts").join("python.exe")
    } else {
        empty.join("bin").join("python")
    };
    assert_eq!(venv_python(&empty), want);
    for d in [unix, windows, empty] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_missing_python_says_so_at_once_and_leaves_nothing() {
    let dir = temp("no-python");
    let installer = Installer {
        models_dir: dir.clone(),
        python: python_or_default(Some("/nonexistent/python3".into())),
    };
    let start = std::time::Instant::now();
    let mut lines = Vec::new();
    let err = installer
        .fetch(
            PNEUMONIA_MODEL,
            &mut |l| lines.push(l.to_string()),
            &AtomicBool::new(false),
        )
        .expect_err("no Python");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        err.to_string(),
        "cannot fetch the model: Python 3 was not found (tried /nonexistent/python3): \
         install Python 3.10+ with venv, or set UNVEIL_PYTHON"
    );
    assert!(lines.is_empty(), "nothing was started: {lines:?}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cancel_before_start_returns_cancelled_and_touches_nothing() {
    let dir = temp("cancel-first").join("models");
    let installer = Installer {
        models_dir: dir.clone(),
        python: "/nonexistent/python3".into(),
    };
    let r = installer.fetch(PNEUMONIA_MODEL, &mut |_| {}, &AtomicBool::new(true));
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert!(!dir.exists(), "not even the model folder is made");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn an_unknown_name_is_refused_with_the_fetchable_ones() {
    let err = Installer::default()
        .fetch("nope", &mut |_| {}, &AtomicBool::new(false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("fetchable: pneumonia-xception"), "{err}");
}

#[test]
fn the_default_installer_writes_where_the_registry_reads() {
    let i = Installer::default();
    assert_eq!(
        i.weights_path(PNEUMONIA_MODEL),
        crate::engine::models::weights_path(PNEUMONIA_MODEL)
    );
    assert_eq!(
        python_or_default(None),
        PathBuf::from(if cfg!(windows) { "python" } else { "python3" })
    );
    assert_eq!(python_or_default(Some("".into())), python_or_default(None));
    assert_eq!(
        python_or_default(Some("/opt/py/bin/python3.12".into())),
        PathBuf::from("/opt/py/bin/python3.12")
    );
}

#[test]
fn pip_errors_are_told_apart() {
    let offline_err = "ERROR: Could not find a version that satisfies the requirement \
                       numpy==2.2.6 (from versions: none)\nERROR: No matching distribution found";
    assert!(offline(offline_err));
    assert!(offline(
        "WARNING: Retrying ... NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection>: Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')"
    ));
    assert!(!offline("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES"));
    assert_eq!(last_line("a\nb  \n\n  "), "b");
    assert_eq!(last_line(""), "no message");
    let msg = no_pypi(last_line(offline_err)).to_string();
    assert!(msg.contains("pip could not reach PyPI"), "{msg}");
}

/// A stand-in for Python that does, offline, what each step asks: the check passes, venv
/// makes `bin/python` (itself), pip has nothing to do, the extraction writes an empty
/// model and the converter writes "converted".
#[cfg(unix)]
const FAKE_PYTHON: &str = r#"#!/bin/sh
case "$1" in
  -c) case "$2" in *zipfile*) : > "$4" ;; esac ;;
  -m) case "$2" in venv) mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;; esac ;;
  *) printf converted > "$5" ;;
esac
"#;

#[cfg(unix)]
#[test]
fn a_fetch_installs_by_rename_keeps_the_environment_and_leaves_no_work_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp("fake-python");
    let python = dir.join("python3");
    std::fs::write(&python, FAKE_PYTHON).unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let models = dir.join("models");
    let installer = Installer {
        models_dir: models.clone(),
        python,
    };
    let mut lines = Vec::new();
    let out = installer
        .fetch(
            PNEUMONIA_MODEL,
            &mut |l| lines.push(l.to_string()),
            &AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(out, installer.weights_path(PNEUMONIA_MODEL));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "converted");
    assert!(!installer.needs_fetch(PNEUMONIA_MODEL));
    assert!(
        lines[0].starts_with("creating a private Python environment"),
        "{lines:?}"
    );
    assert!(lines.last().unwrap().starts_with("installed "), "{lines:?}");
    let mut left: Vec<_> = std::fs::read_dir(&models)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, [".venv-fetch", "pneumonia-xception.safetensors"]);
    // A second fetch uses the finished environment as it is.
    lines.clear();
    installer
        .fetch(
            PNEUMONIA_MODEL,
            &mut |l| lines.push(l.to_string()),
            &AtomicBool::new(false),
        )
        .unwrap();
    assert!(lines[0].starts_with("downloading "), "{lines:?}");
    // A half-made one (no marker) is made again.
    std::fs::remove_file(models.join(VENV).join(READY)).unwrap();
    lines.clear();
    installer
        .fetch(
            PNEUMONIA_MODEL,
            &mut |l| lines.push(l.to_string()),
            &AtomicBool::new(false),
        )
        .unwrap();
    assert!(lines[0].starts_with("creating "), "{lines:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A Python that never answers: cancel kills it within a few polls, and the half-made
/// nothing is removed.
#[cfg(unix)]
#[test]
fn cancel_kills_a_running_child_promptly_and_leaves_no_files() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    let dir = temp("cancel-running");
    let python = dir.join("slow-python");
    std::fs::write(&python, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let models = dir.join("models");
    let installer = Installer {
        models_dir: models.clone(),
        python,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        flag.store(true, Ordering::Relaxed);
        std::time::Instant::now()
    });
    let r = installer.fetch(PNEUMONIA_MODEL, &mut |_| {}, &cancel);
    let ended = std::time::Instant::now();
    let asked = canceller.join().unwrap();
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    let took = ended.duration_since(asked);
    assert!(took < Duration::from_millis(500), "cancel took {took:?}");
    // (The folder is not even made when the cancel came while another test's fetch held
    // the process's one turn.)
    let left: Vec<_> = std::fs::read_dir(&models)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_dir_all(dir);
}
