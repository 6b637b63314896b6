//! A run of our CPU layers executed as one candle op, with a backward pass of its own.
//!
//! Why: candle's autograd gives every graph edge a zero-filled gradient buffer and then adds
//! the incoming gradient into it (a fresh allocation, a memset and a full read-read-write pass
//! per edge), and runs its bookkeeping on one thread between the layers' parallel loops. For a
//! network body of fused layers that cost 5-15 % of a ResNet-50 or Lite0 pass and a quarter
//! of an Xception one. Inside a chain a gradient moves from layer to layer; it is added only
//! where a value feeds two layers (residuals), in place.
//!
//! The chain is built per forward call from the model's layers (cheap: weights are shared
//! tensors). Every step's output is kept for the backward pass, as candle keeps the outputs of
//! the separate ops.

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::ReluOp;
use super::conv_act::ConvCache;
use super::depthwise::DepthwiseConv2d;
use super::geometry::Padding;
use super::pool::MaxPool2d;
use super::{conv_act, depthwise};

/// A value of the chain: its input (0) or a step's output (step index + 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Value(usize);

type Dims = (usize, usize, usize, usize);

enum Kernel {
    Conv(conv_act::Applied),
    Depthwise(depthwise::Applied),
    MaxPool(MaxPool2d, Dims),
    /// An activation on its own (on a value that is also used before it).
    Act(ReluOp),
    /// `input + skip`.
    Add,
}

struct Step {
    kernel: Kernel,
    input: Value,
    skip: Option<Value>,
}

/// Builds a chain on an input of known size; each method adds a step and returns its output.
pub struct Chain {
    /// The size of every value, the input's first.
    dims: Vec<Dims>,
    steps: Vec<Step>,
    /// The steps' outputs from the forward pass (all but the last, which candle keeps).
    saved: Mutex<Vec<Vec<f32>>>,
    /// Keep every value for a backward pass; without one (forward only: classifying,
    /// faithfulness curves) each value is freed after its last use.
    keep_values: bool,
}

impl Chain {
    /// A chain whose input is a batch `[n, c, h, w]`.
    pub fn new(input_dims: Dims) -> Self {
        Chain {
            dims: vec![input_dims],
            steps: Vec::new(),
            saved: Mutex::new(Vec::new()),
            keep_values: true,
        }
    }

    /// The chain's input.
    pub const INPUT: Value = Value(0);

    /// The size of `v`.
    pub fn dims(&self, v: Value) -> Dims {
        self.dims[v.0]
    }

    fn push(&mut self, kernel: Kernel, input: Value, skip: Option<Value>, out: Dims) -> Value {
        self.steps.push(Step {
            kernel,
            input,
            skip,
        });
        self.dims.push(out);
        Value(self.dims.len() - 1)
    }

    /// `act(conv(pad(x), weight) + bias [+ skip])`, as [`conv_act::conv_act`] and
    /// [`conv_act::conv_add_act`].
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        x: Value,
        skip: Option<Value>,
        (weight, bias, cache): (&Tensor, &Tensor, &Arc<ConvCache>),
        stride: usize,
        pad: Padding,
        act: Option<ReluOp>,
    ) -> Result<Value> {
        let dims = self.dims(x);
        let op = conv_act::Applied::for_input(dims, weight, bias, stride, pad, act, cache.clone())?;
        let out = op.out_dims();
        if let Some(s) = skip
            && self.dims(s) != out
        {
            candle_core::bail!("residual of shape {:?}, expected {out:?}", self.dims(s))
        }
        Ok(self.push(Kernel::Conv(op), x, skip, out))
    }

    /// A depthwise convolution followed by `act`.
    pub fn depthwise(
        &mut self,
        x: Value,
        conv: &DepthwiseConv2d,
        pad: Padding,
        act: Option<ReluOp>,
    ) -> Result<Value> {
        let op = conv.for_input(self.dims(x), pad, act)?;
        let out = op.out_dims();
        Ok(self.push(Kernel::Depthwise(op), x, None, out))
    }

    pub fn max_pool(&mut self, x: Value, pool: MaxPool2d) -> Value {
        let dims = self.dims(x);
        let out = pool.out_dims(dims);
        self.push(Kernel::MaxPool(pool, dims), x, None, out)
    }

    /// `act(x)` as a step of its own.
    pub fn act(&mut self, x: Value, act: ReluOp) -> Value {
        let dims = self.dims(x);
        self.push(Kernel::Act(act), x, None, dims)
    }

    /// `a + b`, which must have the same size.
    pub fn add(&mut self, a: Value, b: Value) -> Result<Value> {
        let dims = self.dims(a);
        if self.dims(b) != dims {
            candle_core::bail!("adding {:?} to {dims:?}", self.dims(b))
        }
        Ok(self.push(Kernel::Add, a, Some(b), dims))
    }

    /// Runs the chain on `x` and returns `out`, which must be its last value.
    pub fn run(self, x: &Tensor, out: Value) -> Result<Tensor> {
        if x.dims4()? != self.dims[0] {
            candle_core::bail!("chain built for {:?}, got {:?}", self.dims[0], x.dims())
        }
        if out.0 != self.steps.len() {
            candle_core::bail!("a chain's output must be its last value")
        }
        if self.steps.is_empty() {
            return Ok(x.clone());
        }
        let chain = Chain {
            keep_values: x.track_op(),
            ..self
        };
        x.contiguous()?.apply_op1(chain)
    }

    /// Adds `g` into the gradient slot of a value: moved in when it is the first.
    fn accumulate(slot: &mut Option<Vec<f32>>, g: Vec<f32>) {
        match slot {
            None => *slot = Some(g),
            Some(acc) => acc
                .par_chunks_mut(1 << 14)
                .zip(g.par_chunks(1 << 14))
                .for_each(|(a, g)| a.iter_mut().zip(g).for_each(|(a, g)| *a += g)),
        }
    }
}

