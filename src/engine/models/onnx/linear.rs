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

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::super::ops::{Binary, Kind};
    use crate::engine::models::layers::Weights;

    /// `(linear steps, binary Mul steps)` of a fixture graph once lowered.
    fn lowered(file: &str) -> (usize, usize) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx");
        let f = super::super::read_onnx(&path.join(file)).unwrap();
        let opset = f
            .model
            .opset_import
            .iter()
            .map(|o| o.version)
            .max()
            .unwrap();
        let w = Weights::new(f.initializers.clone());
        let p = super::super::lower::lower(&f.model.graph, opset, &w, &Device::Cpu).unwrap();
        let count = |pred: &dyn Fn(&Kind) -> bool| p.steps.iter().filter(|s| pred(&s.kind)).count();
        (
            count(&|k| matches!(k, Kind::Linear(_))),
            count(&|k| matches!(k, Kind::Binary(Binary::Mul))),
        )
    }

    /// Every linear layer of ConvNeXt becomes one step with its bias and layer scale (the
    /// torchvision export has two MatMuls + bias Adds per block and the head's Gemm, each
    /// block's layer scale a Mul after a Transpose; the exact GELU's Muls fold into a GELU);
    /// ViT's projections and MLPs likewise, its attention products (two operands that are
    /// both activations) stay MatMuls.
    #[test]
    fn linear_layers_absorb_their_bias_and_layer_scale() {
        let (linear, muls) = lowered("convnext_tiny.onnx");
        assert!(linear >= 3 && linear % 2 == 1, "{linear} linear steps");
        assert_eq!(muls, 0, "a layer scale or GELU Mul was left");
        let (linear, _) = lowered("vit_b_16.onnx");
        assert!(linear >= 5, "{linear} linear steps");
    }
}
