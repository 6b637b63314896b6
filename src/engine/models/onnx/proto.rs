//! The subset of `onnx.proto` unveil needs, read straight from the protobuf wire format
//! ([`super::wire`]): no generated code, no `protoc`, nothing run at build time.
//!
//! The bytes are untrusted. Every length is checked against the bytes left in its enclosing
//! message before anything is sliced, so a file cannot make the reader allocate more than it
//! holds (a packed list yields at most one element per byte); the only recursion (a graph held
//! by a node's attribute) is bounded by [`MAX_GRAPH_DEPTH`]; varints longer than ten bytes,
//! protobuf groups and wire types a known field cannot have are refused. Fields unveil does
//! not use are skipped whatever their contents; what ONNX allows but unveil cannot honour (sparse
//! initializers, GRAPHS / SPARSE_TENSOR / TYPE_PROTO attributes, a tensor with values in two
//! fields) is refused rather than half-read. Any fault becomes one [`Error::Weights`] line
//! naming the message and the byte offset. Field numbers were checked against onnx 1.23.2's
//! `onnx.proto`.

use super::wire::{Msg, Reader, Value, Wire};
use crate::error::{Error, Result};

/// Graphs nested inside attributes (If / Loop bodies) deeper than this are refused: real
/// models nest a few levels; the bound keeps a hostile file from exhausting the stack.
pub const MAX_GRAPH_DEPTH: usize = 32;

/// A whole `.onnx` file.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelProto {
    pub ir_version: i64,
    pub opset_import: Vec<OperatorSet>,
    pub producer_name: String,
    pub producer_version: String,
    pub graph: GraphProto,
    pub metadata_props: Vec<(String, String)>,
}

/// One imported operator set; the default domain is `""` (also written `"ai.onnx"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorSet {
    pub domain: String,
    pub version: i64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GraphProto {
    pub name: String,
    pub node: Vec<NodeProto>,
    pub initializer: Vec<TensorProto>,
    pub input: Vec<ValueInfo>,
    pub output: Vec<ValueInfo>,
    pub value_info: Vec<ValueInfo>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeProto {
    pub name: String,
    pub op_type: String,
    pub domain: String,
    /// Input names in order; `""` marks an omitted optional input.
    pub input: Vec<String>,
    pub output: Vec<String>,
    pub attribute: Vec<AttributeProto>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AttributeProto {
    pub name: String,
    pub value: Attr,
}

/// An attribute's value, by the kind its `type` field names (or, in files older than that
/// field, the one value field present).
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Float(f32),
    Int(i64),
    String(Vec<u8>),
    Tensor(TensorProto),
    Graph(Box<GraphProto>),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<Vec<u8>>),
    Tensors(Vec<TensorProto>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorProto {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: DataType,
    pub data: TensorData,
}

/// Where a tensor's values are. ONNX allows one storage per tensor; a tensor holding values
/// in two fields is refused when read rather than one of them silently picked.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Little-endian values, packed.
    Raw(Vec<u8>),
    Float(Vec<f32>),
    /// Also carries int8/int16/uint8/uint16/bool values and float16/bfloat16 bit patterns.
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Double(Vec<f64>),
    /// Also carries uint32 values.
    Uint64(Vec<u64>),
    /// `data_location = EXTERNAL`: raw bytes in another file; `location` is untrusted and only
    /// checked when read (see [`super::tensor`]).
    External {
        location: String,
        offset: u64,
        length: Option<u64>,
    },
    /// No storage field at all (a tensor with no elements, or string data unveil skips).
    Empty,
}

/// `TensorProto.DataType`, with ONNX's numbering ([`DataType::code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Float,
    Uint8,
    Int8,
    Uint16,
    Int16,
    Int32,
    Int64,
    String,
    Bool,
    Float16,
    Double,
    Uint32,
    Uint64,
    Bfloat16,
    /// UNDEFINED (0), complex, the 8-, 6-, 4- and 2-bit types, and codes not yet defined.
    Other(i32),
}

const DATA_TYPES: [(i32, DataType); 14] = [
    (1, DataType::Float),
    (2, DataType::Uint8),
    (3, DataType::Int8),
    (4, DataType::Uint16),
    (5, DataType::Int16),
    (6, DataType::Int32),
    (7, DataType::Int64),
    (8, DataType::String),
    (9, DataType::Bool),
    (10, DataType::Float16),
    (11, DataType::Double),
    (12, DataType::Uint32),
    (13, DataType::Uint64),
    (16, DataType::Bfloat16),
];

impl DataType {
    pub fn from_code(code: i32) -> Self {
        DATA_TYPES
            .iter()
            .find(|(c, _)| *c == code)
            .map_or(Self::Other(code), |(_, t)| *t)
    }

