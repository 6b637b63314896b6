//! PyTorch checkpoints read as data only (scripts/fixtures/make_pth_fixtures.py, real torch.save
//! files).

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

/// Writes part of a pickle (a dict item, a child module).
type Write<'a> = Box<dyn FnOnce(&mut Pickler) + 'a>;

/// Writes pickles as Python's pickler (protocol 2) does for `torch.save`: strings and globals
/// memoised, modules as NEWOBJ + BUILD of their `__dict__`, storages as persistent ids.
struct Pickler {
    out: Vec<u8>,
    memo: HashMap<String, u32>,
    next: u32,
}

impl Pickler {
    fn new() -> Self {
        Pickler {
            out: vec![0x80, 2],
            memo: HashMap::new(),
            next: 0,
        }
    }

    /// BINPUT / LONG_BINPUT of the object on top of the stack.
    fn put(&mut self) -> u32 {
        let i = self.next;
        self.next += 1;
        match u8::try_from(i) {
            Ok(b) => self.out.extend([b'q', b]),
            Err(_) => {
                self.out.push(b'r');
                self.out.extend(i.to_le_bytes());
            }
        }
        i
    }

    /// BINGET / LONG_BINGET.
    fn get(&mut self, i: u32) {
        match u8::try_from(i) {
            Ok(b) => self.out.extend([b'h', b]),
            Err(_) => {
                self.out.push(b'j');
                self.out.extend(i.to_le_bytes());
            }
        }
    }

    /// The memoised object `key`, or `write` it and memoise it.
    fn memoised(&mut self, key: String, write: impl FnOnce(&mut Self)) {
        match self.memo.get(&key) {
            Some(&i) => self.get(i),
            None => {
                write(self);
                let i = self.put();
                self.memo.insert(key, i);
            }
        }
    }

    fn str(&mut self, s: &str) {
        self.memoised(format!("str {s}"), |p| {
            p.out.push(b'X');
            p.out.extend((s.len() as u32).to_le_bytes());
            p.out.extend(s.as_bytes());
        });
    }

    fn global(&mut self, module: &str, name: &str) {
        self.memoised(format!("global {module}.{name}"), |p| {
            p.out.extend(format!("c{module}\n{name}\n").as_bytes());
        });
    }

    fn int(&mut self, n: u8) {
        self.out.extend([b'K', n]);
    }

    /// `OrderedDict()` with `items` (each writing a key and a value) set afterwards.
    fn ordered_dict(&mut self, items: Vec<Write<'_>>) {
        self.global("collections", "OrderedDict");
        self.out.extend(b")R");
        self.put();
        if !items.is_empty() {
            self.out.push(b'(');
            for item in items {
                item(self);
            }
            self.out.push(b'u');
        }
    }

    /// A float32 `nn.Parameter` of `numel` elements (shape `[numel]`) in storage `key`.
    fn parameter(&mut self, key: &str, numel: u8) {
        self.global("torch._utils", "_rebuild_parameter");
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.extend(b"((");
        self.str("storage");
        self.global("torch", "FloatStorage");
        self.str(key);
        self.str("cpu");
        self.int(numel);
        self.out.push(b't');
        self.put();
        self.out.push(b'Q'); // BINPERSID
        self.int(0); // storage offset
        self.int(numel);
        self.out.push(0x85);
        self.put();
        self.int(1);
        self.out.push(0x85);
        self.put();
        self.out.push(0x89); // requires_grad (of the data)
        self.ordered_dict(Vec::new()); // backward hooks
        self.out.push(b't');
        self.put();
        self.out.push(b'R');
        self.put();
        self.out.push(0x88); // requires_grad
        self.ordered_dict(Vec::new());
        self.out.push(0x87);
        self.put();
        self.out.push(b'R');
        self.put();
    }

