//! ONNX models read as data: the protobuf parsed by hand ([`proto`], no `protoc` and no code
//! generated at build time) and the initializers made tensors ([`tensor`]), with every length,
//! element count and external file checked before anything is allocated or opened.
//!
//! Running a graph: [`lower`] checks it and turns it into steps over the engine's own layers
//! ([`attrs`] parses each op, [`fuse`] folds BatchNorms and fuses activations into
//! convolutions), [`ops`] and [`shape_ops`] run the steps, [`net`] is the classifier, and
//! [`load`] fills in what ONNX does not carry (preprocessing, labels).
//!
//! Errors are one [`Error::Weights`] line naming the file and, where there is one, the tensor.

mod attrs;
mod conv;
mod fuse;
#[cfg(test)]
mod fused_checks;
mod ints;
mod linear;
mod load;
mod lower;
mod net;
#[cfg(test)]
mod op_gradients;
mod ops;
mod patterns;
mod program;
pub mod proto;
mod resize;
mod shape_ops;
pub mod tensor;
mod value;
mod wire;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

pub use proto::{
    Attr, AttributeProto, DataType, Dim, GraphProto, ModelProto, NodeProto, OperatorSet,
    TensorData, TensorProto, ValueInfo, parse_model,
};
pub use tensor::{ExternalFiles, out_dtype, to_tensor, to_tensor_with, type_name};

use crate::error::{Error, Result};
pub(crate) use load::load;
pub use net::OnnxModel;
use wire::{Msg, Reader, Value};

/// A parsed `.onnx` file with its initializers as tensors.
#[derive(Debug)]
pub struct OnnxFile {
    /// The model; its graph's initializers keep their names, dims and types, but their data
    /// has moved into [`OnnxFile::initializers`] (`TensorData::Empty`). Nested graphs'
    /// initializers and attribute tensors keep theirs (read them with [`to_tensor_with`]).
    pub model: ModelProto,
    /// The graph's initializers by name (their `TensorProto`s stay in `model`).
    pub initializers: HashMap<String, Tensor>,
    /// The folder the file is in: external data is read from here only.
    pub dir: PathBuf,
}

/// Reads an `.onnx` file and its initializers (external data included).
pub fn read_onnx(path: &Path) -> Result<OnnxFile> {
    let in_file = |e: Error| match e {
        Error::Weights(m) => Error::Weights(format!("{}: {m}", path.display())),
        e => e,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut model = parse_model(&bytes).map_err(in_file)?;
    drop(bytes);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut files = ExternalFiles::new(Some(&dir));
    let mut initializers = HashMap::with_capacity(model.graph.initializer.len());
    for t in &mut model.graph.initializer {
        let tensor = to_tensor_with(t, &mut files).map_err(in_file)?;
        // The bytes now live in the tensor; keeping both would double a model's memory.
        t.data = TensorData::Empty;
        if initializers.insert(t.name.clone(), tensor).is_some() {
            return Err(in_file(Error::Weights(format!(
                "two initializers are named '{}'",
                t.name
            ))));
        }
    }
    Ok(OnnxFile {
        model,
        initializers,
        dir,
    })
}

/// Whether `head` (a file's first bytes; give it a few hundred, the graph field comes after
/// the producer's name and version) looks like an ONNX `ModelProto`: the first field is a
/// plausible `ir_version` (tag 0x08), then only `ModelProto`'s own fields with their wire
/// types, up to the `graph` field's tag and length (its body may lie past `head`). Writers
/// serialise fields in number order, so `graph` (7) comes before `opset_import` (8).
/// Safetensors (a little-endian u64 then `{`), zip (`PK`) and pickle (0x80) files fail on
/// their first bytes.
pub fn sniff(head: &[u8]) -> bool {
    if head.first() != Some(&0x08) {
        return false;
    }
    let mut r = Reader::new(Msg { bytes: head, at: 0 }, "ModelProto");
    let mut first = true;
    loop {
        let Ok((num, wire)) = r.tag() else {
            return false;
        };
        if (num, wire) == (7, 2) {
            return r.length().is_ok();
        }
        let Ok(v) = r.value(wire) else {
            return false;
        };
        let ok = match (num, v) {
            (1, Value::Varint(v)) => first && (1..=64).contains(&v),
            (5, Value::Varint(_)) => true,
            (2 | 3 | 4 | 6 | 8 | 14 | 20 | 25 | 26, Value::Bytes(_)) => true,
            _ => false,
        };
        if !ok {
            return false;
        }
        first = false;
    }
}

/// True when `path` holds an ONNX model (by its extension, else its first bytes).
pub(crate) fn is_onnx(path: &Path) -> Result<bool> {
    use std::io::Read;
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        return Ok(true);
    }
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(1 << 12).read_to_end(&mut head))
        .map_err(|e| Error::io(path, e))?;
    Ok(sniff(&head))
}

#[cfg(test)]
mod tests {
    use super::sniff;

    #[test]
    fn sniff_wants_ir_version_then_model_fields_up_to_the_graph() {
        // ir_version 8, producer_name "pytorch", graph of 300 bytes (its body not given).
        let head = [
            &[0x08, 0x08, 0x12, 0x07][..],
            b"pytorch",
            &[0x3a, 0xac, 0x02],
        ]
        .concat();
        assert!(sniff(&head));
        // Cut before the graph's tag: not enough to tell.
        assert!(!sniff(&head[..11]));
        // A safetensors header whose length's low byte is 0x08: 0x08 0x01 then zero bytes.
        assert!(!sniff(&[0x08, 0x01, 0, 0, 0, 0, 0, 0, b'{', b'"']));
        // An implausible ir_version, a field ModelProto does not have, zip and pickle heads.
        assert!(!sniff(&[0x08, 0xc8, 0x01, 0x3a, 0x00]));
        assert!(!sniff(&[0x08, 0x08, 0x4a, 0x00, 0x3a, 0x00]));
        assert!(!sniff(b"PK\x03\x04") && !sniff(&[0x80, 0x02, 0x8a]));
    }
}
