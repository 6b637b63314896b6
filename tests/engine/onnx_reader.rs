//! The ONNX protobuf reader against what `onnx.load` sees
//! (scripts/fixtures/make_onnx_reader_fixtures.py) and on the real architectures' graphs;
//! malformed files are in `onnx_malformed`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde_json::{Value, json};
use unveil::engine::models::onnx::{
    Attr, DataType, Dim, GraphProto, ModelProto, TensorData, TensorProto, ValueInfo, parse_model,
    read_onnx, sniff, to_tensor,
};

use crate::common::repo;

pub(crate) fn dir() -> PathBuf {
    repo("tests/fixtures/onnx-reader")
}

fn values(t: &Tensor) -> Value {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => json!(t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()),
        DType::I64 => json!(t.to_vec1::<i64>().unwrap()),
        DType::U8 => json!(t.to_vec1::<u8>().unwrap()),
        d => panic!("unexpected dtype {d:?}"),
    }
}

fn storage(d: &TensorData) -> Value {
    match d {
        TensorData::Raw(_) => json!("raw_data"),
        TensorData::Float(_) => json!("float_data"),
        TensorData::Int32(_) => json!("int32_data"),
        TensorData::Int64(_) => json!("int64_data"),
        TensorData::Double(_) => json!("double_data"),
        TensorData::Uint64(_) => json!("uint64_data"),
        TensorData::Empty => json!("empty"),
        TensorData::External {
            location,
            offset,
            length,
        } => json!({"external": {"location": location, "offset": offset, "length": length}}),
    }
}

/// A tensor as the fixture script describes it, its values read by `to_tensor`.
fn tensor_json(t: &TensorProto, dir: Option<&Path>) -> Value {
    let value = to_tensor(t, dir).unwrap_or_else(|e| panic!("{}: {e}", t.name));
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    assert_eq!(value.dims(), &dims[..], "{}", t.name);
    json!({"name": t.name, "dims": t.dims, "data_type": t.data_type.code(),
           "storage": storage(&t.data), "values": values(&value)})
}

fn attr_json(a: &unveil::engine::models::onnx::AttributeProto) -> Value {
    let floats = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
    let (kind, value) = match &a.value {
        Attr::Float(f) => ("FLOAT", json!(f64::from(*f))),
        Attr::Int(i) => ("INT", json!(i)),
        Attr::String(s) => ("STRING", json!(s)),
        Attr::Tensor(t) => ("TENSOR", tensor_json(t, None)),
        Attr::Graph(g) => ("GRAPH", graph_json(g, None, None)),
        Attr::Floats(v) => ("FLOATS", json!(floats(v))),
        Attr::Ints(v) => ("INTS", json!(v)),
        Attr::Strings(v) => ("STRINGS", json!(v)),
        Attr::Tensors(v) => (
            "TENSORS",
            Value::Array(v.iter().map(|t| tensor_json(t, None)).collect()),
        ),
    };
    json!({"name": a.name, "kind": kind, "value": value})
}

fn value_info_json(v: &ValueInfo) -> Value {
    let shape = v.shape.as_ref().map(|s| {
        s.iter()
            .map(|d| match d {
                Dim::Value(n) => json!({ "value": n }),
                Dim::Param(p) => json!({ "param": p }),
                Dim::Unknown => Value::Null,
            })
            .collect::<Vec<_>>()
    });
    json!({"name": v.name, "elem_type": v.elem_type.map(DataType::code), "shape": shape})
}

