//! The state dict inside a pickled object graph: a plain dict of tensors, a training
//! checkpoint that keeps one (or the model) under a usual key, or a whole pickled model, whose
//! state (`_parameters`, `_buffers`, `_modules`) is walked to give the state dict
//! `model.state_dict()` would. Nothing is constructed or called: values are read as data.
//!
//! A pickle is a graph, not a tree: the memo shares objects, so one module can sit at many
//! places of the tree (as tied weights do) and a module can contain itself. `state_dict()`
//! lists a shared module's tensors at every place, so the number of names can grow
//! exponentially with the file's size (a module holding the one below twice, 50 levels deep:
//! 2^50 names from 12 KB). So a module tree is read in two passes: each module object once
//! (by identity), refusing cycles and counting the places its modules and tensors take; then,
//! only if those counts are within [`MAX_MODULES`] and [`MAX_TENSORS`], the names.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use candle_core::DType;

use super::value::{Obj, Value, obj};

/// At most this many modules and tensors in a whole model, counted at every place a shared
/// module takes: hundreds of times what real models have (a DenseNet-121 has about 600
/// modules and 1000 tensors), and little work to list.
pub(super) const MAX_MODULES: u64 = 100_000;
pub(super) const MAX_TENSORS: u64 = 100_000;
/// Modules nested deeper than this are refused (real models nest a handful of levels).
const MAX_DEPTH: usize = 64;

/// Keys under which training checkpoints keep the model or its state dict.
const STATE_KEYS: [&str; 7] = [
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "network",
    "module",
    "model_state",
];
/// A tensor as the pickle describes it: a view (offset, size, stride, in elements) of a storage.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct TensorRef {
    pub(super) key: String,
    /// None for storage types no model weight uses (int32, bool, complex, ...): skipped.
    pub(super) dtype: Option<DType>,
    pub(super) offset: usize,
    pub(super) size: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

/// The state dict a pickle holds, with what a whole model says about itself.
#[derive(Default)]
pub(super) struct Found {
    pub(super) tensors: Vec<(String, TensorRef)>,
    pub(super) model_class: Option<String>,
    pub(super) labels: Option<Vec<String>>,
}

/// Element size and dtype of a torch storage class (`FloatStorage`).
fn storage_kind(class: &str) -> Option<(usize, Option<DType>)> {
    Some(match class {
        "FloatStorage" => (4, Some(DType::F32)),
        "DoubleStorage" => (8, Some(DType::F64)),
        "HalfStorage" => (2, Some(DType::F16)),
        "BFloat16Storage" => (2, Some(DType::BF16)),
        "LongStorage" => (8, Some(DType::I64)),
        "ByteStorage" | "UntypedStorage" => (1, Some(DType::U8)),
        "IntStorage" | "QInt32Storage" => (4, None),
        "ShortStorage" => (2, None),
        "CharStorage" | "BoolStorage" | "QInt8Storage" | "QUInt8Storage" => (1, None),
        "ComplexFloatStorage" => (8, None),
        "ComplexDoubleStorage" => (16, None),
        _ => return None,
    })
}

/// `('storage', torch.FloatStorage, key, location, numel[, view])` -> (key, element size, dtype).
fn storage_ref(o: &Obj) -> Option<(String, usize, Option<DType>)> {
    let v = o.borrow();
    let Value::Persistent(id) = &*v else {
        return None;
    };
    let id = id.borrow();
    let Value::Tuple(t) = &*id else { return None };
    if t.len() < 5 || t[0].borrow().as_str() != Some("storage") {
        return None;
    }
    let class = match &*t[1].borrow() {
        Value::Global { name, .. } => name.clone(),
        _ => return None,
    };
    let key = t[2].borrow().as_str()?.to_string();
    let (es, dtype) = storage_kind(&class)?;
    Some((key, es, dtype))
}

