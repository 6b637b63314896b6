//! Exporters' spellings of one op in several, folded back into one before fusion: a zero `Pad`
//! before a convolution (TensorFlow's "SAME" padding, as tf2onnx and ported models write it)
//! becomes the convolution's own padding, and the five nodes of an exact GELU
//! (`x * 0.5 * (1 + erf(x / sqrt 2))`, as the TorchScript exporter writes `nn.GELU`) become
//! one GELU. Same values, a fraction of the passes over memory, forward and backward. After
//! fusion, two more passes over the fused steps: a transpose to channels-last + LayerNorm reads
//! the planes (`fold_planes_norms`), and linear steps take in the GELU after them and
//! ConvNeXt's transpose back to planes + residual addition (`absorb_into_linear`).

use std::collections::HashMap;

use super::ops::{Binary, Kind, Pads, Unary};
use super::program::Program;
use super::shape_ops::Arrange;
use super::value::Val;

/// Folds what it recognises; steps it absorbs are removed.
pub(crate) fn fold(p: &mut Program, consts: &HashMap<usize, Val>) {
    let mut removed = vec![false; p.steps.len()];
    fold_pads(p, consts, &mut removed);
    fold_gelus(p, consts, &mut removed);
    let mut i = 0;
    p.steps.retain(|_| {
        i += 1;
        !removed[i - 1]
    });
}

/// A constant's values, if it is one.
fn constant(consts: &HashMap<usize, Val>, slot: Option<usize>) -> Option<Vec<f64>> {
    match consts.get(&slot?)? {
        Val::F(t) => Some(
            t.flatten_all()
                .ok()?
                .to_vec1::<f32>()
                .ok()?
                .into_iter()
                .map(f64::from)
                .collect(),
        ),
        Val::I(i) => Some(i.data.iter().map(|&v| v as f64).collect()),
    }
}

fn scalar_is(consts: &HashMap<usize, Val>, slot: Option<usize>, want: f64) -> bool {
    constant(consts, slot)
        .is_some_and(|v| v.len() == 1 && (v[0] - want).abs() < 1e-5 * want.abs().max(1.0))
}

fn fold_pads(p: &mut Program, consts: &HashMap<usize, Val>, removed: &mut [bool]) {
    let r = p.readers();
    for (i, gone) in removed.iter_mut().enumerate() {
        let Kind::Arrange(Arrange::Pad(attr, value)) = &p.steps[i].kind else {
            continue;
        };
        let s = &p.steps[i];
        let pads_slot = s.inputs.get(1).copied().flatten();
        let pads = match attr {
            Some(a) => Some(a.iter().map(|&v| v as f64).collect()),
            None => constant(consts, pads_slot),
        };
        let value_zero = match s.inputs.get(2).copied().flatten() {
            Some(v) => scalar_is(consts, Some(v), 0.0),
            None => *value == 0.0,
        };
        // Pads computed at run time (from the input's shape): checked when they arrive.
        if pads.is_none()
            && let Some(slot) = pads_slot
            && value_zero
            && let Some(j) = r.only(s.outputs[0])
        {
            let (input, out) = (s.inputs.first().copied().flatten(), s.outputs[0]);
            let conv = &mut p.steps[j];
            if let Kind::ConvSpec(spec) = &mut conv.kind
                && spec.runtime_pads.is_none()
                && conv.inputs.first().copied().flatten() == Some(out)
            {
                spec.runtime_pads = Some(slot);
                conv.inputs[0] = input;
                *gone = true;
            }
            continue;
        }
        // Only the height and width of a 4-D tensor, never negative.
        let Some(pads) = pads.filter(|p| {
            p.len() == 8 && [0, 1, 4, 5].iter().all(|&k| p[k] == 0.0) && p.iter().all(|&v| v >= 0.0)
        }) else {
            continue;
        };
        let Some(j) = r.only(s.outputs[0]) else {
            continue;
        };
        let (input, out) = (s.inputs.first().copied().flatten(), s.outputs[0]);
        let conv = &mut p.steps[j];
        let Kind::ConvSpec(spec) = &mut conv.kind else {
            continue;
        };
        let Pads::Explicit(cp) = &mut spec.pads else {
            continue;
        };
        if !value_zero || conv.inputs.first().copied().flatten() != Some(out) {
            continue;
        }
        cp.top += pads[2] as usize;
        cp.left += pads[3] as usize;
        cp.bottom += pads[6] as usize;
        cp.right += pads[7] as usize;
        conv.inputs[0] = input;
        *gone = true;
    }
}

