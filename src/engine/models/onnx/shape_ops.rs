//! Ops that move values around rather than compute them (reshape, transpose, slice, gather,
//! concatenate, pad, ...) and the integer arithmetic graphs do on shapes. On floats they are
//! candle views and copies, all with a backward; on integers they run on the host.

use candle_core::Tensor;

use super::ints::{MAX_INTS, broadcast_ints, checked_count, indices, strides};
use super::value::{Ctx, input, opt};
use super::value::{Ints, Val, axis, broadcast};
use crate::error::{Error, Result};

/// A data-movement or shape op with its attributes.
#[derive(Clone, Debug)]
pub(crate) enum Arrange {
    Reshape {
        allow_zero: bool,
    },
    Transpose(Option<Vec<usize>>),
    Flatten(i64),
    Concat(i64),
    /// `split` from the attribute (old opsets), else from input 1, else equal parts.
    Split {
        axis: i64,
        split: Option<Vec<i64>>,
        outputs: usize,
    },
    /// `starts, ends, axes, steps` from attributes (opset < 10), else from inputs 1-4.
    Slice(Option<[Vec<i64>; 3]>),
    Gather(i64),
    Squeeze(Option<Vec<i64>>),
    Unsqueeze(Option<Vec<i64>>),
    Expand,
    /// Constant padding; `pads` from the attribute (old opsets) else input 1; the value.
    Pad(Option<Vec<i64>>, f32),
    ShapeOf {
        start: i64,
        end: Option<i64>,
    },
    /// To a float type (`true`) or an integer / boolean type.
    Cast {
        float: bool,
        boolean: bool,
    },
    Range,
    ConstantOfShape(Val),
    ScatterND,
}

fn bad(what: &str, msg: impl std::fmt::Display) -> Error {
    Error::Weights(format!("{what}: {msg}"))
}

