//! Integer tensors' arithmetic on the host: what graphs compute shapes, indices and masks
//! with (see [`super::value`]).

use candle_core::{DType, Tensor};

use super::value::{Binary, Ctx, Ints, Val, broadcast, input};
use crate::error::{Error, Result};

/// The most integers a host op may create (shape arithmetic is tiny; a file asking for more
/// is refused rather than allowed to exhaust memory).
pub(crate) const MAX_INTS: usize = 1 << 24;

pub(crate) fn checked_count(dims: &[usize], what: &str) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_INTS * 16)
        .ok_or_else(|| bad(what, format!("a shape of {dims:?} is too large")))
}

fn bad(what: &str, msg: impl std::fmt::Display) -> Error {
    Error::Weights(format!("{what}: {msg}"))
}

pub(crate) fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Every multi-index of `dims`, row-major.
pub(crate) fn indices(dims: &[usize]) -> impl Iterator<Item = Vec<usize>> + '_ {
    let n: usize = dims.iter().product();
    (0..n).map(move |mut flat| {
        let mut idx = vec![0; dims.len()];
        for a in (0..dims.len()).rev() {
            idx[a] = flat % dims[a];
            flat /= dims[a];
        }
        idx
    })
}

pub(crate) fn broadcast_ints(i: &Ints, dims: &[usize]) -> Result<Ints> {
    checked_count(dims, "Expand")?;
    let off = dims.len() - i.dims.len();
    let src_strides = strides(&i.dims);
    let data = indices(dims)
        .map(|idx| {
            let at: usize = (0..i.dims.len())
                .map(|k| {
                    if i.dims[k] == 1 {
                        0
                    } else {
                        idx[k + off] * src_strides[k]
                    }
                })
                .sum();
            i.data[at]
        })
        .collect();
    Ints::new(dims.to_vec(), data)
}

/// Elementwise integer arithmetic and comparisons with broadcasting.
pub(crate) fn binary_ints(op: Binary, a: &Ints, b: &Ints) -> Result<Ints> {
    let dims = broadcast(&a.dims, &b.dims, "integer op")?;
    let (a, b) = (broadcast_ints(a, &dims)?, broadcast_ints(b, &dims)?);
    let f = |x: i64, y: i64| -> Result<i64> {
        Ok(match op {
            Binary::Add => x.wrapping_add(y),
            Binary::Sub => x.wrapping_sub(y),
            Binary::Mul => x.wrapping_mul(y),
            Binary::Div | Binary::Mod if y == 0 => {
                return Err(bad("integer op", "division by zero"));
            }
            Binary::Div => x.wrapping_div(y),
            Binary::Mod => x.rem_euclid(y) + if y < 0 && x.rem_euclid(y) != 0 { y } else { 0 },
            Binary::Pow => x
                .checked_pow(u32::try_from(y).unwrap_or(u32::MAX))
                .unwrap_or(i64::MAX),
            Binary::Equal => (x == y) as i64,
            Binary::Less => (x < y) as i64,
            Binary::Greater => (x > y) as i64,
            Binary::And => (x != 0 && y != 0) as i64,
            Binary::Or => (x != 0 || y != 0) as i64,
        })
    };
    let data = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| f(x, y))
        .collect::<Result<_>>()?;
    Ints::new(dims, data)
}

pub(crate) fn where_ints(c: &Ints, a: &Ints, b: &Ints) -> Result<Ints> {
    let dims = broadcast(&broadcast(&c.dims, &a.dims, "Where")?, &b.dims, "Where")?;
    let (c, a, b) = (
        broadcast_ints(c, &dims)?,
        broadcast_ints(a, &dims)?,
        broadcast_ints(b, &dims)?,
    );
    let data = (0..c.data.len())
        .map(|i| if c.data[i] != 0 { a.data[i] } else { b.data[i] })
        .collect();
    Ints::new(dims, data)
}

/// ScatterND on constants and shapes (Swin's attention masks), on the host.
pub(crate) fn scatter_nd(inputs: &[Option<&Val>], ctx: &Ctx) -> Result<Val> {
    let data = input(inputs, 0)?;
    let idx = input(inputs, 1)?.ints("ScatterND indices")?;
    let updates = input(inputs, 2)?;
    let dims = data.dims();
    let k = *idx
        .dims
        .last()
        .ok_or_else(|| bad("ScatterND", "scalar indices"))?;
    if k > dims.len() {
        return Err(bad("ScatterND", "indices deeper than the data"));
    }
    let inner: usize = dims[k..].iter().product();
    let st = strides(&dims[..k]);
    let outer: usize = dims[..k].iter().product();
    let at = |row: &[i64]| -> Result<usize> {
        let mut flat = 0;
        for (j, &i) in row.iter().enumerate() {
            let n = dims[j] as i64;
            let i = if i < 0 { i + n } else { i };
            if !(0..n).contains(&i) {
                return Err(bad("ScatterND", format!("index {i} out of range")));
            }
            flat += i as usize * st[j];
        }
        Ok(flat.min(outer) * inner)
    };
    let rows: Vec<&[i64]> = if k == 0 {
        vec![&[]]
    } else {
        idx.data.chunks(k).collect()
    };
    match (data, updates) {
        (Val::I(d), u) => {
            let u = u.ints("ScatterND updates")?;
            let mut out = d.data.clone();
            for (r, row) in rows.iter().enumerate() {
                let o = at(row)?;
                let src = u
                    .data
                    .get(r * inner..(r + 1) * inner)
                    .ok_or_else(|| bad("ScatterND", "too few updates"))?;
                out[o..o + inner].copy_from_slice(src);
            }
            Ok(Val::I(Ints::new(dims, out)?))
        }
        (Val::F(d), u) => {
            let u = u.float(&ctx.device)?;
            if d.track_op() || u.track_op() {
                return Err(bad(
                    "ScatterND",
                    "on an activation (only on constants and shapes)",
                ));
            }
            let mut out = d.flatten_all()?.to_vec1::<f32>()?;
            let u = u.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            for (r, row) in rows.iter().enumerate() {
                let o = at(row)?;
                let src = u
                    .get(r * inner..(r + 1) * inner)
                    .ok_or_else(|| bad("ScatterND", "too few updates"))?;
                out[o..o + inner].copy_from_slice(src);
            }
            Ok(Val::F(Tensor::from_vec(out, dims, d.device())?))
        }
    }
}
