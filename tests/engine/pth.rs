//! PyTorch checkpoints read as data only (scripts/make_pth_fixtures.py, real torch.save files).

use std::collections::HashMap;

use candle_core::Tensor;
use unveil::engine::models::{layers::Weights, read_weights};

use crate::common::{fixture, repo, to_vec};

fn pth(name: &str) -> std::path::PathBuf {
    repo(&format!("tests/fixtures/pth/{name}.pth"))
}

fn names(w: &Weights) -> Vec<String> {
    let mut v: Vec<String> = w.shapes().map(|(k, _)| k.to_string()).collect();
    v.sort();
    v
}

/// Every `{prefix}/<name>` tensor of expected.safetensors must come back identical.
fn assert_same(w: &Weights, prefix: &str, expected: &HashMap<String, Tensor>) {
    let mut checked = 0;
    for (key, want) in expected
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{prefix}/")))
    {
        let name = &key[prefix.len() + 1..];
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let got = w
            .get(name, want.dims())
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let want = want.to_dtype(candle_core::DType::F32).unwrap();
        assert_eq!(to_vec(&got), to_vec(&want), "{key}");
        checked += 1;
    }
    assert!(checked >= 4, "{prefix}: only {checked} tensors compared");
}

#[test]
fn plain_and_varied_state_dicts_load_exactly() {
    let expected = fixture("pth/expected.safetensors");
    assert_same(&read_weights(&pth("plain")).unwrap(), "plain", &expected);
    // float16, float64, bfloat16, a transposed view and a view at a storage offset.
    assert_same(&read_weights(&pth("varied")).unwrap(), "varied", &expected);
}

#[test]
fn dataparallel_and_wrapper_prefixes_are_removed() {
    let plain = names(&read_weights(&pth("plain")).unwrap());
    assert_eq!(names(&read_weights(&pth("module_prefix")).unwrap()), plain);
    // {"epoch": .., "state_dict": {"densenet121.…": …}, ..}
    assert_eq!(
        names(&read_weights(&pth("nested_checkpoint")).unwrap()),
        plain
    );
}

#[test]
fn checkpoints_that_would_run_code_are_refused() {
    let marker = std::path::Path::new("/tmp/unveil-pwned");
    let _ = std::fs::remove_file(marker);
    for (file, global) in [("evil_os_system", "system`"), ("evil_eval", "eval`")] {
        let err = read_weights(&pth(file))
            .map(|_| ())
            .expect_err("must be refused")
            .to_string();
        assert!(
            err.contains("refused") && err.contains(global),
            "{file}: {err}"
        );
    }
    assert!(!marker.exists(), "nothing was executed");
}

#[test]
fn a_legacy_file_loads_the_same_tensors_and_a_truncated_one_is_a_clear_error() {
    // Pre-1.6 format (pickles, then raw storages keyed by memory address, sorted as strings).
    let expected = fixture("pth/expected.safetensors");
    assert_same(
        &read_weights(&pth("legacy_format")).unwrap(),
        "plain",
        &expected,
    );
    let err = read_weights(&pth("truncated"))
        .map(|_| ())
        .expect_err("broken")
        .to_string();
    assert!(
        err.contains("truncated.pth") && err.contains("truncated or corrupt"),
        "{err}"
    );
}

/// A 1.5 KB `torch.save` of `torch.zeros(1).expand(200000, 100000)`: the view claims 2e10
/// elements over a 1-element storage. Materialising it used to abort the process with
/// "memory allocation of 80000000000 bytes failed"; now it is one clear error, before any
/// allocation of that size (this test would abort the whole test binary otherwise).
#[test]
fn a_zero_stride_view_claiming_80_gb_is_refused_without_allocating() {
    let err = read_weights(&pth("huge_view"))
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("huge_view.pth")
            && err.contains("tensor 'weight'")
            && err.contains("20000000000 elements")
            && !err.contains('\n'),
        "{err}"
    );
}
