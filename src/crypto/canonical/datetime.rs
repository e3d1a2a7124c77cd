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

/// Accept a binary date only in PostgreSQL's range (or ±infinity).
pub fn check_date(d: i32) -> R<()> {
    if d == i32::MIN || d == i32::MAX || ((MIN_DAYS..DATE_END_DAYS).contains(&(d as i64))) {
        Ok(())
    } else {
        Err("date out of range")
    }
}

/// Accept a binary timestamp only in PostgreSQL's range (or ±infinity).
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

/// Date text (`Y-M-D` with an optional ` BC`/` AD`, `infinity`, `-infinity`, `epoch`) → days since 2000-01-01.
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

/// Days since 2000-01-01 → PostgreSQL's ISO date output (`2024-01-31`, ` BC`, `infinity`).
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

/// Microseconds since 2000-01-01 → PostgreSQL's ISO output; with `tz`, in UTC with a `+00` suffix.
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
