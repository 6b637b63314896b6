//! Malformed ONNX files built here byte by byte, and external data that tries to leave the
//! model's folder: each must be one error line naming what is wrong, fast, never a panic.

use std::path::Path;
use std::time::{Duration, Instant};

use unveil::engine::models::onnx::{
    DataType, ModelProto, TensorData, TensorProto, parse_model, read_onnx, to_tensor,
};

use crate::onnx_reader::dir;

// A minimal protobuf writer for the malformed files (and tests/engine/onnx_graphs.rs).
pub(crate) fn varint(mut v: u64) -> Vec<u8> {
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

pub(crate) fn int_field(num: u64, v: u64) -> Vec<u8> {
    [varint(num << 3), varint(v)].concat()
}

pub(crate) fn len_field(num: u64, body: &[u8]) -> Vec<u8> {
    [
        varint(num << 3 | 2),
        varint(body.len() as u64),
        body.to_vec(),
    ]
    .concat()
}

pub(crate) fn model_with(graph: &[u8]) -> Vec<u8> {
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

/// Lowering and running fuzzed: small real graphs (tf2onnx's Keras models, 18-54 KB, so that
/// most mutations land in the graph's structure rather than its weights, and the Swin fixture's
/// 2312 nodes of shape arithmetic and window attention) with bytes
/// overwritten, inserted and removed must load and run or be refused with an error, never
/// panic.
#[test]
fn mutated_real_graphs_load_and_run_or_are_refused_never_panic() {
    let mut mutants = crate::onnx_reader::Mutants::new(0x0bad_cafe_f00d_1357);
    let tmp = std::env::temp_dir().join(format!("unveil-onnx-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (mut loaded, mut ran, mut runs) = (0, 0, 0);
    let graphs = [
        ("onnx-tf2onnx/efficientnet_like.onnx", 2000),
        ("onnx-tf2onnx/mobilenet_v2_like.onnx", 2000),
        ("onnx-tf2onnx/xception_like.onnx", 2000),
        // Shape subgraphs, window attention and its masks.
        ("onnx/swin_t.onnx", 300),
    ];
    for (file, count) in graphs {
        let bytes = std::fs::read(crate::common::repo(&format!("tests/fixtures/{file}"))).unwrap();
        let file = file.rsplit('/').next().unwrap();
        for i in 0..count {
            let b = mutants.of(&bytes, 2);
            let path = tmp.join(format!("{i}-{file}"));
            std::fs::write(&path, &b).unwrap();
            runs += 1;
            let outcome = std::panic::catch_unwind(|| {
                let device = candle_core::Device::Cpu;
                let backend = unveil::engine::ops::Backend::Fast;
                let Ok(m) = unveil::engine::models::load(path.to_str().unwrap(), &device, backend)
                else {
                    return (false, false);
                };
                let (h, w) = m.info().input_size;
                let x = candle_core::Tensor::zeros((1, 3, h, w), candle_core::DType::F32, &device)
                    .unwrap();
                // Forward and backward to the input, as a saliency map runs it.
                let x = candle_core::Var::from_tensor(&x).unwrap();
                let ok = m
                    .forward(&x, unveil::engine::ops::activation::ReluMode::Guided)
                    .and_then(|y| Ok(y.sum_all()?.backward()?))
                    .is_ok();
                (true, ok)
            });
            let _ = std::fs::remove_file(&path);
            let (l, r) = outcome.unwrap_or_else(|_| panic!("mutant {i} of {file} panicked"));
            loaded += l as usize;
            ran += r as usize;
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!("{runs} mutants: {loaded} loaded, {ran} ran");
    // Enough mutants reach lowering and running for the test to mean something.
    assert!(
        loaded > runs / 20 && ran > runs / 40,
        "{loaded} loaded, {ran} ran of {runs}"
    );
}
