//! A node's attributes, and each op type's parsed into a [`Kind`]: what an op needs is checked
//! here, at load time, so that a bad attribute is one line naming the node before anything
//! runs.

use super::conv::ConvSpec;
use super::ops::{AvgConvs, Binary, Kind, Pads, Reduce, Unary, Window};
use super::proto::{Attr, DataType, NodeProto};
use super::resize::{Coords, Interp, Resize, Rounding};
use super::shape_ops::Arrange;
use super::value::{Ints, Val};
use crate::engine::ops::geometry::Padding;
use crate::error::{Error, Result};

/// Attribute lookup for one node.
pub(crate) struct Attrs<'a> {
    node: &'a NodeProto,
}

impl<'a> Attrs<'a> {
    pub(crate) fn new(node: &'a NodeProto) -> Self {
        Attrs { node }
    }

    fn get(&self, name: &str) -> Option<&'a Attr> {
        self.node
            .attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| &a.value)
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        let n = self.node;
        let what = if n.name.is_empty() {
            n.op_type.clone()
        } else {
            format!("{} '{}'", n.op_type, n.name)
        };
        Error::Weights(format!("{what}: {msg}"))
    }

    pub(crate) fn int(&self, name: &str, default: i64) -> Result<i64> {
        match self.get(name) {
            None => Ok(default),
            Some(Attr::Int(v)) => Ok(*v),
            Some(_) => Err(self.err(format!("attribute {name} is not an integer"))),
        }
    }

    pub(crate) fn float(&self, name: &str, default: f32) -> Result<f32> {
        match self.get(name) {
            None => Ok(default),
            Some(Attr::Float(v)) => Ok(*v),
            Some(Attr::Int(v)) => Ok(*v as f32),
            Some(_) => Err(self.err(format!("attribute {name} is not a number"))),
        }
    }

    pub(crate) fn ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::Ints(v)) => Ok(Some(v.clone())),
            Some(Attr::Int(v)) => Ok(Some(vec![*v])),
            Some(_) => Err(self.err(format!("attribute {name} is not a list of integers"))),
        }
    }

    pub(crate) fn string(&self, name: &str) -> Result<Option<String>> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::String(s)) => Ok(Some(String::from_utf8_lossy(s).into_owned())),
            Some(_) => Err(self.err(format!("attribute {name} is not a string"))),
        }
    }

    /// A `Constant` node's value.
    pub(crate) fn constant(&self) -> Result<Val> {
        match (
            self.get("value"),
            self.get("value_float"),
            self.get("value_int"),
            self.get("value_ints"),
            self.get("value_floats"),
        ) {
            (Some(Attr::Tensor(t)), ..) => {
                Val::from_tensor(super::tensor::to_tensor(t, None).map_err(|e| self.err(e))?)
            }
            (_, Some(Attr::Float(v)), ..) => Ok(Val::F(candle_core::Tensor::new(
                *v,
                &candle_core::Device::Cpu,
            )?)),
            (_, _, Some(Attr::Int(v)), ..) => Ok(Val::I(Ints::scalar(*v))),
            (_, _, _, Some(Attr::Ints(v)), _) => Ok(Val::I(Ints::vector(v.clone()))),
            (.., Some(Attr::Floats(v))) => Ok(Val::F(candle_core::Tensor::new(
                v.as_slice(),
                &candle_core::Device::Cpu,
            )?)),
            _ => Err(self.err("a Constant without a supported value")),
        }
    }

    /// Two spatial sizes from a list attribute (`kernel_shape`, `strides`, `dilations`).
    fn pair(&self, name: &str, default: usize) -> Result<(usize, usize)> {
        match self.ints(name)?.as_deref() {
            None => Ok((default, default)),
            Some([a, b]) if *a > 0 && *b > 0 && *a < 1 << 16 && *b < 1 << 16 => {
                Ok((*a as usize, *b as usize))
            }
            Some(v) => Err(self.err(format!(
                "{name} {v:?}: only 2-D (image) ops with positive sizes are supported"
            ))),
        }
    }

    /// `pads` / `auto_pad` of a 2-D convolution or pool.
    fn pads(&self) -> Result<Pads> {
        match self.string("auto_pad")?.as_deref().unwrap_or("NOTSET") {
            "SAME_UPPER" => return Ok(Pads::SameUpper),
            "VALID" => return Ok(Pads::Explicit(Padding::default())),
            "NOTSET" => {}
            other => return Err(self.err(format!("auto_pad {other} is not supported"))),
        }
        match self.ints("pads")?.as_deref() {
            None => Ok(Pads::Explicit(Padding::default())),
            Some([t, l, b, r]) if [t, l, b, r].iter().all(|&&p| (0..1 << 16).contains(&p)) => {
                Ok(Pads::Explicit(Padding {
                    top: *t as usize,
                    left: *l as usize,
                    bottom: *b as usize,
                    right: *r as usize,
                }))
            }
            Some(p) => Err(self.err(format!(
                "pads {p:?}: only 2-D, non-negative padding is supported"
            ))),
        }
    }

    fn no_dilation(&self) -> Result<()> {
        if self.pair("dilations", 1)? != (1, 1) {
            return Err(self.err("dilated convolutions and pools are not supported"));
        }
        Ok(())
    }

    pub(crate) fn conv_spec(&self) -> Result<ConvSpec> {
        self.no_dilation()?;
        let group = self.int("group", 1)?;
        if !(1..1 << 20).contains(&group) {
            return Err(self.err(format!("group {group}")));
        }
        Ok(ConvSpec {
            strides: self.pair("strides", 1)?,
            pads: self.pads()?,
            group: group as usize,
            runtime_pads: None,
        })
    }

    fn window(&self) -> Result<Window> {
        self.no_dilation()?;
        let (kh, kw) = self.pair("kernel_shape", 0)?;
        let (sh, sw) = self.pair("strides", 1)?;
        if kh != kw || sh != sw {
            return Err(self.err(format!("a {kh} x {kw} pool with strides ({sh}, {sw}): only square pools with one stride are supported")));
        }
        Ok(Window {
            k: kh,
            stride: sh,
            pads: self.pads()?,
            ceil: self.int("ceil_mode", 0)? != 0,
        })
    }
}

