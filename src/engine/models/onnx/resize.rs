//! ONNX `Resize` (and opset 10's) on images, as two constant interpolation matrices:
//! `y = A_h x A_w^T`. A product of matrices has a backward (candle's bilinear upsampling has
//! none), and nearest and linear modes with every coordinate mapping are the same code.

use candle_core::{DType, Tensor};

use super::value::{Ctx, Val, input, opt};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interp {
    Nearest(Rounding),
    Linear,
}

/// How `nearest` rounds a source coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rounding {
    PreferFloor,
    PreferCeil,
    Floor,
    Ceil,
}

/// Where output pixel `x` samples the input (`coordinate_transformation_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coords {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Resize {
    pub(crate) interp: Interp,
    pub(crate) coords: Coords,
    /// Opset 10: `scales` is input 1 (no `roi`).
    pub(crate) scales_at: usize,
}

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::Weights(format!("Resize: {msg}"))
}

impl Resize {
    pub(crate) fn run(&self, inputs: &[Option<&Val>], ctx: &Ctx) -> Result<Val> {
        let x = input(inputs, 0)?.float(&ctx.device)?;
        let (n, c, h, w) = x.dims4()?;
        if h == 0 || w == 0 {
            return Err(bad("an empty input"));
        }
        let floats = |v: &Val| -> Result<Vec<f32>> {
            match v {
                Val::F(t) => Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?),
                Val::I(i) => Ok(i.data.iter().map(|&v| v as f32).collect()),
            }
        };
        let scales = opt(inputs, self.scales_at)
            .map(floats)
            .transpose()?
            .filter(|s| !s.is_empty());
        let sizes = opt(inputs, self.scales_at + 1)
            .map(|v| v.ints("Resize sizes"))
            .transpose()?;
        let ((oh, sh), (ow, sw)) = match (&scales, &sizes) {
            (Some(s), _) if s.len() == 4 => {
                if s[0] != 1.0 || s[1] != 1.0 {
                    return Err(bad("only the height and width can be resized"));
                }
                let out = |n: usize, s: f32| ((n as f32 * s).floor() as usize, s);
                (out(h, s[2]), out(w, s[3]))
            }
            (_, Some(z)) if z.data.len() == 4 => {
                if z.data[0] as usize != n || z.data[1] as usize != c {
                    return Err(bad("only the height and width can be resized"));
                }
                let (oh, ow) = (z.data[2].max(0) as usize, z.data[3].max(0) as usize);
                ((oh, oh as f32 / h as f32), (ow, ow as f32 / w as f32))
            }
            _ => return Err(bad("needs 4 scales or 4 sizes")),
        };
        if oh == 0 || ow == 0 || oh > 1 << 14 || ow > 1 << 14 {
            return Err(bad(format!("an output of {oh} x {ow}")));
        }
        let dev = x.device();
        let ah = Tensor::from_vec(self.matrix(h, oh, sh), (oh, h), dev)?;
        let aw_t = Tensor::from_vec(self.matrix(w, ow, sw), (ow, w), dev)?
            .t()?
            .contiguous()?;
        let y = ah.broadcast_matmul(&x.contiguous()?)?;
        Ok(Val::F(y.broadcast_matmul(&aw_t)?))
    }

    /// The `[out, len]` interpolation matrix of one axis.
    fn matrix(&self, len: usize, out: usize, scale: f32) -> Vec<f32> {
        let mut m = vec![0f32; out * len];
        for o in 0..out {
            let x = match self.coords {
                Coords::HalfPixel => (o as f32 + 0.5) / scale - 0.5,
                Coords::PytorchHalfPixel if out > 1 => (o as f32 + 0.5) / scale - 0.5,
                Coords::PytorchHalfPixel => 0.0,
                Coords::AlignCorners if out > 1 => o as f32 * (len - 1) as f32 / (out - 1) as f32,
                Coords::AlignCorners => 0.0,
                Coords::Asymmetric => o as f32 / scale,
            };
            let last = (len - 1) as f32;
            let row = &mut m[o * len..(o + 1) * len];
            match self.interp {
                Interp::Nearest(r) => {
                    let i = match r {
                        Rounding::PreferFloor if x.fract() == 0.5 => x.floor(),
                        Rounding::PreferCeil if x.fract() == 0.5 => x.ceil(),
                        Rounding::PreferFloor | Rounding::PreferCeil => x.round(),
                        Rounding::Floor => x.floor(),
                        Rounding::Ceil => x.ceil(),
                    };
                    row[i.clamp(0.0, last) as usize] = 1.0;
                }
                Interp::Linear => {
                    let x = x.clamp(0.0, last);
                    let i0 = x.floor() as usize;
                    let i1 = (i0 + 1).min(len - 1);
                    let t = x - i0 as f32;
                    row[i0] += 1.0 - t;
                    row[i1] += t;
                }
            }
        }
        m
    }
}
