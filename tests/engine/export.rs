//! Writing runs to folders: an existing run is never lost.

use unveil::engine::export::replace_dir;

use crate::common::repo;

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("unveil-export-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Overwriting used to delete the old run before renaming the new one into place: when the
/// rename failed, both were gone. Now the old run is renamed aside and comes back.
#[test]
fn a_failed_replacement_keeps_the_old_run() {
    let dir = scratch("keep");
    let old = dir.join("run");
    std::fs::create_dir_all(old.join("iter_00")).unwrap();
    std::fs::write(old.join("summary.json"), "{\"old\": true}").unwrap();
    // A new run that cannot be moved into place (here: it is not there at all).
    let err = replace_dir(&dir.join("missing-new-run"), &old).expect_err("the rename fails");
    assert!(err.to_string().contains("run"), "{err}");
    assert_eq!(
        std::fs::read_to_string(old.join("summary.json")).unwrap(),
        "{\"old\": true}",
        "the old run is back under its name"
    );
    assert!(old.join("iter_00").is_dir());
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["run"], "nothing left aside");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_successful_replacement_leaves_only_the_new_run() {
    let dir = scratch("replace");
    let (old, new) = (dir.join("run"), dir.join("new"));
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("stale.png"), "old").unwrap();
    std::fs::create_dir_all(&new).unwrap();
    std::fs::write(new.join("summary.json"), "{}").unwrap();
    replace_dir(&new, &old).unwrap();
    assert!(old.join("summary.json").is_file() && !old.join("stale.png").exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// summary.json is written from a typed struct: floats keep their f32 spelling (0.15, not
/// 0.15000000596046448), and batch mode reads the file back through the same type.
#[test]
fn summary_json_round_trips_through_its_type() {
    use unveil::engine::summary::Summary;
    let dir = scratch("summary");
    let out = dir.join("run");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_unveil"))
        .args(["run", repo("assets/chelsea.png").to_str().unwrap()])
        .args(["--samples", "1", "--max-iter", "1", "-q", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(text.contains("\"noise\": 0.15,"), "{text}");
    let s = Summary::read(&out.join("summary.json")).unwrap();
    assert_eq!(s.model.name, "efficientnet-lite0");
    assert_eq!(s.params.saliency.samples, 1);
    assert_eq!(s.iterations.len(), 1);
    assert_eq!(s.to_json(), text, "written and read back identically");
    let _ = std::fs::remove_dir_all(&dir);
}
