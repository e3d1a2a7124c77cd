//! The field splitters: PostgreSQL 15's `CopyReadAttributesText` and
//! `CopyReadAttributesCSV`, which cut one record into fields and unescape
//! them. COPY FROM uses them on the client's rows, COPY TO
//! (`session::copy_out`) on PostgreSQL's. Each field keeps its bytes as
//! sent, so what pgveil does not change is forwarded unchanged. Invariant:
//! a field reads as PostgreSQL reads it (NULL, escapes, quotes), or the
//! row is an error.

use std::ops::Range;

/// One field of a record: its bytes as the client sent them and its value
/// as PostgreSQL reads it (`None` = NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::session) struct Field {
    pub raw: Range<usize>,
    pub value: Option<Vec<u8>>,
}

/// PostgreSQL's `CopyReadAttributesText`.
pub(in crate::session) fn split_text(
    line: &[u8],
    delim: u8,
    null: &[u8],
) -> Result<Vec<Field>, &'static str> {
    let mut out = vec![];
    let mut i = 0;
    loop {
        let start = i;
        let mut value = Vec::new();
        let mut non_ascii = false;
        let mut found_delim = false;
        let mut end;
        loop {
            end = i;
            let Some(&c) = line.get(i) else { break };
            i += 1;
            if c == delim {
                found_delim = true;
                break;
            }
            if c != b'\\' {
                value.push(c);
                continue;
            }
            let Some(&c) = line.get(i) else { break };
            i += 1;
            let v = match c {
                b'0'..=b'7' => {
                    let mut v = u32::from(c - b'0');
                    for _ in 0..2 {
                        match line.get(i) {
                            Some(d @ b'0'..=b'7') => {
                                v = (v << 3) + u32::from(d - b'0');
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    let v = (v & 0xff) as u8;
                    non_ascii |= v == 0 || v >= 0x80;
                    v
                }
                b'x' => match line.get(i).and_then(|d| (*d as char).to_digit(16)) {
                    Some(d) => {
                        i += 1;
                        let mut v = d;
                        if let Some(d) = line.get(i).and_then(|d| (*d as char).to_digit(16)) {
                            i += 1;
                            v = (v << 4) + d;
                        }
                        let v = v as u8;
                        non_ascii |= v == 0 || v >= 0x80;
                        v
                    }
                    None => b'x',
                },
                b'b' => 8,
                b'f' => 12,
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'v' => 11,
                other => other,
            };
            value.push(v);
        }
        let raw = start..end;
        let value = if &line[raw.clone()] == null {
            None
        } else {
            if non_ascii && !valid_text(&value) {
                return Err("an escape that makes invalid UTF-8 or a zero byte");
            }
            Some(value)
        };
        out.push(Field { raw, value });
        if !found_delim {
            return Ok(out);
        }
    }
}

/// PostgreSQL's `CopyReadAttributesCSV` (before FORCE_NULL and
/// FORCE_NOT_NULL, which apply per column). Each field comes with whether
/// it was quoted.
pub(in crate::session) fn split_csv(
    line: &[u8],
    delim: u8,
    quote: u8,
    escape: u8,
    null: &[u8],
) -> Result<Vec<(Field, bool)>, &'static str> {
    let mut out = vec![];
    let mut i = 0;
    loop {
        let start = i;
        let mut value = Vec::new();
        let mut quoted = false;
        let mut found_delim = false;
        let mut end;
        'field: loop {
            // Not in quotes.
            loop {
                end = i;
                let Some(&c) = line.get(i) else {
                    break 'field;
                };
                i += 1;
                if c == delim {
                    found_delim = true;
                    break 'field;
                }
                if c == quote {
                    quoted = true;
                    break;
                }
                value.push(c);
            }
            // In quotes.
            loop {
                let Some(&c) = line.get(i) else {
                    return Err("an unterminated quoted CSV field");
                };
                i += 1;
                if c == escape
                    && let Some(&next) = line.get(i)
                    && (next == escape || next == quote)
                {
                    value.push(next);
                    i += 1;
                    continue;
                }
                if c == quote {
                    break;
                }
                value.push(c);
            }
        }
        let raw = start..end;
        let value = (quoted || &line[raw.clone()] != null).then_some(value);
        out.push((Field { raw, value }, quoted));
        if !found_delim {
            return Ok(out);
        }
    }
}

/// Text PostgreSQL accepts from a UTF8 client: valid UTF-8 without zero
/// bytes.
pub(super) fn valid_text(b: &[u8]) -> bool {
    !b.contains(&0) && std::str::from_utf8(b).is_ok()
}