/// Every storage referenced anywhere in the object graph (cycles and sharing are visited once).
pub(super) fn storage_kinds(root: &Obj) -> HashMap<String, (usize, Option<DType>)> {
    let mut out = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![root.clone()];
    while let Some(o) = todo.pop() {
        if !seen.insert(std::rc::Rc::as_ptr(&o)) {
            continue;
        }
        if let Some((key, es, dtype)) = storage_ref(&o) {
            out.insert(key, (es, dtype));
            continue;
        }
        match &*o.borrow() {
            Value::Tuple(v) | Value::List(v) | Value::Set(v) => todo.extend(v.iter().cloned()),
            Value::Dict(kv) => {
                for (k, v) in kv {
                    todo.push(k.clone());
                    todo.push(v.clone());
                }
            }
            Value::Call {
                callable,
                args,
                state,
            } => {
                todo.push(callable.clone());
                todo.push(args.clone());
                todo.extend(state.clone());
            }
            Value::Persistent(id) => todo.push(id.clone()),
            _ => {}
        }
    }
    out
}

fn call_parts(o: &Obj) -> Option<(String, Obj, Option<Obj>)> {
    match &*o.borrow() {
        Value::Call {
            callable,
            args,
            state,
        } => Some((
            callable.borrow().global_name().unwrap_or_default(),
            args.clone(),
            state.clone(),
        )),
        _ => None,
    }
}

fn tuple_items(o: &Obj) -> Option<Vec<Obj>> {
    match &*o.borrow() {
        Value::Tuple(v) | Value::List(v) => Some(v.clone()),
        _ => None,
    }
}

fn usizes(o: &Obj) -> Option<Vec<usize>> {
    tuple_items(o)?
        .iter()
        .map(|x| x.borrow().as_int().and_then(|i| usize::try_from(i).ok()))
        .collect()
}

/// The tensor a value rebuilds, if it is one (`_rebuild_tensor_v2`, a Parameter around one).
fn as_tensor(o: &Obj) -> Option<Result<TensorRef, String>> {
    rebuilt(o, 0)
}

/// [`as_tensor`] inside `depth` rebuild calls: torch nests two or three (a Parameter of a
/// tensor subclass of a tensor); a file nesting thousands would overflow the stack.
fn rebuilt(o: &Obj, depth: usize) -> Option<Result<TensorRef, String>> {
    const MAX_NESTING: usize = 8;
    let (callable, args, _) = call_parts(o)?;
    let a = tuple_items(&args)?;
    let nested = |inner: &Obj| {
        if depth >= MAX_NESTING {
            return Some(Err(format!(
                "its rebuild calls nest more than {MAX_NESTING} deep"
            )));
        }
        rebuilt(inner, depth + 1)
    };
    match callable.as_str() {
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            nested(a.first()?)
        }
        "torch._tensor._rebuild_from_type_v2" => {
            // (func, type, args, state): func(*args) is the tensor.
            let inner = obj(Value::Call {
                callable: a.first()?.clone(),
                args: a.get(2)?.clone(),
                state: None,
            });
            nested(&inner)
        }
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => Some((|| {
            let bad = |what: &str| format!("its {what} is malformed");
            let (key, _, dtype) = a
                .first()
                .and_then(storage_ref)
                .ok_or_else(|| bad("storage reference"))?;
            let offset = a
                .get(1)
                .and_then(|x| x.borrow().as_int())
                .and_then(|i| usize::try_from(i).ok())
                .ok_or_else(|| bad("storage offset"))?;
            let size = a.get(2).and_then(usizes).ok_or_else(|| bad("size"))?;
            let stride = a.get(3).and_then(usizes).ok_or_else(|| bad("stride"))?;
            if size.len() != stride.len() {
                return Err(bad("stride"));
            }
            Ok(TensorRef {
                key,
                dtype,
                offset,
                size,
                stride,
            })
        })()),
        _ => None,
    }
}