    /// A module of class `module.class`: NEWOBJ, then its `__dict__` as torch 2.7 has it, with
    /// `params` (name, storage key, elements) and `children` (each writing a name and a module).
    /// Returns its memo index.
    fn module(
        &mut self,
        (module, class): (&str, &str),
        params: &[(&str, &str, u8)],
        children: Vec<Write<'_>>,
    ) -> u32 {
        self.global(module, class);
        self.out.extend([b')', 0x81]);
        let me = self.put();
        self.out.push(b'}');
        self.put();
        self.out.push(b'(');
        self.str("training");
        self.out.push(0x89);
        self.str("_parameters");
        let params: Vec<Write<'_>> = params
            .iter()
            .map(|&(name, key, n)| {
                Box::new(move |p: &mut Self| {
                    p.str(name);
                    p.parameter(key, n);
                }) as Write<'_>
            })
            .collect();
        self.ordered_dict(params);
        self.str("_buffers");
        self.ordered_dict(Vec::new());
        self.str("_non_persistent_buffers_set");
        self.global("__builtin__", "set");
        self.out.push(b']');
        self.put();
        self.out.push(0x85);
        self.put();
        self.out.push(b'R');
        self.put();
        for hooks in [
            "_backward_pre_hooks",
            "_backward_hooks",
            "_forward_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_hooks_always_called",
            "_forward_pre_hooks",
            "_forward_pre_hooks_with_kwargs",
            "_state_dict_hooks",
            "_state_dict_pre_hooks",
            "_load_state_dict_pre_hooks",
            "_load_state_dict_post_hooks",
        ] {
            self.str(hooks);
            self.ordered_dict(Vec::new());
        }
        self.str("_is_full_backward_hook");
        self.out.push(b'N');
        self.str("_modules");
        self.ordered_dict(children);
        self.out.extend(b"ub");
        me
    }

    /// The pickle and the zip archive `torch.save` writes around it, with `storages`.
    fn save(mut self, path: &std::path::Path, storages: &[(&str, Vec<f32>)]) {
        use std::io::Write;
        self.out.push(b'.');
        let file = std::fs::File::create(path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let mut entry = |name: &str, bytes: &[u8]| {
            zip.start_file(format!("archive/{name}"), stored).unwrap();
            zip.write_all(bytes).unwrap();
        };
        entry("data.pkl", &self.out);
        entry(".format_version", b"1");
        entry(".storage_alignment", b"64");
        entry("byteorder", b"little");
        for (key, values) in storages {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            entry(&format!("data/{key}"), &bytes);
        }
        entry("version", b"3\n");
        entry(".data/serialization_id", b"1234567890");
        zip.finish().unwrap();
    }
}

/// `torch.save` of `levels` nested `nn.Sequential`s, each holding the one below twice (as
/// `a` and `b`), around an `nn.Linear(1, 1)`: 2^levels places for the Linear in a file that
/// grows linearly.
fn shared_subtrees(levels: usize, path: &std::path::Path) {
    fn level(p: &mut Pickler, k: usize) -> u32 {
        if k == 0 {
            let linear = ("torch.nn.modules.linear", "Linear");
            return p.module(linear, &[("weight", "0", 1), ("bias", "1", 1)], Vec::new());
        }
        let below = std::rc::Rc::new(std::cell::Cell::new(0));
        let (first, second) = (below.clone(), below.clone());
        let children: Vec<Write<'static>> = vec![
            Box::new(move |p: &mut Pickler| {
                p.str("a");
                first.set(level(p, k - 1));
            }),
            Box::new(move |p: &mut Pickler| {
                p.str("b");
                p.get(second.get());
            }),
        ];
        p.module(("torch.nn.modules.container", "Sequential"), &[], children)
    }
    let mut p = Pickler::new();
    level(&mut p, levels);
    p.save(path, &[("0", vec![0.5]), ("1", vec![-0.25])]);
}

