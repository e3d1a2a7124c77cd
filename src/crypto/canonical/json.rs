//! A JSON parser that produces PostgreSQL's `jsonb_out` text.

use super::numeric;

type R<T> = Result<T, &'static str>;

enum V {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<V>),
    Obj(Vec<(String, V)>),
}

const MAX_DEPTH: usize = 1000;

/// Parse JSON text and print it as PostgreSQL's `jsonb_out` would.
pub fn normalize(s: &str) -> R<String> {
    let mut p = P {
        b: s.as_bytes(),
        i: 0,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.b.len() {
        return Err("unexpected text after the JSON value");
    }
    let mut out = String::with_capacity(s.len());
    write(&v, &mut out);
    Ok(out)
}

struct P<'a> {
    b: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }
    fn lit(&mut self, w: &[u8]) -> bool {
        if self.b[self.i..].starts_with(w) {
            self.i += w.len();
            true
        } else {
            false
        }
    }
    fn value(&mut self, depth: usize) -> R<V> {
        if depth > MAX_DEPTH {
            return Err("JSON nested too deeply");
        }
        match self.b.get(self.i) {
            None => Err("unexpected end of JSON input"),
            Some(b'n') if self.lit(b"null") => Ok(V::Null),
            Some(b't') if self.lit(b"true") => Ok(V::Bool(true)),
            Some(b'f') if self.lit(b"false") => Ok(V::Bool(false)),
            Some(b'"') => Ok(V::Str(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.lit(b"]") {
                    return Ok(V::Arr(items));
                }
                loop {
                    self.ws();
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    if self.lit(b",") {
                        continue;
                    }
                    if self.lit(b"]") {
                        return Ok(V::Arr(items));
                    }
                    return Err("expected , or ] in JSON array");
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut items: Vec<(String, V)> = Vec::new();
                self.ws();
                if !self.lit(b"}") {
                    loop {
                        self.ws();
                        if self.b.get(self.i) != Some(&b'"') {
                            return Err("expected a string key in JSON object");
                        }
                        let k = self.string()?;
                        self.ws();
                        if !self.lit(b":") {
                            return Err("expected : in JSON object");
                        }
                        self.ws();
                        let v = self.value(depth + 1)?;
                        items.push((k, v));
                        self.ws();
                        if self.lit(b",") {
                            continue;
                        }
                        if self.lit(b"}") {
                            break;
                        }
                        return Err("expected , or } in JSON object");
                    }
                }
                // jsonb: keys ordered by length then bytes; last duplicate wins.
                let mut idx: Vec<usize> = (0..items.len()).collect();
                idx.sort_by(|a, b| {
                    let (ka, kb) = (&items[*a].0, &items[*b].0);
                    (ka.len(), ka.as_bytes(), std::cmp::Reverse(*a)).cmp(&(
                        kb.len(),
                        kb.as_bytes(),
                        std::cmp::Reverse(*b),
                    ))
                });
                idx.dedup_by(|a, b| items[*a].0 == items[*b].0);
                let mut slots: Vec<Option<(String, V)>> = items.into_iter().map(Some).collect();
                let obj = idx
                    .into_iter()
                    .map(|i| slots[i].take().expect("unique"))
                    .collect();
                Ok(V::Obj(obj))
            }
            _ => Err("invalid JSON token"),
        }
    }
    fn number(&mut self) -> R<V> {
        let s = self.i;
        self.lit(b"-");
        let ds = self.i;
        while self.i < self.b.len() && self.b[self.i].is_ascii_digit() {
            self.i += 1;
        }
        let int = &self.b[ds..self.i];
        if int.is_empty() || (int.len() > 1 && int[0] == b'0') {
            return Err("invalid JSON number");
        }
        if self.lit(b".") {
            let fs = self.i;
            while self.i < self.b.len() && self.b[self.i].is_ascii_digit() {
                self.i += 1;
            }
            if fs == self.i {
                return Err("invalid JSON number");
            }
        }
        if self.lit(b"e") || self.lit(b"E") {
            if !self.lit(b"+") {
                self.lit(b"-");
            }
            let es = self.i;
            while self.i < self.b.len() && self.b[self.i].is_ascii_digit() {
                self.i += 1;
            }
            if es == self.i {
                return Err("invalid JSON number");
            }
        }
        let text = std::str::from_utf8(&self.b[s..self.i]).map_err(|_| "invalid JSON number")?;
        numeric::parse_text(text)
            .map(V::Num)
            .ok_or("JSON number out of range")
    }
    fn hex4(&mut self) -> R<u32> {
        let h = self
            .b
            .get(self.i..self.i + 4)
            .ok_or("bad \\u escape in JSON string")?;
        let s = std::str::from_utf8(h).map_err(|_| "bad \\u escape in JSON string")?;
        let v = u32::from_str_radix(s, 16).map_err(|_| "bad \\u escape in JSON string")?;
        self.i += 4;
        Ok(v)
    }
    fn string(&mut self) -> R<String> {
        self.i += 1; // opening quote
        let mut out = String::new();
        loop {
            let start = self.i;
            while self.i < self.b.len()
                && !matches!(self.b[self.i], b'"' | b'\\')
                && self.b[self.i] >= 0x20
            {
                self.i += 1;
            }
            out.push_str(std::str::from_utf8(&self.b[start..self.i]).map_err(|_| "invalid UTF-8")?);
            match self.b.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = *self.b.get(self.i).ok_or("unterminated JSON string")?;
                    self.i += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp) {
                                if !self.lit(b"\\u") {
                                    return Err("unpaired surrogate in JSON string");
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err("unpaired surrogate in JSON string");
                                }
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                            }
                            if cp == 0 {
                                return Err("\\u0000 cannot be stored in jsonb");
                            }
                            out.push(
                                char::from_u32(cp).ok_or("unpaired surrogate in JSON string")?,
                            );
                        }
                        _ => return Err("invalid escape in JSON string"),
                    }
                }
                Some(_) => return Err("control character in JSON string"),
                None => return Err("unterminated JSON string"),
            }
        }
    }
}

fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write(v: &V, out: &mut String) {
    match v {
        V::Null => out.push_str("null"),
        V::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        V::Num(n) => out.push_str(n),
        V::Str(s) => write_str(s, out),
        V::Arr(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write(x, out);
            }
            out.push(']');
        }
        V::Obj(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(k, out);
                out.push_str(": ");
                write(x, out);
            }
            out.push('}');
        }
    }
}
