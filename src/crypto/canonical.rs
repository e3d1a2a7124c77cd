//! Canonical plaintext: one byte string per PostgreSQL value, whatever wire
//! format (text or binary) the client used. Envelopes encrypt and blind
//! indexes hash the canonical form, so `'42'` in text and `42` as a binary
//! int4 give the same index and decrypt to the same value.
//!
//! | type | canonical form |
//! |------|----------------|
//! | text, varchar | the UTF-8 bytes (no NUL) |
//! | int2, int4, int8 | 8-byte big-endian two's complement `i64` |
//! | numeric | PostgreSQL's text output: `[-]digits[.digits]` with the value's scale kept (`1.50` stays `1.50`), or `NaN`, `Infinity`, `-Infinity` |
//! | bool | one byte, 0 or 1 |
//! | date | 4-byte BE `i32` days since 2000-01-01 (`i32::MIN/MAX` = -/+infinity) |
//! | timestamp, timestamptz | 8-byte BE `i64` microseconds since 2000-01-01 00:00 (UTC for timestamptz; `i64::MIN/MAX` = -/+infinity) |
//! | uuid | the 16 bytes |
//! | jsonb | PostgreSQL's `jsonb_out` text (keys sorted by length then bytes, duplicates removed, `", "` and `": "` separators, numbers as numeric output) |
//! | bytea | the raw bytes |
//!
//! `render` gives back exactly what PostgreSQL sends a client (text output
//! with `DateStyle=ISO`, `bytea_output=hex`, `TimeZone=UTC` for
//! timestamptz; binary output as `*_send`).

use zeroize::Zeroizing;

use super::{CryptoError, PgType};

pub(crate) mod datetime;
pub(crate) mod json;
pub(crate) mod numeric;

/// The wire format of a value (PostgreSQL format code 0 or 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Format code 0: PostgreSQL's text input/output.
    Text,
    /// Format code 1: the type's `*_send`/`*_recv` form.
    Binary,
}

impl Format {
    /// From a protocol format code (0 text, 1 binary).
    pub fn from_code(code: i16) -> Option<Format> {
        match code {
            0 => Some(Format::Text),
            1 => Some(Format::Binary),
            _ => None,
        }
    }
    /// The protocol format code (0 text, 1 binary).
    pub fn code(self) -> i16 {
        match self {
            Format::Text => 0,
            Format::Binary => 1,
        }
    }
}

type R<T> = Result<T, CryptoError>;