    /// ONNX's number for this type.
    pub fn code(self) -> i32 {
        match self {
            Self::Other(c) => c,
            t => DATA_TYPES
                .iter()
                .find(|(_, d)| *d == t)
                .map_or(0, |(c, _)| *c),
        }
    }

    /// Bytes per element in `raw_data`, for the types unveil reads.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            Self::Uint8 | Self::Int8 | Self::Bool => 1,
            Self::Uint16 | Self::Int16 | Self::Float16 | Self::Bfloat16 => 2,
            Self::Float | Self::Int32 | Self::Uint32 => 4,
            Self::Int64 | Self::Double | Self::Uint64 => 8,
            Self::String | Self::Other(_) => return None,
        })
    }
}

/// A graph input, output or intermediate value with what the file says of its type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    /// `None` when the value is not a tensor or its element type is not given.
    pub elem_type: Option<DataType>,
    /// `None` when the rank is unknown; `Some(vec![])` is a scalar.
    pub shape: Option<Vec<Dim>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Value(i64),
    /// A symbolic dimension (`"batch_size"`, `"s0"`).
    Param(String),
    Unknown,
}

/// Parses a serialised `ModelProto`; anything malformed is one [`Error::Weights`] line.
pub fn parse_model(bytes: &[u8]) -> Result<ModelProto> {
    model(Msg { bytes, at: 0 }).map_err(|e| Error::Weights(format!("not a valid ONNX model: {e}")))
}

fn model(msg: Msg<'_>) -> Wire<ModelProto> {
    let mut r = Reader::new(msg, "ModelProto");
    let (mut ir_version, mut opset_import, mut metadata_props) = (0, Vec::new(), Vec::new());
    let (mut producer_name, mut producer_version, mut graph) = (String::new(), String::new(), None);
    while let Some((num, v)) = r.next()? {
        match num {
            1 => ir_version = r.int(v, "ir_version")?,
            2 => producer_name = r.string(v, "producer_name")?,
            3 => producer_version = r.string(v, "producer_version")?,
            7 => once(
                &r,
                &mut graph,
                graph_proto(r.bytes(v, "graph")?, 0)?,
                "graph",
            )?,
            8 => opset_import.push(opset(r.bytes(v, "opset_import")?)?),
            14 => metadata_props.push(entry(r.bytes(v, "metadata_props")?)?),
            _ => {}
        }
    }
    let Some(graph) = graph else {
        return Err("it has no graph (is this an ONNX file?)".into());
    };
    // Required since IR 3; also what tells a file cut short after its graph from a whole one.
    if opset_import.is_empty() {
        return Err("it imports no operator set (opset_import is empty)".into());
    }
    Ok(ModelProto {
        ir_version,
        opset_import,
        producer_name,
        producer_version,
        graph,
        metadata_props,
    })
}

/// A singular message field given twice would be merged by protobuf; ONNX writers never do
/// it, so it is refused rather than half-supported.
fn once<T>(r: &Reader<'_>, slot: &mut Option<T>, v: T, field: &str) -> Wire<()> {
    if slot.is_some() {
        return r.fail(r.pos, format!("field '{field}' appears twice"));
    }
    *slot = Some(v);
    Ok(())
}

fn opset(msg: Msg<'_>) -> Wire<OperatorSet> {
    let mut r = Reader::new(msg, "OperatorSetIdProto");
    let (mut domain, mut version) = (String::new(), 0);
    while let Some((num, v)) = r.next()? {
        match num {
            1 => domain = r.string(v, "domain")?,
            2 => version = r.int(v, "version")?,
            _ => {}
        }
    }
    Ok(OperatorSet { domain, version })
}

fn entry(msg: Msg<'_>) -> Wire<(String, String)> {
    let mut r = Reader::new(msg, "StringStringEntryProto");
    let (mut key, mut value) = (String::new(), String::new());
    while let Some((num, v)) = r.next()? {
        match num {
            1 => key = r.string(v, "key")?,
            2 => value = r.string(v, "value")?,
            _ => {}
        }
    }
    Ok((key, value))
}

fn graph_proto(msg: Msg<'_>, depth: usize) -> Wire<GraphProto> {
    let mut r = Reader::new(msg, "GraphProto");
    if depth > MAX_GRAPH_DEPTH {
        return r.fail(0, format!("graphs nested more than {MAX_GRAPH_DEPTH} deep"));
    }
    let mut g = GraphProto::default();
    while let Some((num, v)) = r.next()? {
        match num {
            1 => g.node.push(node(r.bytes(v, "node")?, depth)?),
            2 => g.name = r.string(v, "name")?,
            5 => g.initializer.push(tensor(r.bytes(v, "initializer")?)?),
            11 => g.input.push(value_info(r.bytes(v, "input")?)?),
            12 => g.output.push(value_info(r.bytes(v, "output")?)?),
            13 => g.value_info.push(value_info(r.bytes(v, "value_info")?)?),
            15 => return r.fail(r.pos, "sparse initializers are not supported"),
            _ => {}
        }
    }
    Ok(g)
}

