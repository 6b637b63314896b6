//! Rewrites a lowered graph onto the engine's fused layers: a convolution absorbs the
//! BatchNorm after it (folded into its weights), then the ReLU or ReLU6 after that, or a
//! residual addition and the ReLU after it, when nothing else reads the values in between.
//! A fused step runs where the last node it absorbed ran, so every input it reads is ready.
//! Also: BatchNorms no convolution absorbed become per-channel affine steps, constant `Gemm`
//! weights are transposed once, and each weight-bearing step records its tensors' names.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::conv::ConvSpec;
use super::linear::LinearStep;
use super::ops::{Binary, ConvStep, Kind};
use super::ops::{ConvImpl, Pads};
use super::program::{Program, Step};
use super::shape_ops::Arrange;
use super::value::Val;
use crate::engine::models::layers::Layer;
use crate::engine::models::layers::LayerKind;
use crate::error::{Error, Result};

pub(crate) fn fuse(
    p: &mut Program,
    consts: &mut HashMap<usize, Val>,
    device: &Device,
) -> Result<()> {
    let readers = p.readers();
    let only_reader = |slot: usize| readers.only(slot);
    let float = |slot: Option<usize>, consts: &HashMap<usize, Val>| -> Option<Tensor> {
        match consts.get(&slot?) {
            Some(Val::F(t)) => Some(t.clone()),
            _ => None,
        }
    };
    let name = |slot: Option<usize>, p: &Program| slot.map(|s| p.names[s].clone());

    let mut removed = vec![false; p.steps.len()];
    // Steps whose output slot becomes another's (the step that read it was folded away).
    let mut retarget: Vec<(usize, usize)> = Vec::new();
    let mut moved: Vec<Option<Step>> = (0..p.steps.len()).map(|_| None).collect();
    for i in 0..p.steps.len() {
        if removed[i] {
            continue;
        }
        match &p.steps[i].kind {
            Kind::ConvSpec(spec) => {
                let spec = spec.clone();
                let step = &p.steps[i];
                let err = |m: &str| Error::Weights(format!("Conv '{}': {m}", step.name));
                let mut weight = float(step.inputs.get(1).copied().flatten(), consts)
                    .ok_or_else(|| err("its weight is not a float constant"))?;
                if weight.rank() != 4 {
                    return Err(err(&format!(
                        "a weight of shape {:?}: only 2-D convolutions are supported",
                        weight.dims()
                    )));
                }
                let cout = weight.dim(0)?;
                let bias_slot = step.inputs.get(2).copied().flatten();
                let mut bias = match bias_slot {
                    Some(_) => float(bias_slot, consts)
                        .ok_or_else(|| err("its bias is not a float constant"))?,
                    None => Tensor::zeros(cout, DType::F32, &Device::Cpu)?,
                };
                if bias.dims() != [cout] {
                    return Err(err(&format!(
                        "a bias of shape {:?} for {cout} filters",
                        bias.dims()
                    )));
                }
                let mut tensors: Vec<String> = [name(step.inputs[1], p), name(bias_slot, p)]
                    .into_iter()
                    .flatten()
                    .collect();
                let input = step.inputs[0];
                let mut out = step.outputs[0];
                let mut at = i;
                // BatchNorm.
                if let Some(j) = only_reader(out)
                    .filter(|&j| !removed[j] && matches!(p.steps[j].kind, Kind::BatchNorm(_)))
                {
                    let bn = &p.steps[j];
                    let Kind::BatchNorm(eps) = bn.kind else {
                        unreachable!()
                    };
                    let stats: Vec<Tensor> = (1..5)
                        .map(|k| {
                            float(bn.inputs.get(k).copied().flatten(), consts)
                                .ok_or_else(|| err("BatchNorm statistics are not float constants"))
                        })
                        .collect::<Result<_>>()?;
                    let (scale, shift) = bn_affine(&stats, eps)?;
                    if scale.dims() != [cout] {
                        return Err(err("a BatchNorm of another width follows it"));
                    }
                    weight = weight.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
                    bias = ((bias * &scale)? + shift)?;
                    tensors.extend(
                        (1..5).filter_map(|k| name(bn.inputs.get(k).copied().flatten(), p)),
                    );
                    out = bn.outputs[0];
                    removed[j] = true;
                    at = j;
                }
                let imp = build_conv(weight, bias, &spec, tensors.clone(), device)?;
                let mut conv = ConvStep {
                    imp,
                    act: None,
                    residual: false,
                    runtime_pads: None,
                };
                let mut inputs = vec![input];
                // ReLU, or residual addition (then maybe ReLU).
                if let Some(j) = only_reader(out).filter(|&j| !removed[j]) {
                    match &p.steps[j].kind {
                        Kind::Relu(r6) => {
                            conv.act = Some(*r6);
                            out = p.steps[j].outputs[0];
                            removed[j] = true;
                            at = j;
                        }
                        Kind::Binary(Binary::Add) => {
                            let add = &p.steps[j];
                            let other = add.inputs.iter().flatten().copied().find(|&s| s != out);
                            let both =
                                add.inputs.iter().flatten().filter(|&&s| s == out).count() == 1;
                            if let Some(other) = other.filter(|o| both && !consts.contains_key(o)) {
                                conv.residual = true;
                                inputs.push(Some(other));
                                out = add.outputs[0];
                                removed[j] = true;
                                at = j;
                                if let Some(k) = only_reader(out).filter(|&k| {
                                    !removed[k] && matches!(p.steps[k].kind, Kind::Relu(_))
                                }) {
                                    let Kind::Relu(r6) = p.steps[k].kind else {
                                        unreachable!()
                                    };
                                    conv.act = Some(r6);
                                    out = p.steps[k].outputs[0];
                                    removed[k] = true;
                                    at = k;
                                }
                            }
                        }
                        _ => {}
                    }
                }
                if let Some(pads) = spec.runtime_pads {
                    inputs.push(Some(pads));
                    conv.runtime_pads = Some(inputs.len() - 1);
                }
                let step = &p.steps[i];
                let fused = Step {
                    name: step.name.clone(),
                    op_type: "Conv".into(),
                    kind: Kind::Conv(Box::new(conv)),
                    inputs,
                    outputs: vec![out],
                    layer: layer_of(LayerKind::Conv, tensors),
                };
                removed[i] = true;
                moved[at] = Some(fused);
            }
            Kind::BatchNorm(eps) => {
                let step = &p.steps[i];
                let stats: Vec<Tensor> = (1..5)
                    .map(|k| {
                        float(step.inputs.get(k).copied().flatten(), consts).ok_or_else(|| {
                            Error::Weights(format!(
                                "BatchNormalization '{}': statistics are not float constants",
                                step.name
                            ))
                        })
                    })
                    .collect::<Result<_>>()?;
                let (scale, shift) = bn_affine(&stats, *eps)?;
                let names = (1..5)
                    .filter_map(|k| name(step.inputs.get(k).copied().flatten(), p))
                    .collect();
                moved[i] = Some(Step {
                    name: step.name.clone(),
                    op_type: step.op_type.clone(),
                    kind: Kind::Affine(scale.to_device(device)?, shift.to_device(device)?),
                    inputs: vec![step.inputs[0]],
                    outputs: step.outputs.clone(),
                    layer: layer_of(LayerKind::Norm, names),
                });
            }
            Kind::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => {
                let (alpha, beta, trans_a, trans_b) = (*alpha, *beta, *trans_a, *trans_b);
                let step = &p.steps[i];
                let b_slot = step.inputs.get(1).copied().flatten();
                let c_slot = step.inputs.get(2).copied().flatten();
                let names: Vec<String> = [b_slot, c_slot]
                    .into_iter()
                    .flatten()
                    .filter(|s| consts.contains_key(s))
                    .map(|s| p.names[s].clone())
                    .collect();
                let layer = layer_of(LayerKind::Linear, names);
                // Constant weights and bias: one linear step, alpha and beta folded in.
                if let (Some(b), false) = (float(b_slot, consts), trans_a)
                    && b.rank() == 2
                {
                    let w = if trans_b { b.t()?.contiguous()? } else { b };
                    let n = w.dim(1)?;
                    let bias = match c_slot {
                        None => Some(None),
                        Some(_) => float(c_slot, consts)
                            .filter(|c| c.dims() == [n] || c.dims() == [1, n])
                            .map(|c| c.flatten_all()?.affine(beta as f64, 0.0).map(Some))
                            .transpose()?,
                    };
                    if let Some(bias) = bias {
                        let w = if alpha != 1.0 {
                            w.affine(alpha as f64, 0.0)?
                        } else {
                            w
                        };
                        moved[i] = Some(Step {
                            name: step.name.clone(),
                            op_type: step.op_type.clone(),
                            kind: Kind::Linear(Box::new(LinearStep::new(w, bias, device)?)),
                            inputs: vec![step.inputs[0]],
                            outputs: step.outputs.clone(),
                            layer,
                        });
                        continue;
                    }
                }
                let mut inputs = step.inputs.clone();
                let mut tb = trans_b;
                if let (Some(b), true) = (float(b_slot, consts), trans_b) {
                    // Transposed once here rather than copied on every call.
                    let slot = p.names.len();
                    p.names.push(format!("{}^T", p.names[b_slot.unwrap_or(0)]));
                    consts.insert(slot, Val::F(b.t()?.contiguous()?));
                    inputs[1] = Some(slot);
                    tb = false;
                }
                let step = &p.steps[i];
                moved[i] = Some(Step {
                    name: step.name.clone(),
                    op_type: step.op_type.clone(),
                    kind: Kind::Gemm {
                        alpha,
                        beta,
                        trans_a,
                        trans_b: tb,
                    },
                    inputs,
                    outputs: step.outputs.clone(),
                    layer,
                });
            }
            Kind::MatMul
                if float(p.steps[i].inputs.get(1).copied().flatten(), consts)
                    .is_some_and(|w| w.rank() == 2)
                    && !p.steps[i].inputs[0].is_some_and(|s| consts.contains_key(&s)) =>
            {
                let step = &p.steps[i];
                let w_slot = step.inputs[1];
                let w = float(w_slot, consts).expect("checked by the guard");
                let n = w.dim(1)?;
                let mut names: Vec<String> = name(w_slot, p).into_iter().collect();
                let (mut out, mut at, mut bias) = (step.outputs[0], i, None);
                // The bias: a constant of `n` values a lone Add puts on the output.
                if let Some(j) = only_reader(out).filter(|&j| {
                    !removed[j] && matches!(p.steps[j].kind, Kind::Binary(Binary::Add))
                }) {
                    let add = &p.steps[j];
                    let ins: Vec<usize> = add.inputs.iter().flatten().copied().collect();
                    if let [x, y] = ins[..] {
                        let other = if x == out { y } else { x };
                        if let Some(b) = float(Some(other), consts).filter(|b| b.dims() == [n]) {
                            bias = Some(b);
                            names.push(p.names[other].clone());
                            out = add.outputs[0];
                            removed[j] = true;
                            at = j;
                        }
                    }
                }
                // A per-channel scale after a transpose (ConvNeXt's layer scale): folded
                // into the columns, a pass over memory less each way.
                let (mut w, mut bias) = (w, bias);
                if let Some((t, m, slot, c)) = layer_scale(p, &readers, &removed, out, consts, n) {
                    w = w.broadcast_mul(&c.reshape((1, n))?)?;
                    bias = bias.map(|b| b.mul(&c)).transpose()?;
                    names.push(p.names[slot].clone());
                    retarget.push((t, p.steps[m].outputs[0]));
                    removed[m] = true;
                }
                let step = &p.steps[i];
                moved[at] = Some(Step {
                    name: step.name.clone(),
                    op_type: step.op_type.clone(),
                    kind: Kind::Linear(Box::new(LinearStep::new(w, bias, device)?)),
                    inputs: vec![step.inputs[0]],
                    outputs: vec![out],
                    layer: layer_of(LayerKind::Linear, names),
                });
                if at != i {
                    removed[i] = true;
                }
            }
            Kind::MatMul | Kind::LayerNorm { .. } => {
                let step = &p.steps[i];
                let mut names: Vec<String> = step
                    .inputs
                    .iter()
                    .flatten()
                    .filter(|s| consts.contains_key(s))
                    .map(|&s| p.names[s].clone())
                    .collect();
                let kind = if matches!(step.kind, Kind::MatMul) {
                    LayerKind::Linear
                } else {
                    LayerKind::Norm
                };
                // A linear layer's bias: the constant a lone Add puts on its output.
                if kind == LayerKind::Linear
                    && !names.is_empty()
                    && let Some(j) = only_reader(step.outputs[0])
                        .filter(|&j| matches!(p.steps[j].kind, Kind::Binary(Binary::Add)))
                {
                    names.extend(
                        p.steps[j]
                            .inputs
                            .iter()
                            .flatten()
                            .filter(|s| consts.contains_key(s))
                            .map(|&s| p.names[s].clone()),
                    );
                }
                p.steps[i].layer = layer_of(kind, names);
            }
            _ => {}
        }
    }
    for (t, slot) in retarget {
        p.steps[t].outputs[0] = slot;
    }
    let steps = std::mem::take(&mut p.steps);
    p.steps = steps
        .into_iter()
        .zip(moved)
        .zip(removed)
        .filter_map(|((s, m), gone)| match (m, gone) {
            (Some(m), _) => Some(m),
            (None, false) => Some(s),
            (None, true) => None,
        })
        .collect();
    if p.steps
        .iter()
        .any(|s| matches!(s.kind, Kind::ConvSpec(_) | Kind::BatchNorm(_)))
    {
        return Err(Error::Internal(
            "a convolution or BatchNorm was left unbuilt".into(),
        ));
    }
    Ok(())
}

