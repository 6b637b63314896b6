//! A lowered graph: steps in order over numbered value slots, and running it (whole, with
//! Grad-CAM's layer made a variable, or once to learn every value's shape).

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use super::ops::{Ctx, Kind, Unary};
use super::value::Val;
use crate::engine::models::layers::Layer;
use crate::error::{Error, Result};

/// One node, lowered.
#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) name: String,
    pub(crate) op_type: String,
    pub(crate) kind: Kind,
    /// Value slots read (`None`: an omitted optional input).
    pub(crate) inputs: Vec<Option<usize>>,
    pub(crate) outputs: Vec<usize>,
    /// The tensors this step's weights came from (a convolution's with its folded BatchNorm,
    /// a linear layer's), for the sanity check.
    pub(crate) layer: Option<Layer>,
}

/// A graph ready to run: steps in order over numbered value slots.
#[derive(Debug)]
pub(crate) struct Program {
    pub(crate) steps: Vec<Step>,
    /// Constant slots' values (on the model's device).
    pub(crate) consts: Vec<Option<Val>>,
    /// Each slot's ONNX name.
    pub(crate) names: Vec<String>,
    pub(crate) input: usize,
    pub(crate) output: usize,
    /// For each slot, the last step that reads it (freed after it).
    pub(crate) last_use: Vec<usize>,
    /// The graph's final Softmax / Sigmoid, left out (see `lower::leave_out_head`).
    pub(crate) head: Option<Head>,
}

/// A classifier's final activation over its classes, which the graph had and unveil applies
/// itself when it scores the logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Head {
    Softmax,
    Sigmoid,
}

impl Program {
    /// Runs the graph on `x`; the value in slot `tap` (if any) is made a variable, whose
    /// tensor is returned with the output.
    pub(crate) fn run(
        &self,
        x: &Tensor,
        ctx: &Ctx,
        tap: Option<usize>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let mut tapped = None;
        let out = self.walk(x, ctx, |slot, v| {
            if let Val::F(t) = v
                && tap == Some(slot)
            {
                let var = Var::from_tensor(&t.detach())?;
                tapped = Some(var.as_tensor().clone());
                *v = Val::F(var.as_tensor().clone());
            }
            Ok(())
        })?;
        Ok((out.float(&ctx.device)?, tapped))
    }

    /// Runs every step in order, handing each value to `seen` as it is made (which may
    /// replace it), freeing each after its last reader; the output.
    fn walk(
        &self,
        x: &Tensor,
        ctx: &Ctx,
        mut seen: impl FnMut(usize, &mut Val) -> Result<()>,
    ) -> Result<Val> {
        let mut vals: Vec<Option<Val>> = vec![None; self.names.len()];
        let mut input = Val::F(x.clone());
        seen(self.input, &mut input)?;
        vals[self.input] = Some(input);
        for (i, step) in self.steps.iter().enumerate() {
            let ins: Vec<Option<&Val>> = step
                .inputs
                .iter()
                .map(|s| s.and_then(|s| vals[s].as_ref().or(self.consts[s].as_ref())))
                .collect();
            if ins
                .iter()
                .zip(&step.inputs)
                .any(|(v, s)| v.is_none() && s.is_some())
            {
                return Err(Error::Internal(format!(
                    "node '{}' ran before its inputs",
                    step.name
                )));
            }
            let outs = step
                .kind
                .run(&ins, ctx)
                .map_err(|e| self.step_error(i, e))?;
            for (&slot, mut v) in step.outputs.iter().zip(outs) {
                seen(slot, &mut v)?;
                vals[slot] = Some(v);
            }
            for &slot in step.inputs.iter().flatten() {
                if self.last_use[slot] == i && slot != self.output {
                    vals[slot] = None;
                }
            }
        }
        vals[self.output]
            .take()
            .ok_or_else(|| Error::Internal("the graph computed no output".into()))
    }

    fn step_error(&self, i: usize, e: Error) -> Error {
        let s = &self.steps[i];
        let msg = e.to_string();
        let msg = msg.trim_start_matches("cannot load model weights: ");
        Error::InvalidParam(format!("ONNX node {} '{}': {msg}", s.op_type, s.name))
    }

    /// Every slot's shape for one `[1, 3, h, w]` input (None: a constant or an unused slot).
    pub(crate) fn shapes(
        &self,
        (h, w): (usize, usize),
        ctx: &Ctx,
    ) -> Result<Vec<Option<Vec<usize>>>> {
        let x = Tensor::zeros((1, 3, h, w), candle_core::DType::F32, &ctx.device)?;
        let mut shapes: Vec<Option<Vec<usize>>> = vec![None; self.names.len()];
        self.walk(&x, ctx, |slot, v| {
            shapes[slot] = Some(v.dims());
            Ok(())
        })?;
        Ok(shapes)
    }

    /// Layers with weights, in forward order.
    pub(crate) fn layers(&self) -> Vec<Layer> {
        self.steps.iter().filter_map(|s| s.layer.clone()).collect()
    }

    /// What guided backpropagation means here, when the graph has nonlinearities it does not
    /// change (see [`ModelInfo::guided_note`]).
    pub(crate) fn guided_note(&self) -> Option<String> {
        let others = self.other_activations();
        (!others.is_empty()).then(|| {
            let list: Vec<String> = others.iter().map(|(n, c)| format!("{n} x{c}")).collect();
            format!(
                "guided backpropagation changes only the ReLU-family activations; this model also uses {}, which back-propagate their true derivative",
                list.join(", ")
            )
        })
    }

    /// Nonlinearities guided backpropagation does not change, with how often each occurs.
    fn other_activations(&self) -> Vec<(String, usize)> {
        let mut seen: Vec<(String, usize)> = Vec::new();
        for s in &self.steps {
            let name = match &s.kind {
                Kind::Unary(Unary::Gelu(_)) | Kind::Unary(Unary::Erf) => "GELU",
                Kind::Linear(l) if l.gelu.is_some() => "GELU",
                Kind::Unary(Unary::Sigmoid) => "sigmoid (SiLU / squeeze-excite)",
                Kind::Unary(Unary::HardSwish) => "HardSwish",
                Kind::Unary(Unary::HardSigmoid(..)) => "HardSigmoid",
                Kind::Unary(Unary::Tanh) => "tanh",
                Kind::Unary(Unary::Softplus) => "softplus",
                Kind::Softmax { .. } => "softmax (attention)",
                _ => continue,
            };
            match seen.iter_mut().find(|(n, _)| n == name) {
                Some((_, c)) => *c += 1,
                None => seen.push((name.to_string(), 1)),
            }
        }
        seen
    }
}

/// For each slot, the steps reading it (`usize::MAX` stands for the graph's output), as the
/// folding passes see the program before they change it.
pub(crate) struct Readers(HashMap<usize, Vec<usize>>);

impl Readers {
    /// The one step reading `slot`, if exactly one does (and the output is not it).
    pub(crate) fn only(&self, slot: usize) -> Option<usize> {
        match self.0.get(&slot).map(Vec::as_slice) {
            Some([one]) if *one != usize::MAX => Some(*one),
            _ => None,
        }
    }
}

impl Program {
    pub(crate) fn readers(&self) -> Readers {
        let mut r: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            for &slot in s.inputs.iter().flatten() {
                r.entry(slot).or_default().push(i);
            }
        }
        r.entry(self.output).or_default().push(usize::MAX);
        Readers(r)
    }
}
