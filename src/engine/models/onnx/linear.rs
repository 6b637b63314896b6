//! Linear layers: a `Gemm`, or a `MatMul` by a constant matrix and the constant bias a lone
//! `Add` puts on its output, made one step whose weights are packed once for the engine's
//! GEMM ([`PackedLinear`]) on the CPU; elsewhere (a GPU, the device-generic backend) the
//! same step multiplies with candle's matmul.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::value::Ctx;
use crate::engine::ops::linear::PackedLinear;
use crate::error::Result;

/// `y = x w + bias` for a constant `w` `[k, n]`.
#[derive(Debug)]
pub(crate) struct LinearStep {
    weight: Tensor,
    bias: Option<Tensor>,
    packed: Option<Arc<PackedLinear>>,
}

impl LinearStep {
    /// `weight` `[k, n]` and `bias` `[n]` (f32, on the CPU), for a model on `device`.
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>, device: &Device) -> Result<Self> {
        let (k, n) = weight.dims2()?;
        let packed = if device.is_cpu() {
            let w = weight.flatten_all()?.to_vec1::<f32>()?;
            let b = bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?;
            Some(Arc::new(PackedLinear::new(&w, k, n, b)))
        } else {
            None
        };
        Ok(LinearStep {
            weight: weight.to_device(device)?,
            bias: bias.map(|b| b.to_device(device)).transpose()?,
            packed,
        })
    }

    pub(crate) fn run(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if let Some(packed) = &self.packed
            && ctx.backend.fast_cpu(x.device())
        {
            return Ok(packed.apply(&x.contiguous()?)?);
        }
        let y = by_weight(&x.contiguous()?, &self.weight)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// `a [.., m, k] @ w [k, n]` for a constant `w` with candle's matmul, whose backward computes
/// the input's gradient only: candle's matmul backward also multiplies out the weight's
/// gradient, which nothing reads, a third of a linear layer's forward + backward.
pub(crate) fn by_weight(a: &Tensor, w: &Tensor) -> Result<Tensor> {
    let y = a.detach().broadcast_matmul(w)?;
    let wt = w.t()?;
    Ok(crate::engine::ops::generic::attach(
        a,
        y,
        move |_, _, g| g.contiguous()?.broadcast_matmul(&wt),
    )?)
}