impl CustomOp1 for Chain {
    fn name(&self) -> &'static str {
        "layer-chain"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32_slice(self.name(), storage, layout)?;
        // Forward only: the step after which each value is read no more.
        let last_use: Vec<usize> = if self.keep_values {
            Vec::new()
        } else {
            let mut last = vec![0; self.steps.len() + 1];
            for (i, step) in self.steps.iter().enumerate() {
                for v in std::iter::once(step.input).chain(step.skip) {
                    last[v.0] = i;
                }
            }
            last
        };
        let mut values: Vec<Vec<f32>> = Vec::with_capacity(self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            let value = |v: Value| if v.0 == 0 { x } else { &values[v.0 - 1][..] };
            let (input, skip) = (value(step.input), step.skip.map(value));
            let out = match &step.kernel {
                Kernel::Conv(op) => op.forward_vec(input, skip)?,
                Kernel::Depthwise(op) => op.forward_vec(input),
                Kernel::MaxPool(pool, dims) => pool.forward_vec(input, *dims),
                Kernel::Act(act) => input.par_iter().map(|&v| act.apply(v)).collect(),
                Kernel::Add => {
                    let b = skip.expect("an add step has two inputs");
                    input.par_iter().zip(b).map(|(a, b)| a + b).collect()
                }
            };
            values.push(out);
            if !self.keep_values {
                for (v, &l) in last_use.iter().enumerate().skip(1).take(i) {
                    if l == i {
                        values[v - 1] = Vec::new();
                    }
                }
            }
        }
        let last = values.pop().expect("a chain has steps");
        *self.saved.lock().expect("chain values") = values;
        let dims = *self.dims.last().expect("a chain has steps");
        Ok((CpuStorage::F32(last), Shape::from(dims)))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let saved = std::mem::take(&mut *self.saved.lock().expect("chain values"));
        let gx = super::with_cpu_f32(arg, |x| {
            super::with_cpu_f32(res, |last| {
                super::with_cpu_f32(grad, |g| self.backward(x, saved, last, g))
            })
        })????;
        Ok(Some(Tensor::from_vec(gx, arg.shape(), arg.device())?))
    }
}

impl Chain {
    /// The input gradient, from the input `x`, the saved values, the last value and its
    /// gradient. A value whose gradient never arrives (no path to the output) counts as 0.
    /// Each saved value is freed once its producer is done (its consumers come after it in
    /// the forward order, so before it here): memory falls as the pass goes.
    fn backward(
        &self,
        x: &[f32],
        mut saved: Vec<Vec<f32>>,
        last: &[f32],
        g_last: &[f32],
    ) -> Result<Vec<f32>> {
        if saved.len() + 1 != self.steps.len() {
            candle_core::bail!("layer chain: backward without a matching forward pass")
        }
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; self.steps.len() + 1];
        grads[self.steps.len()] = Some(g_last.to_vec());
        for (i, step) in self.steps.iter().enumerate().rev() {
            let Some(gy) = grads[i + 1].take() else {
                if let Some(unused) = saved.get_mut(i) {
                    *unused = Vec::new();
                }
                continue;
            };
            let value = |v: Value| match v.0 {
                0 => x,
                i if i == self.steps.len() => last,
                i => &saved[i - 1][..],
            };
            let y = value(Value(i + 1));
            match &step.kernel {
                Kernel::Conv(op) => {
                    let (gated, gx) = op.backward_vec(y, &gy, step.skip.is_some())?;
                    Self::accumulate(&mut grads[step.input.0], gx);
                    if let Some(s) = step.skip {
                        Self::accumulate(&mut grads[s.0], gated.unwrap_or(gy));
                    }
                }
                Kernel::Depthwise(op) => {
                    Self::accumulate(&mut grads[step.input.0], op.backward_vec(y, &gy))
                }
                Kernel::MaxPool(pool, dims) => {
                    let gx = pool.backward_vec(value(step.input), *dims, &gy);
                    Self::accumulate(&mut grads[step.input.0], gx)
                }
                Kernel::Act(act) => {
                    let fill = |gx: &mut [MaybeUninit<f32>]| {
                        gx.par_chunks_mut(1 << 14)
                            .zip(y.par_chunks(1 << 14).zip(gy.par_chunks(1 << 14)))
                            .for_each(|(d, (y, g))| act.grad_from_outputs(d, y, g))
                    };
                    // SAFETY: `grad_from_outputs` writes all of each chunk.
                    let gx = unsafe { super::vec_written_by(gy.len(), fill) };
                    Self::accumulate(&mut grads[step.input.0], gx)
                }
                Kernel::Add => {
                    let skip = step.skip.expect("an add step has two inputs");
                    Self::accumulate(&mut grads[skip.0], gy.clone());
                    Self::accumulate(&mut grads[step.input.0], gy)
                }
            }
            if let Some(done) = saved.get_mut(i) {
                *done = Vec::new();
            }
        }
        Ok(grads[0].take().unwrap_or_else(|| vec![0.0; x.len()]))
    }
}