/// The scalar value of a constant input, if the node has one.
fn scalar(c: Option<&Val>) -> Option<f32> {
    match c? {
        Val::F(t) if t.elem_count() == 1 => t
            .flatten_all()
            .ok()?
            .to_vec1::<f32>()
            .ok()?
            .first()
            .copied(),
        Val::I(i) if i.data.len() == 1 => Some(i.data[0] as f32),
        _ => None,
    }
}

/// Parses `node` into its op. `consts[i]` is input `i`'s value when it is a constant.
pub(crate) fn parse_kind(
    node: &NodeProto,
    a: &Attrs,
    opset: i64,
    consts: &[Option<&Val>],
) -> Result<Kind> {
    let c = |i: usize| consts.get(i).copied().flatten();
    let axes = |name: &str| a.ints(name);
    Ok(match node.op_type.as_str() {
        "Conv" => {
            if c(1).is_none() {
                return Err(
                    a.err("a convolution whose weights are computed at run time is not supported")
                );
            }
            Kind::ConvSpec(a.conv_spec()?)
        }
        "BatchNormalization" => {
            if (1..5).any(|i| c(i).is_none()) {
                return Err(a.err("a BatchNormalization whose statistics are not constants"));
            }
            Kind::BatchNorm(a.float("epsilon", 1e-5)? as f64)
        }
        "Relu" => Kind::Relu(false),
        "Clip" => {
            let lo = if opset < 11 {
                Some(a.float("min", f32::NEG_INFINITY)?)
            } else {
                node.input
                    .get(1)
                    .filter(|n| !n.is_empty())
                    .map_or(Some(f32::NEG_INFINITY), |_| scalar(c(1)))
            };
            let hi = if opset < 11 {
                Some(a.float("max", f32::INFINITY)?)
            } else {
                node.input
                    .get(2)
                    .filter(|n| !n.is_empty())
                    .map_or(Some(f32::INFINITY), |_| scalar(c(2)))
            };
            match (lo, hi) {
                (Some(l), Some(h)) if l == 0.0 && h == 6.0 => Kind::Relu(true),
                (Some(l), Some(h)) if l == 0.0 && h == f32::INFINITY => Kind::Relu(false),
                (Some(l), Some(h)) => Kind::Clip(l, h),
                _ => {
                    return Err(
                        a.err("a Clip whose bounds are computed at run time is not supported")
                    );
                }
            }
        }
        "LeakyRelu" => Kind::LeakyRelu(a.float("alpha", 0.01)?),
        "MaxPool" => {
            if node.output.len() > 1 && node.output[1..].iter().any(|o| !o.is_empty()) {
                return Err(a.err("MaxPool's indices output is not supported"));
            }
            Kind::MaxPool(a.window()?)
        }
        "AveragePool" => Kind::AvgPool(
            a.window()?,
            a.int("count_include_pad", 0)? != 0,
            AvgConvs::default(),
        ),
        "GlobalAveragePool" => Kind::GlobalAvgPool,
        "GlobalMaxPool" => Kind::GlobalMaxPool,
        "Gemm" => Kind::Gemm {
            alpha: a.float("alpha", 1.0)?,
            beta: a.float("beta", 1.0)?,
            trans_a: a.int("transA", 0)? != 0,
            trans_b: a.int("transB", 0)? != 0,
        },
        "MatMul" => Kind::MatMul,
        "Add" => Kind::Binary(Binary::Add),
        "Sub" => Kind::Binary(Binary::Sub),
        "Mul" => Kind::Binary(Binary::Mul),
        "Div" => Kind::Binary(Binary::Div),
        "Pow" => Kind::Binary(Binary::Pow),
        "Equal" => Kind::Binary(Binary::Equal),
        "Less" => Kind::Binary(Binary::Less),
        "Greater" => Kind::Binary(Binary::Greater),
        "Mod" => Kind::Binary(Binary::Mod),
        "And" => Kind::Binary(Binary::And),
        "Or" => Kind::Binary(Binary::Or),
        "Not" => Kind::Not,
        "Where" => Kind::Where,
        "Sqrt" => Kind::Unary(Unary::Sqrt),
        "Exp" => Kind::Unary(Unary::Exp),
        "Log" => Kind::Unary(Unary::Log),
        "Neg" => Kind::Unary(Unary::Neg),
        "Reciprocal" => Kind::Unary(Unary::Reciprocal),
        "Abs" => Kind::Unary(Unary::Abs),
        "Erf" => Kind::Unary(Unary::Erf),
        "Sigmoid" => Kind::Unary(Unary::Sigmoid),
        "Tanh" => Kind::Unary(Unary::Tanh),
        "Softplus" => Kind::Unary(Unary::Softplus),
        "HardSwish" => Kind::Unary(Unary::HardSwish),
        "HardSigmoid" => Kind::Unary(Unary::HardSigmoid(
            a.float("alpha", 0.2)?,
            a.float("beta", 0.5)?,
        )),
        "Gelu" => Kind::Unary(Unary::Gelu(
            a.string("approximate")?.as_deref() == Some("tanh"),
        )),
        "Softmax" => Kind::Softmax {
            axis: a.int("axis", if opset < 13 { 1 } else { -1 })?,
            legacy: opset < 13,
        },
        "LayerNormalization" => {
            if node.output.iter().skip(1).any(|o| !o.is_empty()) {
                return Err(a.err(
                    "LayerNormalization's mean and inverse-deviation outputs are not supported",
                ));
            }
            Kind::LayerNorm {
                axis: a.int("axis", -1)?,
                eps: a.float("epsilon", 1e-5)? as f64,
            }
        }
        op @ ("ReduceMean" | "ReduceSum" | "ReduceMax") => Kind::Reduce {
            op: match op {
                "ReduceMean" => Reduce::Mean,
                "ReduceSum" => Reduce::Sum,
                _ => Reduce::Max,
            },
            axes: axes("axes")?,
            keepdims: a.int("keepdims", 1)? != 0,
            noop_with_empty_axes: a.int("noop_with_empty_axes", 0)? != 0,
        },
        "Identity" | "Dropout" => Kind::Identity,
        "Reshape" => Kind::Arrange(Arrange::Reshape {
            allow_zero: a.int("allowzero", 0)? != 0,
        }),
        "Transpose" => Kind::Arrange(Arrange::Transpose(
            axes("perm")?.map(|p| p.iter().map(|&v| v.max(0) as usize).collect()),
        )),
        "Flatten" => Kind::Arrange(Arrange::Flatten(a.int("axis", 1)?)),
        "Concat" => Kind::Arrange(Arrange::Concat(a.int("axis", 0)?)),
        "Split" => Kind::Arrange(Arrange::Split {
            axis: a.int("axis", 0)?,
            split: axes("split")?,
            outputs: node.output.len(),
        }),
        "Slice" => Kind::Arrange(Arrange::Slice(if opset < 10 {
            let starts = axes("starts")?.ok_or_else(|| a.err("no starts"))?;
            let ends = axes("ends")?.ok_or_else(|| a.err("no ends"))?;
            let ax = axes("axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
            Some([starts, ends, ax])
        } else {
            None
        })),
        "Gather" => Kind::Arrange(Arrange::Gather(a.int("axis", 0)?)),
        "Squeeze" => Kind::Arrange(Arrange::Squeeze(axes("axes")?)),
        "Unsqueeze" => Kind::Arrange(Arrange::Unsqueeze(axes("axes")?)),
        "Expand" => Kind::Arrange(Arrange::Expand),
        "Pad" => {
            let mode = a.string("mode")?.unwrap_or_else(|| "constant".into());
            if mode != "constant" {
                return Err(a.err(format!("Pad mode {mode} is not supported (only constant)")));
            }
            if node.input.get(3).is_some_and(|n| !n.is_empty()) {
                return Err(a.err("Pad with axes is not supported"));
            }
            Kind::Arrange(Arrange::Pad(axes("pads")?, a.float("value", 0.0)?))
        }
        "Shape" => Kind::Arrange(Arrange::ShapeOf {
            start: a.int("start", 0)?,
            end: a.ints("end")?.and_then(|v| v.first().copied()),
        }),
        "Cast" => {
            let to = a.int("to", 1)?;
            let float = matches!(to, 1 | 10 | 11 | 16);
            Kind::Arrange(Arrange::Cast {
                float,
                boolean: to == 9,
            })
        }
        "Range" => Kind::Arrange(Arrange::Range),
        "ConstantOfShape" => Kind::Arrange(Arrange::ConstantOfShape(
            match node.attribute.iter().find(|x| x.name == "value") {
                Some(x) => match &x.value {
                    Attr::Tensor(t) if t.data_type == DataType::Float => {
                        Val::from_tensor(super::tensor::to_tensor(t, None)?)?
                    }
                    Attr::Tensor(t) => Val::from_tensor(super::tensor::to_tensor(t, None)?)?,
                    _ => return Err(a.err("value is not a tensor")),
                },
                None => Val::F(candle_core::Tensor::new(0f32, &candle_core::Device::Cpu)?),
            },
        )),
        "Resize" => Kind::Resize(resize(a, opset)?),
        "ScatterND" => {
            if a.string("reduction")?.is_some_and(|r| r != "none") {
                return Err(a.err("ScatterND with a reduction is not supported"));
            }
            Kind::Arrange(Arrange::ScatterND)
        }
        other => return Err(a.err(format!("{other} is not supported"))),
    })
}

/// `Resize`'s attributes: nearest or linear, any coordinate mapping but crop-and-resize.
fn resize(a: &Attrs, opset: i64) -> Result<Resize> {
    if a.int("antialias", 0)? != 0 || a.ints("axes")?.is_some() {
        return Err(a.err("Resize with antialias or axes is not supported"));
    }
    let rounding = match a
        .string("nearest_mode")?
        .as_deref()
        .unwrap_or("round_prefer_floor")
    {
        "round_prefer_floor" => Rounding::PreferFloor,
        "round_prefer_ceil" => Rounding::PreferCeil,
        "floor" => Rounding::Floor,
        "ceil" => Rounding::Ceil,
        other => return Err(a.err(format!("nearest_mode {other}"))),
    };
    let interp = match a.string("mode")?.as_deref().unwrap_or("nearest") {
        "nearest" => Interp::Nearest(rounding),
        "linear" => Interp::Linear,
        other => {
            return Err(a.err(format!(
                "Resize mode {other} is not supported (nearest, linear)"
            )));
        }
    };
    let default = if opset < 11 {
        "asymmetric"
    } else {
        "half_pixel"
    };
    let coords = match a
        .string("coordinate_transformation_mode")?
        .as_deref()
        .unwrap_or(default)
    {
        "half_pixel" => Coords::HalfPixel,
        "pytorch_half_pixel" => Coords::PytorchHalfPixel,
        "align_corners" => Coords::AlignCorners,
        "asymmetric" => Coords::Asymmetric,
        other => {
            return Err(a.err(format!(
                "coordinate_transformation_mode {other} is not supported"
            )));
        }
    };
    Ok(Resize {
        interp,
        coords,
        scales_at: if opset < 11 { 1 } else { 2 },
    })
}