/// Turn a wire value of `ty` in `format` into its canonical byte form.
pub fn canonicalize(ty: PgType, format: Format, wire: &[u8]) -> R<Zeroizing<Vec<u8>>> {
    let e = |reason| CryptoError::input(ty, format, reason);
    let out = match (ty, format) {
        (PgType::Text | PgType::Varchar, _) => {
            let s = utf8(wire)
                .ok_or_else(|| e("not valid UTF-8 (pgveil needs client_encoding UTF8)"))?;
            if s.contains('\0') {
                return Err(e("contains a NUL byte"));
            }
            wire.to_vec()
        }
        (PgType::Int2 | PgType::Int4 | PgType::Int8, Format::Text) => {
            let s = utf8(wire).ok_or_else(|| e("not an integer"))?;
            let v = parse_int(s).ok_or_else(|| e("not an integer"))?;
            check_int_range(ty, v).ok_or_else(|| e("integer out of range"))?;
            v.to_be_bytes().to_vec()
        }
        (PgType::Int2 | PgType::Int4 | PgType::Int8, Format::Binary) => {
            let v = match (ty, wire.len()) {
                (PgType::Int2, 2) => i16::from_be_bytes([wire[0], wire[1]]) as i64,
                (PgType::Int4, 4) => i32::from_be_bytes(wire.try_into().unwrap()) as i64,
                (PgType::Int8, 8) => i64::from_be_bytes(wire.try_into().unwrap()),
                _ => return Err(e("wrong length for this integer type")),
            };
            v.to_be_bytes().to_vec()
        }
        (PgType::Numeric, Format::Text) => {
            let s = utf8(wire).ok_or_else(|| e("not a number"))?;
            numeric::parse_text(s.trim_matches(is_pg_space))
                .ok_or_else(|| e("not a number"))?
                .into_bytes()
        }
        (PgType::Numeric, Format::Binary) => numeric::from_binary(wire)
            .ok_or_else(|| e("malformed binary numeric"))?
            .into_bytes(),
        (PgType::Bool, Format::Text) => {
            let s = utf8(wire).ok_or_else(|| e("not a boolean"))?;
            vec![parse_bool(s).ok_or_else(|| e("not a boolean"))? as u8]
        }
        (PgType::Bool, Format::Binary) => match wire {
            [0] => vec![0],
            [1] => vec![1],
            _ => return Err(e("binary bool must be one byte 0 or 1")),
        },
        (PgType::Date, Format::Text) => {
            let s = utf8(wire).ok_or_else(|| e("not a date"))?;
            datetime::parse_date(s).map_err(e)?.to_be_bytes().to_vec()
        }
        (PgType::Date, Format::Binary) => {
            let b: [u8; 4] = wire
                .try_into()
                .map_err(|_| e("binary date must be 4 bytes"))?;
            let d = i32::from_be_bytes(b);
            datetime::check_date(d).map_err(e)?;
            b.to_vec()
        }
        (PgType::Timestamp | PgType::Timestamptz, Format::Text) => {
            let s = utf8(wire).ok_or_else(|| e("not a timestamp"))?;
            datetime::parse_timestamp(s, ty == PgType::Timestamptz)
                .map_err(e)?
                .to_be_bytes()
                .to_vec()
        }
        (PgType::Timestamp | PgType::Timestamptz, Format::Binary) => {
            let b: [u8; 8] = wire
                .try_into()
                .map_err(|_| e("binary timestamp must be 8 bytes"))?;
            datetime::check_timestamp(i64::from_be_bytes(b)).map_err(e)?;
            b.to_vec()
        }
        (PgType::Uuid, Format::Text) => parse_uuid(wire).ok_or_else(|| e("not a uuid"))?.to_vec(),
        (PgType::Uuid, Format::Binary) => {
            if wire.len() != 16 {
                return Err(e("binary uuid must be 16 bytes"));
            }
            wire.to_vec()
        }
        (PgType::Jsonb, Format::Text) => {
            let s = utf8(wire).ok_or_else(|| e("not valid UTF-8"))?;
            json::normalize(s).map_err(e)?.into_bytes()
        }
        (PgType::Jsonb, Format::Binary) => match wire.split_first() {
            Some((1, rest)) => {
                let s = utf8(rest).ok_or_else(|| e("not valid UTF-8"))?;
                json::normalize(s).map_err(e)?.into_bytes()
            }
            Some(_) => return Err(e("unsupported binary jsonb version (expected 1)")),
            None => return Err(e("empty binary jsonb")),
        },
        (PgType::Bytea, Format::Text) => parse_bytea_text(wire).map_err(e)?,
        (PgType::Bytea, Format::Binary) => wire.to_vec(),
    };
    Ok(Zeroizing::new(out))
}

