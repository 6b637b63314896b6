//! What the pickle reader builds: [`Value`]s, shared as Python shares objects, and the
//! allowlist of globals a checkpoint may name.
//!
//! A pickle is a graph, not a tree: the memo lets one object appear at many places (a module
//! shared by two parents, a label list under two names), and an object can contain itself.
//! Whatever walks values must remember what it has visited (see `state.rs`).

use std::cell::RefCell;
use std::rc::Rc;

/// A pickled object, shared as Python shares it.
pub(super) type Obj = Rc<RefCell<Value>>;

#[derive(Debug, Default)]
pub(super) enum Value {
    #[default]
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64 (torch's legacy magic number): little-endian two's complement.
    BigInt(Vec<u8>),
    #[expect(
        dead_code,
        reason = "kept as data: losses and learning rates no model needs"
    )]
    Float(f64),
    Str(String),
    #[expect(
        dead_code,
        reason = "kept as data: numpy scalars' and RNG states' bytes"
    )]
    Bytes(Vec<u8>),
    Tuple(Vec<Obj>),
    List(Vec<Obj>),
    Dict(Vec<(Obj, Obj)>),
    Set(Vec<Obj>),
    /// A class or function the pickle names; never imported.
    Global {
        module: String,
        name: String,
    },
    /// `callable(*args)` as the pickle asks for it (REDUCE, NEWOBJ), never performed, with the
    /// state a later BUILD gives the result (an object's `__dict__`).
    Call {
        callable: Obj,
        args: Obj,
        state: Option<Obj>,
    },
    /// A persistent id: torch's reference to a tensor storage (or, in legacy files, to a
    /// module class with its source code as text).
    Persistent(Obj),
}

pub(super) fn obj(v: Value) -> Obj {
    Rc::new(RefCell::new(v))
}

impl Value {
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// `module.name` of a global.
    pub(super) fn global_name(&self) -> Option<String> {
        match self {
            Value::Global { module, name } => Some(format!("{module}.{name}")),
            _ => None,
        }
    }

    fn children(&mut self) -> Vec<Obj> {
        match self {
            Value::Tuple(v) | Value::List(v) | Value::Set(v) => std::mem::take(v),
            Value::Dict(kv) => std::mem::take(kv)
                .into_iter()
                .flat_map(|(k, v)| [k, v])
                .collect(),
            Value::Call {
                callable,
                args,
                state,
            } => {
                let mut out = vec![callable.clone(), args.clone()];
                out.extend(state.take());
                *callable = obj(Value::None);
                *args = obj(Value::None);
                out
            }
            Value::Persistent(o) => vec![std::mem::replace(o, obj(Value::None))],
            _ => Vec::new(),
        }
    }
}

impl Drop for Value {
    /// Iterative, so that a pickle nesting a million lists cannot overflow the stack.
    fn drop(&mut self) {
        let mut pending = self.children();
        while let Some(o) = pending.pop() {
            if let Ok(cell) = Rc::try_unwrap(o) {
                pending.extend(cell.into_inner().children());
            }
        }
    }
}

/// Globals a checkpoint may name: tensors and their storages, containers, and (as names only,
/// for whole-model files) module classes from PyTorch, torchvision and TorchXRayVision.
pub(super) fn allowed(module: &str, name: &str) -> bool {
    match module {
        "collections" => matches!(name, "OrderedDict" | "defaultdict"),
        "torch._utils" => matches!(
            name,
            "_rebuild_tensor_v2"
                | "_rebuild_parameter"
                | "_rebuild_tensor"
                | "_rebuild_parameter_with_state"
        ),
        "torch._tensor" => name == "_rebuild_from_type_v2",
        "torch" => {
            name.ends_with("Storage")
                || matches!(
                    name,
                    "Size"
                        | "float32"
                        | "float64"
                        | "float16"
                        | "bfloat16"
                        | "int64"
                        | "int32"
                        | "uint8"
                        | "bool"
                        | "device"
                        | "Tensor"
                )
        }
        // Saved on a GPU before PyTorch 1.6: read onto the CPU like any storage.
        "torch.cuda" => name.ends_with("Storage"),
        "torch.storage" => name == "UntypedStorage",
        "torch.nn.parameter" => name == "Parameter",
        "torch.nn.parallel.data_parallel" => name == "DataParallel",
        "numpy.core.multiarray" | "numpy._core.multiarray" => name == "scalar",
        "numpy" => name == "dtype",
        // Protocol 2 spells `builtins` as `__builtin__`; `bytes` arrive as `_codecs.encode`.
        "builtins" | "__builtin__" => matches!(name, "set" | "frozenset" | "slice" | "object"),
        "_codecs" => name == "encode",
        "copyreg" | "copy_reg" => name == "_reconstructor",
        m => {
            m.starts_with("torch.nn.modules.")
                || m == "torchvision.models"
                || m.starts_with("torchvision.models.")
                || m == "torchxrayvision.models"
                || m.starts_with("torchxrayvision.models.")
        }
    }
}
