//! What flows along a graph's edges: float activations as candle tensors (on the model's device,
//! in the autograd graph), and integer tensors (shapes, indices, masks) as small host arrays.
//!
//! Why two kinds: ONNX graphs compute shapes at run time (`Shape -> Gather -> Concat ->
//! Reshape`); doing that arithmetic on the device would cost a round trip per op and would put
//! integers into the gradient graph. Integers never carry a gradient, so they live on the host.

use candle_core::{DType, Device, Tensor};

use crate::engine::ops::Backend;
use crate::engine::ops::activation::ReluMode;

use crate::error::{Error, Result};

/// What one evaluation needs besides the values.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub(crate) mode: ReluMode,
    pub(crate) backend: Backend,
    pub(crate) device: Device,
}

/// A value in the graph.
#[derive(Clone, Debug)]
pub(crate) enum Val {
    /// A float tensor (f32), possibly tracked by autograd.
    F(Tensor),
    /// An integer (or boolean) tensor on the host.
    I(Ints),
}

/// A host integer tensor, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ints {
    pub(crate) dims: Vec<usize>,
    pub(crate) data: Vec<i64>,
}

impl Ints {
    pub(crate) fn new(dims: Vec<usize>, data: Vec<i64>) -> Result<Self> {
        if dims.iter().product::<usize>() != data.len() {
            return Err(Error::Weights(format!(
                "an integer tensor of shape {dims:?} holds {} values",
                data.len()
            )));
        }
        Ok(Ints { dims, data })
    }

    pub(crate) fn vector(data: Vec<i64>) -> Self {
        Ints {
            dims: vec![data.len()],
            data,
        }
    }

    pub(crate) fn scalar(v: i64) -> Self {
        Ints {
            dims: vec![],
            data: vec![v],
        }
    }

    pub(crate) fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let data: Vec<f32> = self.data.iter().map(|&v| v as f32).collect();
        Ok(Tensor::from_vec(data, self.dims.as_slice(), device)?)
    }
}

impl Val {
    /// A tensor read from the file: floats stay tensors, integers and booleans become [`Ints`].
    pub(crate) fn from_tensor(t: Tensor) -> Result<Self> {
        Ok(match t.dtype() {
            DType::F32 => Val::F(t),
            DType::F16 | DType::BF16 | DType::F64 => Val::F(t.to_dtype(DType::F32)?),
            _ => {
                let dims = t.dims().to_vec();
                let data = t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
                Val::I(Ints::new(dims, data)?)
            }
        })
    }

    pub(crate) fn dims(&self) -> Vec<usize> {
        match self {
            Val::F(t) => t.dims().to_vec(),
            Val::I(i) => i.dims.clone(),
        }
    }

    /// The float tensor, converting integers (ONNX graphs mix them through `Cast`).
    pub(crate) fn float(&self, device: &Device) -> Result<Tensor> {
        match self {
            Val::F(t) => Ok(t.clone()),
            Val::I(i) => i.to_tensor(device),
        }
    }

    /// The integers, truncating floats towards zero (how `Cast` to an integer type rounds);
    /// a float tensor that takes part in the gradient is refused: integers carry none.
    pub(crate) fn ints(&self, what: &str) -> Result<Ints> {
        match self {
            Val::I(i) => Ok(i.clone()),
            Val::F(t) => {
                if t.elem_count() > MAX_HOST_FLOATS {
                    return Err(Error::Weights(format!(
                        "{what}: a float tensor of shape {:?} used as integers",
                        t.dims()
                    )));
                }
                let data = t
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .map(|v| v as i64)
                    .collect();
                Ints::new(t.dims().to_vec(), data)
            }
        }
    }
}

/// Float tensors larger than this are never brought to the host as integers: a graph doing
/// so is computing on activations, which integer ops must not do.
const MAX_HOST_FLOATS: usize = 1 << 20;

/// Resolves a possibly negative `axis` of a rank-`rank` tensor.
pub(crate) fn axis(axis: i64, rank: usize, what: &str) -> Result<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a as usize >= rank.max(1) {
        return Err(Error::Weights(format!(
            "{what}: axis {axis} is out of range for a rank-{rank} tensor"
        )));
    }
    Ok(a as usize)
}

/// ONNX (numpy) broadcasting of two shapes.
pub(crate) fn broadcast(a: &[usize], b: &[usize], what: &str) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let at = |s: &[usize], i: usize| (i + s.len()).checked_sub(n).map_or(1, |j| s[j]);
    (0..n)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            (x, y) => Err(Error::Weights(format!(
                "{what}: shapes {a:?} and {b:?} do not broadcast ({x} vs {y})"
            ))),
        })
        .collect()
}

/// Elementwise ops of two broadcast inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Equal,
    Less,
    Greater,
    Mod,
    And,
    Or,
}

/// Input `i` of a node, which must be there.
pub(crate) fn input<'a>(inputs: &[Option<&'a Val>], i: usize) -> Result<&'a Val> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| Error::Weights(format!("input {i} of a node is missing")))
}

/// Optional input `i` of a node.
pub(crate) fn opt<'a>(inputs: &[Option<&'a Val>], i: usize) -> Option<&'a Val> {
    inputs.get(i).copied().flatten()
}