/// The bytes PostgreSQL would send a client for this value in `format`.
pub fn render(ty: PgType, format: Format, canonical: &[u8]) -> R<Vec<u8>> {
    let bad = || CryptoError::Malformed("canonical value does not match the column type");
    Ok(match (ty, format) {
        (PgType::Text | PgType::Varchar, _) => canonical.to_vec(),
        (PgType::Int2 | PgType::Int4 | PgType::Int8, _) => {
            let b: [u8; 8] = canonical.try_into().map_err(|_| bad())?;
            let v = i64::from_be_bytes(b);
            check_int_range(ty, v).ok_or_else(bad)?;
            match (format, ty) {
                (Format::Text, _) => v.to_string().into_bytes(),
                (Format::Binary, PgType::Int2) => (v as i16).to_be_bytes().to_vec(),
                (Format::Binary, PgType::Int4) => (v as i32).to_be_bytes().to_vec(),
                (Format::Binary, _) => v.to_be_bytes().to_vec(),
            }
        }
        (PgType::Numeric, Format::Text) => {
            std::str::from_utf8(canonical).map_err(|_| bad())?;
            canonical.to_vec()
        }
        (PgType::Numeric, Format::Binary) => {
            let s = std::str::from_utf8(canonical).map_err(|_| bad())?;
            numeric::to_binary(s).ok_or_else(bad)?
        }
        (PgType::Bool, Format::Text) => match canonical {
            [0] => b"f".to_vec(),
            [1] => b"t".to_vec(),
            _ => return Err(bad()),
        },
        (PgType::Bool, Format::Binary) => match canonical {
            [0] | [1] => canonical.to_vec(),
            _ => return Err(bad()),
        },
        (PgType::Date, Format::Text) => {
            let b: [u8; 4] = canonical.try_into().map_err(|_| bad())?;
            datetime::format_date(i32::from_be_bytes(b)).into_bytes()
        }
        (PgType::Timestamp | PgType::Timestamptz, Format::Text) => {
            let b: [u8; 8] = canonical.try_into().map_err(|_| bad())?;
            datetime::format_timestamp(i64::from_be_bytes(b), ty == PgType::Timestamptz)
                .into_bytes()
        }
        (PgType::Date, Format::Binary) => {
            if canonical.len() != 4 {
                return Err(bad());
            }
            canonical.to_vec()
        }
        (PgType::Timestamp | PgType::Timestamptz, Format::Binary) => {
            if canonical.len() != 8 {
                return Err(bad());
            }
            canonical.to_vec()
        }
        (PgType::Uuid, Format::Text) => {
            let u: [u8; 16] = canonical.try_into().map_err(|_| bad())?;
            format_uuid(&u).into_bytes()
        }
        (PgType::Uuid, Format::Binary) => {
            if canonical.len() != 16 {
                return Err(bad());
            }
            canonical.to_vec()
        }
        (PgType::Jsonb, Format::Text) => canonical.to_vec(),
        (PgType::Jsonb, Format::Binary) => {
            let mut v = Vec::with_capacity(canonical.len() + 1);
            v.push(1);
            v.extend_from_slice(canonical);
            v
        }
        (PgType::Bytea, Format::Text) => {
            let mut s = String::with_capacity(2 + 2 * canonical.len());
            s.push_str("\\x");
            s.push_str(&hex::encode(canonical));
            s.into_bytes()
        }
        (PgType::Bytea, Format::Binary) => canonical.to_vec(),
    })
}

/// The form a blind index hashes: the canonical form, except that numeric
/// values drop trailing fractional zeros (`1.50` and `1.5` are equal in
/// PostgreSQL, so they must index alike). Other types' canonical forms are
/// already equal exactly when PostgreSQL's `=` says so (jsonb: see
/// docs/crypto.md for the one exception, numbers with different scales).
pub fn index_form(ty: PgType, canonical: &[u8]) -> Zeroizing<Vec<u8>> {
    if ty == PgType::Numeric
        && let Ok(s) = std::str::from_utf8(canonical)
        && let Some(dot) = s.find('.')
    {
        let t = s.trim_end_matches('0');
        let t = if t.len() == dot + 1 { &s[..dot] } else { t };
        return Zeroizing::new(t.as_bytes().to_vec());
    }
    Zeroizing::new(canonical.to_vec())
}

fn utf8(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

/// PostgreSQL's `isspace` set for input functions.
fn is_pg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim_matches(is_pg_space);
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Accumulate negatively so i64::MIN parses.
    let mut v: i64 = 0;
    for b in digits.bytes() {
        v = v.checked_mul(10)?.checked_sub((b - b'0') as i64)?;
    }
    if neg { Some(v) } else { v.checked_neg() }
}

