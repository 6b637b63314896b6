//! Linear layers: a `Gemm`, or a `MatMul` by a constant matrix and the constant bias a lone
//! `Add` puts on its output, made one step whose weights are packed once for the engine's
//! GEMM ([`PackedLinear`]) on the CPU; elsewhere (a GPU, the device-generic backend) the
//! same step multiplies with candle's matmul.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::value::Ctx;
use crate::engine::ops::linear::PackedLinear;
use crate::error::Result;

/// `y = x w + bias` for a constant `w` `[k, n]`, then what it absorbed (see [`absorb`]).
#[derive(Debug)]
pub(crate) struct LinearStep {
    weight: Tensor,
    bias: Option<Tensor>,
    packed: Option<Arc<PackedLinear>>,
    /// A GELU on the output (`Some(tanh)`).
    pub(crate) gelu: Option<bool>,
    /// The output transposed from channels-last `[b, h, w, n]` to planes `[b, n, h, w]` and
    /// added to the step's second input (a ConvNeXt block's end).
    pub(crate) to_planes: bool,
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
            gelu: None,
            to_planes: false,
        })
    }

    /// The step on `x` (and, when it adds one, the residual).
    pub(crate) fn run(&self, x: &Tensor, residual: Option<&Tensor>, ctx: &Ctx) -> Result<Tensor> {
        let fast = self
            .packed
            .as_ref()
            .filter(|_| ctx.backend.fast_cpu(x.device()));
        let x = x.contiguous()?;
        if let Some(packed) = fast {
            match (self.gelu, residual) {
                (None, None) => return Ok(packed.apply(&x)?),
                (Some(tanh), None) => return Ok(packed.apply_gelu(&x, tanh)?),
                (None, Some(r)) if fits_planes(&x, r, packed.n()) => {
                    return Ok(packed.apply_to_planes(&x, &r.contiguous()?)?);
                }
                _ => {}
            }
        }
        // The ops the graph had, one by one (another device, or shapes the fused op does
        // not take).
        let mut y = match fast {
            Some(packed) => packed.apply(&x)?,
            None => {
                let y = by_weight(&x, &self.weight)?;
                match &self.bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
        };
        if let Some(tanh) = self.gelu {
            y = crate::engine::ops::fused::gelu_on(&y, tanh, ctx.backend)?;
        }
        if let Some(r) = residual {
            y = y.permute((0, 3, 1, 2))?.broadcast_add(r)?;
        }
        Ok(y)
    }
}

/// True when `x [b, h, w, k]` and `residual [b, n, h, w]` fit the fused op into planes.
fn fits_planes(x: &Tensor, residual: &Tensor, n: usize) -> bool {
    match x.dims() {
        &[b, h, w, _] => residual.dims() == [b, n, h, w] && residual.dtype() == DType::F32,
        _ => false,
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

    use super::super::ops::{Binary, Kind, Unary};
    use crate::engine::models::layers::Weights;

    /// `(linear steps, binary Mul steps, GELU steps, linear steps with a GELU, linear
    /// steps into planes, norms reading planes)` of a fixture graph once lowered.
    fn lowered(file: &str) -> [usize; 6] {
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
        [
            count(&|k| matches!(k, Kind::Linear(_))),
            count(&|k| matches!(k, Kind::Binary(Binary::Mul))),
            count(&|k| matches!(k, Kind::Unary(Unary::Gelu(_)))),
            count(&|k| matches!(k, Kind::Linear(l) if l.gelu.is_some())),
            count(&|k| matches!(k, Kind::Linear(l) if l.to_planes)),
            count(&|k| matches!(k, Kind::LayerNormFromPlanes { .. })),
        ]
    }

    /// Every linear layer of ConvNeXt becomes one step with its bias and layer scale (the
    /// torchvision export has two MatMuls + bias Adds per block and the head's Gemm, each
    /// block's layer scale a Mul after a Transpose; the exact GELU's Muls fold into a GELU),
    /// the first of each block with its GELU, the second with the transpose back to planes
    /// and the residual addition; each block's norm reads the depthwise convolution's planes
    /// (the transpose before it folded in). ViT's projections and MLPs likewise (its MLPs' GELUs
    /// absorbed, nothing into planes); its attention products (two operands that are both
    /// activations) stay MatMuls.
    #[test]
    fn linear_layers_absorb_their_bias_layer_scale_gelu_and_residual() {
        let [linear, muls, gelus, with_gelu, planes, norms] = lowered("convnext_tiny.onnx");
        let blocks = (linear - 1) / 2;
        assert!(blocks >= 1 && linear % 2 == 1, "{linear} linear steps");
        assert_eq!(muls, 0, "a layer scale or GELU Mul was left");
        assert_eq!((gelus, with_gelu, planes), (0, blocks, blocks));
        assert!(
            norms >= blocks,
            "{norms} norms read planes, {blocks} blocks"
        );
        let [linear, _, gelus, with_gelu, planes, norms] = lowered("vit_b_16.onnx");
        assert!(linear >= 5, "{linear} linear steps");
        assert!(with_gelu >= 1, "no GELU absorbed");
        assert_eq!((gelus, planes, norms), (0, 0, 0));
    }
}
