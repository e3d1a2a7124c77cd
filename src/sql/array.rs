//! PostgreSQL 15's one-dimensional arrays in their two wire forms: the text
//! literal (`array_in`: `{a,"b c",NULL}`) and the binary format
//! (`array_recv`). Used where pgveil transforms an array element by element
//! (`UNNEST($1::text[])` and `= ANY($1)` parameters, array literals of an
//! INSERT … SELECT … FROM UNNEST).
//!
//! Both readers are strict: they return elements only when PostgreSQL would
//! read the same input into exactly those elements, and an error for
//! everything PostgreSQL rejects and for the few forms pgveil does not
//! follow (multi-dimensional arrays, dimension decorations other than
//! `[lb:ub]=`). Errors never carry the input.

use std::fmt;

/// Why an array was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayError {
    /// PostgreSQL would reject it too (`malformed array literal`,
    /// `insufficient data left in message`, `incorrect binary data format`).
    Malformed,
    /// More than one dimension: UNNEST would flatten it, and pgveil only
    /// transforms one-dimensional arrays.
    MultiDimensional,
}

impl fmt::Display for ArrayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArrayError::Malformed => "a malformed array",
            ArrayError::MultiDimensional => "a multi-dimensional array",
        })
    }
}

/// `array_isspace`: the characters `array_in` skips around elements.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// The elements of a one-dimensional array literal in text form, as
/// `array_in` reads it for an element type whose delimiter is `,` (every
/// type pgveil protects): `None` for an unquoted `NULL`.
pub fn parse_text(s: &str) -> Result<Vec<Option<String>>, ArrayError> {
    use ArrayError::{Malformed, MultiDimensional};
    let mut rest = s.trim_start_matches(is_space);
    // Optional `[lb:ub]=` before the braces.
    let mut expected: Option<i64> = None;
    if let Some(r) = rest.strip_prefix('[') {
        let close = r.find(']').ok_or(Malformed)?;
        let (lb, ub) = r[..close].split_once(':').ok_or(Malformed)?;
        let int = |x: &str| -> Result<i64, ArrayError> {
            let digits = x.strip_prefix(['+', '-']).unwrap_or(x);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Malformed);
            }
            x.parse::<i32>().map(i64::from).map_err(|_| Malformed)
        };
        let (lb, ub) = (int(lb)?, int(ub)?);
        if ub < lb {
            return Err(Malformed);
        }
        expected = Some(ub - lb + 1);
        rest = r[close + 1..].trim_start_matches(is_space);
        if rest.starts_with('[') {
            return Err(MultiDimensional);
        }
        rest = rest
            .strip_prefix('=')
            .ok_or(Malformed)?
            .trim_start_matches(is_space);
    }
    let mut chars = rest.strip_prefix('{').ok_or(Malformed)?.chars().peekable();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.peek().copied().is_some_and(is_space) {
            chars.next();
        }
    };
    let mut out = Vec::new();
    skip_space(&mut chars);
    match chars.peek() {
        Some('}') => {
            chars.next();
        }
        Some('{') => return Err(MultiDimensional),
        None => return Err(Malformed),
        Some(_) => loop {
            skip_space(&mut chars);
            match chars.peek() {
                Some('"') => {
                    chars.next();
                    let mut item = String::new();
                    loop {
                        match chars.next().ok_or(Malformed)? {
                            '\\' => item.push(chars.next().ok_or(Malformed)?),
                            '"' => break,
                            c => item.push(c),
                        }
                    }
                    out.push(Some(item));
                    skip_space(&mut chars);
                }
                Some('{') => return Err(MultiDimensional),
                _ => {
                    // Unquoted: up to the delimiter or the closing brace;
                    // trailing whitespace that was not escaped is dropped.
                    let mut item = String::new();
                    let mut keep = 0; // length up to the last significant char
                    let mut escaped = false;
                    while let Some(&c) = chars.peek() {
                        match c {
                            ',' | '}' => break,
                            '{' | '"' => return Err(Malformed),
                            '\\' => {
                                chars.next();
                                item.push(chars.next().ok_or(Malformed)?);
                                keep = item.len();
                                escaped = true;
                            }
                            c => {
                                chars.next();
                                item.push(c);
                                if !is_space(c) {
                                    keep = item.len();
                                }
                            }
                        }
                    }
                    item.truncate(keep);
                    if item.is_empty() && !escaped {
                        return Err(Malformed);
                    }
                    if !escaped && item.eq_ignore_ascii_case("NULL") {
                        out.push(None);
                    } else {
                        out.push(Some(item));
                    }
                }
            }
            match chars.next() {
                Some(',') => continue,
                Some('}') => break,
                _ => return Err(Malformed),
            }
        },
    }
    if !chars.all(is_space) {
        return Err(Malformed);
    }
    if expected.is_some_and(|n| n != out.len() as i64) {
        return Err(Malformed);
    }
    Ok(out)
}