impl Arrange {
    pub(crate) fn run(&self, inputs: &[Option<&Val>], ctx: &Ctx) -> Result<Vec<Val>> {
        let x = input(inputs, 0)?;
        let ints =
            |i: usize, what: &str| -> Result<Vec<i64>> { Ok(input(inputs, i)?.ints(what)?.data) };
        Ok(vec![match self {
            Arrange::Reshape { allow_zero } => {
                let dims = reshape_dims(&x.dims(), &ints(1, "Reshape shape")?, *allow_zero)?;
                reshape(x, dims)?
            }
            Arrange::Transpose(perm) => {
                let rank = x.dims().len();
                let perm = perm.clone().unwrap_or_else(|| (0..rank).rev().collect());
                match blocked_transpose(x, &perm, ctx)? {
                    Some(y) => y,
                    None => transpose(x, &perm)?,
                }
            }
            Arrange::Flatten(a) => {
                let dims = x.dims();
                let a = if *a == dims.len() as i64 {
                    dims.len()
                } else {
                    axis(*a, dims.len(), "Flatten")?
                };
                let rows = dims[..a].iter().product::<usize>();
                reshape(x, vec![rows, dims[a..].iter().product()])?
            }
            Arrange::Concat(a) => concat(inputs, *a, ctx)?,
            Arrange::Split {
                axis: a,
                split,
                outputs,
            } => {
                let split = match (split, opt(inputs, 1)) {
                    (Some(s), _) => Some(s.clone()),
                    (None, Some(s)) => Some(s.ints("Split sizes")?.data),
                    (None, None) => None,
                };
                return split_val(x, *a, split, *outputs);
            }
            Arrange::Slice(attrs) => {
                let [starts, ends, axes] = match attrs {
                    Some(a) => a.clone(),
                    None => {
                        let axes = match opt(inputs, 3) {
                            Some(a) => a.ints("Slice axes")?.data,
                            None => (0..ints(1, "Slice starts")?.len() as i64).collect(),
                        };
                        [ints(1, "Slice starts")?, ints(2, "Slice ends")?, axes]
                    }
                };
                let steps = match opt(inputs, 4) {
                    Some(s) => s.ints("Slice steps")?.data,
                    None => vec![1; starts.len()],
                };
                slice(x, &starts, &ends, &axes, &steps)?
            }
            Arrange::Gather(a) => gather(x, &input(inputs, 1)?.ints("Gather indices")?, *a)?,
            Arrange::Squeeze(axes) => {
                let dims = x.dims();
                let axes = match (axes, opt(inputs, 1)) {
                    (Some(a), _) => a.clone(),
                    (None, Some(a)) => a.ints("Squeeze axes")?.data,
                    (None, None) => (0..dims.len() as i64)
                        .filter(|&i| dims[i as usize] == 1)
                        .collect(),
                };
                let axes: Vec<usize> = axes
                    .iter()
                    .map(|&a| axis(a, dims.len(), "Squeeze"))
                    .collect::<Result<_>>()?;
                let out = dims
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, &d)| d)
                    .collect();
                reshape(x, out)?
            }
            Arrange::Unsqueeze(axes) => {
                let axes = match (axes, opt(inputs, 1)) {
                    (Some(a), _) => a.clone(),
                    (None, Some(a)) => a.ints("Unsqueeze axes")?.data,
                    (None, None) => return Err(bad("Unsqueeze", "no axes")),
                };
                let mut dims = x.dims();
                let rank = dims.len() + axes.len();
                let mut axes: Vec<usize> = axes
                    .iter()
                    .map(|&a| axis(a, rank, "Unsqueeze"))
                    .collect::<Result<_>>()?;
                axes.sort_unstable();
                for a in axes {
                    dims.insert(a, 1);
                }
                reshape(x, dims)?
            }
            Arrange::Expand => {
                let shape: Vec<usize> = to_usize(&ints(1, "Expand shape")?, "Expand")?;
                let dims = broadcast(&x.dims(), &shape, "Expand")?;
                checked_count(&dims, "Expand")?;
                match x {
                    Val::F(t) => Val::F(t.broadcast_as(dims.as_slice())?.contiguous()?),
                    Val::I(i) => Val::I(broadcast_ints(i, &dims)?),
                }
            }
            Arrange::Pad(pads, value) => {
                let pads = match (pads, opt(inputs, 1)) {
                    (Some(p), _) => p.clone(),
                    (None, Some(p)) => p.ints("Pad pads")?.data,
                    (None, None) => return Err(bad("Pad", "no pads")),
                };
                let value = match opt(inputs, 2) {
                    Some(v) => v
                        .float(&ctx.device)?
                        .flatten_all()?
                        .to_vec1::<f32>()?
                        .first()
                        .copied()
                        .unwrap_or(0.0),
                    None => *value,
                };
                pad(&x.float(&ctx.device)?, &pads, value)?
            }
            Arrange::ShapeOf { start, end } => {
                let dims: Vec<i64> = x.dims().iter().map(|&d| d as i64).collect();
                let n = dims.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + n } else { v }).clamp(0, n) as usize;
                let (s, e) = (clamp(*start), clamp(end.unwrap_or(n)));
                Val::I(Ints::vector(dims[s..e.max(s)].to_vec()))
            }
            Arrange::Cast { float, boolean } => match (float, x) {
                (true, v) => Val::F(v.float(&ctx.device)?),
                (false, v) => {
                    let mut i = v.ints("Cast")?;
                    if *boolean {
                        i.data.iter_mut().for_each(|v| *v = (*v != 0) as i64);
                    }
                    Val::I(i)
                }
            },
            Arrange::Range => {
                let (s, l, d) = (ints(0, "Range")?, ints(1, "Range")?, ints(2, "Range")?);
                let (s, l, d) = (first(&s)?, first(&l)?, first(&d)?);
                if d == 0 {
                    return Err(bad("Range", "a step of 0"));
                }
                let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
                if n > MAX_INTS {
                    return Err(bad("Range", format!("{n} values")));
                }
                Val::I(Ints::vector((0..n as i64).map(|i| s + i * d).collect()))
            }
            Arrange::ConstantOfShape(value) => {
                let dims = to_usize(&x.ints("ConstantOfShape")?.data, "ConstantOfShape")?;
                match value {
                    Val::F(v) => {
                        checked_count(&dims, "ConstantOfShape")?;
                        let v = v
                            .flatten_all()?
                            .to_vec1::<f32>()?
                            .first()
                            .copied()
                            .unwrap_or(0.0);
                        Val::F(Tensor::full(v, dims.as_slice(), &ctx.device)?)
                    }
                    Val::I(v) => {
                        let n = checked_count(&dims, "ConstantOfShape")?;
                        Val::I(Ints::new(
                            dims,
                            vec![v.data.first().copied().unwrap_or(0); n],
                        )?)
                    }
                }
            }
            Arrange::ScatterND => super::ints::scatter_nd(inputs, ctx)?,
        }])
    }
}

