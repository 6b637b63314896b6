//! A [`TensorProto`] made into a CPU [`Tensor`], with its element count checked against the
//! data before anything is allocated.
//!
//! Element types: float32, float16, bfloat16 and float64 become `F32` (the engine computes in
//! f32); int8, int16, int32, int64, uint16, uint32 and uint64 become `I64` (the type ONNX's
//! shape and index inputs use; a uint64 above `i64::MAX` is refused); bool and uint8 become
//! `U8` (bool as 0 / 1: candle's masks are `U8`). Strings, complex numbers and the sub-byte
//! float and integer types are refused by name.
//!
//! External data (`data_location = EXTERNAL`): `location` comes from the file, so it is
//! untrusted. Only a relative path without `..` is accepted, and the file it names must
//! resolve (symlinks followed) to a regular file inside the model's own folder; `offset` and
//! `length` must lie within that file, and only that range is read. [`ExternalFiles`] keeps
//! each file open once however many tensors share it (the dynamo exporter puts every weight
//! of a model in one `model.onnx.data`).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::proto::{DataType, TensorData, TensorProto};
use crate::error::{Error, Result};

/// Makes `t` a CPU tensor. `model_dir` is the folder external data is read from (`None`
/// refuses external data). To read many tensors that share a file, use [`to_tensor_with`].
pub fn to_tensor(t: &TensorProto, model_dir: Option<&Path>) -> Result<Tensor> {
    to_tensor_with(t, &mut ExternalFiles::new(model_dir))
}

/// The external data files of one model, each opened (and its path checked) once.
#[derive(Debug)]
pub struct ExternalFiles {
    dir: Option<PathBuf>,
    /// By `location` as written: the file and its length.
    open: HashMap<String, (File, u64)>,
}

impl ExternalFiles {
    /// External data will be read from `model_dir` only (`None`: refused).
    pub fn new(model_dir: Option<&Path>) -> Self {
        Self {
            dir: model_dir.map(Path::to_path_buf),
            open: HashMap::new(),
        }
    }

    /// The open file `location` names, after checking it stays inside the model's folder.
    fn file(&mut self, location: &str, fail: &dyn Fn(String) -> Error) -> Result<&mut (File, u64)> {
        match self.open.entry(location.to_string()) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => Ok(e.insert(check_and_open(self.dir.as_deref(), location, fail)?)),
        }
    }
}

fn check_and_open(
    dir: Option<&Path>,
    location: &str,
    fail: &dyn Fn(String) -> Error,
) -> Result<(File, u64)> {
    let rel = Path::new(location);
    if location.is_empty() {
        return Err(fail("its external data location is empty".into()));
    }
    if rel.has_root() || rel.is_absolute() || location.starts_with(['/', '\\']) {
        return Err(fail(format!(
            "external data location '{location}' is an absolute path; only files inside \
                 the model's folder are read"
        )));
    }
    // `\` separates too on Windows; refusing `..` in either spelling everywhere keeps the
    // rule the same on every platform.
    let climbs = rel.components().any(|c| c == Component::ParentDir)
        || location.split(['/', '\\']).any(|p| p == "..");
    if climbs {
        return Err(fail(format!(
            "external data location '{location}' climbs out with '..'; only files inside \
                 the model's folder are read"
        )));
    }
    let Some(dir) = dir else {
        return Err(fail(format!(
            "its data is in an external file '{location}' but the model's folder is unknown"
        )));
    };
    let canon_dir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let path = canon_dir.join(rel);
    let canon = path.canonicalize().map_err(|e| {
        fail(format!(
            "its external data file '{location}' cannot be found next to the model ({e})"
        ))
    })?;
    if !canon.starts_with(&canon_dir) {
        return Err(fail(format!(
            "external data location '{location}' leads outside the model's folder (to {}); \
                 only files inside it are read",
            canon.display()
        )));
    }
    // A FIFO or device inside the folder would block or never end: regular files only.
    let meta = std::fs::metadata(&canon).map_err(|e| Error::io(&canon, e))?;
    if !meta.is_file() {
        return Err(fail(format!(
            "external data location '{location}' is not a regular file"
        )));
    }
    let file = File::open(&canon).map_err(|e| Error::io(&canon, e))?;
    Ok((file, meta.len()))
}

