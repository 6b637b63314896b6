//! The protobuf wire format, read from untrusted bytes: every length is checked against the
//! bytes left in its enclosing message before anything is sliced, varints longer than ten
//! bytes, groups and non-existent wire types are refused, and packed lists yield at most one
//! element per byte (so nothing allocates more than the file holds). Errors name the message
//! and the byte offset in the file.

pub(super) type Wire<T> = std::result::Result<T, String>;

/// A message's bytes and where they start in the file (for error offsets).
#[derive(Clone, Copy)]
pub(super) struct Msg<'a> {
    pub bytes: &'a [u8],
    pub at: usize,
}

/// One field's value as the wire format carries it.
#[derive(Clone, Copy)]
pub(super) enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(Msg<'a>),
    Fixed32(u32),
}

pub(super) struct Reader<'a> {
    msg: Msg<'a>,
    pub(super) pos: usize,
    name: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(msg: Msg<'a>, name: &'static str) -> Self {
        Self { msg, pos: 0, name }
    }

    pub(super) fn fail<T>(&self, pos: usize, what: impl std::fmt::Display) -> Wire<T> {
        Err(format!(
            "{} at byte {}: {what}",
            self.name,
            self.msg.at + pos
        ))
    }

    fn varint(&mut self) -> Wire<u64> {
        let start = self.pos;
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = self.msg.bytes.get(self.pos) else {
                return self.fail(start, "the data ends inside a varint");
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return self.fail(start, "a varint longer than 10 bytes or over 64 bits");
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        // The tenth byte either ends the varint or is refused above.
        self.fail(start, "a varint longer than 10 bytes")
    }

    fn take(&mut self, n: u64, what: &str) -> Wire<Msg<'a>> {
        let left = self.msg.bytes.len() - self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= left => {
                let msg = Msg {
                    bytes: &self.msg.bytes[self.pos..self.pos + n],
                    at: self.msg.at + self.pos,
                };
                self.pos += n;
                Ok(msg)
            }
            _ => self.fail(
                self.pos,
                format!("{what} of {n} bytes runs past the end ({left} bytes left)"),
            ),
        }
    }

    fn fixed<const N: usize>(&mut self) -> Wire<[u8; N]> {
        let m = self.take(N as u64, "a fixed-size value")?;
        Ok(array(m.bytes))
    }

    /// The next field's number and value, or `None` at the end of the message.
    pub(super) fn next(&mut self) -> Wire<Option<(u32, Value<'a>)>> {
        if self.pos == self.msg.bytes.len() {
            return Ok(None);
        }
        let (num, wire) = self.tag()?;
        Ok(Some((num, self.value(wire)?)))
    }

    /// A field's number and wire type.
    pub(super) fn tag(&mut self) -> Wire<(u32, u8)> {
        let start = self.pos;
        let tag = self.varint()?;
        let num = tag >> 3;
        match (num, tag & 7) {
            (0, _) => self.fail(start, "field number 0 is not valid"),
            (n, _) if n > u64::from(u32::MAX >> 3) => {
                self.fail(start, format!("field number {n} is not valid"))
            }
            (_, 3 | 4) => self.fail(start, "a protobuf group (not used by ONNX)"),
            (_, w @ (6 | 7)) => self.fail(start, format!("wire type {w} does not exist")),
            (n, w) => Ok((n as u32, w as u8)),
        }
    }

    /// A value of wire type `wire` (one `tag` accepted).
    pub(super) fn value(&mut self, wire: u8) -> Wire<Value<'a>> {
        Ok(match wire {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.fixed()?)),
            5 => Value::Fixed32(u32::from_le_bytes(self.fixed()?)),
            _ => {
                let n = self.length()?;
                Value::Bytes(self.take(n, "a length-delimited field")?)
            }
        })
    }

    /// A length prefix, not yet checked against the bytes left.
    pub(super) fn length(&mut self) -> Wire<u64> {
        self.varint()
    }

    pub(super) fn wrong<T>(&self, field: &str) -> Wire<T> {
        self.fail(self.pos, format!("field '{field}' has the wrong wire type"))
    }

    pub(super) fn uint(&self, v: Value<'a>, field: &str) -> Wire<u64> {
        match v {
            Value::Varint(x) => Ok(x),
            _ => self.wrong(field),
        }
    }

    pub(super) fn int(&self, v: Value<'a>, field: &str) -> Wire<i64> {
        self.uint(v, field).map(|x| x as i64)
    }

    pub(super) fn bytes(&self, v: Value<'a>, field: &str) -> Wire<Msg<'a>> {
        match v {
            Value::Bytes(m) => Ok(m),
            _ => self.wrong(field),
        }
    }

    pub(super) fn string(&self, v: Value<'a>, field: &str) -> Wire<String> {
        let m = self.bytes(v, field)?;
        match std::str::from_utf8(m.bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => self.fail(m.at, format!("field '{field}' is not UTF-8 text")),
        }
    }

    /// A repeated varint field, packed or not.
    pub(super) fn varints<T>(
        &self,
        v: Value<'a>,
        field: &str,
        out: &mut Vec<T>,
        f: fn(u64) -> T,
    ) -> Wire<()> {
        match v {
            Value::Varint(x) => out.push(f(x)),
            Value::Bytes(m) => {
                let mut r = Reader::new(m, self.name);
                while r.pos < m.bytes.len() {
                    out.push(f(r.varint()?));
                }
            }
            _ => return self.wrong(field),
        }
        Ok(())
    }

    /// A repeated fixed-size field (float, double), packed or not.
    pub(super) fn fixeds<T, const N: usize>(
        &self,
        v: Value<'a>,
        field: &str,
        out: &mut Vec<T>,
        f: fn([u8; N]) -> T,
    ) -> Wire<()> {
        match (v, N) {
            (Value::Fixed32(x), 4) => out.push(f(array(&x.to_le_bytes()))),
            (Value::Fixed64(x), 8) => out.push(f(array(&x.to_le_bytes()))),
            (Value::Bytes(m), _) if m.bytes.len() % N == 0 => {
                out.extend(m.bytes.chunks_exact(N).map(|c| f(array(c))));
            }
            (Value::Bytes(m), _) => {
                return self.fail(
                    m.at,
                    format!("packed field '{field}' is not a whole number of {N}-byte values"),
                );
            }
            _ => return self.wrong(field),
        }
        Ok(())
    }
}