/// A whole model whose module tree shares subtrees (each level holding the level below twice,
/// 50 levels: 2^50 places in a 12 KB file) made `unveil run` work for over 20 s and grow past
/// 4.8 GB: each module is now read once, the places counted, and the file refused in one line.
#[test]
fn a_module_tree_sharing_subtrees_is_refused_at_once() {
    let dir = std::env::temp_dir().join(format!("unveil-pth-shared-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("shared.pth");
    shared_subtrees(50, &path);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 20_000, "{size} bytes");
    let start = std::time::Instant::now();
    let err = read_weights(&path)
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    let took = start.elapsed().as_secs_f64();
    assert!(took < 0.5, "{took} s");
    assert!(
        err.contains("shared.pth: refused")
            && err.contains("2251799813685248 tensors in 2251799813685247 modules")
            && err.contains("at most 100000 tensors")
            && !err.contains('\n'),
        "{err}"
    );
    // What `unveil run` says of it: the same line, exit status 1, at once.
    let start = std::time::Instant::now();
    let image = repo("assets/chelsea.png");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_unveil"))
        .args(["run", image.to_str().unwrap(), "--weights"])
        .arg(&path)
        .arg("--out")
        .arg(dir.join("run"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&err) && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
    let took = start.elapsed().as_secs_f64();
    assert!(took < 5.0, "unveil run took {took} s");
    // Three levels: the Linear at 8 places, its two tensors under each name, as state_dict()
    // lists a shared module's.
    shared_subtrees(3, &path);
    let w = read_weights(&path).unwrap();
    let n = names(&w);
    assert_eq!(n.len(), 16, "{n:?}");
    assert_eq!(
        (n[0].as_str(), n[15].as_str()),
        ("a.a.a.bias", "b.b.b.weight")
    );
    for name in &n {
        let want = if name.ends_with("weight") { 0.5 } else { -0.25 };
        assert_eq!(to_vec(&w.get(name, &[1]).unwrap()), [want], "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A module that holds itself (legal in a pickle: the memo) is refused, not followed.
#[test]
fn a_module_tree_with_a_cycle_is_refused() {
    let dir = std::env::temp_dir().join(format!("unveil-pth-cycle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cycle.pth");
    let mut p = Pickler::new();
    // Sequential(fc=Linear, inner=Sequential(back=<the outer one>)).
    let outer = std::rc::Rc::new(std::cell::Cell::new(0u32));
    let seen = outer.clone();
    let inner: Write<'static> = Box::new(move |p: &mut Pickler| {
        p.str("inner");
        let back: Vec<Write<'static>> = vec![Box::new(move |p: &mut Pickler| {
            p.str("back");
            p.get(seen.get());
        })];
        p.module(("torch.nn.modules.container", "Sequential"), &[], back);
    });
    let fc: Write<'static> = Box::new(|p: &mut Pickler| {
        p.str("fc");
        let linear = ("torch.nn.modules.linear", "Linear");
        p.module(linear, &[("weight", "0", 1), ("bias", "1", 1)], Vec::new());
    });
    // The outer module's memo index is the first put: its class global comes first.
    outer.set(1);
    let me = p.module(
        ("torch.nn.modules.container", "Sequential"),
        &[],
        vec![fc, inner],
    );
    assert_eq!(me, 1);
    p.save(&path, &[("0", vec![0.5]), ("1", vec![-0.25])]);
    let err = read_weights(&path)
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("cycle.pth: refused: the module at 'inner.back' is one of its own ancestors")
            && !err.contains('\n'),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A 1 MB state dict whose tensor is wrapped in 100,000 `nn.Parameter` rebuild calls used to
/// overflow the stack and abort the process: nesting is bounded, and the file is one line.
#[test]
fn a_tensor_nested_in_many_rebuild_calls_is_refused_without_overflowing() {
    let dir = std::env::temp_dir().join(format!("unveil-pth-nest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nested.pth");
    let mut p = Pickler::new();
    p.out.push(b'}');
    p.put();
    p.str("w");
    let depth = 100_000;
    for _ in 0..depth {
        p.global("torch._utils", "_rebuild_parameter");
    }
    p.parameter("0", 1);
    for _ in 0..depth {
        p.out.push(0x88);
        p.ordered_dict(Vec::new());
        p.out.extend([0x87, b'R']);
    }
    p.out.push(b's');
    p.save(&path, &[("0", vec![0.5])]);
    let err = read_weights(&path)
        .map(|_| ())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("nested.pth") && err.contains("nest more than 8 deep") && !err.contains('\n'),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