fn fold_gelus(p: &mut Program, consts: &HashMap<usize, Val>, removed: &mut [bool]) {
    let r = p.readers();
    let next = |slot: usize, removed: &[bool]| r.only(slot).filter(|&j| !removed[j]);
    for i in 0..p.steps.len() {
        let s = &p.steps[i];
        if removed[i] || !matches!(s.kind, Kind::Binary(Binary::Div)) {
            continue;
        }
        let (Some(x), divisor) = (
            s.inputs.first().copied().flatten(),
            s.inputs.get(1).copied().flatten(),
        ) else {
            continue;
        };
        if !scalar_is(consts, divisor, std::f64::consts::SQRT_2) {
            continue;
        }
        // Div -> Erf -> Add 1 -> Mul x -> Mul 0.5, each read only by the next.
        let Some(erf) = next(s.outputs[0], removed)
            .filter(|&j| matches!(p.steps[j].kind, Kind::Unary(Unary::Erf)))
        else {
            continue;
        };
        let Some(add) = next(p.steps[erf].outputs[0], removed).filter(|&j| {
            matches!(p.steps[j].kind, Kind::Binary(Binary::Add))
                && p.steps[j].inputs.iter().any(|&v| scalar_is(consts, v, 1.0))
        }) else {
            continue;
        };
        let Some(mul) = next(p.steps[add].outputs[0], removed).filter(|&j| {
            matches!(p.steps[j].kind, Kind::Binary(Binary::Mul))
                && p.steps[j].inputs.contains(&Some(x))
        }) else {
            continue;
        };
        let Some(half) = next(p.steps[mul].outputs[0], removed).filter(|&j| {
            matches!(p.steps[j].kind, Kind::Binary(Binary::Mul))
                && p.steps[j].inputs.iter().any(|&v| scalar_is(consts, v, 0.5))
        }) else {
            continue;
        };
        for k in [i, erf, add, mul] {
            removed[k] = true;
        }
        let g = &mut p.steps[half];
        g.kind = Kind::Unary(Unary::Gelu(false));
        g.op_type = "Gelu".into();
        g.inputs = vec![Some(x)];
    }
}

/// After fusion: a `Transpose` of planes to channels-last (`[0, 2, 3, 1]`) whose only reader
/// is a LayerNormalization over the last axis becomes one step reading the planes
/// ([`Kind::LayerNormFromPlanes`]), as ConvNeXt writes each block's and each downsampling's
/// norm. The norm keeps its place and its weights' names.
pub(crate) fn fold_planes_norms(p: &mut Program) {
    let readers = p.readers();
    let mut removed = vec![false; p.steps.len()];
    for (t, gone) in removed.iter_mut().enumerate() {
        let Kind::Arrange(Arrange::Transpose(Some(perm))) = &p.steps[t].kind else {
            continue;
        };
        let Some(n) = readers.only(p.steps[t].outputs[0]) else {
            continue;
        };
        let Kind::LayerNorm { axis, eps } = p.steps[n].kind else {
            continue;
        };
        let norm = &p.steps[n];
        if perm[..] != [0, 2, 3, 1]
            || !(axis == -1 || axis == 3)
            || norm.inputs.first() != Some(&Some(p.steps[t].outputs[0]))
        {
            continue;
        }
        let planes = p.steps[t].inputs[0];
        let norm = &mut p.steps[n];
        norm.kind = Kind::LayerNormFromPlanes { eps };
        norm.inputs[0] = planes;
        *gone = true;
    }
    let mut i = 0;
    p.steps.retain(|_| {
        i += 1;
        !removed[i - 1]
    });
}

/// Folds into each linear step what only it reads, when the engine's fused linear ops cover
/// it: a GELU on its output, or (ConvNeXt) the transpose of its channels-last output back to
/// planes and the residual addition after it. A fused step runs where the last step it
/// absorbed ran, so its residual is ready.
pub(crate) fn absorb_into_linear(p: &mut Program) {
    let readers = p.readers();
    let mut removed = vec![false; p.steps.len()];
    let mut moves: Vec<(usize, usize)> = Vec::new();
    for i in 0..p.steps.len() {
        let Kind::Linear(_) = &p.steps[i].kind else {
            continue;
        };
        let out = p.steps[i].outputs[0];
        let Some(j) = readers.only(out).filter(|&j| !removed[j]) else {
            continue;
        };
        if let Kind::Unary(Unary::Gelu(tanh)) = p.steps[j].kind {
            let gelu_out = p.steps[j].outputs[0];
            if let Kind::Linear(step) = &mut p.steps[i].kind {
                step.gelu = Some(tanh);
            }
            p.steps[i].outputs = vec![gelu_out];
            removed[j] = true;
            continue;
        }
        let Kind::Arrange(Arrange::Transpose(Some(perm))) = &p.steps[j].kind else {
            continue;
        };
        let transposed = p.steps[j].outputs[0];
        let Some(a) = readers.only(transposed).filter(|&a| !removed[a]) else {
            continue;
        };
        let add = &p.steps[a];
        let ins: Vec<usize> = add.inputs.iter().flatten().copied().collect();
        let residual = match ins[..] {
            [x, r] | [r, x] if x == transposed && r != transposed => r,
            _ => continue,
        };
        if perm[..] != [0, 3, 1, 2]
            || !matches!(add.kind, Kind::Binary(Binary::Add))
            || p.consts[residual].is_some()
        {
            continue;
        }
        let add_out = add.outputs[0];
        let step = &mut p.steps[i];
        if let Kind::Linear(l) = &mut step.kind {
            l.to_planes = true;
        }
        step.inputs.push(Some(residual));
        step.outputs = vec![add_out];
        removed[j] = true;
        removed[a] = true;
        moves.push((i, a));
    }
    // Each fused step takes the place of the addition it ends with.
    for (i, a) in moves {
        p.steps.swap(i, a);
        removed.swap(i, a);
    }
    let mut k = 0;
    p.steps.retain(|_| {
        k += 1;
        !removed[k - 1]
    });
}
