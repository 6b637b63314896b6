//! PyTorch checkpoints read without executing any code: `torch.save` files in the zip format
//! (PyTorch >= 1.6) and the legacy format before it, holding a state dict, a training
//! checkpoint dict, or a whole pickled model.
//!
//! The pickle is only interpreted as data ([`super::pickle`]); every global it names must be
//! on an allowlist (tensors, storages, containers and, as names only, module classes from
//! `torch.nn.modules`, `torchvision.models` and `torchxrayvision.models`). A whole model is
//! never constructed: its state is walked as data ([`super::state`]). Here the tensors it
//! names are read from their storages, each view once however many names it has.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Tensor};

use super::pickle::{self, PickleError};
use super::state::{TensorRef, dict_get, find_state, storage_kinds};
use super::value::Obj;
use super::value::Value;
use crate::error::{Error, Result};

/// What a checkpoint holds besides its tensors.
#[derive(Clone, Debug, Default)]
pub(crate) struct Checkpoint {
    /// Tensors by their state-dict name (prefixes as saved).
    pub tensors: HashMap<String, Tensor>,
    /// The class of a whole pickled model (`torchxrayvision.models.DenseNet`).
    pub model_class: Option<String>,
    /// A whole model's own label list (torchxrayvision's `targets` / `pathologies`), blanks
    /// kept: a blank is an output the weights do not predict.
    pub labels: Option<Vec<String>>,
}

/// torch's legacy magic number, 0x1950a86a20f9469cfc6c, little-endian.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// A zip-format `torch.save` file (the file starts with `PK`).
pub(super) fn load_zip(path: &Path) -> Result<Checkpoint> {
    let fail = |m: String| Error::Weights(format!("{}: {m}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        fail(format!(
            "a truncated or corrupt zip archive ({e}); re-save or re-download it"
        ))
    })?;
    let names: Vec<String> = (0..zip.len())
        .filter_map(|i| {
            zip.by_index(i)
                .ok()
                .and_then(|f| f.name().ok().map(|n| n.to_string()))
        })
        .collect();
    if names.iter().any(|n| n.ends_with("constants.pkl")) {
        return Err(fail(
            "a TorchScript archive (torch.jit.save); save the model's state_dict() with torch.save instead".into(),
        ));
    }
    let Some(pkl) = names.iter().find(|n| n.ends_with("data.pkl")) else {
        return Err(fail(
            "a zip archive without data.pkl: not a PyTorch checkpoint".into(),
        ));
    };
    let root_dir = pkl.trim_end_matches("data.pkl").to_string();
    let bytes = read_entry(&mut zip, pkl).map_err(|e| fail(format!("cannot read {pkl} ({e})")))?;
    let root = pickle::read(&bytes, &mut 0).map_err(|e| refusal(path, e))?;
    let file_len = file_len(path)?;
    let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
    collect(&root, path, file_len, |key| {
        if !cache.contains_key(key) {
            let name = format!("{root_dir}data/{key}");
            let data = read_entry(&mut zip, &name)
                .map_err(|e| format!("its storage '{key}' cannot be read ({e})"))?;
            cache.insert(key.to_string(), data);
        }
        Ok(cache[key].clone())
    })
}

/// A legacy (pre-1.6) `torch.save` file: five pickles (magic number, protocol version, system
/// info, the object, the storage keys sorted as strings), then for each key a u64 element
/// count and the storage's bytes.
pub(super) fn load_legacy(path: &Path) -> Result<Checkpoint> {
    let fail = |m: String| Error::Weights(format!("{}: {m}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut pos = 0;
    let mut next = |what: &str| {
        pickle::read(&bytes, &mut pos).map_err(|e| match e {
            PickleError::Corrupt(m) => fail(format!(
                "a truncated or corrupt legacy PyTorch file: its {what} cannot be read ({m})"
            )),
            e => refusal(path, e),
        })
    };
    let magic = next("header")?;
    if !matches!(&*magic.borrow(), Value::BigInt(b) if b[..] == LEGACY_MAGIC) {
        return Err(fail(
            "a Python pickle, not a PyTorch checkpoint (no torch.save magic number)".into(),
        ));
    }
    let version = next("header")?.borrow().as_int();
    if version != Some(1001) {
        return Err(fail(format!(
            "legacy PyTorch format version {version:?}, expected 1001"
        )));
    }
    let sys_info = next("header")?;
    if dict_get(&sys_info, "little_endian").and_then(|v| v.borrow().as_int()) == Some(0) {
        return Err(fail(
            "a big-endian legacy PyTorch file; re-save it on a little-endian machine".into(),
        ));
    }
    let root = next("object")?;
    let keys = next("storage list")?;
    let keys: Vec<String> = match &*keys.borrow() {
        Value::List(v) => v
            .iter()
            .map(|k| k.borrow().as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| fail("its storage list holds something other than keys".into()))?,
        _ => return Err(fail("its storage list is not a list".into())),
    };
    // Every storage's element size, from the persistent ids that name it.
    let sizes = storage_kinds(&root);
    let mut table: HashMap<String, (usize, usize)> = HashMap::new();
    for key in keys {
        let Some(&(es, _)) = sizes.get(&key) else {
            return Err(fail(format!(
                "storage '{key}' has a type unveil cannot size"
            )));
        };
        let count = bytes
            .get(pos..pos + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| fail(format!("truncated: storage '{key}' has no data")))?;
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(es))
            .filter(|&n| n <= bytes.len() - pos - 8)
            .ok_or_else(|| {
                fail(format!(
                    "truncated: storage '{key}' claims {count} elements, the file has {} bytes left",
                    bytes.len() - pos - 8
                ))
            })?;
        table.insert(key, (pos + 8, len));
        pos += 8 + len;
    }
    let file_len = bytes.len() as u64;
    collect(&root, path, file_len, |key| match table.get(key) {
        Some(&(start, len)) => Ok(bytes[start..start + len].to_vec()),
        None => Err(format!("its storage '{key}' has no data in the file")),
    })
}

fn refusal(path: &Path, e: PickleError) -> Error {
    Error::Weights(match e {
        PickleError::Forbidden(name) => format!(
            "{}: refused: the checkpoint references `{name}`, which could run code when unpickled; \
             only tensors, containers and PyTorch / torchvision / TorchXRayVision module classes \
             (read as names, never called) are loaded",
            path.display()
        ),
        PickleError::Corrupt(m) => format!(
            "{}: a truncated or corrupt PyTorch checkpoint ({m})",
            path.display()
        ),
    })
}

fn file_len(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len())
}

