//! ReLU and ReLU6 whose backward pass is either the true derivative or guided backprop.
//!
//! Guided backpropagation (Springenberg et al., 2015) passes a gradient through a ReLU only
//! where the forward input was positive *and* the incoming gradient is positive:
//! `grad_in = relu(grad_out) * 1[x > 0]` (ReLU6: `1[0 < x < 6]`). Putting this in the op itself,
//! rather than in hooks, means no ReLU on the path can be missed.

use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::op::{Relu, Sub};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, Layout, MetalStorage, Result, Shape, Tensor,
};
use rayon::prelude::*;

use super::{Backend, generic};

/// How ReLU-type activations back-propagate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReluMode {
    /// The true derivative (vanilla gradient).
    #[default]
    Plain,
    /// Guided backpropagation: negative incoming gradients are zeroed as well.
    Guided,
}

/// ReLU (`cap == None`) or ReLU6 (`cap == Some(6.0)`) with the backward chosen by `mode`.
#[derive(Clone, Copy, Debug)]
pub struct ReluOp {
    pub cap: Option<f32>,
    pub mode: ReluMode,
}

/// `max(x, 0)`, back-propagating per `mode`.
pub fn relu(x: &Tensor, mode: ReluMode) -> Result<Tensor> {
    ReluOp::relu(mode).forward(x)
}

/// `min(max(x, 0), 6)`, back-propagating per `mode`.
pub fn relu6(x: &Tensor, mode: ReluMode) -> Result<Tensor> {
    ReluOp::relu6(mode).forward(x)
}

impl ReluOp {
    pub fn relu(mode: ReluMode) -> Self {
        ReluOp { cap: None, mode }
    }

    pub fn relu6(mode: ReluMode) -> Self {
        ReluOp {
            cap: Some(6.0),
            mode,
        }
    }

    /// Applies the activation to a tensor as a graph op.
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self)
    }

    /// The activation on `backend`'s path for `x`'s device: elementwise tensor ops forward and
    /// backward on the device-generic path, else [`ReluOp::forward`].
    pub fn forward_on(self, x: &Tensor, backend: Backend) -> Result<Tensor> {
        if !backend.generic(x.device()) {
            return self.forward(x);
        }
        let d = x.detach();
        let y = match self.cap {
            None => d.relu()?,
            Some(cap) => d.clamp(0f32, cap)?,
        };
        generic::attach(x, y, move |x, _, g| self.generic_grad(x, g))
    }

    /// The backward from the input `x` as elementwise tensor ops (any device).
    fn generic_grad(&self, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let mut gate = x.gt(0.0)?.to_dtype(x.dtype())?;
        if let Some(cap) = self.cap {
            gate = gate.mul(&x.lt(cap as f64)?.to_dtype(x.dtype())?)?;
        }
        let g = match self.mode {
            ReluMode::Guided => grad.relu()?,
            ReluMode::Plain => grad.clone(),
        };
        g.mul(&gate)
    }

    /// The activation of one value, for ops that fuse it.
    #[inline(always)]
    pub(crate) fn apply(&self, v: f32) -> f32 {
        v.max(0.0).min(self.cap.unwrap_or(f32::INFINITY))
    }

    /// The backward over a buffer, from the activation's *output* `y`: `0 < y < cap` exactly
    /// when `0 < x < cap`, so fused ops need not keep their pre-activation values. (Given the
    /// input instead, it is the backward from the input.)
    /// One value of [`Self::grad_from_outputs`]: `g` where `0 < y < cap` (and, guided,
    /// `g > 0`), else 0.
    #[inline(always)]
    pub(crate) fn grad_at(&self, y: f32, g: f32) -> f32 {
        let cap = self.cap.unwrap_or(f32::INFINITY);
        let floor = if self.mode == ReluMode::Guided {
            0.0
        } else {
            f32::NEG_INFINITY
        };
        if y > 0.0 && y < cap {
            g.max(floor)
        } else {
            0.0
        }
    }

    /// The input gradient from the outputs `y` and their gradient `g`, written into every
    /// element of `dst` (callers rely on that to treat `dst` as initialised afterwards).
    pub(crate) fn grad_from_outputs(&self, dst: &mut [MaybeUninit<f32>], y: &[f32], g: &[f32]) {
        assert!(
            y.len() >= dst.len() && g.len() >= dst.len(),
            "relu gradient: {} outputs for {} values",
            y.len().min(g.len()),
            dst.len()
        );
        let cap = self.cap.unwrap_or(f32::INFINITY);
        super::simd::relu_grad(dst, y, g, cap, self.mode == ReluMode::Guided)
    }

    /// Device-generic forward from candle's storage primitives: relu6(x) = relu(x) - relu(x - 6).
    fn generic_fwd<S: BackendStorage>(&self, s: &S, l: &Layout) -> Result<(S, Shape)> {
        let r = s.unary_impl::<Relu>(l)?;
        let out = match self.cap {
            None => r,
            Some(cap) => {
                let c = Layout::contiguous(l.shape());
                let over = s.affine(l, 1.0, -(cap as f64))?.unary_impl::<Relu>(&c)?;
                r.binary_impl::<Sub>(&over, &c, &c)?
            }
        };
        Ok((out, l.shape().clone()))
    }
}

impl CustomOp1 for ReluOp {
    fn name(&self) -> &'static str {
        match (self.cap.is_some(), self.mode) {
            (false, ReluMode::Plain) => "relu",
            (false, ReluMode::Guided) => "guided-relu",
            (true, ReluMode::Plain) => "relu6",
            (true, ReluMode::Guided) => "guided-relu6",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32_slice(self.name(), storage, layout)?;
        let y: Vec<f32> = x.par_iter().map(|&v| self.apply(v)).collect();
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        self.generic_fwd(s, l)
    }

    fn metal_fwd(&self, s: &MetalStorage, l: &Layout) -> Result<(MetalStorage, Shape)> {
        self.generic_fwd(s, l)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if arg.device().is_cpu() {
            let out = super::with_cpu_f32(arg, |x| {
                super::with_cpu_f32(grad, |g| {
                    const CHUNK: usize = 1 << 16;
                    let fill = |out: &mut [MaybeUninit<f32>]| {
                        out.par_chunks_mut(CHUNK)
                            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                            .for_each(|(o, (x, g))| self.grad_from_outputs(o, x, g))
                    };
                    // SAFETY: `grad_from_outputs` writes all of each chunk (x, g: same length).
                    unsafe { super::vec_written_by(x.len(), fill) }
                })
            })??;
            return Ok(Some(Tensor::from_vec(out, arg.shape(), arg.device())?));
        }
        Ok(Some(self.generic_grad(arg, grad)?))
    }
}