/// `N` bytes as an array; callers pass slices of exactly `N` bytes.
fn array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(s);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_varint(bytes: &[u8]) -> Wire<u64> {
        Reader::new(Msg { bytes, at: 0 }, "test").varint()
    }

    #[test]
    fn varints_up_to_64_bits_and_no_further() {
        assert_eq!(read_varint(&[0x00]), Ok(0));
        assert_eq!(read_varint(&[0x96, 0x01]), Ok(150));
        // -1 as an int64: ten bytes, the last holding the 64th bit.
        let minus_one = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(read_varint(&minus_one).map(|v| v as i64), Ok(-1));
        let e = read_varint(&[0xff; 10]).unwrap_err();
        assert!(
            e.contains("test at byte 0") && e.contains("longer than 10 bytes"),
            "{e}"
        );
        assert!(
            read_varint(&[0x80, 0x80])
                .unwrap_err()
                .contains("ends inside a varint")
        );
    }

    #[test]
    fn fields_report_their_offset_in_the_file() {
        // Field 2, length 5, but 2 bytes left; the message starts at byte 100 of its file.
        let mut r = Reader::new(
            Msg {
                bytes: &[0x12, 0x05, 1, 2],
                at: 100,
            },
            "GraphProto",
        );
        let e = r.next().map(|_| ()).unwrap_err();
        assert_eq!(
            e,
            "GraphProto at byte 102: a length-delimited field of 5 bytes runs past the end \
             (2 bytes left)"
        );
        let mut r = Reader::new(
            Msg {
                bytes: &[0x0d, 0, 0, 0x80, 0x3f],
                at: 0,
            },
            "m",
        );
        let (num, v) = r.next().unwrap().unwrap();
        let mut out = vec![];
        r.fixeds(v, "f", &mut out, f32::from_le_bytes).unwrap();
        assert_eq!((num, out), (1, vec![1.0f32]));
        assert!(matches!(r.next(), Ok(None)));
    }
}