fn read_entry<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
) -> std::result::Result<Vec<u8>, String> {
    let mut f = zip.by_name(name).map_err(|e| e.to_string())?;
    // The size comes from the central directory; a lying one fails in read_to_end.
    let mut out = Vec::with_capacity(f.size().min(1 << 30) as usize);
    f.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Finds the state dict in `root` and materialises its tensors from their storages.
fn collect(
    root: &Obj,
    path: &Path,
    file_len: u64,
    mut storage: impl FnMut(&str) -> std::result::Result<Vec<u8>, String>,
) -> Result<Checkpoint> {
    let fail = |m: String| Error::Weights(format!("{}: {m}", path.display()));
    let found = find_state(root, 0).map_err(fail)?;
    if found.tensors.is_empty() {
        return Err(fail("no tensors found".into()));
    }
    let limit = usize::try_from(file_len).unwrap_or(usize::MAX);
    let mut tensors = HashMap::new();
    // A tensor at several places (a shared module's) is read once; its names share it.
    let mut made: HashMap<TensorRef, Tensor> = HashMap::new();
    for (name, t) in found.tensors {
        let Some(dtype) = t.dtype else { continue };
        if let Some(tensor) = made.get(&t) {
            tensors.insert(name, tensor.clone());
            continue;
        }
        let data = storage(&t.key).map_err(|e| fail(format!("tensor '{name}': {e}")))?;
        let tensor = materialise(&data, &t, dtype, limit)
            .map_err(|e| fail(format!("tensor '{name}': {e}")))?;
        made.insert(t, tensor.clone());
        tensors.insert(name, tensor);
    }
    Ok(Checkpoint {
        tensors,
        model_class: found.model_class,
        labels: found.labels,
    })
}
/// Reads one tensor from its storage's bytes and applies its view (shape, strides, offset):
/// views of a larger storage, transposes and slices are common in real checkpoints. Every size
/// is checked before anything is allocated: the view may hold at most as many elements as its
/// storage, or as the file has bytes (`limit`) where it repeats values.
fn materialise(
    bytes: &[u8],
    t: &TensorRef,
    dtype: DType,
    limit: usize,
) -> std::result::Result<Tensor, String> {
    let (dims, strides) = (&t.size[..], &t.stride[..]);
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("its shape {dims:?} overflows"))?;
    let es = dtype.size_in_bytes();
    let elems = bytes.len() / es;
    if n > elems.max(limit) {
        return Err(format!(
            "a view of {n} elements (shape {dims:?}) over a storage of {elems}; refused: \
             it holds more elements than the file has bytes"
        ));
    }
    let cpu = &candle_core::Device::Cpu;
    let outside = || format!("the view reaches outside its {elems}-element storage");
    let contiguous = {
        let mut expect = 1usize;
        let mut ok = true;
        for (&d, &s) in dims.iter().zip(strides).rev() {
            ok &= d <= 1 || s == expect;
            expect = expect.saturating_mul(d);
        }
        ok
    };
    if contiguous {
        let end = t
            .offset
            .checked_add(n)
            .filter(|&e| e <= elems)
            .ok_or_else(outside)?;
        return Tensor::from_raw_buffer(&bytes[t.offset * es..end * es], dtype, dims, cpu)
            .map_err(|e| e.to_string());
    }
    if u32::try_from(elems).is_err() {
        return Err(format!(
            "a strided view of a {elems}-element storage is too large"
        ));
    }
    let storage = Tensor::from_raw_buffer(&bytes[..elems * es], dtype, &[elems], cpu)
        .map_err(|e| e.to_string())?;
    let mut index = Vec::with_capacity(n);
    for i in 0..n {
        let (mut rem, mut off) = (i, t.offset);
        for (d, s) in dims.iter().zip(strides).rev() {
            off = (rem % d)
                .checked_mul(*s)
                .and_then(|step| off.checked_add(step))
                .ok_or_else(outside)?;
            rem /= d;
        }
        if off >= elems {
            return Err(outside());
        }
        // Fits: `off < elems`, which fits in u32 (checked above).
        index.push(off as u32);
    }
    let index = Tensor::from_vec(index, n, cpu).map_err(|e| e.to_string())?;
    storage
        .index_select(&index, 0)
        .and_then(|t| t.reshape(dims))
        .map_err(|e| e.to_string())
}