/// Makes `t` a CPU tensor, reading external data through `files`.
pub fn to_tensor_with(t: &TensorProto, files: &mut ExternalFiles) -> Result<Tensor> {
    let name = &t.name;
    let fail = |m: String| Error::Weights(format!("tensor '{name}': {m}"));
    let mut count: usize = 1;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        let d = usize::try_from(d)
            .map_err(|_| fail(format!("dimension {d} is negative (dims {:?})", t.dims)))?;
        count = count
            .checked_mul(d)
            .ok_or_else(|| fail(format!("dims {:?} overflow an element count", t.dims)))?;
        shape.push(d);
    }
    let dt = t.data_type;
    let size = dt
        .size()
        .ok_or_else(|| fail(format!("element type {} is not supported", type_name(dt))))?;
    let bytes_needed = count.checked_mul(size);
    let want = |got: usize, unit: &str| {
        fail(format!(
            "dims {:?} ({count} elements of {}) need {} but it holds {got} {unit}",
            t.dims,
            type_name(dt),
            match unit {
                "bytes" => bytes_needed.map_or("more bytes than exist".into(), |b| b.to_string()),
                _ => count.to_string(),
            }
        ))
    };
    let wrong_field = |field: &str| {
        fail(format!(
            "its values are in {field}, which cannot hold type {}",
            type_name(dt)
        ))
    };
    let cpu = &Device::Cpu;
    let build = |r: candle_core::Result<Tensor>| {
        r.map_err(|e| fail(format!("cannot build the tensor ({e})")))
    };
    match &t.data {
        TensorData::Raw(raw) => {
            if Some(raw.len()) != bytes_needed {
                return Err(want(raw.len(), "bytes"));
            }
            from_le_bytes(raw, dt, &shape, &fail)
        }
        TensorData::External {
            location,
            offset,
            length,
        } => {
            let (file, file_len) = files.file(location, &fail)?;
            let file_len = *file_len;
            let end_of = |len: u64| offset.checked_add(len).filter(|&e| e <= file_len);
            let len = match length {
                Some(len) => *len,
                None => file_len.saturating_sub(*offset),
            };
            if *offset > file_len || end_of(len).is_none() {
                return Err(fail(format!(
                    "external data '{location}' offset {offset} + length {len} runs past the end \
                     of the file ({file_len} bytes)"
                )));
            }
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| Some(l) == bytes_needed);
            let Some(len) = len else {
                let len = length.unwrap_or(file_len - offset);
                return Err(want(usize::try_from(len).unwrap_or(usize::MAX), "bytes"));
            };
            let mut raw = vec![0u8; len];
            file.seek(SeekFrom::Start(*offset))
                .and_then(|_| file.read_exact(&mut raw))
                .map_err(|e| fail(format!("cannot read external data '{location}' ({e})")))?;
            from_le_bytes(&raw, dt, &shape, &fail)
        }
        TensorData::Empty if count == 0 => build(match out_dtype(dt) {
            DType::F32 => Tensor::from_vec(Vec::<f32>::new(), shape, cpu),
            DType::U8 => Tensor::from_vec(Vec::<u8>::new(), shape, cpu),
            _ => Tensor::from_vec(Vec::<i64>::new(), shape, cpu),
        }),
        TensorData::Empty => Err(fail(format!(
            "dims {:?} ({count} elements) but it holds no data",
            t.dims
        ))),
        TensorData::Float(v) if dt == DataType::Float => {
            check_len(v.len(), count, &want)?;
            build(Tensor::from_slice(v, shape, cpu))
        }
        TensorData::Double(v) if dt == DataType::Double => {
            check_len(v.len(), count, &want)?;
            build(Tensor::from_vec(
                v.iter().map(|&x| x as f32).collect(),
                shape,
                cpu,
            ))
        }
        TensorData::Int64(v) if dt == DataType::Int64 => {
            check_len(v.len(), count, &want)?;
            build(Tensor::from_slice(v, shape, cpu))
        }
        TensorData::Uint64(v) if matches!(dt, DataType::Uint64 | DataType::Uint32) => {
            check_len(v.len(), count, &want)?;
            let v = v
                .iter()
                .map(|&x| u64_to_i64(x, &fail))
                .collect::<Result<Vec<_>>>()?;
            build(Tensor::from_vec(v, shape, cpu))
        }
        TensorData::Int32(v) => {
            check_len(v.len(), count, &want)?;
            match dt {
                // int32_data carries the 16 bits of each half-precision value.
                DataType::Float16 | DataType::Bfloat16 => {
                    let raw: Vec<u8> = v.iter().flat_map(|&x| (x as u16).to_le_bytes()).collect();
                    from_le_bytes(&raw, dt, &shape, &fail)
                }
                DataType::Bool => build(Tensor::from_vec(
                    v.iter().map(|&x| u8::from(x != 0)).collect(),
                    shape,
                    cpu,
                )),
                // Truncated as onnx.numpy_helper does.
                DataType::Uint8 => build(Tensor::from_vec(
                    v.iter().map(|&x| x as u8).collect(),
                    shape,
                    cpu,
                )),
                DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Uint16 => build(
                    Tensor::from_vec(v.iter().map(|&x| i64::from(x)).collect(), shape, cpu),
                ),
                _ => Err(wrong_field("int32_data")),
            }
        }
        TensorData::Float(_) => Err(wrong_field("float_data")),
        TensorData::Double(_) => Err(wrong_field("double_data")),
        TensorData::Int64(_) => Err(wrong_field("int64_data")),
        TensorData::Uint64(_) => Err(wrong_field("uint64_data")),
    }
}