pub(super) fn dict_get(o: &Obj, key: &str) -> Option<Obj> {
    match &*o.borrow() {
        Value::Dict(kv) => kv
            .iter()
            .find(|(k, _)| k.borrow().as_str() == Some(key))
            .map(|(_, v)| v.clone()),
        _ => None,
    }
}

/// The class of a pickled module object and its `__dict__`, if `o` is one.
fn module_parts(o: &Obj) -> Option<(String, Obj)> {
    let v = o.borrow();
    let Value::Call {
        callable,
        args,
        state: Some(state),
    } = &*v
    else {
        return None;
    };
    // NEWOBJ names the class; protocol 0/1 go through copyreg._reconstructor(cls, ...); legacy
    // files name a module class the first time as ('module', cls, source file, source text).
    let class_of = |c: &Obj| -> Option<String> {
        match &*c.borrow() {
            Value::Global { module, name } => Some(format!("{module}.{name}")),
            Value::Persistent(id) => {
                let items = tuple_items(id)?;
                (items.first()?.borrow().as_str() == Some("module"))
                    .then(|| items.get(1)?.borrow().global_name())?
            }
            _ => None,
        }
    };
    let class = match class_of(callable)? {
        c if c.ends_with("._reconstructor") => class_of(tuple_items(args)?.first()?)?,
        c => c,
    };
    // Only modules have these.
    dict_get(state, "_modules")?;
    Some((class, state.clone()))
}

fn dict_items(o: &Obj) -> Vec<(String, Obj)> {
    match &*o.borrow() {
        Value::Dict(kv) => kv
            .iter()
            .filter_map(|(k, v)| Some((k.borrow().as_str()?.to_string(), v.clone())))
            .collect(),
        _ => Vec::new(),
    }
}

/// One module object of a whole model, read once.
struct Node {
    /// Its parameters, then its persistent buffers.
    tensors: Vec<(String, TensorRef)>,
    /// Its child modules: their names and nodes.
    children: Vec<(String, usize)>,
    /// The modules (itself included) and tensors of its subtree, counted at every place a
    /// shared module takes, as `state_dict()` would list them (saturating).
    modules: u64,
    tensor_places: u64,
}

/// A whole model's module tree, each module object read once however many places hold it.
#[derive(Default)]
struct Tree {
    nodes: Vec<Node>,
    /// Module objects (by identity) read so far, and their nodes.
    seen: HashMap<*const RefCell<Value>, usize>,
    /// The modules being read: the current one's ancestors. Meeting one again is a cycle.
    open: HashSet<*const RefCell<Value>>,
}