/// An SQL array literal body (`{…}`) of these elements, every non-NULL
/// element double-quoted with `"` and `\` escaped: what `array_in` reads
/// back into exactly these elements.
pub fn render_text<S: AsRef<str>>(items: &[Option<S>]) -> String {
    let mut out = String::from("{");
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match it {
            None => out.push_str("NULL"),
            Some(s) => {
                out.push('"');
                for c in s.as_ref().chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
    out
}

/// A one-dimensional (or empty) array in binary format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryArray {
    /// The element type's OID from the header.
    pub elem_oid: u32,
    /// The elements' bytes in order; `None` = NULL.
    pub items: Vec<Option<Vec<u8>>>,
}

/// Read an array in binary format as `array_recv` does, requiring the
/// whole value to be consumed (as Bind does for a parameter).
pub fn decode_binary(v: &[u8]) -> Result<BinaryArray, ArrayError> {
    use ArrayError::{Malformed, MultiDimensional};
    let mut b = v;
    let mut int = || -> Result<i32, ArrayError> {
        let (h, t) = b.split_first_chunk::<4>().ok_or(Malformed)?;
        b = t;
        Ok(i32::from_be_bytes(*h))
    };
    let ndim = int()?;
    let flags = int()?;
    let elem_oid = int()? as u32;
    if !(0..=6).contains(&ndim) || !(flags == 0 || flags == 1) {
        return Err(Malformed);
    }
    if ndim > 1 {
        return Err(MultiDimensional);
    }
    let mut n = 0usize;
    if ndim == 1 {
        let dim = int()?;
        let lbound = int()?;
        if dim < 0 || lbound.checked_add(dim).is_none() {
            return Err(Malformed);
        }
        n = dim as usize;
    }
    // Every element takes at least its 4-byte length: a forged count must
    // not reserve memory for elements that are not there.
    let mut items = Vec::with_capacity(n.min(b.len() / 4));
    for _ in 0..n {
        // A length-prefixed value, as in a Bind: -1 NULL, any other
        // negative length malformed (`array_recv` fails it too).
        let v = crate::wire::body::get_value(&mut b).ok_or(Malformed)?;
        items.push(v.map(<[u8]>::to_vec));
    }
    if !b.is_empty() {
        return Err(Malformed);
    }
    Ok(BinaryArray { elem_oid, items })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Result<Vec<Option<String>>, ArrayError> {
        parse_text(s)
    }
    fn v(items: &[Option<&str>]) -> Result<Vec<Option<String>>, ArrayError> {
        Ok(items.iter().map(|i| i.map(str::to_string)).collect())
    }

    /// Each case was run through PostgreSQL 15.18
    /// (`SELECT json_agg(u) FROM unnest($$…$$::text[]) u`).
    #[test]
    fn text_literals_read_as_postgresql_15_reads_them() {
        use ArrayError::*;
        assert_eq!(t("{a,b}"), v(&[Some("a"), Some("b")]));
        assert_eq!(t("{ a , b }"), v(&[Some("a"), Some("b")]));
        assert_eq!(t("{a b}"), v(&[Some("a b")]));
        assert_eq!(t("{a\\ }"), v(&[Some("a ")]));
        assert_eq!(t("{\"a\" , \"b\" }"), v(&[Some("a"), Some("b")]));
        assert_eq!(t("{}"), v(&[]));
        assert_eq!(t("{ }"), v(&[]));
        assert_eq!(
            t("{NULL,null, NuLl ,\"NULL\",N\\ULL}"),
            v(&[None, None, None, Some("NULL"), Some("NULL")])
        );
        assert_eq!(t("[1:2]={a,b}"), v(&[Some("a"), Some("b")]));
        assert_eq!(t("[0:1]={a,b}"), v(&[Some("a"), Some("b")]));
        assert_eq!(t(" [1:2] = {a,b} "), v(&[Some("a"), Some("b")]));
        assert_eq!(t("{a} "), v(&[Some("a")]));
        assert_eq!(t(" {a}"), v(&[Some("a")]));
        assert_eq!(t("{\\\"}"), v(&[Some("\"")]));
        assert_eq!(t("{\"\\\\\"}"), v(&[Some("\\")]));
        assert_eq!(t("{a\\,b}"), v(&[Some("a,b")]));
        assert_eq!(t("{\"a,b\"}"), v(&[Some("a,b")]));
        assert_eq!(t("{a\tb}"), v(&[Some("a\tb")]));
        assert_eq!(t("{ \"\" }"), v(&[Some("")]));
        assert_eq!(t("{\"\"}"), v(&[Some("")]));
        assert_eq!(t("{\\\\}"), v(&[Some("\\")]));
        assert_eq!(t("{ \\  }"), v(&[Some(" ")]));
        assert_eq!(t("{é,\"ü x\"}"), v(&[Some("é"), Some("ü x")]));
        for bad in [
            "{a\"b\"}",
            "{a\"b c\"d}",
            "{\"a\"b}",
            "{a,,b}",
            "{a,}",
            "{,a}",
            "",
            "[1:3]={a,b}",
            "{a}x",
            "{a{}",
            "{a}b}",
            "{\"}",
            "{a,\"b}",
            "{a,b",
            "{\"a\"  \"b\"}",
            "{a\\",
            "{x}}",
            "a,b",
            "[1:x]={a}",
            "[ 1:2]={a,b}",
            "[2:1]={}",
        ] {
            assert_eq!(t(bad), Err(Malformed), "{bad}");
        }
        // PostgreSQL reads `[ub]=` as `[1:ub]=`; pgveil does not follow it.
        assert_eq!(t("[1]={a}"), Err(Malformed));
        for multi in ["{{a}}", "{a,{b}}", "[1:1][1:1]={{a}}", "{ {a} }"] {
            assert!(t(multi).is_err(), "{multi}");
        }
        assert_eq!(t("{{a}}"), Err(MultiDimensional));
    }

    #[test]
    fn rendered_text_reads_back() {
        let items = vec![
            Some("a\"b\\c, {d} NULL ".to_string()),
            None,
            Some(String::new()),
            Some("NULL".to_string()),
        ];
        assert_eq!(parse_text(&render_text(&items)).unwrap(), items);
    }

    fn header(ndim: i32, flags: i32, oid: u32, dims: &[(i32, i32)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&ndim.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&oid.to_be_bytes());
        for (d, l) in dims {
            b.extend_from_slice(&d.to_be_bytes());
            b.extend_from_slice(&l.to_be_bytes());
        }
        b
    }

    #[test]
    fn binary_arrays_are_read_strictly() {
        use ArrayError::*;
        let mut ok = header(1, 1, 25, &[(2, 1)]);
        ok.extend_from_slice(&1i32.to_be_bytes());
        ok.push(b'a');
        ok.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            decode_binary(&ok),
            Ok(BinaryArray {
                elem_oid: 25,
                items: vec![Some(b"a".to_vec()), None]
            })
        );
        assert_eq!(decode_binary(&header(0, 0, 25, &[])).unwrap().items, vec![]);
        assert_eq!(
            decode_binary(&header(1, 0, 25, &[(0, 1)])).unwrap().items,
            vec![]
        );
        // Trailing bytes, a count that lies either way, bad flags, bad
        // lengths, truncation, overflowing bounds.
        let mut trailing = ok.clone();
        trailing.push(0);
        assert_eq!(decode_binary(&trailing), Err(Malformed));
        let mut more = ok.clone();
        more[12..16].copy_from_slice(&3i32.to_be_bytes());
        assert_eq!(decode_binary(&more), Err(Malformed));
        let mut fewer = ok.clone();
        fewer[12..16].copy_from_slice(&1i32.to_be_bytes());
        assert_eq!(decode_binary(&fewer), Err(Malformed));
        let mut huge = ok.clone();
        huge[12..16].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(decode_binary(&huge), Err(Malformed));
        let mut flags = ok.clone();
        flags[4..8].copy_from_slice(&2i32.to_be_bytes());
        assert_eq!(decode_binary(&flags), Err(Malformed));
        let mut neg = ok.clone();
        neg[20..24].copy_from_slice(&(-2i32).to_be_bytes());
        assert_eq!(decode_binary(&neg), Err(Malformed));
        assert_eq!(decode_binary(&ok[..ok.len() - 5]), Err(Malformed));
        assert_eq!(
            decode_binary(&header(1, 0, 25, &[(1, i32::MAX)])),
            Err(Malformed)
        );
        assert_eq!(decode_binary(&header(-1, 0, 25, &[])), Err(Malformed));
        assert_eq!(decode_binary(&header(7, 0, 25, &[])), Err(Malformed));
        assert_eq!(
            decode_binary(&header(2, 0, 25, &[(1, 1), (1, 1)])),
            Err(MultiDimensional)
        );
        assert_eq!(decode_binary(&[0, 0]), Err(Malformed));
    }
}