/// The tensor type each ONNX element type becomes (see the module doc).
pub fn out_dtype(dt: DataType) -> DType {
    match dt {
        DataType::Float | DataType::Float16 | DataType::Bfloat16 | DataType::Double => DType::F32,
        DataType::Bool | DataType::Uint8 => DType::U8,
        _ => DType::I64,
    }
}

fn check_len(got: usize, count: usize, want: &dyn Fn(usize, &str) -> Error) -> Result<()> {
    if got == count {
        Ok(())
    } else {
        Err(want(got, "values"))
    }
}

fn u64_to_i64(x: u64, fail: &dyn Fn(String) -> Error) -> Result<i64> {
    i64::try_from(x).map_err(|_| fail(format!("value {x} does not fit in int64")))
}

/// Decodes packed little-endian values whose length was checked against the element count.
fn from_le_bytes(
    raw: &[u8],
    dt: DataType,
    shape: &[usize],
    fail: &dyn Fn(String) -> Error,
) -> Result<Tensor> {
    fn le<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        raw.chunks_exact(N)
            .map(|c| {
                let mut a = [0; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    let cpu = &Device::Cpu;
    let t = match dt {
        DataType::Float => Tensor::from_vec(le(raw, f32::from_le_bytes), shape, cpu),
        DataType::Double => Tensor::from_vec(le(raw, |b| f64::from_le_bytes(b) as f32), shape, cpu),
        DataType::Float16 => Tensor::from_raw_buffer(raw, DType::F16, shape, cpu)
            .and_then(|t| t.to_dtype(DType::F32)),
        DataType::Bfloat16 => Tensor::from_raw_buffer(raw, DType::BF16, shape, cpu)
            .and_then(|t| t.to_dtype(DType::F32)),
        DataType::Uint8 => Tensor::from_vec(raw.to_vec(), shape, cpu),
        DataType::Bool => {
            Tensor::from_vec(raw.iter().map(|&b| u8::from(b != 0)).collect(), shape, cpu)
        }
        DataType::Int8 => {
            Tensor::from_vec(le(raw, |b| i64::from(i8::from_le_bytes(b))), shape, cpu)
        }
        DataType::Int16 => {
            Tensor::from_vec(le(raw, |b| i64::from(i16::from_le_bytes(b))), shape, cpu)
        }
        DataType::Uint16 => {
            Tensor::from_vec(le(raw, |b| i64::from(u16::from_le_bytes(b))), shape, cpu)
        }
        DataType::Int32 => {
            Tensor::from_vec(le(raw, |b| i64::from(i32::from_le_bytes(b))), shape, cpu)
        }
        DataType::Uint32 => {
            Tensor::from_vec(le(raw, |b| i64::from(u32::from_le_bytes(b))), shape, cpu)
        }
        DataType::Int64 => Tensor::from_vec(le(raw, i64::from_le_bytes), shape, cpu),
        DataType::Uint64 => {
            let v = le(raw, u64::from_le_bytes)
                .into_iter()
                .map(|x| u64_to_i64(x, fail))
                .collect::<Result<Vec<_>>>()?;
            Tensor::from_vec(v, shape, cpu)
        }
        DataType::String | DataType::Other(_) => {
            return Err(fail(format!(
                "element type {} is not supported",
                type_name(dt)
            )));
        }
    };
    t.map_err(|e| fail(format!("cannot build the tensor ({e})")))
}

/// ONNX's name for an element type (`FLOAT16`, `COMPLEX64`), for messages.
pub fn type_name(dt: DataType) -> String {
    const NAMES: [&str; 29] = [
        "UNDEFINED",
        "FLOAT",
        "UINT8",
        "INT8",
        "UINT16",
        "INT16",
        "INT32",
        "INT64",
        "STRING",
        "BOOL",
        "FLOAT16",
        "DOUBLE",
        "UINT32",
        "UINT64",
        "COMPLEX64",
        "COMPLEX128",
        "BFLOAT16",
        "FLOAT8E4M3FN",
        "FLOAT8E4M3FNUZ",
        "FLOAT8E5M2",
        "FLOAT8E5M2FNUZ",
        "UINT4",
        "INT4",
        "FLOAT4E2M1",
        "FLOAT8E8M0",
        "UINT2",
        "INT2",
        "FLOAT6E2M3",
        "FLOAT6E3M2",
    ];
    let code = dt.code();
    usize::try_from(code)
        .ok()
        .and_then(|c| NAMES.get(c))
        .map_or_else(|| format!("data type {code}"), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(dt: DataType, data: TensorData) -> Result<Tensor> {
        let t = TensorProto {
            name: "t".into(),
            dims: vec![3],
            data_type: dt,
            data,
        };
        to_tensor(&t, None)
    }

    #[test]
    fn half_precision_in_int32_data_and_small_integers_convert_exactly() {
        // 0x3c00 = 1.0, 0xc000 = -2.0, 0x7bff = 65504 (f16); 0x3f80 = 1.0 etc. (bf16).
        let f16 = typed(
            DataType::Float16,
            TensorData::Int32(vec![0x3c00, 0xc000, 0x7bff]),
        );
        assert_eq!(f16.unwrap().to_vec1::<f32>().unwrap(), [1.0, -2.0, 65504.0]);
        let bf16 = typed(
            DataType::Bfloat16,
            TensorData::Int32(vec![0x3f80, 0xc000, 0x4049]),
        );
        assert_eq!(
            bf16.unwrap().to_vec1::<f32>().unwrap(),
            [1.0, -2.0, 3.140625]
        );
        let i8s = typed(DataType::Int8, TensorData::Raw(vec![0x80, 0x7f, 0xff]));
        assert_eq!(i8s.unwrap().to_vec1::<i64>().unwrap(), [-128, 127, -1]);
        let bools = typed(DataType::Bool, TensorData::Raw(vec![0, 1, 2]));
        assert_eq!(bools.unwrap().to_vec1::<u8>().unwrap(), [0, 1, 1]);
        let e = typed(DataType::String, TensorData::Empty)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tensor 't': element type STRING is not supported"),
            "{e}"
        );
    }

    #[test]
    fn type_names_and_codes_follow_onnx_numbering() {
        for code in 0..30 {
            assert_eq!(DataType::from_code(code).code(), code);
        }
        assert_eq!(type_name(DataType::Bfloat16), "BFLOAT16");
        assert_eq!(type_name(DataType::Other(15)), "COMPLEX128");
        assert_eq!(type_name(DataType::Other(99)), "data type 99");
        assert_eq!(out_dtype(DataType::Uint16), DType::I64);
        assert_eq!(out_dtype(DataType::Uint8), DType::U8);
    }
}
