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
