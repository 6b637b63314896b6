//! From a parsed ONNX graph to a [`Program`]: checked (one input, no cycles, no dangling
//! names, every op supported or all unsupported ones named in one line), constants folded
//! once, BatchNorm folded into the convolution before it, and ReLUs and residual additions
//! fused into convolutions, so that a graph runs on the same kernels as the native models.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device};

use super::attrs::{Attrs, parse_kind};
use super::ops::{Ctx, Kind, Unary};
use super::program::{Head, Program, Step};
use super::proto::{GraphProto, NodeProto};
use super::value::Val;
use crate::engine::models::layers::Weights;
use crate::engine::ops::Backend;
use crate::engine::ops::activation::ReluMode;
use crate::error::{Error, Result};

/// Ops the engine runs (the default ONNX domain).
pub(crate) const SUPPORTED: &[&str] = &[
    "Conv",
    "BatchNormalization",
    "Relu",
    "Clip",
    "LeakyRelu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Sqrt",
    "Exp",
    "Log",
    "Neg",
    "Reciprocal",
    "Abs",
    "Erf",
    "Gelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Softplus",
    "Softmax",
    "LayerNormalization",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "Reshape",
    "Transpose",
    "Flatten",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "Squeeze",
    "Unsqueeze",
    "Expand",
    "Pad",
    "Identity",
    "Dropout",
    "Constant",
    "Shape",
    "Cast",
    "Range",
    "ConstantOfShape",
    "Where",
    "Equal",
    "Less",
    "Greater",
    "Not",
    "And",
    "Or",
    "Mod",
    "ScatterND",
    "Resize",
];

/// The most nodes and value names a graph may have (a file claiming more is refused).
const MAX_NODES: usize = 1 << 20;