/// `(transpose, mul, the scale's slot, scale)` when the only reader of `out` (a linear step's output, `n`
/// values per row) is a `Transpose` whose only reader is a `Mul` by a constant that scales
/// exactly the transposed last axis: the scale is then the linear layer's, per column.
fn layer_scale(
    p: &Program,
    readers: &super::program::Readers,
    removed: &[bool],
    out: usize,
    consts: &HashMap<usize, Val>,
    n: usize,
) -> Option<(usize, usize, usize, Tensor)> {
    let t = readers.only(out).filter(|&t| !removed[t])?;
    let Kind::Arrange(Arrange::Transpose(Some(perm))) = &p.steps[t].kind else {
        return None;
    };
    let transposed = p.steps[t].outputs[0];
    let m = readers.only(transposed).filter(|&m| !removed[m])?;
    let mul = &p.steps[m];
    if !matches!(mul.kind, Kind::Binary(Binary::Mul)) {
        return None;
    }
    let ins: Vec<usize> = mul.inputs.iter().flatten().copied().collect();
    let other = match ins[..] {
        [a, b] if a == transposed && b != transposed => b,
        [a, b] if b == transposed && a != transposed => a,
        _ => return None,
    };
    let Some(Val::F(c)) = consts.get(&other) else {
        return None;
    };
    let (r, dims) = (perm.len(), c.dims());
    let off = r.checked_sub(dims.len())?;
    let mut wide = dims.iter().enumerate().filter(|&(_, &d)| d != 1);
    let (axis, &len) = wide.next()?;
    if wide.next().is_some() || len != n || perm.get(axis + off) != Some(&(r - 1)) {
        return None;
    }
    Some((
        t,
        m,
        other,
        c.flatten_all().ok()?.to_dtype(DType::F32).ok()?,
    ))
}