fn graph_json(
    g: &GraphProto,
    dir: Option<&Path>,
    inits: Option<&std::collections::HashMap<String, Tensor>>,
) -> Value {
    let initializer = g.initializer.iter().map(|t| {
        let j = tensor_json(t, dir);
        if let Some(inits) = inits {
            // read_onnx's initializers are the same tensors.
            assert_eq!(values(&inits[&t.name]), j["values"], "{}", t.name);
        }
        j
    });
    let infos = |v: &[ValueInfo]| v.iter().map(value_info_json).collect::<Vec<_>>();
    json!({
        "name": g.name,
        "node": g.node.iter().map(|n| json!({"name": n.name, "op_type": n.op_type,
            "domain": n.domain, "input": n.input, "output": n.output,
            "attribute": n.attribute.iter().map(attr_json).collect::<Vec<_>>()}))
            .collect::<Vec<_>>(),
        "initializer": initializer.collect::<Vec<_>>(),
        "input": infos(&g.input), "output": infos(&g.output), "value_info": infos(&g.value_info),
    })
}

fn model_json(
    m: &ModelProto,
    dir: &Path,
    inits: &std::collections::HashMap<String, Tensor>,
) -> Value {
    let opsets: Vec<Value> = m
        .opset_import
        .iter()
        .map(|o| json!([o.domain, o.version]))
        .collect();
    json!({
        "ir_version": m.ir_version, "producer_name": m.producer_name,
        "producer_version": m.producer_version, "opset_import": opsets,
        "metadata_props": m.metadata_props.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "graph": graph_json(&m.graph, Some(dir), Some(inits)),
    })
}

#[test]
fn reader_fixtures_match_onnx_load() {
    let expected: serde_json::Map<String, Value> =
        serde_json::from_slice(&std::fs::read(dir().join("expected.json")).unwrap()).unwrap();
    assert_eq!(expected.len(), 3);
    for (file, want) in &expected {
        let onnx = read_onnx(&dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let model = parse_model(&std::fs::read(dir().join(file)).unwrap()).unwrap();
        assert_eq!(onnx.initializers.len(), model.graph.initializer.len());
        for (kept, t) in onnx
            .model
            .graph
            .initializer
            .iter()
            .zip(&model.graph.initializer)
        {
            assert_eq!(
                (&kept.name, &kept.dims, kept.data_type),
                (&t.name, &t.dims, t.data_type)
            );
            assert_eq!(kept.data, TensorData::Empty, "moved into the initializers");
        }
        let got = model_json(&model, &onnx.dir, &onnx.initializers);
        assert_eq!(&got, want, "{file}: the Rust reader and onnx.load differ");
    }
    // Spot checks that the comparison above is about real content.
    let t = read_onnx(&dir().join("tensors.onnx")).unwrap();
    let f16 = t.initializers["float16_typed"].flatten_all().unwrap();
    assert_eq!(f16.to_vec1::<f32>().unwrap()[..2], [65504.0, -0.5]);
    let u64s = t.initializers["uint64_raw"].flatten_all().unwrap();
    assert_eq!(u64s.to_vec1::<i64>().unwrap()[1], i64::MAX);
    assert_eq!(t.initializers["bool_raw"].dtype(), DType::U8);
    assert_eq!(t.initializers["empty"].dims(), &[0, 4]);
    let e = read_onnx(&dir().join("external.onnx")).unwrap();
    assert_eq!(e.initializers["conv.weight"].dims(), &[4, 3, 3, 3]);
    assert_eq!(
        e.initializers["tail"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    );
    let a = read_onnx(&dir().join("attributes.onnx")).unwrap();
    let Attr::Graph(then) = &a.model.graph.node[1].attribute[1].value else {
        panic!("If's then_branch is a graph");
    };
    assert!(
        matches!(&then.node[0].attribute[0].value, Attr::Graph(g) if g.node[0].name == "deepest")
    );
}

/// Every file under tests/fixtures: only the .onnx ones are ONNX.
#[test]
fn sniff_accepts_onnx_and_refuses_every_other_fixture() {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out)
            } else {
                out.push(p)
            }
        }
    }
    let mut files = vec![];
    walk(&repo("tests/fixtures"), &mut files);
    walk(&repo("models"), &mut files);
    let (mut yes, mut no) = (0, 0);
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let head = &bytes[..bytes.len().min(4096)];
        let is_onnx = f.extension().is_some_and(|e| e == "onnx");
        assert_eq!(sniff(head), is_onnx, "{}", f.display());
        if is_onnx { yes += 1 } else { no += 1 }
    }
    assert!(yes >= 3 && no >= 50, "{yes} onnx, {no} others");
    assert!(!sniff(&[]) && !sniff(&[0x08]) && !sniff(&[0x08, 0x07]));
}