/// Lowers `graph` (opset `opset` of the default domain) with its initializers in `weights`.
pub(crate) fn lower(
    graph: &GraphProto,
    opset: i64,
    weights: &Weights,
    device: &Device,
) -> Result<Program> {
    check_ops(&graph.node)?;
    if graph.node.len() > MAX_NODES {
        return Err(Error::Weights(format!(
            "the graph has {} nodes",
            graph.node.len()
        )));
    }
    let mut b = Builder::default();
    // Constants: initializers, then Constant nodes as they come.
    let mut consts: HashMap<usize, Val> = HashMap::new();
    for (name, t) in weights
        .shapes()
        .map(|(n, _)| n.to_string())
        .collect::<Vec<_>>()
        .iter()
        .map(|n| (n, weights.peek(n)))
    {
        if let Some(t) = t {
            let slot = b.slot(name);
            consts.insert(slot, Val::from_tensor(t.clone())?);
        }
    }
    let inputs: Vec<&str> = graph
        .input
        .iter()
        .map(|v| v.name.as_str())
        .filter(|n| weights.peek(n).is_none())
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(Error::Weights(format!(
            "the graph has {} inputs ({}); an image classifier has one",
            inputs.len(),
            inputs.join(", ")
        )));
    };
    let input = b.slot(input);
    let [output] = graph.output.as_slice() else {
        return Err(Error::Weights(format!(
            "the graph has {} outputs; an image classifier has one (its logits)",
            graph.output.len()
        )));
    };
    let order = topological(&graph.node, input, &consts, &mut b)?;
    let output_name = output.name.as_str();

    // Parse, folding what depends only on constants (on the CPU, once).
    let cpu = Ctx {
        mode: ReluMode::Plain,
        backend: Backend::Fast,
        device: Device::Cpu,
    };
    let mut steps: Vec<Step> = Vec::new();
    for &i in &order {
        let node = &graph.node[i];
        let ins: Vec<Option<usize>> = node
            .input
            .iter()
            .map(|n| (!n.is_empty()).then(|| b.slot(n)))
            .collect();
        if node.output.first().is_none_or(|o| o.is_empty()) {
            return Err(node_error(
                node,
                Error::Weights("a node without an output".into()),
            ));
        }
        let outs: Vec<usize> = node.output.iter().map(|n| b.slot(n)).collect();
        let attrs = Attrs::new(node);
        if node.op_type == "Constant" {
            let value = attrs.constant()?;
            consts.insert(outs[0], value);
            continue;
        }
        let const_of = |s: &Option<usize>| s.and_then(|s| consts.get(&s));
        let kind = parse_kind(
            node,
            &attrs,
            opset,
            &ins.iter().map(const_of).collect::<Vec<_>>(),
        )?;
        let foldable = !matches!(kind, Kind::ConvSpec(_) | Kind::BatchNorm(_))
            && ins.iter().flatten().all(|s| consts.contains_key(s));
        if foldable && !node.output.iter().any(|o| o == output_name) {
            let vals: Vec<Option<&Val>> = ins.iter().map(const_of).collect();
            let res = kind.run(&vals, &cpu).map_err(|e| node_error(node, e))?;
            for (s, v) in outs.iter().zip(res) {
                consts.insert(*s, v);
            }
            continue;
        }
        steps.push(Step {
            name: node.name.clone(),
            op_type: node.op_type.clone(),
            kind,
            inputs: ins,
            outputs: outs,
            layer: None,
        });
    }
    let output = b
        .existing(output_name)
        .filter(|s| *s == input || steps.iter().any(|st| st.outputs.contains(s)))
        .ok_or_else(|| {
            Error::Weights(format!(
                "the graph's output '{output_name}' is computed by no node"
            ))
        })?;
    let (output, head) = leave_out_head(&mut steps, output);
    let mut p = Program {
        steps,
        consts: Vec::new(),
        names: b.names,
        input,
        output,
        last_use: Vec::new(),
        head,
    };
    super::patterns::fold(&mut p, &consts);
    super::fuse::fuse(&mut p, &mut consts, device)?;
    // Constants to the device (floats); integers stay on the host.
    let mut table = vec![None; p.names.len()];
    for (s, v) in consts {
        table[s] = Some(match v {
            Val::F(t) => Val::F(t.to_dtype(DType::F32)?.to_device(device)?),
            v => v,
        });
    }
    p.consts = table;
    super::patterns::absorb_into_linear(&mut p);
    super::patterns::fold_planes_norms(&mut p);
    p.last_use = last_uses(&p);
    Ok(p)
}

/// A classifier's final Softmax over its classes (Keras' `Dense(n, activation="softmax")`, as
/// tf2onnx writes it) or Sigmoid, left out: [`Classifier::forward`] gives logits, which unveil
/// scores itself (a softmax, or one sigmoid per output). Kept, it would be applied twice, and
/// the maps would explain a saturating probability instead of the logit, as tf-keras-vis'
/// `ReplaceToLinear` and the native models avoid. The new output slot and what was left out.
///
/// [`Classifier::forward`]: crate::engine::models::Classifier::forward
fn leave_out_head(steps: &mut Vec<Step>, output: usize) -> (usize, Option<Head>) {
    let Some(i) = steps.iter().position(|s| s.outputs.contains(&output)) else {
        return (output, None);
    };
    let head = match steps[i].kind {
        // Over the class axis of `[n, classes]` (load checks that shape), not the batch.
        Kind::Softmax { axis: 1 | -1, .. } => Head::Softmax,
        Kind::Unary(Unary::Sigmoid) => Head::Sigmoid,
        _ => return (output, None),
    };
    match steps[i].inputs.first() {
        Some(&Some(logits)) if steps[i].outputs.len() == 1 => {
            steps.remove(i);
            (logits, Some(head))
        }
        _ => (output, None),
    }
}