impl Tree {
    /// Reads `module` (whose `__dict__` is `state`), found at `path`, and its subtree.
    fn read(
        &mut self,
        module: &Obj,
        state: &Obj,
        path: &str,
        depth: usize,
    ) -> Result<usize, String> {
        let id = std::rc::Rc::as_ptr(module);
        if let Some(&node) = self.seen.get(&id) {
            return Ok(node);
        }
        if !self.open.insert(id) {
            return Err(format!(
                "refused: the module at '{}' is one of its own ancestors (a cycle in the module \
                 tree)",
                path.trim_end_matches('.')
            ));
        }
        if depth > MAX_DEPTH {
            return Err(format!("modules nested more than {MAX_DEPTH} deep"));
        }
        let skip: Vec<String> = dict_get(state, "_non_persistent_buffers_set")
            .map(|s| match &*s.borrow() {
                Value::Set(v) => v
                    .iter()
                    .filter_map(|x| x.borrow().as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            })
            .unwrap_or_default();
        let field =
            |name: &str| dict_items(&dict_get(state, name).unwrap_or_else(|| obj(Value::None)));
        let mut tensors = Vec::new();
        for (kind, items) in [
            ("_parameters", field("_parameters")),
            ("_buffers", field("_buffers")),
        ] {
            for (name, v) in items {
                if kind == "_buffers" && skip.contains(&name) {
                    continue;
                }
                if let Some(t) = as_tensor(&v) {
                    let t = t.map_err(|e| format!("tensor '{path}{name}': {e}"))?;
                    tensors.push((name, t));
                }
            }
        }
        let (mut modules, mut tensor_places) = (1u64, tensors.len() as u64);
        let mut children = Vec::new();
        for (name, child) in field("_modules") {
            if let Some((_, child_state)) = module_parts(&child) {
                let node = self.read(&child, &child_state, &format!("{path}{name}."), depth + 1)?;
                modules = modules.saturating_add(self.nodes[node].modules);
                tensor_places = tensor_places.saturating_add(self.nodes[node].tensor_places);
                children.push((name, node));
            }
        }
        self.open.remove(&id);
        self.nodes.push(Node {
            tensors,
            children,
            modules,
            tensor_places,
        });
        self.seen.insert(id, self.nodes.len() - 1);
        Ok(self.nodes.len() - 1)
    }

    /// The state dict of the subtree at `node`, its names under `prefix`.
    fn names(&self, node: usize, prefix: &str, out: &mut Vec<(String, TensorRef)>) {
        let n = &self.nodes[node];
        for (name, t) in &n.tensors {
            out.push((format!("{prefix}{name}"), t.clone()));
        }
        for (name, child) in &n.children {
            self.names(*child, &format!("{prefix}{name}."), out);
        }
    }
}

/// A whole model's state dict: its parameters, persistent buffers, then its children's, at
/// every place a module takes; refused when those are too many (see the module docs).
fn module_state(module: &Obj, state: &Obj) -> Result<Vec<(String, TensorRef)>, String> {
    let mut tree = Tree::default();
    let root = tree.read(module, state, "", 0)?;
    let (modules, tensors) = (tree.nodes[root].modules, tree.nodes[root].tensor_places);
    if modules > MAX_MODULES || tensors > MAX_TENSORS {
        return Err(format!(
            "refused: its module tree holds {tensors} tensors in {modules} modules, counting \
             each place a shared module takes as state_dict() would; unveil reads at most \
             {MAX_TENSORS} tensors in {MAX_MODULES} modules"
        ));
    }
    let mut out = Vec::new();
    tree.names(root, "", &mut out);
    Ok(out)
}

/// Finds the state dict in `root` (see the module docs).
pub(super) fn find_state(root: &Obj, depth: usize) -> Result<Found, String> {
    if let Some((class, state)) = module_parts(root) {
        let mut found = Found {
            model_class: Some(class),
            tensors: module_state(root, &state)?,
            ..Found::default()
        };
        // torchxrayvision keeps its label list as a plain attribute.
        found.labels = ["targets", "pathologies"].iter().find_map(|k| {
            tuple_items(&dict_get(&state, k)?)?
                .iter()
                .map(|s| s.borrow().as_str().map(str::to_string))
                .collect()
        });
        // ... and its operating points as a plain tensor attribute where it has them.
        if let Some(Some(Ok(t))) = dict_get(&state, "op_threshs").map(|o| as_tensor(&o))
            && !found.tensors.iter().any(|(k, _)| k == "op_threshs")
        {
            found.tensors.push(("op_threshs".into(), t));
        }
        return Ok(found);
    }
    let items = dict_items(root);
    // A training checkpoint keeps the model under a usual key, next to tensors of its own
    // (an RNG state, optimizer moments): look there first.
    if depth < 2 {
        for key in STATE_KEYS {
            if let Some((_, v)) = items.iter().find(|(k, _)| k == key) {
                let found = find_state(v, depth + 1)?;
                if !found.tensors.is_empty() {
                    return Ok(found);
                }
            }
        }
    }
    let tensors: Vec<(String, TensorRef)> = items
        .iter()
        .filter_map(|(k, v)| Some(as_tensor(v)?.map(|t| (k.clone(), t))))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("a tensor {e}"))?;
    Ok(Found {
        tensors,
        ..Found::default()
    })
}
