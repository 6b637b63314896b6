//! A pickle reader that builds data and never calls anything.
//!
//! Unpickling normally *runs* the callables a pickle names (`os.system`, a class's constructor),
//! which is how malicious checkpoints execute code. Here every instruction only builds a
//! [`Value`]: a call stays a record of what would have been called, an object is its class's
//! name plus the state the pickle gives it. Every global a pickle names must pass `allowed`
//! when it is read, or the whole file is refused, naming it.
//!
//! Objects are shared like Python's (`Rc<RefCell<..>>`): a dict that is memoised and filled
//! afterwards is seen filled wherever it is referenced. Every length is checked against the
//! bytes that remain before anything is allocated.

use super::value::{Obj, Value, allowed, obj};

/// Why a pickle could not be read.
#[derive(Debug)]
pub(super) enum PickleError {
    /// A global outside the allowlist (`module.name`).
    Forbidden(String),
    /// Malformed, truncated or unsupported.
    Corrupt(String),
}

type Result<T> = std::result::Result<T, PickleError>;

fn corrupt<T>(m: impl Into<String>) -> Result<T> {
    Err(PickleError::Corrupt(m.into()))
}

/// Reads one pickle from `bytes` starting at `*pos`, leaving `*pos` after its STOP.
pub(super) fn read(bytes: &[u8], pos: &mut usize) -> Result<Obj> {
    let mut m = Machine {
        r: Reader { bytes, pos: *pos },
        stack: Vec::new(),
        marks: Vec::new(),
        memo: std::collections::HashMap::new(),
    };
    let out = m.run()?;
    *pos = m.r.pos;
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.bytes.len() => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => corrupt(format!(
                "truncated: {n} bytes needed at offset {}, {} left",
                self.pos,
                self.bytes.len().saturating_sub(self.pos)
            )),
        }
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn len(&mut self, width: usize) -> Result<usize> {
        let v = match width {
            1 => self.u8()? as u64,
            4 => u32::from_le_bytes(self.le()?) as u64,
            _ => u64::from_le_bytes(self.le()?),
        };
        usize::try_from(v).or_else(|_| corrupt(format!("a length of {v} bytes")))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.bytes[self.pos.min(self.bytes.len())..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return corrupt("truncated: a text argument without its newline");
        };
        let s = self.take(n + 1)?;
        std::str::from_utf8(&s[..n])
            .map(|s| s.trim_end_matches('\r'))
            .or_else(|_| corrupt("a text argument that is not UTF-8"))
    }
}

struct Machine<'a> {
    r: Reader<'a>,
    stack: Vec<Obj>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<u64, Obj>,
}

