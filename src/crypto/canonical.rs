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

/// The wire format of a value (PostgreSQL format code 0 or 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Text,
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

pub(crate) mod numeric {
    //! Decimal text in PostgreSQL's numeric output form.

    /// Parse numeric input text (already trimmed) into output form.
    pub fn parse_text(s: &str) -> Option<String> {
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "nan" => return Some("NaN".into()),
            "infinity" | "+infinity" | "inf" | "+inf" => return Some("Infinity".into()),
            "-infinity" | "-inf" => return Some("-Infinity".into()),
            _ => {}
        }
        let b = s.as_bytes();
        let mut i = 0;
        let neg = match b.first()? {
            b'-' => {
                i += 1;
                true
            }
            b'+' => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let int = &s[start..i];
        let mut frac = "";
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let fs = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            frac = &s[fs..i];
        }
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut exp: i64 = 0;
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            i += 1;
            let es = i;
            if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                i += 1;
            }
            let ds = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if ds == i || i - ds > 6 {
                return None;
            }
            exp = s[es..i].parse().ok()?;
            // PostgreSQL's limit on the exponent of numeric input.
            if exp.abs() > 1000 {
                return None;
            }
        }
        if i != b.len() {
            return None;
        }
        Some(assemble(neg, int, frac, exp))
    }

    /// Build output form from sign, integer digits, fraction digits and a
    /// decimal exponent; the display scale is `max(0, frac.len() - exp)`.
    fn assemble(neg: bool, int: &str, frac: &str, exp: i64) -> String {
        let all: String = [int, frac].concat();
        let point = int.len() as i64 + exp;
        let (ip, fp): (String, String) = if point <= 0 {
            (String::new(), "0".repeat((-point) as usize) + &all)
        } else if point as usize >= all.len() {
            (
                all.clone() + &"0".repeat(point as usize - all.len()),
                String::new(),
            )
        } else {
            (
                all[..point as usize].to_string(),
                all[point as usize..].to_string(),
            )
        };
        finish(neg, &ip, &fp)
    }

    fn finish(neg: bool, ip: &str, fp: &str) -> String {
        let ip = ip.trim_start_matches('0');
        let ip = if ip.is_empty() { "0" } else { ip };
        let zero = ip == "0" && fp.bytes().all(|c| c == b'0');
        let mut out = String::with_capacity(ip.len() + fp.len() + 2);
        if neg && !zero {
            out.push('-');
        }
        out.push_str(ip);
        if !fp.is_empty() {
            out.push('.');
            out.push_str(fp);
        }
        out
    }

    const POS: u16 = 0x0000;
    const NEG: u16 = 0x4000;
    const NAN: u16 = 0xC000;
    const PINF: u16 = 0xD000;
    const NINF: u16 = 0xF000;

    /// `numeric_recv` wire form into output text.
    pub fn from_binary(w: &[u8]) -> Option<String> {
        if w.len() < 8 {
            return None;
        }
        let nd = i16::from_be_bytes([w[0], w[1]]);
        let weight = i16::from_be_bytes([w[2], w[3]]) as i64;
        let sign = u16::from_be_bytes([w[4], w[5]]);
        let dscale = u16::from_be_bytes([w[6], w[7]]);
        if nd < 0 || w.len() != 8 + 2 * nd as usize || dscale > 0x3FFF {
            return None;
        }
        match sign {
            NAN => return (nd == 0).then(|| "NaN".into()),
            PINF => return (nd == 0).then(|| "Infinity".into()),
            NINF => return (nd == 0).then(|| "-Infinity".into()),
            POS | NEG => {}
            _ => return None,
        }
        let mut digits = Vec::with_capacity(nd as usize);
        for i in 0..nd as usize {
            let d = i16::from_be_bytes([w[8 + 2 * i], w[9 + 2 * i]]);
            if !(0..10000).contains(&d) {
                return None;
            }
            digits.push(d as u32);
        }
        let group = |exp: i64| -> u32 {
            let idx = weight - exp;
            if idx >= 0 && (idx as usize) < digits.len() {
                digits[idx as usize]
            } else {
                0
            }
        };
        let mut ip = String::new();
        let mut e = weight;
        while e >= 0 {
            ip.push_str(&format!("{:04}", group(e)));
            e -= 1;
        }
        let mut fp = String::new();
        let mut e = -1i64;
        while (fp.len() as u64) < dscale as u64 {
            fp.push_str(&format!("{:04}", group(e)));
            e -= 1;
        }
        fp.truncate(dscale as usize);
        Some(finish(sign == NEG, &ip, &fp))
    }

    /// Output text into `numeric_send` wire form.
    pub fn to_binary(s: &str) -> Option<Vec<u8>> {
        let head = |sign: u16| {
            let mut v = vec![0u8; 8];
            v[4..6].copy_from_slice(&sign.to_be_bytes());
            v
        };
        match s {
            "NaN" => return Some(head(NAN)),
            "Infinity" => return Some(head(PINF)),
            "-Infinity" => return Some(head(NINF)),
            _ => {}
        }
        let (neg, body) = match s.strip_prefix('-') {
            Some(b) => (true, b),
            None => (false, s),
        };
        let (ip, fp) = body.split_once('.').unwrap_or((body, ""));
        if ip.is_empty()
            || !ip.bytes().all(|c| c.is_ascii_digit())
            || !fp.bytes().all(|c| c.is_ascii_digit())
            || fp.len() > 0x3FFF
        {
            return None;
        }
        let dscale = fp.len() as u16;
        let ipad = (4 - ip.len() % 4) % 4;
        let ips = "0".repeat(ipad) + ip;
        let fps = fp.to_string() + &"0".repeat((4 - fp.len() % 4) % 4);
        let mut groups: Vec<i16> = Vec::new();
        for c in ips.as_bytes().chunks(4).chain(fps.as_bytes().chunks(4)) {
            groups.push(std::str::from_utf8(c).ok()?.parse().ok()?);
        }
        let mut weight = (ips.len() / 4) as i64 - 1;
        let lead = groups.iter().take_while(|g| **g == 0).count();
        groups.drain(..lead);
        weight -= lead as i64;
        while groups.last() == Some(&0) {
            groups.pop();
        }
        let sign = if neg && !groups.is_empty() { NEG } else { POS };
        if groups.is_empty() {
            weight = 0;
        }
        let mut v = Vec::with_capacity(8 + 2 * groups.len());
        v.extend_from_slice(&(groups.len() as i16).to_be_bytes());
        v.extend_from_slice(&(i16::try_from(weight).ok()?).to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for g in groups {
            v.extend_from_slice(&g.to_be_bytes());
        }
        Some(v)
    }
}

