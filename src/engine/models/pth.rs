//! PyTorch `.pth` / `.pt` checkpoints read without executing any code.
//!
//! A `torch.save` file is a zip archive holding a pickle (`data.pkl`) plus raw tensor storages.
//! Unpickling normally *runs* whatever callables the pickle names, which is how malicious
//! checkpoints execute code. Here the pickle is only interpreted as data (candle's pickle
//! reader), and every global it references must be on an allowlist of the names torch.save
//! writes for tensors and state dicts; anything else (`os.system`, `builtins.eval`, ...) makes
//! the whole file refused, naming the offending reference.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::Tensor;
use candle_core::pickle::{Object, Stack};

use crate::error::{Error, Result};

/// Globals a plain `torch.save(state_dict)` or checkpoint dict may reference.
fn allowed(module: &str, class: &str) -> bool {
    match module {
        "collections" => matches!(class, "OrderedDict" | "defaultdict"),
        "torch._utils" => matches!(
            class,
            "_rebuild_tensor_v2"
                | "_rebuild_parameter"
                | "_rebuild_tensor"
                | "_rebuild_parameter_with_state"
        ),
        "torch" => {
            class.ends_with("Storage")
                || matches!(
                    class,
                    "Size" | "float32" | "float16" | "bfloat16" | "int64" | "device"
                )
        }
        "torch.storage" => class == "UntypedStorage",
        "numpy.core.multiarray" | "numpy._core.multiarray" => class == "scalar",
        "numpy" => class == "dtype",
        "builtins" => matches!(class, "set" | "frozenset" | "slice"),
        _ => false,
    }
}

fn first_forbidden(obj: &Object) -> Option<String> {
    match obj {
        Object::Class {
            module_name,
            class_name,
        } => (!allowed(module_name, class_name)).then(|| format!("{module_name}.{class_name}")),
        Object::Tuple(v) | Object::List(v) => v.iter().find_map(first_forbidden),
        Object::Dict(kv) => kv
            .iter()
            .find_map(|(k, v)| first_forbidden(k).or_else(|| first_forbidden(v))),
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            first_forbidden(callable).or_else(|| first_forbidden(args))
        }
        Object::PersistentLoad(o) => first_forbidden(o),
        _ => None,
    }
}

/// Checks the checkpoint's pickle, then returns its tensors by name.
pub fn load(path: &Path) -> Result<HashMap<String, Tensor>> {
    let fail = |m: String| Error::Weights(format!("{}: {m}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = match zip::ZipArchive::new(std::io::BufReader::new(file)) {
        Ok(z) => z,
        Err(_) => {
            let mut head = [0u8; 2];
            let legacy = std::fs::File::open(path)
                .and_then(|mut f| f.read_exact(&mut head))
                .is_ok()
                && head[0] == 0x80;
            return Err(fail(if legacy {
                "a legacy (pre-zip) PyTorch file; re-save it with a current torch.save or convert it to safetensors".into()
            } else {
                "not a PyTorch checkpoint (not a zip archive)".into()
            }));
        }
    };
    let pkl = (0..zip.len())
        .filter_map(|i| {
            zip.by_index(i)
                .ok()
                .and_then(|f| f.name().ok().map(|n| n.to_string()))
        })
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| fail("no data.pkl in the archive".into()))?;
    let mut bytes = Vec::new();
    zip.by_name(&pkl)
        .and_then(|mut f| f.read_to_end(&mut bytes).map_err(Into::into))
        .map_err(|e| fail(format!("cannot read {pkl} ({e})")))?;
    let mut stack = Stack::empty();
    stack
        .read_loop(&mut std::io::Cursor::new(&bytes))
        .map_err(|e| fail(format!("cannot parse the checkpoint ({e})")))?;
    let obj = stack
        .finalize()
        .map_err(|e| fail(format!("cannot parse the checkpoint ({e})")))?;
    if let Some(name) = first_forbidden(&obj) {
        return Err(fail(format!(
            "refused: the checkpoint references `{name}`, which could run code when unpickled; only plain tensors and state dicts are loaded"
        )));
    }
    // A bare state dict, or a checkpoint dict holding one under a usual key.
    let key = match &obj {
        Object::Dict(kv) => ["state_dict", "model_state_dict", "model", "net"]
            .into_iter()
            .find(|k| {
                kv.iter().any(|(key, v)| {
                    *key == Object::Unicode(k.to_string())
                        && matches!(v, Object::Dict(_) | Object::Reduce { .. })
                })
            }),
        _ => None,
    };
    let infos = candle_core::pickle::read_pth_tensor_info(path, false, key)
        .map_err(|e| fail(format!("cannot read its tensors ({e})")))?;
    if infos.is_empty() {
        return Err(fail("no tensors found".into()));
    }
    // A view may repeat its storage's values (zero strides, as `expand` makes), but it may not
    // materialise more elements than the file has bytes: a 1.5 KB file cannot claim 80 GB.
    let file_len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let limit = usize::try_from(file_len).unwrap_or(usize::MAX);
    infos
        .into_iter()
        .map(|info| {
            let t = read_tensor(&mut zip, &info, limit)
                .map_err(|e| fail(format!("tensor '{}': {e}", info.name)))?;
            Ok((info.name, t))
        })
        .collect()
}

/// Reads one tensor's storage and applies its view (shape, strides, offset): views of a larger
/// storage, transposes and slices are common in real checkpoints. Every size is checked before
/// anything is allocated: the view may hold at most as many elements as its storage, or as
/// the file has bytes (`limit`) where it repeats values.
fn read_tensor<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    info: &candle_core::pickle::TensorInfo,
    limit: usize,
) -> std::result::Result<Tensor, String> {
    let (dims, strides) = (info.layout.dims(), info.layout.stride());
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("its shape {dims:?} overflows"))?;
    let mut bytes = Vec::new();
    zip.by_name(&info.path)
        .map_err(|e| e.to_string())?
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    let elems = bytes.len() / info.dtype.size_in_bytes();
    if n > elems.max(limit) {
        return Err(format!(
            "a view of {n} elements (shape {dims:?}) over a storage of {elems}; refused: \
             it holds more elements than the file has bytes"
        ));
    }
    if u32::try_from(elems).is_err() {
        return Err(format!("a storage of {elems} elements is too large"));
    }
    let storage = Tensor::from_raw_buffer(&bytes, info.dtype, &[elems], &candle_core::Device::Cpu)
        .map_err(|e| e.to_string())?;
    // candle's pickle reader records the view's offset in bytes.
    let start = info.layout.start_offset() / info.dtype.size_in_bytes();
    let outside = || format!("the view reaches outside its {elems}-element storage");
    let mut index = Vec::with_capacity(n);
    for i in 0..n {
        let (mut rem, mut off) = (i, start);
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
    let index = Tensor::from_vec(index, n, &candle_core::Device::Cpu).map_err(|e| e.to_string())?;
    storage
        .index_select(&index, 0)
        .and_then(|t| t.reshape(dims))
        .map_err(|e| e.to_string())
}