impl Machine<'_> {
    fn push(&mut self, v: Value) {
        self.stack.push(obj(v));
    }

    fn pop(&mut self) -> Result<Obj> {
        match self.stack.pop() {
            Some(o) if self.marks.last().is_none_or(|&m| self.stack.len() >= m) => Ok(o),
            _ => corrupt("stack underflow"),
        }
    }

    fn top(&self) -> Result<&Obj> {
        self.stack
            .last()
            .map_or_else(|| corrupt("stack underflow"), Ok)
    }

    fn pop_mark(&mut self) -> Result<Vec<Obj>> {
        let Some(m) = self.marks.pop() else {
            return corrupt("no MARK on the stack");
        };
        if m > self.stack.len() {
            return corrupt("stack underflow below a MARK");
        }
        Ok(self.stack.split_off(m))
    }

    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        if !allowed(module, name) {
            return Err(PickleError::Forbidden(format!("{module}.{name}")));
        }
        self.push(Value::Global {
            module: module.into(),
            name: name.into(),
        });
        Ok(())
    }

    fn string(&self, b: &[u8]) -> Result<Value> {
        String::from_utf8(b.to_vec())
            .map(Value::Str)
            .or_else(|_| corrupt("a string that is not UTF-8"))
    }

    /// REDUCE and NEWOBJ: containers become data; anything else stays a recorded call.
    fn call(&mut self, callable: Obj, args: Obj) -> Result<()> {
        let name = callable.borrow().global_name();
        let items = |args: &Obj| match &*args.borrow() {
            Value::Tuple(a) => match a.first() {
                None => Some(Vec::new()),
                Some(x) => match &*x.borrow() {
                    Value::List(v) | Value::Tuple(v) | Value::Set(v) => Some(v.clone()),
                    _ => None,
                },
            },
            _ => None,
        };
        let value = match name.as_deref() {
            Some("collections.OrderedDict") if items(&args).is_some_and(|v| v.is_empty()) => {
                Value::Dict(Vec::new())
            }
            Some(
                "builtins.set" | "__builtin__.set" | "builtins.frozenset" | "__builtin__.frozenset",
            ) => match items(&args) {
                Some(v) => Value::Set(v),
                None => return corrupt("set() of something other than a list"),
            },
            // bytes in a protocol 2 pickle: `_codecs.encode(text, "latin1")`.
            Some("_codecs.encode") => {
                let a = args.borrow();
                let bytes = match &*a {
                    Value::Tuple(t) => t.first().and_then(|s| {
                        s.borrow()
                            .as_str()
                            .map(|s| s.chars().map(|c| c as u32 as u8).collect::<Vec<u8>>())
                    }),
                    _ => None,
                };
                match bytes {
                    Some(b) => Value::Bytes(b),
                    None => return corrupt("_codecs.encode of something other than a string"),
                }
            }
            _ => Value::Call {
                callable,
                args,
                state: None,
            },
        };
        self.push(value);
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let state = self.pop()?;
        let target = self.top()?.clone();
        let mut t = target.borrow_mut();
        match &mut *t {
            Value::Call { state: s, .. } => *s = Some(state),
            // An OrderedDict's attributes (state_dict's `_metadata`): not needed.
            Value::Dict(_) => {}
            _ => return corrupt("BUILD on an object that is not a call"),
        }
        Ok(())
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let top = self.top()?.clone();
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<()> {
        match self.memo.get(&key) {
            Some(o) => {
                let o = o.clone();
                self.stack.push(o);
                Ok(())
            }
            None => corrupt(format!("memo entry {key} is missing")),
        }
    }

    fn run(&mut self) -> Result<Obj> {
        loop {
            let op = self.r.u8()?;
            match op {
                0x80 => {
                    let p = self.r.u8()?;
                    if p > 5 {
                        return corrupt(format!("pickle protocol {p}"));
                    }
                }
                0x95 => {
                    self.r.le::<8>()?; // FRAME: a hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?.clone();
                    self.stack.push(t);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'I' => {
                    let l = self.r.line()?;
                    let v = match l {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(
                            l.parse()
                                .or_else(|_| corrupt(format!("INT argument '{l}'")))?,
                        ),
                    };
                    self.push(v);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.r.le()?);
                    self.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.r.u8()?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.r.le()?);
                    self.push(Value::Int(v as i64));
                }
                b'L' => {
                    let l = self.r.line()?;
                    let v = l.trim_end_matches('L').parse::<i64>().or_else(|_| {
                        corrupt(format!(
                            "LONG argument '{l}' (beyond 64 bits is unsupported)"
                        ))
                    })?;
                    self.push(Value::Int(v));
                }
                0x8a | 0x8b => {
                    let n = self.r.len(if op == 0x8a { 1 } else { 4 })?;
                    let b = self.r.take(n)?.to_vec();
                    self.push(long(b));
                }
                b'F' => {
                    let l = self.r.line()?;
                    let v = l
                        .parse()
                        .or_else(|_| corrupt(format!("FLOAT argument '{l}'")))?;
                    self.push(Value::Float(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.r.le()?);
                    self.push(Value::Float(v));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = self.r.len(match op {
                        0x8c => 1,
                        b'X' => 4,
                        _ => 8,
                    })?;
                    let b = self.r.take(n)?;
                    let v = self.string(b)?;
                    self.push(v);
                }
                // Python 2 `str`: torch.load decodes it as UTF-8 too.
                b'T' | b'U' => {
                    let n = self.r.len(if op == b'U' { 1 } else { 4 })?;
                    let b = self.r.take(n)?;
                    let v = match std::str::from_utf8(b) {
                        Ok(s) => Value::Str(s.into()),
                        Err(_) => Value::Bytes(b.to_vec()),
                    };
                    self.push(v);
                }
                b'V' => {
                    let l = self.r.line()?.to_string();
                    self.push(Value::Str(l));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = self.r.len(match op {
                        b'C' => 1,
                        b'B' => 4,
                        _ => 8,
                    })?;
                    let b = self.r.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b')' => self.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n
                        || self.marks.last().is_some_and(|&m| self.stack.len() < m + n)
                    {
                        return corrupt("stack underflow");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(items));
                }
                b']' => self.push(Value::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items));
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    let list = self.top()?.clone();
                    match &mut *list.borrow_mut() {
                        Value::List(v) => v.extend(items),
                        _ => return corrupt("APPEND to something that is not a list"),
                    }
                }
                b'}' => self.push(Value::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(pairs(items)?));
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    let dict = self.top()?.clone();
                    match &mut *dict.borrow_mut() {
                        Value::Dict(kv) => kv.extend(pairs(items)?),
                        _ => return corrupt("SETITEM on something that is not a dict"),
                    }
                }
                0x8f => self.push(Value::Set(Vec::new())),
                0x90 => {
                    let items = self.pop_mark()?;
                    let set = self.top()?.clone();
                    match &mut *set.borrow_mut() {
                        Value::Set(v) => v.extend(items),
                        _ => return corrupt("ADDITEMS on something that is not a set"),
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::Set(items));
                }
                b'p' => {
                    let l = self.r.line()?;
                    let k = l
                        .parse()
                        .or_else(|_| corrupt(format!("PUT argument '{l}'")))?;
                    self.memo_put(k)?;
                }
                b'q' => {
                    let k = self.r.u8()? as u64;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.r.le()?) as u64;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let l = self.r.line()?;
                    let k = l
                        .parse()
                        .or_else(|_| corrupt(format!("GET argument '{l}'")))?;
                    self.memo_get(k)?;
                }
                b'h' => {
                    let k = self.r.u8()? as u64;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.r.le()?) as u64;
                    self.memo_get(k)?;
                }
                b'c' => {
                    let module = self.r.line()?;
                    let name = self.r.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (m, n) = (module.borrow(), name.borrow());
                    let (Some(m), Some(n)) = (m.as_str(), n.as_str()) else {
                        return corrupt("STACK_GLOBAL of something other than two strings");
                    };
                    let (m, n) = (m.to_string(), n.to_string());
                    self.global(&m, &n)?;
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.call(callable, args)?;
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.call(callable, args)?;
                }
                b'b' => self.build()?,
                b'P' => {
                    let l = self.r.line()?.to_string();
                    self.push(Value::Persistent(obj(Value::Str(l))));
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.push(Value::Persistent(id));
                }
                other => {
                    return corrupt(format!(
                        "unsupported pickle opcode 0x{other:02x} at offset {}",
                        self.r.pos - 1
                    ));
                }
            }
        }
    }
}