fn node(msg: Msg<'_>, depth: usize) -> Wire<NodeProto> {
    let mut r = Reader::new(msg, "NodeProto");
    let mut n = NodeProto::default();
    while let Some((num, v)) = r.next()? {
        match num {
            1 => n.input.push(r.string(v, "input")?),
            2 => n.output.push(r.string(v, "output")?),
            3 => n.name = r.string(v, "name")?,
            4 => n.op_type = r.string(v, "op_type")?,
            5 => n
                .attribute
                .push(attribute(r.bytes(v, "attribute")?, depth)?),
            7 => n.domain = r.string(v, "domain")?,
            _ => {}
        }
    }
    Ok(n)
}

/// `AttributeProto.AttributeType` names, by number, for the kinds unveil refuses.
const ATTR_KINDS: [&str; 15] = [
    "UNDEFINED",
    "FLOAT",
    "INT",
    "STRING",
    "TENSOR",
    "GRAPH",
    "FLOATS",
    "INTS",
    "STRINGS",
    "TENSORS",
    "GRAPHS",
    "SPARSE_TENSOR",
    "SPARSE_TENSORS",
    "TYPE_PROTO",
    "TYPE_PROTOS",
];

fn attribute(msg: Msg<'_>, depth: usize) -> Wire<AttributeProto> {
    let mut r = Reader::new(msg, "AttributeProto");
    let (mut name, mut kind) = (String::new(), None);
    let (mut f, mut i, mut s, mut t, mut g) = (None, None, None, None, None);
    let (mut floats, mut ints, mut strings, mut tensors) = (vec![], vec![], vec![], vec![]);
    // Kinds unveil does not read, by field: graphs, type_protos, tp, sparse_tensor(s).
    let mut other = None;
    while let Some((num, v)) = r.next()? {
        match num {
            1 => name = r.string(v, "name")?,
            2 => f = Some(f32::from_bits(fixed32(&r, v, "f")?)),
            3 => i = Some(r.int(v, "i")?),
            4 => s = Some(r.bytes(v, "s")?.bytes.to_vec()),
            5 => once(&r, &mut t, tensor(r.bytes(v, "t")?)?, "t")?,
            6 => once(&r, &mut g, graph_proto(r.bytes(v, "g")?, depth + 1)?, "g")?,
            7 => r.fixeds(v, "floats", &mut floats, f32::from_le_bytes)?,
            8 => r.varints(v, "ints", &mut ints, |x| x as i64)?,
            9 => strings.push(r.bytes(v, "strings")?.bytes.to_vec()),
            10 => tensors.push(tensor(r.bytes(v, "tensors")?)?),
            11 => other = Some(10),
            14 | 15 => other = Some(if num == 14 { 13 } else { 14 }),
            22 | 23 => other = Some(if num == 22 { 11 } else { 12 }),
            20 => kind = Some(r.int(v, "type")?),
            _ => {}
        }
    }
    // Files older than IR 3 have no `type`: the value field present says the kind.
    let kind = kind.or(other).unwrap_or(match () {
        _ if f.is_some() => 1,
        _ if i.is_some() => 2,
        _ if s.is_some() => 3,
        _ if t.is_some() => 4,
        _ if g.is_some() => 5,
        _ if !floats.is_empty() => 6,
        _ if !ints.is_empty() => 7,
        _ if !strings.is_empty() => 8,
        _ if !tensors.is_empty() => 9,
        _ => 0,
    });
    let missing = |what: &str| format!("attribute '{name}' is of type {what} but holds none");
    let value = match kind {
        1 => Attr::Float(f.unwrap_or(0.0)),
        2 => Attr::Int(i.unwrap_or(0)),
        3 => Attr::String(s.unwrap_or_default()),
        4 => Attr::Tensor(t.ok_or_else(|| missing("TENSOR"))?),
        5 => Attr::Graph(Box::new(g.ok_or_else(|| missing("GRAPH"))?)),
        6 => Attr::Floats(floats),
        7 => Attr::Ints(ints),
        8 => Attr::Strings(strings),
        9 => Attr::Tensors(tensors),
        k => {
            let kind = usize::try_from(k).ok().and_then(|k| ATTR_KINDS.get(k));
            return Err(match kind {
                Some(&"UNDEFINED") => format!("attribute '{name}' has no value"),
                Some(k) => format!("attribute '{name}' is of type {k}, which unveil does not read"),
                None => format!("attribute '{name}' has an unknown type {k}"),
            });
        }
    };
    Ok(AttributeProto { name, value })
}

