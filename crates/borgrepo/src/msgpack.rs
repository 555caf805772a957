//! A small, panic-free msgpack decoder: just what borg 1.2's objects use.
//!
//! borg 1.x packs text and bytes alike as msgpack "raw" (str) values and reads them back as
//! bytes, so both `str` and `bin` decode to [`Value::Bytes`]; the caller decides what is text.

/// A decoded msgpack value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `nil`.
    Nil,
    /// `true` / `false`.
    Bool(bool),
    /// Any integer (`u64` and `i64` both fit).
    Int(i128),
    /// `float 32` / `float 64`.
    Float(f64),
    /// `str` or `bin`.
    Bytes(Vec<u8>),
    /// `array`.
    Array(Vec<Value>),
    /// `map`, in stored order.
    Map(Vec<(Value, Value)>),
    /// `ext` (type, data): not used by borg 1.2, kept so a decoder never fails on it.
    Ext(i8, Vec<u8>),
}

/// Why decoding failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ends inside a value (more bytes may complete it).
    Incomplete,
    /// A byte that starts no msgpack value (0xc1), or nesting deeper than we accept.
    Malformed,
}

/// Nesting limit: borg's objects are a few levels deep; this keeps recursion bounded.
const MAX_DEPTH: usize = 32;

impl Value {
    /// Looks up a map entry by a byte-string key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(m) => {
                m.iter().find(|(k, _)| matches!(k, Value::Bytes(b) if b == key.as_bytes())).map(|(_, v)| v)
            }
            _ => None,
        }
    }
    /// The bytes of a `str` / `bin`.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
    /// An integer (borg's "bigint": little-endian signed bytes for values past 63 bits, too).
    pub fn as_int(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bytes(b) if !b.is_empty() && b.len() <= 16 => {
                let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
                let mut le = [fill; 16];
                le[..b.len()].copy_from_slice(b);
                Some(i128::from_le_bytes(le))
            }
            _ => None,
        }
    }
    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// An array's elements.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// A map's entries.
    pub fn as_map(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Malformed)?;
        let s = self.data.get(self.pos..end).ok_or(DecodeError::Incomplete)?;
        self.pos = end;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self.take(n)?.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b)))
    }
    fn len(&mut self, n: usize) -> Result<usize, DecodeError> {
        usize::try_from(self.be(n)?).map_err(|_| DecodeError::Malformed)
    }
    fn bytes(&mut self, n: usize) -> Result<Value, DecodeError> {
        Ok(Value::Bytes(self.take(n)?.to_vec()))
    }
    fn array(&mut self, n: usize, depth: usize) -> Result<Value, DecodeError> {
        // do not trust the count for the allocation: each element takes at least one byte
        let mut v = Vec::with_capacity(n.min(self.data.len() - self.pos));
        for _ in 0..n {
            v.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(v))
    }
    fn map(&mut self, n: usize, depth: usize) -> Result<Value, DecodeError> {
        let mut v = Vec::with_capacity(n.min(self.data.len() - self.pos));
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let val = self.value(depth + 1)?;
            v.push((k, val));
        }
        Ok(Value::Map(v))
    }
    fn ext(&mut self, n: usize) -> Result<Value, DecodeError> {
        let t = self.byte()? as i8;
        Ok(Value::Ext(t, self.take(n)?.to_vec()))
    }
    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::Malformed);
        }
        let b = self.byte()?;
        Ok(match b {
            0x00..=0x7f => Value::Int(i128::from(b)),
            0x80..=0x8f => return self.map(usize::from(b & 0x0f), depth),
            0x90..=0x9f => return self.array(usize::from(b & 0x0f), depth),
            0xa0..=0xbf => return self.bytes(usize::from(b & 0x1f)),
            0xc0 => Value::Nil,
            0xc1 => return Err(DecodeError::Malformed),
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4 | 0xd9 => {
                let n = self.len(1)?;
                return self.bytes(n);
            }
            0xc5 | 0xda => {
                let n = self.len(2)?;
                return self.bytes(n);
            }
            0xc6 | 0xdb => {
                let n = self.len(4)?;
                return self.bytes(n);
            }
            0xc7 => {
                let n = self.len(1)?;
                return self.ext(n);
            }
            0xc8 => {
                let n = self.len(2)?;
                return self.ext(n);
            }
            0xc9 => {
                let n = self.len(4)?;
                return self.ext(n);
            }
            0xca => Value::Float(f64::from(f32::from_bits(self.be(4)? as u32))),
            0xcb => Value::Float(f64::from_bits(self.be(8)?)),
            0xcc => Value::Int(i128::from(self.be(1)?)),
            0xcd => Value::Int(i128::from(self.be(2)?)),
            0xce => Value::Int(i128::from(self.be(4)?)),
            0xcf => Value::Int(i128::from(self.be(8)?)),
            0xd0 => Value::Int(i128::from(self.be(1)? as u8 as i8)),
            0xd1 => Value::Int(i128::from(self.be(2)? as u16 as i16)),
            0xd2 => Value::Int(i128::from(self.be(4)? as u32 as i32)),
            0xd3 => Value::Int(i128::from(self.be(8)? as i64)),
            0xd4 => return self.ext(1),
            0xd5 => return self.ext(2),
            0xd6 => return self.ext(4),
            0xd7 => return self.ext(8),
            0xd8 => return self.ext(16),
            0xdc => {
                let n = self.len(2)?;
                return self.array(n, depth);
            }
            0xdd => {
                let n = self.len(4)?;
                return self.array(n, depth);
            }
            0xde => {
                let n = self.len(2)?;
                return self.map(n, depth);
            }
            0xdf => {
                let n = self.len(4)?;
                return self.map(n, depth);
            }
            0xe0..=0xff => Value::Int(i128::from(b as i8)),
        })
    }
}

/// Decodes one value at the start of `data`; returns it and the bytes it used.
pub fn decode_prefix(data: &[u8]) -> Result<(Value, usize), DecodeError> {
    let mut r = Reader { data, pos: 0 };
    let v = r.value(0)?;
    Ok((v, r.pos))
}

/// Decodes exactly one value filling `data`.
pub fn decode(data: &[u8]) -> Result<Value, DecodeError> {
    let (v, n) = decode_prefix(data)?;
    if n != data.len() {
        return Err(DecodeError::Malformed);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_values() {
        // {"a": [1, -1, 300, nil, true], b"k": "\xff"}  (fixmap, fixarray, int16, bin8)
        let data = [0x82, 0xa1, b'a', 0x95, 0x01, 0xff, 0xcd, 0x01, 0x2c, 0xc0, 0xc3, 0xc4, 0x01, b'k', 0xa1, 0xff];
        let v = decode(&data).unwrap();
        assert_eq!(
            v.get("a").unwrap().as_array().unwrap(),
            &[Value::Int(1), Value::Int(-1), Value::Int(300), Value::Nil, Value::Bool(true)]
        );
        assert_eq!(v.get("k").unwrap().as_bytes(), Some(&[0xff][..]));
        for cut in 0..data.len() {
            assert_eq!(decode(&data[..cut]), Err(DecodeError::Incomplete), "cut {cut}");
        }
        assert_eq!(decode(&[0xc1]), Err(DecodeError::Malformed));
        // a huge announced array does not allocate it
        assert_eq!(decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]), Err(DecodeError::Incomplete));
        // bigint: -2 as 2 little-endian bytes
        assert_eq!(Value::Bytes(vec![0xfe, 0xff]).as_int(), Some(-2));
        let deep = vec![0x91; 100];
        assert_eq!(decode(&deep), Err(DecodeError::Malformed));
    }
}