fn first(v: &[i64]) -> Result<i64> {
    v.first()
        .copied()
        .ok_or_else(|| bad("Range", "an empty input"))
}

fn to_usize(v: &[i64], what: &str) -> Result<Vec<usize>> {
    v.iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(what, format!("a negative size {d}"))))
        .collect()
}

/// ONNX Reshape's target: 0 copies the input's size (unless `allow_zero`), -1 is inferred.
fn reshape_dims(dims: &[usize], shape: &[i64], allow_zero: bool) -> Result<Vec<usize>> {
    let total: usize = dims.iter().product();
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allow_zero => out.push(
                *dims
                    .get(i)
                    .ok_or_else(|| bad("Reshape", "0 past the input's rank"))?,
            ),
            s if s >= 0 => out.push(s as usize),
            s => return Err(bad("Reshape", format!("size {s}"))),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(bad(
                "Reshape",
                format!("cannot reshape {dims:?} to {shape:?}"),
            ));
        }
        out[i] = total / known;
    }
    if out.iter().product::<usize>() != total {
        return Err(bad(
            "Reshape",
            format!("cannot reshape {dims:?} to {shape:?}"),
        ));
    }
    Ok(out)
}

fn reshape(x: &Val, dims: Vec<usize>) -> Result<Val> {
    Ok(match x {
        Val::F(t) => Val::F(t.reshape(dims)?),
        Val::I(i) => Val::I(Ints::new(dims, i.data.clone())?),
    })
}

/// A permutation that keeps the leading axes and rotates the trailing ones (NCHW <-> NHWC) is
/// a batched 2-D transpose: on the fast CPU path, the blocked kernel (candle would copy the
/// permuted view element by element where it is read).
fn blocked_transpose(x: &Val, perm: &[usize], ctx: &Ctx) -> Result<Option<Val>> {
    let Val::F(t) = x else { return Ok(None) };
    let dims = t.dims();
    let rank = dims.len();
    if perm.len() != rank
        || t.dtype() != candle_core::DType::F32
        || !ctx.backend.fast_cpu(t.device())
    {
        return Ok(None);
    }
    // Leading axes kept: perm[..a] = 0..a; the rest a rotation: (s..rank) then (a..s).
    let a = perm
        .iter()
        .enumerate()
        .take_while(|&(i, &p)| i == p)
        .count();
    if a + 1 >= rank {
        return Ok(None);
    }
    let s = perm[a];
    let rotated = (s..rank).chain(a..s);
    if s <= a || !perm[a..].iter().copied().eq(rotated) {
        return Ok(None);
    }
    let (batch, rows, cols): (usize, usize, usize) = (
        dims[..a].iter().product(),
        dims[a..s].iter().product(),
        dims[s..].iter().product(),
    );
    let out: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let y = crate::engine::ops::transpose::transpose_2d(t, (batch, rows, cols))?;
    Ok(Some(Val::F(y.reshape(out)?)))
}