/// A BatchNorm's `(scale, shift)` from `[gamma, beta, mean, var]`.
fn bn_affine(stats: &[Tensor], eps: f64) -> Result<(Tensor, Tensor)> {
    let [gamma, beta, mean, var] = stats else {
        return Err(Error::Internal("BatchNorm statistics".into()));
    };
    let n = gamma.elem_count();
    if [beta, mean, var].iter().any(|t| t.elem_count() != n) {
        return Err(Error::Weights(
            "BatchNormalization statistics of different lengths".into(),
        ));
    }
    let flat = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32);
    let scale = flat(gamma)?.div(&(flat(var)? + eps)?.sqrt()?)?;
    let shift = (flat(beta)? - flat(mean)?.mul(&scale)?)?;
    Ok((scale, shift))
}

/// A weight-bearing step's tensors, for the sanity check.
pub(crate) fn layer_of(kind: LayerKind, names: Vec<String>) -> Option<Layer> {
    (!names.is_empty()).then(|| Layer::new(kind, names))
}

/// Builds the engine's convolution for a lowered `Conv`.
pub(crate) fn build_conv(
    weight: Tensor,
    bias: Tensor,
    spec: &ConvSpec,
    tensors: Vec<String>,
    device: &Device,
) -> Result<ConvImpl> {
    use crate::engine::models::layers::{Conv, PadMode};
    let (cout, cin_g, kh, kw) = weight.dims4()?;
    let pad = match spec.pads {
        Pads::Explicit(p) => PadMode::Explicit(p),
        Pads::SameUpper => PadMode::TfSame,
    };
    let g = spec.group;
    if kh != kw || spec.strides.0 != spec.strides.1 {
        let Pads::Explicit(p) = spec.pads else {
            return Err(Error::Weights(
                "a non-square convolution with auto_pad SAME is not supported".into(),
            ));
        };
        if g != 1 || spec.strides.0 != spec.strides.1 {
            return Err(Error::Weights(format!(
                "a {kh} x {kw} convolution with strides {:?} and {g} groups is not supported",
                spec.strides
            )));
        }
        return Ok(ConvImpl::Stock {
            weight: weight.to_device(device)?,
            bias: bias.to_device(device)?,
            stride: spec.strides.0,
            pad: p,
        });
    }
    let s = spec.strides.0;
    if g == 1 || (g == cout && cin_g == 1) {
        return Ok(ConvImpl::Layer(Conv::new(
            tensors, weight, bias, s, g, pad, device,
        )?));
    }
    if cout % g != 0 {
        return Err(Error::Weights(format!(
            "{cout} output channels in {g} groups"
        )));
    }
    let per = cout / g;
    let convs = (0..g)
        .map(|i| {
            let w = weight.narrow(0, i * per, per)?;
            let b = bias.narrow(0, i * per, per)?;
            Conv::new(tensors.clone(), w, b, s, 1, pad, device)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ConvImpl::Groups(convs))
}
