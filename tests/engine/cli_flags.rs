//! Each command accepts only the flags it uses: a flag it would ignore is a parse error that
//! names the command, and the flags it takes reach what it writes.

use std::process::{Command, Output};

use crate::common::repo;

fn unveil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unveil"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("unveil-flags-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A usage error (exit status 2) naming the command and the flag.
fn assert_refused(o: &Output, command: &str, flag: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{command} {flag}: {err}");
    assert!(
        err.contains(&format!("unexpected argument '{flag}'")),
        "{command} {flag}: {err}"
    );
    assert!(err.contains(&format!("unveil {command}")), "{err}");
}

#[test]
fn each_command_refuses_flags_it_would_ignore() {
    let img = repo("assets/chelsea.png");
    let img = img.to_str().unwrap();
    // `check` computes maps only: no mask, loop or run-output flag.
    for (flag, value) in [
        ("--kernel", Some("31")),
        ("--kernel", Some("4")),
        ("--passes", Some("2")),
        ("--keep", Some("0.1")),
        ("--pass-threshold", Some("0.3")),
        ("--stop", Some("0.2")),
        ("--max-iter", Some("2")),
        ("--export-raw", None),
        ("--no-faithfulness", None),
        ("--shard", Some("0/2")),
    ] {
        let mut args = vec!["check", img, "--out", "unused"];
        args.push(flag);
        args.extend(value);
        assert_refused(&unveil(&args), "check", flag);
    }
    // `eval` measures faithfulness and compares --methods: no --method, no --no-faithfulness.
    for (flag, value) in [("--method", Some("guided")), ("--no-faithfulness", None)] {
        let mut args = vec!["eval", img, "--out", "unused"];
        args.push(flag);
        args.extend(value);
        assert_refused(&unveil(&args), "eval", flag);
    }
    // One image: no shard.
    assert_refused(
        &unveil(&["run", img, "--out", "unused", "--shard", "0/2"]),
        "run",
        "--shard",
    );
    assert!(!std::path::Path::new("unused").exists());
}

#[test]
fn the_pass_threshold_reaches_the_run() {
    let out = tmp("pass-threshold");
    let img = repo("assets/chelsea.png");
    let args = |t: &str| {
        unveil(&[
            "run",
            img.to_str().unwrap(),
            "--pass-threshold",
            t,
            "--samples",
            "1",
            "--max-iter",
            "1",
            "--no-faithfulness",
            "-q",
            "--overwrite",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let o = args("0.6");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stderr.is_empty(),
        "quiet: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert!((s["params"]["mask"]["threshold"].as_f64().unwrap() - 0.6).abs() < 1e-6);
    let o = args("0");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("mask threshold must be in (0, 1]"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `--quiet` batches and evaluations print errors only, and `eval --export-raw` keeps the raw
/// arrays (it used to drop them).
#[test]
fn quiet_datasets_print_only_errors_and_eval_keeps_raw_arrays() {
    let dir = tmp("quiet");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(repo("assets/chelsea.png"), data.join("cat.png")).unwrap();
    std::fs::write(data.join("broken.png"), "not an image").unwrap();
    let out = dir.join("batch");
    let o = unveil(&[
        "batch",
        data.to_str().unwrap(),
        "--samples",
        "1",
        "--max-iter",
        "1",
        "--no-faithfulness",
        "-q",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "the broken image and the total: {err}");
    assert!(lines[0].contains("broken.png") && lines[1].contains("1 image failed"));
    assert!(out.join("results.csv").is_file());

    let out = dir.join("eval");
    let o = unveil(&[
        "eval",
        data.join("cat.png").to_str().unwrap(),
        "--methods",
        "grad-cam",
        "--max-iter",
        "1",
        "--export-raw",
        "-q",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.is_empty(), "quiet: {err}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("| metric | grad-cam |"));
    let run = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path()
        .join("grad-cam/run");
    assert!(run.join("iter_00/input.npy").is_file(), "raw arrays kept");
    assert!(run.join("iter_00/attribution.npy").is_file());
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["params"]["faithfulness"], true);
    let _ = std::fs::remove_dir_all(&dir);
}