fn check_int_range(ty: PgType, v: i64) -> Option<()> {
    let ok = match ty {
        PgType::Int2 => i16::try_from(v).is_ok(),
        PgType::Int4 => i32::try_from(v).is_ok(),
        _ => true,
    };
    ok.then_some(())
}

/// PostgreSQL's `parse_bool`: unique prefixes of true/yes/on/false/no/off,
/// and 1/0, case-insensitive, surrounding whitespace ignored.
fn parse_bool(s: &str) -> Option<bool> {
    let s = s.trim_matches(is_pg_space).to_ascii_lowercase();
    let prefix = |word: &str, min: usize| s.len() >= min && word.starts_with(s.as_str());
    if prefix("true", 1) || prefix("yes", 1) || prefix("on", 2) || s == "1" {
        Some(true)
    } else if prefix("false", 1) || prefix("no", 1) || prefix("off", 2) || s == "0" {
        Some(false)
    } else {
        None
    }
}

/// PostgreSQL's `string_to_uuid`: optional braces, 32 hex digits, a hyphen
/// allowed after any group of four digits.
fn parse_uuid(wire: &[u8]) -> Option<[u8; 16]> {
    let mut s = wire;
    let braces = s.first() == Some(&b'{');
    if braces {
        s = s.strip_prefix(b"{")?.strip_suffix(b"}")?;
    }
    let mut out = [0u8; 16];
    let mut n = 0usize; // hex digits read
    let mut i = 0usize;
    while i < s.len() {
        let c = s[i];
        if c == b'-' {
            if n == 0 || !n.is_multiple_of(4) || n == 32 || s.get(i + 1) == Some(&b'-') {
                return None;
            }
            i += 1;
            continue;
        }
        let d = (c as char).to_digit(16)? as u8;
        if n >= 32 {
            return None;
        }
        out[n / 2] |= if n.is_multiple_of(2) { d << 4 } else { d };
        n += 1;
        i += 1;
    }
    (n == 32 && s.last() != Some(&b'-')).then_some(out)
}

/// The canonical text form of a UUID (lowercase, dashed).
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `byteain`: `\x` hex (whitespace allowed between digit pairs) or the
/// escape format (`\\`, `\ooo`, other bytes literal).
fn parse_bytea_text(wire: &[u8]) -> Result<Vec<u8>, &'static str> {
    if let Some(h) = wire.strip_prefix(b"\\x") {
        let mut out = Vec::with_capacity(h.len() / 2);
        let mut i = 0;
        while i < h.len() {
            if (h[i] as char).is_ascii_whitespace() {
                i += 1;
                continue;
            }
            let hi = (h[i] as char)
                .to_digit(16)
                .ok_or("invalid hexadecimal digit")?;
            let lo = h
                .get(i + 1)
                .and_then(|c| (*c as char).to_digit(16))
                .ok_or("invalid hexadecimal data: odd number of digits or bad digit")?;
            out.push((hi * 16 + lo) as u8);
            i += 2;
        }
        return Ok(out);
    }
    let mut out = Vec::with_capacity(wire.len());
    let mut i = 0;
    while i < wire.len() {
        if wire[i] != b'\\' {
            out.push(wire[i]);
            i += 1;
        } else if wire.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else if i + 3 < wire.len()
            && matches!(wire[i + 1], b'0'..=b'3')
            && matches!(wire[i + 2], b'0'..=b'7')
            && matches!(wire[i + 3], b'0'..=b'7')
        {
            out.push(
                ((wire[i + 1] - b'0') << 6) | ((wire[i + 2] - b'0') << 3) | (wire[i + 3] - b'0'),
            );
            i += 4;
        } else {
            return Err("invalid escape sequence");
        }
    }
    Ok(out)
}