pub(crate) mod datetime {
    //! Dates and timestamps in PostgreSQL's representation: days / microseconds
    //! since 2000-01-01, proleptic Gregorian, astronomical years (1 BC = 0).

    const USECS_PER_DAY: i64 = 86_400_000_000;
    /// 1970-01-01 minus 2000-01-01 in days.
    const UNIX_TO_PG_DAYS: i64 = -10_957;
    /// Julian day 0 (4714-11-24 BC) relative to 2000-01-01.
    const MIN_DAYS: i64 = -2_451_545;
    /// PostgreSQL's DATE_END_JULIAN relative to 2000-01-01 (exclusive).
    const DATE_END_DAYS: i64 = 2_147_483_494 - 2_451_545;
    /// PostgreSQL's END_TIMESTAMP (exclusive, 294277-01-01).
    const TS_END: i64 = 9_223_371_331_200_000_000;
    const TS_MIN: i64 = MIN_DAYS * USECS_PER_DAY;

    type R<T> = Result<T, &'static str>;

    /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    fn civil_from_days(z: i64) -> (i64, i64, i64) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (
            if m <= 2 {
                yoe + era * 400 + 1
            } else {
                yoe + era * 400
            },
            m,
            d,
        )
    }

    fn days_in_month(y: i64, m: i64) -> i64 {
        match m {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
            _ => 28,
        }
    }

    pub fn check_date(d: i32) -> R<()> {
        if d == i32::MIN || d == i32::MAX || ((MIN_DAYS..DATE_END_DAYS).contains(&(d as i64))) {
            Ok(())
        } else {
            Err("date out of range")
        }
    }

    pub fn check_timestamp(t: i64) -> R<()> {
        if t == i64::MIN || t == i64::MAX || (TS_MIN..TS_END).contains(&t) {
            Ok(())
        } else {
            Err("timestamp out of range")
        }
    }

    struct Cursor<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl Cursor<'_> {
        fn digits(&mut self, min: usize, max: usize) -> Option<(i64, usize)> {
            let s = self.i;
            while self.i < self.b.len() && self.b[self.i].is_ascii_digit() && self.i - s < max {
                self.i += 1;
            }
            let n = self.i - s;
            if n < min {
                return None;
            }
            let v = std::str::from_utf8(&self.b[s..self.i]).ok()?.parse().ok()?;
            Some((v, n))
        }
        fn eat(&mut self, c: u8) -> bool {
            if self.b.get(self.i) == Some(&c) {
                self.i += 1;
                true
            } else {
                false
            }
        }
        fn spaces(&mut self) -> bool {
            let s = self.i;
            while self.b.get(self.i) == Some(&b' ') {
                self.i += 1;
            }
            self.i > s
        }
        fn rest(&self) -> &[u8] {
            &self.b[self.i..]
        }
    }

    fn special(s: &str) -> Option<i8> {
        match s.to_ascii_lowercase().as_str() {
            "infinity" | "+infinity" => Some(1),
            "-infinity" => Some(-1),
            "epoch" => Some(0),
            _ => None,
        }
    }

    /// `Y-M-D` → days since 2000-01-01 (astronomical year).
    fn ymd(c: &mut Cursor) -> R<i64> {
        const BAD: &str = "expected YYYY-MM-DD";
        let (y, _) = c.digits(1, 7).ok_or(BAD)?;
        if !c.eat(b'-') {
            return Err(BAD);
        }
        let (m, _) = c.digits(1, 2).ok_or(BAD)?;
        if !c.eat(b'-') {
            return Err(BAD);
        }
        let (d, _) = c.digits(1, 2).ok_or(BAD)?;
        if y == 0 {
            return Err("year 0 does not exist (use 0001 BC)");
        }
        if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
            return Err("date field value out of range");
        }
        Ok(y * 10_000 + m * 100 + d)
    }

    fn to_days(packed: i64, bc: bool) -> i64 {
        let (y, m, d) = (packed / 10_000, packed / 100 % 100, packed % 100);
        let y = if bc { 1 - y } else { y };
        days_from_civil(y, m, d) + UNIX_TO_PG_DAYS
    }

    /// Trailing ` BC` / ` AD` (case-insensitive).
    fn era(c: &mut Cursor) -> R<bool> {
        let save = c.i;
        c.spaces();
        let r = c.rest().to_ascii_lowercase();
        if r == b"bc" {
            c.i = c.b.len();
            Ok(true)
        } else if r == b"ad" {
            c.i = c.b.len();
            Ok(false)
        } else {
            c.i = save;
            Ok(false)
        }
    }

    pub fn parse_date(s: &str) -> R<i32> {
        let t = s.trim();
        if let Some(k) = special(t) {
            return Ok(match k {
                1 => i32::MAX,
                -1 => i32::MIN,
                _ => UNIX_TO_PG_DAYS as i32,
            });
        }
        let mut c = Cursor {
            b: t.as_bytes(),
            i: 0,
        };
        let packed = ymd(&mut c)?;
        let bc = era(&mut c)?;
        if !c.rest().is_empty() {
            return Err("unexpected text after the date");
        }
        let d = to_days(packed, bc);
        if !(MIN_DAYS..DATE_END_DAYS).contains(&d) {
            return Err("date out of range");
        }
        Ok(d as i32)
    }

    /// Timestamp text. With `tz`, an explicit UTC offset is required (pgveil
    /// cannot apply the session's TimeZone); without, a zone is ignored as
    /// PostgreSQL's `timestamp_in` does.
    pub fn parse_timestamp(s: &str, tz: bool) -> R<i64> {
        let t = s.trim();
        if let Some(k) = special(t) {
            return Ok(match k {
                1 => i64::MAX,
                -1 => i64::MIN,
                _ => UNIX_TO_PG_DAYS * USECS_PER_DAY,
            });
        }
        let mut c = Cursor {
            b: t.as_bytes(),
            i: 0,
        };
        let packed = ymd(&mut c)?;
        let mut usec: i64 = 0;
        let save = c.i;
        let sep = c.eat(b'T') || c.eat(b't') || c.spaces();
        if sep && c.rest().first().is_some_and(u8::is_ascii_digit) {
            const BAD: &str = "expected HH:MM[:SS[.ffffff]]";
            let (h, _) = c.digits(1, 2).ok_or(BAD)?;
            if !c.eat(b':') {
                return Err(BAD);
            }
            let (mi, _) = c.digits(2, 2).ok_or(BAD)?;
            let mut sec = 0;
            let mut frac = 0i64;
            if c.eat(b':') {
                sec = c.digits(2, 2).ok_or(BAD)?.0;
                if c.eat(b'.') {
                    let start = c.i;
                    while c.rest().first().is_some_and(u8::is_ascii_digit) {
                        c.i += 1;
                    }
                    let ds = &c.b[start..c.i];
                    if ds.is_empty() {
                        return Err(BAD);
                    }
                    // Round to microseconds, half away from zero, like PostgreSQL.
                    let mut v: i64 = 0;
                    for k in 0..6 {
                        v = v * 10 + ds.get(k).map_or(0, |d| (d - b'0') as i64);
                    }
                    if ds.get(6).is_some_and(|d| *d >= b'5') {
                        v += 1;
                    }
                    frac = v;
                }
            }
            if h > 24 || mi > 59 || sec > 60 || (h == 24 && (mi > 0 || sec > 0 || frac > 0)) {
                return Err("time field value out of range");
            }
            usec = ((h * 60 + mi) * 60 + sec) * 1_000_000 + frac;
        } else {
            c.i = save;
        }
        // Zone.
        let zsave = c.i;
        c.spaces();
        let mut offset: Option<i64> = None;
        match c.rest().first() {
            Some(b'Z') | Some(b'z') => {
                c.i += 1;
                offset = Some(0);
            }
            Some(b'+') | Some(b'-') => {
                let neg = c.rest()[0] == b'-';
                c.i += 1;
                const BAD: &str = "bad UTC offset (use +HH, +HH:MM or +HHMM)";
                let (a, n) = c.digits(1, 4).ok_or(BAD)?;
                let (mut hh, mut mm, mut ss) = if n > 2 {
                    (a / 100, a % 100, 0)
                } else {
                    (a, 0, 0)
                };
                if n <= 2 && c.eat(b':') {
                    mm = c.digits(2, 2).ok_or(BAD)?.0;
                    if c.eat(b':') {
                        ss = c.digits(2, 2).ok_or(BAD)?.0;
                    }
                }
                if hh > 15 || mm > 59 || ss > 59 {
                    return Err("UTC offset out of range");
                }
                hh *= if neg { -1 } else { 1 };
                mm *= if neg { -1 } else { 1 };
                ss *= if neg { -1 } else { 1 };
                offset = Some((hh * 3600 + mm * 60 + ss) * 1_000_000);
            }
            _ => {
                let r = c.rest().to_ascii_lowercase();
                if r.starts_with(b"utc") || r.starts_with(b"gmt") {
                    c.i += 3;
                    offset = Some(0);
                } else {
                    c.i = zsave;
                }
            }
        }
        let bc = era(&mut c)?;
        if !c.rest().is_empty() {
            return Err("unexpected text after the timestamp");
        }
        let days = to_days(packed, bc);
        let mut t = days
            .checked_mul(USECS_PER_DAY)
            .and_then(|x| x.checked_add(usec))
            .ok_or("timestamp out of range")?;
        if tz {
            match offset {
                Some(o) => t -= o,
                None => {
                    return Err(
                        "timestamptz text needs an explicit UTC offset such as +00 (pgveil cannot apply the session TimeZone); or send it in binary format",
                    );
                }
            }
        }
        if !(TS_MIN..TS_END).contains(&t) {
            return Err("timestamp out of range");
        }
        Ok(t)
    }

    fn date_parts(days: i64) -> (String, bool) {
        let (y, m, d) = civil_from_days(days - UNIX_TO_PG_DAYS);
        let (yy, bc) = if y <= 0 { (1 - y, true) } else { (y, false) };
        (format!("{yy:04}-{m:02}-{d:02}"), bc)
    }

    pub fn format_date(d: i32) -> String {
        match d {
            i32::MAX => "infinity".into(),
            i32::MIN => "-infinity".into(),
            _ => {
                let (s, bc) = date_parts(d as i64);
                if bc { s + " BC" } else { s }
            }
        }
    }

    pub fn format_timestamp(t: i64, tz: bool) -> String {
        match t {
            i64::MAX => return "infinity".into(),
            i64::MIN => return "-infinity".into(),
            _ => {}
        }
        let days = t.div_euclid(USECS_PER_DAY);
        let rem = t.rem_euclid(USECS_PER_DAY);
        let (date, bc) = date_parts(days);
        let secs = rem / 1_000_000;
        let frac = rem % 1_000_000;
        let mut s = format!(
            "{date} {:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        if frac != 0 {
            let f = format!("{frac:06}");
            s.push('.');
            s.push_str(f.trim_end_matches('0'));
        }
        if tz {
            s.push_str("+00");
        }
        if bc {
            s.push_str(" BC");
        }
        s
    }
}

pub(crate) mod json {
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
            let text =
                std::str::from_utf8(&self.b[s..self.i]).map_err(|_| "invalid JSON number")?;
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
                out.push_str(
                    std::str::from_utf8(&self.b[start..self.i]).map_err(|_| "invalid UTF-8")?,
                );
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
                                    char::from_u32(cp)
                                        .ok_or("unpaired surrogate in JSON string")?,
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
}