/// The real architectures' graphs (tests/fixtures/onnx/, from make_onnx_fixtures.py, on its
/// own branch until merged) as onnx.load counts them (real_graphs.json, written by
/// make_onnx_reader_fixtures.py): each listed file must be there and match; a graph added
/// since must still read.
#[test]
fn real_graphs_parse_as_onnx_load_sees_them() {
    let text = std::fs::read(dir().join("real_graphs.json")).unwrap();
    let want: serde_json::Map<String, Value> = serde_json::from_slice(&text).unwrap();
    assert!(want.len() >= 5, "{} graphs described", want.len());
    let onnx_dir = repo("tests/fixtures/onnx");
    let Ok(entries) = std::fs::read_dir(&onnx_dir) else {
        return; // this branch before the ONNX fixtures are merged
    };
    let mut matched = 0;
    for file in entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()) {
        // The native ResNet-18's weights are written by its test (tests/engine/onnx.rs).
        if !file.ends_with(".onnx") || file == "resnet18_native.onnx" {
            continue;
        }
        let m = read_onnx(&onnx_dir.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            m.initializers.len(),
            m.model.graph.initializer.len(),
            "{file}"
        );
        assert!(!m.model.graph.node.is_empty(), "{file}");
        let Some(w) = want.get(&file) else { continue };
        let opsets: Vec<Value> = m
            .model
            .opset_import
            .iter()
            .map(|o| json!([o.domain, o.version]))
            .collect();
        let got = json!({"nodes": m.model.graph.node.len(),
            "initializers": m.initializers.len(), "opset_import": opsets});
        assert_eq!(&got, w, "{file}");
        matched += 1;
    }
    assert_eq!(
        matched,
        want.len(),
        "described graphs missing from tests/fixtures/onnx/"
    );
}

/// Seeded byte mutations of a file (xorshift): 1 to `max_edits` bytes overwritten, inserted or
/// removed at pseudo-random places.
pub(crate) struct Mutants(u64);

impl Mutants {
    pub(crate) fn new(seed: u64) -> Self {
        Mutants(seed)
    }

    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    pub(crate) fn of(&mut self, bytes: &[u8], max_edits: usize) -> Vec<u8> {
        let mut b = bytes.to_vec();
        for _ in 0..1 + self.next(max_edits) {
            let at = self.next(b.len());
            match self.next(3) {
                0 => b[at] = self.next(256) as u8,
                1 => b.insert(at, self.next(256) as u8),
                _ => drop(b.remove(at)),
            }
        }
        b
    }
}

/// A fuzzing pass that runs with the tests: the fixtures with bytes overwritten, inserted and
/// removed at pseudo-random places must parse or be refused, never panic, and so must every
/// tensor a mutated file still holds.
#[test]
fn mutated_fixtures_never_panic() {
    let mut mutants = Mutants::new(0x2545_f491_4f6c_dd1d);
    let (mut parsed, mut runs) = (0, 0);
    for file in ["attributes.onnx", "tensors.onnx", "external.onnx"] {
        let bytes = std::fs::read(dir().join(file)).unwrap();
        for _ in 0..3000 {
            let b = mutants.of(&bytes, 4);
            runs += 1;
            if let Ok(m) = parse_model(&b) {
                parsed += 1;
                for t in &m.graph.initializer {
                    let _ = to_tensor(t, Some(&dir()));
                }
            }
        }
    }
    // Enough mutants stay valid to reach the tensor conversion, enough are refused.
    assert!(
        parsed > runs / 100 && parsed < runs / 2,
        "{parsed} of {runs} parsed"
    );
}
