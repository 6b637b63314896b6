//! The `unveil` binary, end to end.

use std::path::Path;
use std::process::Command;

use crate::common::repo;

fn unveil(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_unveil"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("unveil-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Reads a float32 .npy file: (shape, data).
fn read_npy(p: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(p).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hl]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && (10 + hl).is_multiple_of(64),
        "{header}"
    );
    let inner = &header[header.find("'shape': (").unwrap() + 10..];
    let shape = inner[..inner.find(')').unwrap()]
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data = b[10 + hl..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, data)
}

#[test]
fn run_writes_pictures_summary_and_raw_arrays() {
    let out = tmp("run");
    let o = unveil(&[
        "run",
        repo("assets/chelsea.png").to_str().unwrap(),
        "--samples",
        "1",
        "--noise",
        "0",
        "--max-iter",
        "2",
        "--stop",
        "0",
        "--export-raw",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let iters = summary["iterations"].as_array().unwrap();
    assert_eq!(iters.len(), 2);
    assert_eq!(summary["model"]["name"], "efficientnet-lite0");
    let target = summary["target"].as_u64().unwrap();
    assert!((281..=285).contains(&target));
    for (i, it) in iters.iter().enumerate() {
        let top5 = it["top5"].as_array().unwrap();
        assert_eq!(top5.len(), 5);
        assert!(top5[0]["label"].is_string() && top5[0]["prob"].as_f64().unwrap() > 0.0);
        assert!(it["timings"]["gradient_ms"].as_f64().unwrap() > 0.0);
        let dir = out.join(format!("iter_{i:02}"));
        for f in ["input.png", "saliency.png", "mask.png", "masked.png"] {
            let img = image::open(dir.join(f)).unwrap();
            assert_eq!((img.width(), img.height()), (224, 224), "{f}");
        }
        let (shape, input) = read_npy(&dir.join("input.npy"));
        assert_eq!(shape, [3, 224, 224]);
        assert!(input.iter().all(|v| v.is_finite()));
        assert_eq!(read_npy(&dir.join("gradient.npy")).0, [3, 224, 224]);
        let (shape, s) = read_npy(&dir.join("saliency.npy"));
        assert_eq!(shape, [224, 224]);
        assert!(s.iter().all(|v| (0.0..=1.0).contains(v)));
        let (_, m) = read_npy(&dir.join("mask.npy"));
        let coverage = m.iter().sum::<f32>() / m.len() as f32;
        assert!((coverage as f64 - it["mask_coverage"].as_f64().unwrap()).abs() < 1e-6);
    }
    let p0 = iters[0]["p_target"].as_f64().unwrap();
    assert!((p0 - iters[0]["top5"][0]["prob"].as_f64().unwrap()).abs() < 1e-9);
    // The grid of 2 rows x 4 pictures (224 px, 4 px gaps), with captions: 100 px on the left
    // (iteration and p per row), 52 above (class, column titles), 54 below (colour scale).
    let montage = image::open(out.join("montage.png")).unwrap().to_rgb8();
    assert_eq!(
        (montage.width(), montage.height()),
        (100 + 4 * 224 + 5 * 4, 52 + 2 * 224 + 3 * 4 + 54)
    );
    let caption_ink = (0..100)
        .flat_map(|x| (52..52 + 224).map(move |y| (x, y)))
        .filter(|&(x, y)| montage.get_pixel(x, y).0[0] > 200)
        .count();
    assert!(
        caption_ink > 50,
        "the rows are captioned ({caption_ink} text pixels)"
    );

    // --samples 1 --noise 0 is deterministic: a second run gives the same gradient.
    let again = tmp("run-again");
    let o = unveil(&[
        "run",
        repo("assets/chelsea.png").to_str().unwrap(),
        "--samples",
        "1",
        "--noise",
        "0",
        "--max-iter",
        "1",
        "--export-raw",
        "-q",
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert_eq!(
        read_npy(&out.join("iter_00/gradient.npy")).1,
        read_npy(&again.join("iter_00/gradient.npy")).1
    );

    // An existing run is never overwritten silently.
    let o = unveil(&[
        "run",
        repo("assets/chelsea.png").to_str().unwrap(),
        "--max-iter",
        "1",
        "--samples",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not empty"));
    assert!(
        out.join("iter_01/mask.png").exists(),
        "the earlier run is intact"
    );
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&again);
}

/// A clear one-line message and a non-zero exit, never a panic.
fn assert_clean_failure(o: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "must fail: {err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
}

#[test]
fn bad_input_gives_a_clear_error() {
    let dir = tmp("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("notes.png");
    std::fs::write(&text, "this is not an image").unwrap();
    let truncated = dir.join("truncated.png");
    let png = std::fs::read(repo("assets/chelsea.png")).unwrap();
    std::fs::write(&truncated, &png[..png.len() / 3]).unwrap();
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    assert_clean_failure(
        &unveil(&["run", dir.join("missing.png").to_str().unwrap(), "--out", o]),
        "missing.png",
    );
    assert_clean_failure(
        &unveil(&["run", text.to_str().unwrap(), "--out", o]),
        "not a PNG, JPEG, TIFF or DICOM",
    );
    assert_clean_failure(
        &unveil(&["run", truncated.to_str().unwrap(), "--out", o]),
        "cannot read image",
    );
    let chelsea = repo("assets/chelsea.png");
    let c = chelsea.to_str().unwrap();
    assert_clean_failure(
        &unveil(&["run", c, "--kernel", "4", "--out", o]),
        "kernel must be odd",
    );
    assert_clean_failure(
        &unveil(&["run", c, "--model", "nope", "--out", o]),
        "unknown model 'nope'",
    );
    assert_clean_failure(
        &unveil(&["run", c, "--class", "1000", "--samples", "1", "--out", o]),
        "out of range",
    );
    assert!(!out.exists(), "nothing is written for a failed run");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dicom_files_run_like_images_with_an_optional_window() {
    let out = tmp("dicom");
    let dcm = repo("tests/fixtures/dicom/mono1_16bit.dcm");
    let o = unveil(&[
        "run",
        dcm.to_str().unwrap(),
        "--window",
        "2000,3000",
        "--samples",
        "1",
        "--noise",
        "0",
        "--max-iter",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let input = image::open(out.join("iter_00/input.png"))
        .unwrap()
        .to_rgb8();
    assert!(
        input.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]),
        "grayscale stays gray"
    );
    let _ = std::fs::remove_dir_all(&out);
    let c = repo("assets/chelsea.png");
    let o = unveil(&[
        "run",
        c.to_str().unwrap(),
        "--window",
        "0.5,0.2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "grayscale images only");
    let o = unveil(&[
        "run",
        dcm.to_str().unwrap(),
        "--window",
        "40",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("CENTER,WIDTH"));
}

#[test]
fn models_lists_the_registry_and_how_to_fetch() {
    let o = unveil(&["models"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("efficientnet-lite0") && text.contains("bundled"),
        "{text}"
    );
    assert!(text.contains("pneumonia-xception"), "{text}");
    let o = unveil(&["models", "fetch", "nope"]);
    assert_clean_failure(&o, "fetchable: pneumonia-xception");
}

#[test]
fn own_checkpoints_run_from_the_command_line() {
    let dir = tmp("own-model");
    let weights = crate::torchvision::write_generated("resnet18", &dir);
    let out = dir.join("run");
    let c = repo("assets/chelsea.png");
    let o = unveil(&[
        "run",
        c.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--arch",
        "resnet18",
        "--samples",
        "1",
        "--max-iter",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["model"]["name"], "resnet18");
    assert!(
        summary["target_label"].is_string(),
        "ImageNet labels for a 1000-way head"
    );
    let o = unveil(&[
        "run",
        c.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--arch",
        "vgg16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "unknown architecture 'vgg16'");
    let evil = repo("tests/fixtures/pth/evil_os_system.pth");
    let o = unveil(&[
        "run",
        c.to_str().unwrap(),
        "--weights",
        evil.to_str().unwrap(),
        "--arch",
        "resnet18",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, "refused");
    let _ = std::fs::remove_dir_all(&dir);
}

fn ids_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("summary.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn batch_runs_folders_and_lists_resumes_and_shards() {
    let dir = tmp("batch");
    let data = dir.join("data/sub");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(repo("assets/chelsea.png"), data.join("cat.png")).unwrap();
    std::fs::copy(repo("assets/coffee.png"), dir.join("data/cup.png")).unwrap();
    std::fs::write(dir.join("data/notes.txt.png"), "not an image").unwrap();
    let list = dir.join("more.txt");
    std::fs::write(
        &list,
        format!(
            "# one DICOM\n{}\n",
            repo("tests/fixtures/dicom/mono2_8bit.dcm").display()
        ),
    )
    .unwrap();
    let out = dir.join("out");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "batch",
            dir.join("data").to_str().unwrap(),
            list.to_str().unwrap(),
            "--samples",
            "1",
            "--max-iter",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| {
        Command::new(env!("CARGO_BIN_EXE_unveil"))
            .args(a)
            .output()
            .unwrap()
    };
    let o = run(args(&[]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "the corrupt file makes the batch fail at the end: {err}"
    );
    assert!(
        err.contains("4 images") && err.contains("1 image failed"),
        "{err}"
    );
    assert!(
        !err.contains("invalid parameter"),
        "a failed image is not a parameter error: {err}"
    );
    assert_eq!(ids_in(&out).len(), 3, "the three good images are done");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(
        csv.lines()
            .any(|l| l.contains("cat.png") && l.contains("Egyptian cat")),
        "{csv}"
    );
    assert!(
        std::fs::read_to_string(out.join("failed.csv"))
            .unwrap()
            .contains("notes.txt.png")
    );
    // p(target) at every iteration, then with every mask applied.
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "p_per_iteration").unwrap();
    let row = csv.lines().find(|l| l.contains("cat.png")).unwrap();
    let ps: Vec<f64> = row
        .split(',')
        .nth(col)
        .unwrap()
        .split(';')
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(
        !ps.is_empty() && ps.iter().all(|p| (0.0..=1.0).contains(p)),
        "{row}"
    );

    // A resumed batch retries the failure: listed once, and no absurd rate from it.
    let o = run(args(&[]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("3 already done, 1 to do") && !err.contains("images/min"),
        "{err}"
    );
    let failed = std::fs::read_to_string(out.join("failed.csv")).unwrap();
    assert_eq!(failed.lines().count(), 1, "{failed}");

    // Resuming skips finished images.
    std::fs::remove_file(dir.join("data/notes.txt.png")).unwrap();
    let o = run(args(&[]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("3 already done, 0 to do"));

    // Two shards split the work without overlap.
    let mut seen = Vec::new();
    for shard in ["0/2", "1/2"] {
        let sout = dir.join(format!("shard{}", &shard[..1]));
        let mut a = args(&["--shard", shard]);
        let pos = a.iter().position(|x| x == out.to_str().unwrap()).unwrap();
        a[pos] = sout.to_str().unwrap().to_string();
        let o = run(a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        seen.extend(ids_in(&sout));
    }
    seen.sort();
    assert_eq!(
        seen,
        ids_in(&out),
        "the shards together cover every image once"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_writes_the_sanity_report_and_picture() {
    let out = tmp("check");
    let o = unveil(&[
        "check",
        repo("assets/chelsea.png").to_str().unwrap(),
        "--method",
        "grad-cam",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("head+last-stage") && err.contains("Spearman"),
        "{err}"
    );
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("check.json")).unwrap()).unwrap();
    assert_eq!(j["method"], "grad-cam");
    assert_eq!(j["target"], 285);
    let names: Vec<&str> = j["randomisation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reinitialised"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["head", "head+last-stage", "last-quarter"]);
    for r in j["randomisation"].as_array().unwrap() {
        let (rho, ssim) = (r["spearman"].as_f64().unwrap(), r["ssim"].as_f64().unwrap());
        assert!(
            (-1.0..=1.0).contains(&rho) && (-1.0..=1.0).contains(&ssim),
            "{r}"
        );
    }
    assert_eq!(j["other_class"]["class"], 282);
    assert!(j["verdict"].as_str().unwrap().contains("runner-up"));
    let png = ::image::open(out.join("check.png")).unwrap();
    assert!(png.width() > 5 * 224, "five maps side by side");
    // Bad values are clear errors.
    let o = unveil(&[
        "check",
        repo("assets/chelsea.png").to_str().unwrap(),
        "--method",
        "integrated-gradients",
        "--ig-steps",
        "0",
        "--out",
        out.to_str().unwrap(),
        "--overwrite",
    ]);
    assert_clean_failure(&o, "ig-steps must be 1..=1024");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn eval_compares_methods_resumes_and_summarises() {
    let out = tmp("eval");
    let (coffee, out_s) = (repo("assets/coffee.png"), out.display().to_string());
    let run = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            coffee.to_str().unwrap(),
            "--methods",
            "vanilla,grad-cam",
            "--samples",
            "1",
            "--max-iter",
            "2",
            "--out",
            &out_s,
        ];
        a.extend_from_slice(extra);
        unveil(&a)
    };
    let o = run(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("| metric | vanilla | grad-cam |"), "{table}");
    let results = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(results.lines().count(), 3, "{results}");
    assert!(results.lines().skip(1).all(|l| l.contains("coffee.png")));
    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(summary.contains("vanilla,rho_head,1,"), "{summary}");
    // Each image x method keeps its run and its check.
    let image_dir = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    for m in ["vanilla", "grad-cam"] {
        assert!(image_dir.join(m).join("run/summary.json").is_file());
        assert!(image_dir.join(m).join("check/check.json").is_file());
    }
    // A second call finds nothing to do and rebuilds the same tables.
    let o = run(&[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("0 with work to do"));
    assert_eq!(
        std::fs::read_to_string(out.join("results.csv")).unwrap(),
        results
    );
    let o = run(&["--ig-steps", "0"]);
    assert_clean_failure(&o, "ig-steps must be 1..=1024");
    let _ = std::fs::remove_dir_all(&out);
}

/// `--device cuda` where CUDA cannot be used: exit status 1, one line saying which of "not
/// compiled in", "no driver" (the stub libcuda of a CUDA build without a GPU, as in CI) or "no
/// device" it is, with the driver's own error; nothing written. `auto` runs on the CPU.
#[test]
fn asking_for_a_gpu_that_cannot_be_used_says_why() {
    use unveil::engine::device::{self, DeviceChoice};
    if device::open(DeviceChoice::Cuda).is_ok() {
        eprintln!("a CUDA device is present: nothing to refuse here");
        return;
    }
    let out = tmp("no-cuda");
    let img = repo("assets/chelsea.png");
    let o = unveil(&[
        "run",
        img.to_str().unwrap(),
        "--device",
        "cuda",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let why = if cfg!(feature = "cuda") {
        "cannot use cuda device 0: no NVIDIA"
    } else {
        "this build has no cuda support (build with --features cuda)"
    };
    assert!(err.contains(why), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!out.join("summary.json").exists());
    let o = unveil(&[
        "run",
        img.to_str().unwrap(),
        "--device",
        "auto",
        "--samples",
        "1",
        "--max-iter",
        "1",
        "--no-faithfulness",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains("\"device\": \"cpu\""), "{summary}");
    let _ = std::fs::remove_dir_all(&out);
}