fn fixed32(r: &Reader<'_>, v: Value<'_>, field: &str) -> Wire<u32> {
    match v {
        Value::Fixed32(x) => Ok(x),
        _ => r.wrong(field),
    }
}

fn tensor(msg: Msg<'_>) -> Wire<TensorProto> {
    let mut r = Reader::new(msg, "TensorProto");
    let (mut name, mut dims, mut code, mut external) = (String::new(), vec![], 0, false);
    let (mut floats, mut int32s, mut int64s, mut doubles, mut uint64s) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut raw, mut entries) = (None, vec![]);
    while let Some((num, v)) = r.next()? {
        match num {
            1 => r.varints(v, "dims", &mut dims, |x| x as i64)?,
            2 => code = r.int(v, "data_type")? as i32,
            4 => r.fixeds(v, "float_data", &mut floats, f32::from_le_bytes)?,
            5 => r.varints(v, "int32_data", &mut int32s, |x| x as i64 as i32)?,
            7 => r.varints(v, "int64_data", &mut int64s, |x| x as i64)?,
            8 => name = r.string(v, "name")?,
            9 => raw = Some(r.bytes(v, "raw_data")?.bytes),
            10 => r.fixeds(v, "double_data", &mut doubles, f64::from_le_bytes)?,
            11 => r.varints(v, "uint64_data", &mut uint64s, |x| x)?,
            13 => entries.push(entry(r.bytes(v, "external_data")?)?),
            14 => external = r.int(v, "data_location")? == 1,
            _ => {}
        }
    }
    let fail = |what: String| Err(format!("tensor '{name}': {what}"));
    let data = if external {
        let get = |key: &str| entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v);
        let number = |key: &str| -> Wire<Option<u64>> {
            get(key)
                .map(|v| v.trim().parse::<u64>())
                .transpose()
                .map_err(|_| format!("tensor '{name}': external data {key} is not a number"))
        };
        let Some(location) = get("location") else {
            return fail("its data is external but no location is given".into());
        };
        TensorData::External {
            location: location.clone(),
            offset: number("offset")?.unwrap_or(0),
            length: number("length")?,
        }
    } else {
        let mut stores = vec![];
        if let Some(raw) = raw {
            stores.push(TensorData::Raw(raw.to_vec()));
        }
        for (empty, data) in [
            (floats.is_empty(), TensorData::Float(floats)),
            (int32s.is_empty(), TensorData::Int32(int32s)),
            (int64s.is_empty(), TensorData::Int64(int64s)),
            (doubles.is_empty(), TensorData::Double(doubles)),
            (uint64s.is_empty(), TensorData::Uint64(uint64s)),
        ] {
            if !empty {
                stores.push(data);
            }
        }
        if stores.len() > 1 {
            return fail(format!("its values are in {} fields at once", stores.len()));
        }
        stores.pop().unwrap_or(TensorData::Empty)
    };
    Ok(TensorProto {
        name,
        dims,
        data_type: DataType::from_code(code),
        data,
    })
}

fn value_info(msg: Msg<'_>) -> Wire<ValueInfo> {
    let mut r = Reader::new(msg, "ValueInfoProto");
    let mut info = ValueInfo::default();
    while let Some((num, v)) = r.next()? {
        match num {
            1 => info.name = r.string(v, "name")?,
            // TypeProto: only `tensor_type` (1) matters; sequences and maps stay `None`.
            2 => {
                let mut t = Reader::new(r.bytes(v, "type")?, "TypeProto");
                while let Some((num, v)) = t.next()? {
                    if num == 1 {
                        (info.elem_type, info.shape) = tensor_type(t.bytes(v, "tensor_type")?)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

fn tensor_type(msg: Msg<'_>) -> Wire<(Option<DataType>, Option<Vec<Dim>>)> {
    let mut r = Reader::new(msg, "TypeProto.Tensor");
    let (mut elem, mut shape) = (None, None);
    while let Some((num, v)) = r.next()? {
        match num {
            1 => elem = Some(DataType::from_code(r.int(v, "elem_type")? as i32)),
            2 => {
                let mut s = Reader::new(r.bytes(v, "shape")?, "TensorShapeProto");
                let mut dims = vec![];
                while let Some((num, v)) = s.next()? {
                    if num == 1 {
                        dims.push(dim(s.bytes(v, "dim")?)?);
                    }
                }
                shape = Some(dims);
            }
            _ => {}
        }
    }
    Ok((elem, shape))
}

fn dim(msg: Msg<'_>) -> Wire<Dim> {
    let mut r = Reader::new(msg, "TensorShapeProto.Dimension");
    let mut d = Dim::Unknown;
    while let Some((num, v)) = r.next()? {
        match num {
            1 => d = Dim::Value(r.int(v, "dim_value")?),
            2 => d = Dim::Param(r.string(v, "dim_param")?),
            _ => {}
        }
    }
    Ok(d)
}