/// LONG1/LONG4: little-endian two's complement.
fn long(b: Vec<u8>) -> Value {
    if b.len() <= 8 {
        let negative = b.last().is_some_and(|&x| x & 0x80 != 0);
        let mut a = [if negative { 0xff } else { 0 }; 8];
        a[..b.len()].copy_from_slice(&b);
        Value::Int(i64::from_le_bytes(a))
    } else {
        Value::BigInt(b)
    }
}

fn pairs(items: Vec<Obj>) -> Result<Vec<(Obj, Obj)>> {
    if !items.len().is_multiple_of(2) {
        return corrupt("a dict with an odd number of items");
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;

    fn run(bytes: &[u8]) -> Result<Obj> {
        read(bytes, &mut 0)
    }

    #[test]
    fn a_memoised_dict_filled_later_is_seen_filled() {
        // {} memo0, mark, 'a': 1, setitems, then [memo0] -> both the same dict.
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01u]q\x01h\x00a\x86.";
        let o = run(p).unwrap();
        let v = o.borrow();
        let Value::Tuple(t) = &*v else { panic!() };
        let Value::List(l) = &*t[1].borrow() else {
            panic!()
        };
        assert!(Rc::ptr_eq(&l[0], &t[0]));
        assert!(matches!(&*l[0].borrow(), Value::Dict(kv) if kv.len() == 1));
    }

    #[test]
    fn forbidden_globals_are_refused_when_read() {
        let p = b"\x80\x02cposix\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85R.";
        assert!(matches!(run(p), Err(PickleError::Forbidden(n)) if n == "posix.system"));
        let p = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        assert!(matches!(run(p), Err(PickleError::Forbidden(n)) if n == "builtins.eval"));
    }

    #[test]
    fn lengths_past_the_end_and_unbalanced_stacks_are_errors() {
        for p in [
            &b"\x80\x02X\xff\xff\xff\x7f"[..],
            b"\x80\x02\x8b\xff\xff\xff\xff",
            b"\x80\x02(t0.",
            b"\x80\x02a.",
            b"\x80\x02h\x05.",
            b"\x80\x02K\x01",
        ] {
            assert!(matches!(run(p), Err(PickleError::Corrupt(_))), "{p:?}");
        }
    }

    #[test]
    fn a_deeply_nested_pickle_drops_without_overflowing_the_stack() {
        // [] wrapped in 200k one-element tuples.
        let mut p = b"\x80\x02]".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, 200_000));
        p.push(b'.');
        let o = run(&p).unwrap();
        drop(o);
    }

    #[test]
    fn long1_ints_and_the_legacy_magic_number() {
        let o = run(b"\x80\x02\x8a\x02\xff\x7f.").unwrap();
        assert_eq!(o.borrow().as_int(), Some(0x7fff));
        let o = run(b"\x80\x02\x8a\x01\xff.").unwrap();
        assert_eq!(o.borrow().as_int(), Some(-1));
        let o = run(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
        assert!(matches!(&*o.borrow(), Value::BigInt(b) if b.len() == 10));
    }
}
