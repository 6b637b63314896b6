//! The ONNX protobuf reader against what `onnx.load` sees
//! (scripts/fixtures/make_onnx_reader_fixtures.py), and against malformed files built here
//! byte by byte: each must be one error line, fast, never a panic.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use serde_json::{Value, json};
use unveil::engine::models::onnx::{
    Attr, DataType, Dim, GraphProto, ModelProto, TensorData, TensorProto, ValueInfo, parse_model,
    read_onnx, sniff, to_tensor,
};

use crate::common::repo;

fn dir() -> PathBuf {
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
    json!({
        "ir_version": m.ir_version, "producer_name": m.producer_name,
        "producer_version": m.producer_version,
        "opset_import": m.opset_import.iter().map(|o| json!([o.domain, o.version])).collect::<Vec<_>>(),
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
        assert_eq!(onnx.initializers.len(), onnx.model.graph.initializer.len());
        let got = model_json(&onnx.model, &onnx.dir, &onnx.initializers);
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

// A minimal protobuf writer for the malformed files.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = vec![];
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn int_field(num: u64, v: u64) -> Vec<u8> {
    [varint(num << 3), varint(v)].concat()
}

fn len_field(num: u64, body: &[u8]) -> Vec<u8> {
    [
        varint(num << 3 | 2),
        varint(body.len() as u64),
        body.to_vec(),
    ]
    .concat()
}

fn model_with(graph: &[u8]) -> Vec<u8> {
    let opset = [len_field(1, b""), int_field(2, 17)].concat();
    [int_field(1, 8), len_field(7, graph), len_field(8, &opset)].concat()
}

fn err(bytes: &[u8]) -> String {
    let e = parse_model(bytes)
        .expect_err("malformed input must be refused")
        .to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[test]
fn every_truncation_is_an_error_or_loses_only_trailing_fields() {
    for file in ["attributes.onnx", "tensors.onnx", "external.onnx"] {
        let bytes = std::fs::read(dir().join(file)).unwrap();
        let full = parse_model(&bytes).unwrap();
        let start = Instant::now();
        let mut errors = 0;
        for n in 0..bytes.len() {
            match parse_model(&bytes[..n]) {
                Err(e) => {
                    assert!(
                        e.to_string()
                            .starts_with("cannot load model weights: not a valid ONNX model")
                    );
                    errors += 1;
                }
                // A cut at a field boundary after the graph and an opset is a valid, shorter
                // model: protobuf cannot tell. It never changes the graph.
                Ok(m) => {
                    assert_eq!(m.graph, full.graph, "{file}[..{n}]");
                    let fields = |m: &ModelProto| m.opset_import.len() + m.metadata_props.len();
                    assert!(fields(&m) < fields(&full), "{file}[..{n}]");
                }
            }
        }
        let trailing = full.opset_import.len() + full.metadata_props.len() - 1;
        assert!(
            errors >= bytes.len() - trailing,
            "{file}: {errors} of {} cuts refused",
            bytes.len()
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{file}: {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn lengths_past_the_end_long_varints_and_deep_nesting_are_one_line() {
    // A graph field claiming 1000 bytes with 10 left.
    let mut b = [int_field(1, 8), varint(7 << 3 | 2), varint(1000)].concat();
    b.extend([0u8; 10]);
    let e = err(&b);
    assert!(
        e.contains("ModelProto at byte 5")
            && e.contains("1000 bytes runs past the end (10 bytes left)"),
        "{e}"
    );
    // A packed dims list whose length runs past its tensor.
    let tensor = [varint(1 << 3 | 2), varint(50), vec![1, 2]].concat();
    let e = err(&model_with(&len_field(5, &tensor)));
    assert!(
        e.contains("TensorProto") && e.contains("runs past the end"),
        "{e}"
    );
    // An 11-byte varint, and a 10-byte one over 64 bits.
    let e = err(&[&[0x08][..], &[0xff; 10], &[0x01]].concat());
    assert!(e.contains("varint longer than 10 bytes"), "{e}");
    assert!(err(&[&[0x08][..], &[0xff; 9], &[0x02]].concat()).contains("over 64 bits"));
    // Graphs nested through If-style attributes: 32 deep reads, 33 is refused, fast.
    let nest = |depth: usize| {
        let mut g = len_field(2, b"leaf");
        for _ in 0..depth {
            let attr = [len_field(1, b"body"), len_field(6, &g), int_field(20, 5)].concat();
            let node = [len_field(4, b"If"), len_field(5, &attr)].concat();
            g = len_field(1, &node);
        }
        model_with(&g)
    };
    assert!(parse_model(&nest(32)).is_ok());
    let start = Instant::now();
    let e = err(&nest(1000));
    assert!(e.contains("graphs nested more than 32 deep"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn packed_and_unpacked_lists_read_the_same_and_unknown_fields_are_skipped() {
    let dims = [3u64, 2];
    let floats = [1.5f32, -2.0, 0.25, 8.0, 0.0, -1.0];
    let unknown = [
        len_field(99, b"anything"),
        int_field(1000, u64::MAX),
        [varint(77 << 3 | 5), vec![1, 2, 3, 4]].concat(),
        [varint(78 << 3 | 1), vec![0; 8]].concat(),
    ]
    .concat();
    let packed = [
        len_field(1, &dims.iter().flat_map(|&d| varint(d)).collect::<Vec<_>>()),
        int_field(2, 1),
        len_field(
            4,
            &floats
                .iter()
                .flat_map(|f| f.to_le_bytes())
                .collect::<Vec<_>>(),
        ),
        len_field(8, b"w"),
    ]
    .concat();
    let mut unpacked = unknown.clone();
    for d in dims {
        unpacked.extend(int_field(1, d));
    }
    unpacked.extend(int_field(2, 1));
    for f in floats {
        unpacked.extend([varint(4 << 3 | 5), f.to_le_bytes().to_vec()].concat());
    }
    unpacked.extend(len_field(8, b"w"));
    unpacked.extend(&unknown);
    let read = |t: &[u8]| {
        let m = parse_model(&[unknown.clone(), model_with(&len_field(5, t))].concat()).unwrap();
        m.graph.initializer[0].clone()
    };
    let (a, b) = (read(&packed), read(&unpacked));
    assert_eq!(a, b);
    assert_eq!(a.dims, [3, 2]);
    assert_eq!(a.data, TensorData::Float(floats.to_vec()));
    let t = to_tensor(&a, None).unwrap();
    assert_eq!(t.dims(), &[3, 2]);
    // Negative int64 values (ten-byte varints) in a packed list.
    let ints = [
        len_field(1, &varint(2)),
        int_field(2, 7),
        len_field(7, &[varint(-5i64 as u64), varint(6)].concat()),
    ]
    .concat();
    assert_eq!(read(&ints).data, TensorData::Int64(vec![-5, 6]));
    // Groups, wire type 6, a wrong wire type on a known field, text that is not UTF-8.
    assert!(err(&[int_field(1, 8), varint(9 << 3 | 3)].concat()).contains("group"));
    assert!(err(&[int_field(1, 8), varint(9 << 3 | 6)].concat()).contains("wire type 6"));
    assert!(
        err(&[int_field(1, 8), len_field(1, b"x")].concat())
            .contains("'ir_version' has the wrong wire type")
    );
    assert!(err(&[int_field(1, 8), len_field(2, &[0xff, 0xfe])].concat()).contains("not UTF-8"));
    assert!(err(&[0x00]).contains("field number 0"));
    assert!(err(&[int_field(1, 8)].concat()).contains("no graph"));
    assert!(err(&[int_field(1, 8), len_field(7, b"")].concat()).contains("no operator set"));
    let two = [
        len_field(9, &[1, 2]),
        len_field(4, &[0; 4]),
        int_field(2, 1),
    ]
    .concat();
    let e = err(&model_with(&len_field(5, &two)));
    assert!(e.contains("values are in 2 fields"), "{e}");
}

fn raw(name: &str, dims: &[i64], bytes: usize) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float,
        data: TensorData::Raw(vec![0; bytes]),
    }
}

fn refusal(t: &TensorProto, dir: Option<&Path>) -> String {
    let e = to_tensor(t, dir)
        .map(|_| ())
        .expect_err("must be refused")
        .to_string();
    assert!(
        !e.contains('\n') && e.contains(&format!("tensor '{}'", t.name)),
        "{e}"
    );
    e
}

#[test]
fn dims_that_overflow_or_exceed_the_data_are_refused_before_allocating() {
    let e = refusal(&raw("big", &[i64::MAX, i64::MAX], 4), None);
    assert!(e.contains("overflow"), "{e}");
    let e = refusal(&raw("w", &[100_000, 100_000], 4), None);
    assert!(e.contains("need 40000000000 but it holds 4 bytes"), "{e}");
    assert!(refusal(&raw("neg", &[-1, 4], 4), None).contains("negative"));
    let mut t = raw("typed", &[2, 2], 0);
    t.data = TensorData::Float(vec![1.0; 3]);
    assert!(refusal(&t, None).contains("holds 3 values"));
    t.data = TensorData::Int64(vec![1; 4]);
    assert!(refusal(&t, None).contains("in int64_data, which cannot hold type FLOAT"));
    t.data = TensorData::Empty;
    assert!(refusal(&t, None).contains("holds no data"));
    t.data_type = DataType::Other(14);
    assert!(refusal(&t, None).contains("COMPLEX64 is not supported"));
    let big = TensorProto {
        data_type: DataType::Uint64,
        data: TensorData::Uint64(vec![u64::MAX]),
        ..raw("u", &[1], 0)
    };
    assert!(refusal(&big, None).contains("does not fit in int64"));
    // A 1 KB file claiming a 10 GB tensor: one line naming the file and the tensor.
    let tensor = [
        len_field(1, &[varint(50_000), varint(50_000)].concat()),
        int_field(2, 1),
        len_field(8, b"huge"),
        len_field(9, &[0; 900]),
    ]
    .concat();
    let path = std::env::temp_dir().join(format!("unveil-onnx-huge-{}.onnx", std::process::id()));
    std::fs::write(&path, model_with(&len_field(5, &tensor))).unwrap();
    let start = Instant::now();
    let e = read_onnx(&path).map(|_| ()).unwrap_err().to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(
        e.contains(&path.display().to_string())
            && e.contains("tensor 'huge'")
            && e.contains("10000000000"),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn external_data_is_read_only_from_inside_the_model_folder() {
    let root = std::env::temp_dir().join(format!("unveil-onnx-ext-{}", std::process::id()));
    let model_dir = root.join("model");
    std::fs::create_dir_all(model_dir.join("sub")).unwrap();
    std::fs::write(root.join("secret.bin"), [7u8; 16]).unwrap();
    std::fs::write(model_dir.join("sub/w.bin"), [0u8; 24]).unwrap();
    let ext = |location: &str, offset: u64, length: Option<u64>| TensorProto {
        data: TensorData::External {
            location: location.into(),
            offset,
            length,
        },
        ..raw("conv.weight", &[2, 2], 0)
    };
    let dir = Some(model_dir.as_path());
    // Inside the folder, a range of the file.
    let t = to_tensor(&ext("sub/w.bin", 8, Some(16)), dir).unwrap();
    assert_eq!(t.dims(), &[2, 2]);
    for (location, offset, length, want) in [
        ("../secret.bin", 0, Some(16), "climbs out with '..'"),
        ("sub/../../secret.bin", 0, Some(16), "climbs out with '..'"),
        (
            "sub\\..\\..\\secret.bin",
            0,
            Some(16),
            "climbs out with '..'",
        ),
        (
            root.join("secret.bin").to_str().unwrap(),
            0,
            Some(16),
            "is an absolute path",
        ),
        ("", 0, Some(16), "location is empty"),
        (
            "missing.bin",
            0,
            Some(16),
            "cannot be found next to the model",
        ),
        ("sub", 0, Some(16), "not a regular file"),
        (
            "sub/w.bin",
            16,
            Some(16),
            "offset 16 + length 16 runs past the end of the file (24 bytes)",
        ),
        ("sub/w.bin", u64::MAX, Some(2), "runs past the end"),
        ("sub/w.bin", 4, Some(u64::MAX), "runs past the end"),
        ("sub/w.bin", 0, Some(8), "need 16 but it holds 8 bytes"),
        ("sub/w.bin", 0, None, "need 16 but it holds 24 bytes"),
    ] {
        let e = refusal(&ext(location, offset, length), dir);
        assert!(e.contains(want), "{location}: {e}");
    }
    assert!(refusal(&ext("sub/w.bin", 8, Some(16)), None).contains("folder is unknown"));
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(root.join("secret.bin"), model_dir.join("link.bin")).unwrap();
        let e = refusal(&ext("link.bin", 0, Some(16)), dir);
        assert!(e.contains("leads outside the model's folder"), "{e}");
    }
    std::fs::remove_dir_all(&root).unwrap();
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
        if !file.ends_with(".onnx") {
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

/// A fuzzing pass that runs with the tests: the fixtures with bytes overwritten, inserted and
/// removed at pseudo-random places must parse or be refused, never panic, and so must every
/// tensor a mutated file still holds.
#[test]
fn mutated_fixtures_never_panic() {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let (mut parsed, mut runs) = (0, 0);
    for file in ["attributes.onnx", "tensors.onnx", "external.onnx"] {
        let bytes = std::fs::read(dir().join(file)).unwrap();
        for _ in 0..3000 {
            let mut b = bytes.clone();
            for _ in 0..1 + next(4) {
                let at = next(b.len());
                match next(3) {
                    0 => b[at] = next(256) as u8,
                    1 => b.insert(at, next(256) as u8),
                    _ => drop(b.remove(at)),
                }
            }
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