fn transpose(x: &Val, perm: &[usize]) -> Result<Val> {
    let dims = x.dims();
    let mut seen = vec![false; dims.len()];
    if perm.len() != dims.len()
        || perm
            .iter()
            .any(|&p| p >= dims.len() || std::mem::replace(&mut seen[p], true))
    {
        return Err(bad(
            "Transpose",
            format!("perm {perm:?} for a rank-{} tensor", dims.len()),
        ));
    }
    Ok(match x {
        Val::F(t) => Val::F(t.permute(perm.to_vec())?),
        Val::I(i) => {
            let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
            let strides = strides(&dims);
            let data = indices(&out_dims)
                .map(|idx| {
                    i.data[idx
                        .iter()
                        .zip(perm)
                        .map(|(&v, &p)| v * strides[p])
                        .sum::<usize>()]
                })
                .collect();
            Val::I(Ints::new(out_dims, data)?)
        }
    })
}

fn concat(inputs: &[Option<&Val>], a: i64, ctx: &Ctx) -> Result<Val> {
    let vals: Vec<&Val> = inputs.iter().flatten().copied().collect();
    if vals.is_empty() {
        return Err(bad("Concat", "no inputs"));
    }
    let rank = vals.first().map_or(0, |v| v.dims().len());
    let a = axis(a, rank, "Concat")?;
    if vals.iter().all(|v| matches!(v, Val::I(_))) {
        let parts: Vec<Ints> = vals
            .iter()
            .map(|v| v.ints("Concat"))
            .collect::<Result<_>>()?;
        let same = |p: &Ints| {
            p.dims.len() == rank && (0..rank).all(|k| k == a || p.dims[k] == parts[0].dims[k])
        };
        if !parts.iter().all(same) {
            return Err(bad("Concat", "inputs of different shapes"));
        }
        let mut dims = parts[0].dims.clone();
        dims[a] = parts
            .iter()
            .map(|p| p.dims.get(a).copied().unwrap_or(0))
            .sum();
        let outer: usize = dims[..a].iter().product();
        let mut data = Vec::new();
        for o in 0..outer {
            for p in &parts {
                let chunk: usize = p.dims[a..].iter().product();
                data.extend_from_slice(&p.data[o * chunk..(o + 1) * chunk]);
            }
        }
        return Ok(Val::I(Ints::new(dims, data)?));
    }
    let ts: Vec<Tensor> = vals
        .iter()
        .map(|v| v.float(&ctx.device))
        .collect::<Result<_>>()?;
    Ok(Val::F(Tensor::cat(&ts, a)?))
}

fn split_val(x: &Val, a: i64, split: Option<Vec<i64>>, outputs: usize) -> Result<Vec<Val>> {
    let dims = x.dims();
    let a = axis(a, dims.len(), "Split")?;
    let n = dims[a];
    let sizes: Vec<usize> = match split {
        Some(s) => to_usize(&s, "Split")?,
        None => {
            let part = n.div_ceil(outputs.max(1));
            (0..outputs)
                .map(|i| part.min(n.saturating_sub(i * part)))
                .collect()
        }
    };
    if sizes.iter().sum::<usize>() != n {
        return Err(bad(
            "Split",
            format!("sizes {sizes:?} do not add up to {n}"),
        ));
    }
    let mut start = 0;
    sizes
        .iter()
        .map(|&len| {
            let v = narrow(x, a, start, len, 1)?;
            start += len;
            Ok(v)
        })
        .collect()
}

/// `len` elements from `start` along `a`, every `step`-th (step may be negative).
fn narrow(x: &Val, a: usize, start: usize, len: usize, step: i64) -> Result<Val> {
    match x {
        Val::F(t) if step == 1 => Ok(Val::F(t.narrow(a, start, len)?)),
        _ => {
            let picks: Vec<usize> = (0..len)
                .map(|i| (start as i64 + i as i64 * step) as usize)
                .collect();
            narrow_many(x, a, &picks)
        }
    }
}

