//! ONNX files: any bytes must parse or give an error, never a panic, and every tensor a parsed
//! file holds (initializers and attribute tensors, nested graphs included) must convert or give
//! an error, with allocations bounded by the input (element counts are checked against the
//! data first). External data is refused without a model folder, so nothing is opened.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unveil::engine::models::onnx::{Attr, GraphProto, parse_model, sniff, to_tensor};

fn tensors(g: &GraphProto) {
    for t in &g.initializer {
        let _ = to_tensor(t, None);
    }
    for a in g.node.iter().flat_map(|n| &n.attribute) {
        match &a.value {
            Attr::Tensor(t) => drop(to_tensor(t, None)),
            Attr::Tensors(ts) => ts.iter().for_each(|t| drop(to_tensor(t, None))),
            Attr::Graph(g) => tensors(g),
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = sniff(data);
    if let Ok(model) = parse_model(data) {
        tensors(&model.graph);
    }
});