fn node_error(node: &NodeProto, e: Error) -> Error {
    let what = if node.name.is_empty() {
        node.op_type.clone()
    } else {
        format!("{} '{}'", node.op_type, node.name)
    };
    Error::Weights(format!(
        "{what}: {}",
        e.to_string()
            .trim_start_matches("cannot load model weights: ")
    ))
}

/// Every unsupported op type with its nodes' names, in one line, before anything runs.
fn check_ops(nodes: &[NodeProto]) -> Result<()> {
    let mut custom: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut missing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in nodes {
        let name = if n.name.is_empty() {
            "(unnamed)"
        } else {
            n.name.as_str()
        };
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            custom
                .entry(format!("{} (domain {})", n.op_type, n.domain))
                .or_default()
                .push(name);
        } else if !SUPPORTED.contains(&n.op_type.as_str()) {
            missing.entry(n.op_type.as_str()).or_default().push(name);
        }
    }
    let list = |m: Vec<(String, Vec<&str>)>| {
        m.into_iter()
            .map(|(op, names)| {
                let shown: Vec<&str> = names.iter().take(3).copied().collect();
                let more = if names.len() > 3 {
                    format!(" and {} more", names.len() - 3)
                } else {
                    String::new()
                };
                format!("{op} ({}{more})", shown.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if !custom.is_empty() {
        return Err(Error::Weights(format!(
            "the graph uses custom-domain ops, which unveil cannot run: {}",
            list(custom.into_iter().collect())
        )));
    }
    if !missing.is_empty() {
        return Err(Error::Weights(format!(
            "the graph uses ops unveil does not support: {}",
            list(
                missing
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect()
            )
        )));
    }
    Ok(())
}

/// Value names to slots.
#[derive(Default)]
struct Builder {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl Builder {
    fn slot(&mut self, name: &str) -> usize {
        if let Some(&s) = self.index.get(name) {
            return s;
        }
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), self.names.len() - 1);
        self.names.len() - 1
    }

    fn existing(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
}

/// The nodes in an order where every input is computed first; a name no node computes, or
/// a cycle, is one clear error.
fn topological(
    nodes: &[NodeProto],
    input: usize,
    consts: &HashMap<usize, Val>,
    b: &mut Builder,
) -> Result<Vec<usize>> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(o.as_str(), i).is_some() {
                return Err(Error::Weights(format!("two nodes compute '{o}'")));
            }
        }
    }
    let known = |name: &str, b: &Builder| {
        b.existing(name)
            .is_some_and(|s| s == input || consts.contains_key(&s))
    };
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        for name in n.input.iter().filter(|s| !s.is_empty()) {
            match producer.get(name.as_str()) {
                Some(&p) => {
                    deps[i].push(p);
                    users[p].push(i);
                }
                None if known(name, b) => {}
                None => {
                    let node = if n.name.is_empty() {
                        n.op_type.as_str()
                    } else {
                        n.name.as_str()
                    };
                    return Err(Error::Weights(format!(
                        "node '{node}' reads '{name}', which no node, initializer or input provides"
                    )));
                }
            }
        }
    }
    let mut pending: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut ready: std::collections::VecDeque<usize> =
        (0..nodes.len()).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &u in &users[i] {
            pending[u] -= 1;
            if pending[u] == 0 {
                ready.push_back(u);
            }
        }
    }
    if order.len() != nodes.len() {
        let stuck = (0..nodes.len())
            .find(|&i| pending[i] > 0)
            .map_or("", |i| nodes[i].name.as_str());
        return Err(Error::Weights(format!(
            "the graph has a cycle (through node '{stuck}')"
        )));
    }
    Ok(order)
}

/// The last step reading each slot; the output is never freed.
fn last_uses(p: &Program) -> Vec<usize> {
    let mut last = vec![0; p.names.len()];
    for (i, s) in p.steps.iter().enumerate() {
        for &slot in s.inputs.iter().flatten() {
            last[slot] = i;
        }
    }
    last[p.output] = usize::MAX;
    last
}