fn slice(x: &Val, starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> Result<Val> {
    if starts.len() != ends.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(bad(
            "Slice",
            "starts, ends, axes and steps differ in length",
        ));
    }
    let mut v = x.clone();
    for i in 0..starts.len() {
        let dims = v.dims();
        let a = axis(axes[i], dims.len(), "Slice")?;
        let n = dims[a] as i64;
        let step = steps[i];
        if step == 0 {
            return Err(bad("Slice", "a step of 0"));
        }
        let fix = |s: i64| if s < 0 { s + n } else { s };
        let (start, end, len) = if step > 0 {
            let s = fix(starts[i]).clamp(0, n);
            let e = fix(ends[i]).clamp(0, n);
            (s, e, ((e - s).max(0) + step - 1) / step)
        } else {
            let s = fix(starts[i]).clamp(-1, n - 1);
            let e = fix(ends[i]).clamp(-1, n - 1);
            (s, e, ((s - e).max(0) + (-step) - 1) / (-step))
        };
        let _ = end;
        v = narrow(&v, a, start.max(0) as usize, len as usize, step)?;
    }
    Ok(v)
}

fn gather(x: &Val, idx: &Ints, a: i64) -> Result<Val> {
    let dims = x.dims();
    let a = axis(a, dims.len(), "Gather")?;
    let n = dims[a] as i64;
    let flat: Vec<usize> = idx
        .data
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + n } else { i };
            (0..n)
                .contains(&j)
                .then_some(j as usize)
                .ok_or_else(|| bad("Gather", format!("index {i} out of range for {n}")))
        })
        .collect::<Result<_>>()?;
    let picked = narrow_many(x, a, &flat)?;
    let mut out: Vec<usize> = dims[..a].to_vec();
    out.extend_from_slice(&idx.dims);
    out.extend_from_slice(&dims[a + 1..]);
    reshape(&picked, out)
}

/// The elements at `picks` along axis `a`, in that order.
fn narrow_many(x: &Val, a: usize, picks: &[usize]) -> Result<Val> {
    match x {
        Val::F(t) => {
            let idx: Vec<u32> = picks.iter().map(|&p| p as u32).collect();
            let idx = Tensor::from_vec(idx, picks.len(), t.device())?;
            Ok(Val::F(t.contiguous()?.index_select(&idx, a)?))
        }
        Val::I(i) => {
            let dims = &i.dims;
            let mut out = dims.clone();
            out[a] = picks.len();
            let outer: usize = dims[..a].iter().product();
            let inner: usize = dims[a + 1..].iter().product();
            let mut data = Vec::with_capacity(outer * picks.len() * inner);
            for o in 0..outer {
                for &p in picks {
                    let at = (o * dims[a] + p) * inner;
                    data.extend_from_slice(&i.data[at..at + inner]);
                }
            }
            Ok(Val::I(Ints::new(out, data)?))
        }
    }
}

/// Constant padding of every dimension (`pads`: all the befores, then all the afters).
fn pad(x: &Tensor, pads: &[i64], value: f32) -> Result<Val> {
    let rank = x.rank();
    if pads.len() != 2 * rank || pads.iter().any(|&p| p < 0) {
        return Err(bad(
            "Pad",
            format!("pads {pads:?} for a rank-{rank} tensor (negative pads are not supported)"),
        ));
    }
    let out: Vec<usize> = (0..rank)
        .map(|a| x.dims()[a].saturating_add((pads[a] + pads[a + rank]).min(1 << 24) as usize))
        .collect();
    checked_count(&out, "Pad")?;
    let mut y = x.clone();
    for a in 0..rank {
        let (l, r) = (pads[a] as usize, pads[a + rank] as usize);
        if l == 0 && r == 0 {
            continue;
        }
        y = if value == 0.0 {
            y.pad_with_zeros(a, l, r)?
        } else {
            let mut side = y.dims().to_vec();
            let mut parts = Vec::new();
            side[a] = l;
            parts.push(Tensor::full(value, side.as_slice(), y.device())?);
            parts.push(y.clone());
            side[a] = r;
            parts.push(Tensor::full(value, side.as_slice(), y.device())?);
            Tensor::cat(&parts, a)?
        };
    }
    Ok(Val::F(y))
}
