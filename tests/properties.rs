//! Property test: random rows of every supported plaintext type, written
//! through pgveil and read back through pgveil, must come back exactly as
//! PostgreSQL itself returns the same values from a plaintext table, while
//! PostgreSQL only ever holds envelopes.
//!
//! One cluster and one pgveil for the whole test (`Calmony::builder()` with
//! a policy of its own); proptest's `TestRunner` drives the cases inside one
//! tokio runtime. Per case, one random row (every column nullable):
//!
//! 1. The row goes into `shadow` (plaintext types, in a second cluster of
//!    its own that pgveil never sees, so the plaintext scan of the protected
//!    cluster at the end covers every database of it) directly, in binary;
//!    reading it back directly gives the
//!    oracle: PostgreSQL's own binary and text output of each value, and the
//!    text spelling of dates and timestamps (timestamptz in a random zone).
//! 2. The same row goes into the protected table `prop` through pgveil four
//!    ways as the `write` role: tokio-postgres binary parameters; parameters
//!    declared `text` (converted to the column type by pgveil); raw protocol
//!    text-format parameters (format 0, as libpq sends them); a simple query
//!    with literals. Text spellings vary (numeric exponents, `yes`/`on`,
//!    uuid braces, bytea escape format, unordered jsonb with `\u` escapes).
//! 3. The `read` role reads the four rows through pgveil in binary
//!    (tokio-postgres), in text (simple query) and in text over the extended
//!    protocol: every value and column type equals the oracle.
//! 4. Directly in PostgreSQL: every protected value is a well-formed
//!    envelope (`pv` magic, consistent lengths; `pgv1:` + base64url for the
//!    text-stored column), all eight are different, blind indexes are 32
//!    bytes and equal across the four rows, NULL stays NULL, and no string
//!    sentinel appears in the row's text.
//! 5. Lookups by every blind-indexed column (binary parameter and text
//!    literal) return exactly the ids of all rows written so far whose value
//!    is equal (small value pools make collisions across cases common).
//!
//! At the end, the plaintext scanner (`Calmony::assert_no_plaintext`: every
//! relation of every database of the protected cluster, raw bytea, a
//! `pg_dump`, pgveil's log, the PostgreSQL log, the audit log) finds no
//! sentinel.
//!
//! `PROPTEST_CASES=n` changes the number of cases (default 48). A failing
//! case's seed is persisted in `tests/properties.proptest-regressions` and
//! replayed first on every later run (commit the file with the fix).

mod common;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};

use common::*;

const POLICY: &str = "\
version: 1
tables:
  public.prop:
    columns:
      t:
        type: text
        blind_index: { column: t_bidx }
        access: { prop_reader: read, prop_writer: write }
      vc:   { type: varchar, access: { prop_reader: read, prop_writer: write } }
      i2:   { type: int2, access: { prop_reader: read, prop_writer: write } }
      i4:
        type: int4
        blind_index: { column: i4_bidx }
        access: { prop_reader: read, prop_writer: write }
      i8:   { type: int8, access: { prop_reader: read, prop_writer: write } }
      num:
        type: numeric
        blind_index: { column: num_bidx }
        access: { prop_reader: read, prop_writer: write }
      b:    { type: bool, access: { prop_reader: read, prop_writer: write } }
      d:
        type: date
        blind_index: { column: d_bidx }
        access: { prop_reader: read, prop_writer: write }
      ts:   { type: timestamp, access: { prop_reader: read, prop_writer: write } }
      tz:   { type: timestamptz, access: { prop_reader: read, prop_writer: write } }
      u:
        type: uuid
        blind_index: { column: u_bidx }
        access: { prop_reader: read, prop_writer: write }
      j:    { type: jsonb, access: { prop_reader: read, prop_writer: write } }
      by:
        type: bytea
        blind_index: { column: by_bidx }
        access: { prop_reader: read, prop_writer: write }
      note: { type: text, access: { prop_reader: read, prop_writer: write } }
";

const SCHEMA: &str = "
CREATE ROLE prop_writer LOGIN;
CREATE ROLE prop_reader LOGIN;
CREATE TABLE public.prop (
    id bigint PRIMARY KEY,
    t bytea, t_bidx bytea, vc bytea, i2 bytea, i4 bytea, i4_bidx bytea, i8 bytea,
    num bytea, num_bidx bytea, b bytea, d bytea, d_bidx bytea, ts bytea, tz bytea,
    u bytea, u_bidx bytea, j bytea, by bytea, by_bidx bytea,
    note text  -- protected, stored as printable envelope
);";

const SHADOW: &str = "
CREATE TABLE shadow (
    id bigint PRIMARY KEY, t text, vc varchar, i2 int2, i4 int4, i8 int8, num numeric,
    b bool, d date, ts timestamp, tz timestamptz, u uuid, j jsonb, by bytea, note text
);";

/// The protected columns in table order, and their blind-index columns.
const COLS: [&str; 14] = [
    "t", "vc", "i2", "i4", "i8", "num", "b", "d", "ts", "tz", "u", "j", "by", "note",
];
const BIDX: [(usize, &str); 6] = [
    (0, "t_bidx"),
    (3, "i4_bidx"),
    (5, "num_bidx"),
    (7, "d_bidx"),
    (10, "u_bidx"),
    (12, "by_bidx"),
];
/// Index of the text-stored column.
const NOTE: usize = 13;
/// The four write paths, in id order within a case.
const PATHS: [&str; 4] = [
    "binary parameters",
    "text-typed parameters",
    "text-format parameters",
    "simple-query literals",
];

/// Zones for the text spelling of timestamptz values (odd offsets, DST,
/// and local mean time with seconds before 1900).
const ZONES: [&str; 5] = [
    "UTC",
    "Asia/Kolkata",
    "America/St_Johns",
    "Pacific/Chatham",
    "Europe/Amsterdam",
];

// ----- values ---------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Num {
    NaN,
    Inf,
    NegInf,
    /// Sign, integer digits (may have leading zeros), fraction digits.
    Dec(bool, String, String),
}

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Text(String),
    I2(i16),
    I4(i32),
    I8(i64),
    Num(Num),
    Bool(bool),
    Date(i32),
    Ts(i64),
    Json(Json),
    Uuid([u8; 16]),
    Bytes(Vec<u8>),
}

/// One generated case: a value per column (None = NULL), a spelling choice
/// per column for the text paths, and the zone for timestamptz text.
#[derive(Debug, Clone)]
struct Case {
    row: Vec<Option<Val>>,
    spell: Vec<u8>,
    zone: usize,
}

impl Num {
    /// Equality key (numeric equality: scale and leading zeros ignored).
    fn key(&self) -> String {
        match self {
            Num::NaN => "NaN".into(),
            Num::Inf => "Inf".into(),
            Num::NegInf => "-Inf".into(),
            Num::Dec(neg, i, f) => {
                let i = i.trim_start_matches('0');
                let f = f.trim_end_matches('0');
                if i.is_empty() && f.is_empty() {
                    "0".into()
                } else {
                    format!("{}{i}.{f}", if *neg { "-" } else { "" })
                }
            }
        }
    }

    fn text(&self, spell: u8) -> String {
        match (self, spell % 3) {
            (Num::NaN, 0) => "NaN".into(),
            (Num::NaN, _) => " nan ".into(),
            (Num::Inf, 0) => "Infinity".into(),
            (Num::Inf, 1) => "inf".into(),
            (Num::Inf, _) => "+Infinity".into(),
            (Num::NegInf, 0) => "-Infinity".into(),
            (Num::NegInf, _) => "-inf".into(),
            (Num::Dec(neg, i, f), s) => {
                let sign = if *neg { "-" } else { "" };
                let i = if i.is_empty() { "0" } else { i };
                match s {
                    // Exponent form with the same scale: 12345e-2 = 123.45.
                    1 => format!("{sign}{i}{f}e-{}", f.len()),
                    _ if f.is_empty() => format!("{sign}{i}"),
                    _ => format!("{sign}{i}.{f}"),
                }
            }
        }
    }

    /// numeric_send: base-10000 digits, weight, sign, display scale.
    fn binary(&self) -> Vec<u8> {
        let mut b = BytesMut::new();
        let (neg, int, frac) = match self {
            Num::Dec(n, i, f) => (*n, i.trim_start_matches('0').to_string(), f.clone()),
            special => {
                let sign: u16 = match special {
                    Num::NaN => 0xC000,
                    Num::Inf => 0xD000,
                    _ => 0xF000,
                };
                b.put_i16(0);
                b.put_i16(0);
                b.put_u16(sign);
                b.put_i16(0);
                return b.to_vec();
            }
        };
        let int = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
        let fracp = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
        let all = format!("{int}{fracp}");
        let mut digits: Vec<i16> = all
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap().parse().unwrap())
            .collect();
        let mut weight = (int.len() / 4) as i16 - 1;
        while digits.first() == Some(&0) {
            digits.remove(0);
            weight -= 1;
        }
        while digits.last() == Some(&0) {
            digits.pop();
        }
        let sign: u16 = if digits.is_empty() {
            weight = 0;
            0
        } else if neg {
            0x4000
        } else {
            0
        };
        b.put_i16(digits.len() as i16);
        b.put_i16(weight);
        b.put_u16(sign);
        b.put_i16(frac.len() as i16);
        for d in digits {
            b.put_i16(d);
        }
        b.to_vec()
    }
}

impl Json {
    /// JSON text; `loose` adds whitespace and `\u` escapes every non-ASCII
    /// character (surrogate pairs above the BMP).
    fn write(&self, out: &mut String, loose: bool) {
        let sp = if loose { " \n " } else { "" };
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => out.push_str(n),
            Json::Str(s) => write_json_str(s, out, loose),
            Json::Arr(v) => {
                out.push('[');
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                        out.push_str(sp);
                    }
                    x.write(out, loose);
                }
                out.push(']');
            }
            Json::Obj(v) => {
                out.push('{');
                out.push_str(sp);
                for (i, (k, x)) in v.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_json_str(k, out, loose);
                    out.push_str(sp);
                    out.push(':');
                    x.write(out, loose);
                }
                out.push_str(sp);
                out.push('}');
            }
        }
    }

    fn text(&self, loose: bool) -> String {
        let mut s = String::new();
        self.write(&mut s, loose);
        s
    }
}

fn write_json_str(s: &str, out: &mut String, loose: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c if loose && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(out, "\\u{:04X}", u).unwrap();
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Val {
    /// PostgreSQL binary format.
    fn binary(&self) -> Vec<u8> {
        match self {
            Val::Text(s) => s.as_bytes().to_vec(),
            Val::I2(v) => v.to_be_bytes().to_vec(),
            Val::I4(v) => v.to_be_bytes().to_vec(),
            Val::I8(v) | Val::Ts(v) => v.to_be_bytes().to_vec(),
            Val::Num(n) => n.binary(),
            Val::Bool(b) => vec![*b as u8],
            Val::Date(d) => d.to_be_bytes().to_vec(),
            Val::Json(j) => {
                let mut v = vec![1u8];
                v.extend_from_slice(j.text(false).as_bytes());
                v
            }
            Val::Uuid(u) => u.to_vec(),
            Val::Bytes(b) => b.clone(),
        }
    }

    /// A text spelling PostgreSQL accepts for this value; `None` for dates
    /// and timestamps (their spelling comes from PostgreSQL).
    fn text(&self, spell: u8) -> Option<String> {
        Some(match self {
            Val::Text(s) => s.clone(),
            Val::I2(v) => int_text(*v as i64, spell),
            Val::I4(v) => int_text(*v as i64, spell),
            Val::I8(v) => int_text(*v, spell),
            Val::Num(n) => n.text(spell),
            Val::Bool(b) => {
                let t = ["t", "true", "TRUE", "yes", "on", "1", " y "];
                let f = ["f", "false", "False", "no", "off", "0", " n "];
                (if *b { t } else { f })[spell as usize % 7].to_string()
            }
            Val::Date(_) | Val::Ts(_) => return None,
            Val::Json(j) => j.text(spell % 2 == 1),
            Val::Uuid(u) => {
                let h = hex::encode(u);
                let dashed = format!(
                    "{}-{}-{}-{}-{}",
                    &h[0..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..32]
                );
                match spell % 4 {
                    0 => dashed,
                    1 => dashed.to_uppercase(),
                    2 => h,
                    _ => format!("{{{dashed}}}"),
                }
            }
            Val::Bytes(b) => match spell % 3 {
                0 => format!("\\x{}", hex::encode(b)),
                1 => format!("\\x{}", hex::encode_upper(b)),
                _ => {
                    let mut s = String::new();
                    for &c in b {
                        match c {
                            b'\\' => s.push_str("\\\\"),
                            0x20..=0x7e => s.push(c as char),
                            _ => write!(s, "\\{c:03o}").unwrap(),
                        }
                    }
                    s
                }
            },
        })
    }

    /// Equality as the blind index promises it (numeric ignores scale).
    fn same(&self, o: &Val) -> bool {
        match (self, o) {
            (Val::Num(a), Val::Num(b)) => a.key() == b.key(),
            _ => self == o,
        }
    }
}

fn int_text(v: i64, spell: u8) -> String {
    match spell % 3 {
        1 if v >= 0 => format!("+{v}"),
        2 => format!("  {v}\t"),
        _ => v.to_string(),
    }
}

// ----- strategies -------------------------------------------------------------

/// A string that contains a sentinel (`xxxxxx~`, six random letters and a
/// tilde, which neither hex nor base64 can produce) and then anything but
/// NUL: quotes, backslashes, control characters, any Unicode.
fn sentinel_string() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        4 => any::<char>(),
        1 => prop::sample::select(vec!['\'', '"', '\\', ' ', '\n', '\t', '%', '$', ';']),
    ];
    ("[a-z]{6}", prop::collection::vec(ch, 0..24)).prop_map(|(w, cs)| {
        let rest: String = cs.into_iter().filter(|&c| c != '\0').collect();
        format!("{w}~{rest}")
    })
}

fn num_strategy() -> impl Strategy<Value = Num> {
    let dec =
        (any::<bool>(), "[0-9]{0,24}", "[0-9]{0,14}").prop_map(|(neg, i, f)| Num::Dec(neg, i, f));
    let pool = prop::sample::select(vec![
        Num::Dec(false, "1".into(), "5".into()),
        Num::Dec(false, "01".into(), "500".into()),
        Num::Dec(true, "0".into(), "00".into()),
        Num::Dec(false, "".into(), "".into()),
        Num::Dec(false, "10".into(), "".into()),
    ]);
    prop_oneof![
        6 => dec,
        3 => pool,
        1 => prop::sample::select(vec![Num::NaN, Num::Inf, Num::NegInf]),
    ]
}

fn json_strategy() -> impl Strategy<Value = Json> {
    let num = "-?(0|[1-9][0-9]{0,12})(\\.[0-9]{1,8})?([eE][-+]?[0-9]{1,2})?";
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        num.prop_map(Json::Num),
        sentinel_string().prop_map(Json::Str),
    ];
    let key = prop_oneof![
        prop::sample::select(vec!["a", "b", "ab", "", "é", "a\"b"]).prop_map(String::from),
        sentinel_string(),
    ];
    leaf.prop_recursive(3, 24, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Json::Arr),
            prop::collection::vec((key.clone(), inner), 0..5).prop_map(Json::Obj),
        ]
    })
}

/// Days since 2000-01-01: mostly recent, sometimes anywhere in
/// PostgreSQL's range (4714-11-24 BC .. 5874897-12-31), or ±infinity.
fn date_strategy() -> impl Strategy<Value = i32> {
    prop_oneof![
        4 => -36_524..36_524i32,
        2 => 0..3i32,
        2 => -2_451_545..=2_145_031_948i32,
        1 => prop::sample::select(vec![i32::MAX, i32::MIN]),
    ]
}

/// Microseconds since 2000-01-01: mostly ±100 years, sometimes anywhere in
/// PostgreSQL's range (4714-11-24 BC .. 294276 AD), or ±infinity.
fn ts_strategy() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => -3_155_760_000_000_000..3_155_760_000_000_000i64,
        2 => -211_813_488_000_000_000..9_223_371_331_200_000_000i64,
        1 => prop::sample::select(vec![i64::MAX, i64::MIN]),
    ]
}

/// `Some` nine times out of ten. Unlike `prop::option`, a failing `Some`
/// first shrinks to `None` and only then shrinks the value, so a minimal
/// case shows exactly the columns that matter.
#[derive(Debug)]
struct NoneFirst<S>(S);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shrink {
    Some,
    TryingNone,
    None,
    /// `None` made the case pass: the value stays, and shrinks.
    Needed,
}

struct NoneFirstTree<T> {
    inner: T,
    state: Shrink,
}

impl<S: Strategy> Strategy for NoneFirst<S> {
    type Tree = NoneFirstTree<S::Tree>;
    type Value = Option<S::Value>;
    fn new_tree(&self, runner: &mut TestRunner) -> prop::strategy::NewTree<Self> {
        let some = prop::bool::weighted(0.9).new_tree(runner)?.current();
        Ok(NoneFirstTree {
            inner: self.0.new_tree(runner)?,
            state: if some { Shrink::Some } else { Shrink::None },
        })
    }
}

impl<T: ValueTree> ValueTree for NoneFirstTree<T> {
    type Value = Option<T::Value>;
    fn current(&self) -> Self::Value {
        match self.state {
            Shrink::Some | Shrink::Needed => Some(self.inner.current()),
            Shrink::TryingNone | Shrink::None => None,
        }
    }
    fn simplify(&mut self) -> bool {
        match self.state {
            Shrink::Some => {
                self.state = Shrink::TryingNone;
                true
            }
            Shrink::TryingNone => {
                self.state = Shrink::None;
                false
            }
            Shrink::None => false,
            Shrink::Needed => self.inner.simplify(),
        }
    }
    fn complicate(&mut self) -> bool {
        match self.state {
            Shrink::TryingNone => {
                self.state = Shrink::Needed;
                true
            }
            Shrink::Needed => self.inner.complicate(),
            _ => false,
        }
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let o = |s: BoxedStrategy<Val>| NoneFirst(s);
    let row = (
        (
            o(sentinel_string().prop_map(Val::Text).boxed()),
            o(sentinel_string().prop_map(Val::Text).boxed()),
            o(any::<i16>().prop_map(Val::I2).boxed()),
            o(prop_oneof![any::<i32>(), 0..3i32].prop_map(Val::I4).boxed()),
            o(any::<i64>().prop_map(Val::I8).boxed()),
            o(num_strategy().prop_map(Val::Num).boxed()),
            o(any::<bool>().prop_map(Val::Bool).boxed()),
        ),
        (
            o(date_strategy().prop_map(Val::Date).boxed()),
            o(ts_strategy().prop_map(Val::Ts).boxed()),
            o(ts_strategy().prop_map(Val::Ts).boxed()),
            o(prop_oneof![
                any::<[u8; 16]>(),
                prop::sample::select(vec![[0u8; 16], [0xab; 16]])
            ]
            .prop_map(Val::Uuid)
            .boxed()),
            o(json_strategy().prop_map(Val::Json).boxed()),
            o(prop_oneof![
                prop::collection::vec(any::<u8>(), 0..40),
                prop::sample::select(vec![vec![], b"\\x".to_vec(), vec![0, 0xff]]),
            ]
            .prop_map(Val::Bytes)
            .boxed()),
            o(sentinel_string().prop_map(Val::Text).boxed()),
        ),
    )
        .prop_map(|(a, b)| {
            vec![
                a.0, a.1, a.2, a.3, a.4, a.5, a.6, b.0, b.1, b.2, b.3, b.4, b.5, b.6,
            ]
        });
    (
        row,
        prop::collection::vec(any::<u8>(), COLS.len()),
        0..ZONES.len(),
    )
        .prop_map(|(row, spell, zone)| Case { row, spell, zone })
}

// ----- raw values for tokio-postgres ------------------------------------------

/// A parameter whose bytes are sent as they are, whatever the type.
#[derive(Debug)]
struct Raw(Option<Vec<u8>>);

impl ToSql for Raw {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(b) => {
                out.put_slice(b);
                Ok(IsNull::No)
            }
        }
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    tokio_postgres::types::to_sql_checked!();
}

/// A result column's bytes as they came, whatever the type.
#[derive(Debug, PartialEq)]
struct RawOut(Option<Vec<u8>>);

impl<'a> FromSql<'a> for RawOut {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawOut(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawOut(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

fn raw_row(r: &tokio_postgres::Row) -> Vec<Option<Vec<u8>>> {
    (0..r.len()).map(|i| r.get::<_, RawOut>(i).0).collect()
}

// ----- a raw protocol client (text-format parameters and results) ---------------

/// The extended protocol with format 0 (text) for parameters and results,
/// as libpq sends them; tokio-postgres always uses binary.
struct RawConn {
    sock: tokio::net::TcpStream,
}

impl RawConn {
    async fn connect(port: u16, user: &str, db: &str) -> RawConn {
        let sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut c = RawConn { sock };
        let mut b = BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [
                ("user", user),
                ("database", db),
                ("client_encoding", "UTF8"),
            ],
            &mut b,
        )
        .unwrap();
        c.sock.write_all(&b).await.unwrap();
        c.until_ready().await.expect("raw login");
        c
    }

    async fn message(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        self.sock.read_exact(&mut head).await.expect("read header");
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        self.sock.read_exact(&mut body).await.expect("read body");
        (head[0], body)
    }

    /// Read until ReadyForQuery: the DataRows as text, or the error.
    async fn until_ready(&mut self) -> Result<Vec<Vec<Option<String>>>, String> {
        let mut rows = vec![];
        let mut err = None;
        loop {
            let (tag, body) = self.message().await;
            match tag {
                b'D' => {
                    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
                    let mut p = 2;
                    let mut row = Vec::with_capacity(n);
                    for _ in 0..n {
                        let len = i32::from_be_bytes(body[p..p + 4].try_into().unwrap());
                        p += 4;
                        if len < 0 {
                            row.push(None);
                        } else {
                            let v = &body[p..p + len as usize];
                            row.push(Some(String::from_utf8(v.to_vec()).expect("text result")));
                            p += len as usize;
                        }
                    }
                    rows.push(row);
                }
                b'E' => {
                    let text = String::from_utf8_lossy(&body).replace('\0', " ");
                    err.get_or_insert(text);
                }
                b'R' => assert_eq!(&body[..4], &[0, 0, 0, 0], "trust login expected"),
                b'Z' => return err.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// Parse (no declared types) / Bind (text parameters, text results) /
    /// Execute / Sync.
    async fn query(
        &mut self,
        sql: &str,
        params: &[Option<String>],
    ) -> Result<Vec<Vec<Option<String>>>, String> {
        use postgres_protocol::message::frontend as fe;
        let mut b = BytesMut::new();
        fe::parse("", sql, [0u32; 0], &mut b).unwrap();
        fe::bind(
            "",
            "",
            [0i16],
            params,
            |p, out| match p {
                None => Ok(postgres_protocol::IsNull::Yes),
                Some(s) => {
                    out.put_slice(s.as_bytes());
                    Ok(postgres_protocol::IsNull::No)
                }
            },
            [0i16],
            &mut b,
        )
        .map_err(|_| "bind".to_string())?;
        fe::execute("", 0, &mut b).unwrap();
        fe::sync(&mut b);
        self.sock.write_all(&b).await.unwrap();
        self.until_ready().await
    }
}

// ----- the test -----------------------------------------------------------------

struct Conns {
    writer: tokio_postgres::Client,
    reader: tokio_postgres::Client,
    raw_writer: RawConn,
    raw_reader: RawConn,
    /// Superuser, straight to PostgreSQL: `app` (ciphertext).
    direct: tokio_postgres::Client,
    /// Superuser of the model cluster: `shadow` (plaintext).
    shadow: tokio_postgres::Client,
    stmts: Stmts,
}

/// The extended-protocol statements, prepared once. A statement prepared
/// for one call (`client.query("…", …)`) is closed by tokio-postgres when it
/// is dropped, without waiting for the answer, and pgveil refuses a
/// statement on protected tables that contains a backslash while earlier
/// requests are still in flight: preparing once keeps this test about
/// values, not about that interplay.
struct Stmts {
    /// As the writer: binary parameters, and parameters declared `text`.
    insert: tokio_postgres::Statement,
    insert_text: tokio_postgres::Statement,
    /// As the reader: the rows of a case, and a lookup per blind index.
    read: tokio_postgres::Statement,
    lookup: Vec<tokio_postgres::Statement>,
}

fn insert_sql() -> String {
    format!(
        "INSERT INTO prop (id, {}) VALUES ({})",
        col_list(),
        placeholders(15)
    )
}

fn read_sql() -> String {
    format!(
        "SELECT {} FROM prop WHERE id BETWEEN $1 AND $2 ORDER BY id",
        col_list()
    )
}

impl Stmts {
    async fn prepare(writer: &tokio_postgres::Client, reader: &tokio_postgres::Client) -> Stmts {
        let mut types = vec![Type::INT8];
        types.extend(std::iter::repeat_n(Type::TEXT, COLS.len()));
        let mut lookup = vec![];
        for (i, _) in BIDX {
            let sql = format!("SELECT id FROM prop WHERE {} = $1 ORDER BY id", COLS[i]);
            lookup.push(reader.prepare(&sql).await.unwrap());
        }
        Stmts {
            insert: writer.prepare(&insert_sql()).await.unwrap(),
            insert_text: writer.prepare_typed(&insert_sql(), &types).await.unwrap(),
            read: reader.prepare(&read_sql()).await.unwrap(),
            lookup,
        }
    }
}

/// Every row written through pgveil so far (for expected lookup results).
type Ledger = Vec<(i64, Vec<Option<Val>>)>;

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn col_list() -> String {
    COLS.join(", ")
}

fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn literal(v: Option<&str>) -> String {
    match v {
        None => "NULL".into(),
        Some(s) => quote_literal(s),
    }
}

fn err(e: tokio_postgres::Error) -> String {
    err_text(&e)
}

/// PostgreSQL's own answer for a case's values, from `shadow`.
struct Oracle {
    types: Vec<Type>,
    bin: Vec<Option<Vec<u8>>>,
    text: Vec<Option<String>>,
    /// What the text write paths send: the case's own spellings, and
    /// PostgreSQL's for dates and timestamps (timestamptz in the case's zone).
    spelled: Vec<Option<String>>,
}

fn binary_params(case: &Case) -> Vec<Raw> {
    case.row
        .iter()
        .map(|v| Raw(v.as_ref().map(Val::binary)))
        .collect()
}

/// The four rows of the case that starts at id `base`.
fn range(base: i64) -> String {
    format!("id BETWEEN {base} AND {} ORDER BY id", base + 3)
}

/// One case; `Err` describes the first property that does not hold.
async fn run_case(
    c: &mut Conns,
    ledger: &RefCell<Ledger>,
    next_id: &RefCell<i64>,
    case: &Case,
    sentinels: &RefCell<Vec<String>>,
) -> Result<(), String> {
    let base = {
        let mut n = next_id.borrow_mut();
        *n += 4;
        *n - 4
    };
    for v in case.row.iter().flatten() {
        if let Val::Text(s) = v {
            sentinels.borrow_mut().push(s[..7].to_string());
        }
    }
    let oracle = oracle(c, base, case).await?;
    let mut record = |id: i64| ledger.borrow_mut().push((id, case.row.clone()));
    write_four(c, base, case, &oracle.spelled, &mut record).await?;
    check_reads(c, base, &oracle).await?;
    check_stored(c, base, case).await?;
    let want = expected_lookups(&ledger.borrow(), case);
    check_lookups(c, case, &want, &oracle.spelled).await
}

/// Step 1: the plaintext row in `shadow`, directly, and what PostgreSQL returns.
async fn oracle(c: &Conns, base: i64, case: &Case) -> Result<Oracle, String> {
    let raw = binary_params(case);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&base];
    params.extend(raw.iter().map(|r| r as &(dyn ToSql + Sync)));
    c.shadow
        .execute(
            &format!(
                "INSERT INTO shadow (id, {}) VALUES ({})",
                col_list(),
                placeholders(15)
            ),
            &params,
        )
        .await
        .map_err(|e| {
            format!(
                "shadow insert (the generator made a value PostgreSQL refuses): {}",
                err(e)
            )
        })?;
    let oracle_row = c
        .shadow
        .query_one(
            &format!("SELECT {} FROM shadow WHERE id = $1", col_list()),
            &[&base],
        )
        .await
        .map_err(err)?;
    let types: Vec<Type> = oracle_row
        .columns()
        .iter()
        .map(|c| c.type_().clone())
        .collect();
    let bin = raw_row(&oracle_row);
    let text = simple_rows(
        &c.shadow
            .simple_query(&format!(
                "SELECT {} FROM shadow WHERE id = {base}",
                col_list()
            ))
            .await
            .map_err(err)?,
    )
    .remove(0);
    let zoned = simple_rows(
        &c.shadow
            .simple_query(&format!(
                "SET TimeZone = '{}'; SELECT tz FROM shadow WHERE id = {base}; SET TimeZone = 'UTC'",
                ZONES[case.zone]
            ))
            .await
            .map_err(err)?,
    )
    .remove(0)
    .remove(0);
    // Text spellings for the text paths.
    let spelled = case
        .row
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let v = v.as_ref()?;
            v.text(case.spell[i]).or_else(|| {
                if COLS[i] == "tz" {
                    zoned.clone()
                } else {
                    text[i].clone()
                }
            })
        })
        .collect();
    Ok(Oracle {
        types,
        bin,
        text,
        spelled,
    })
}

/// Step 2: four writes through pgveil as the write role, ids `base..base + 4`.
async fn write_four(
    c: &mut Conns,
    base: i64,
    case: &Case,
    spelled: &[Option<String>],
    record: &mut impl FnMut(i64),
) -> Result<(), String> {
    // (a) binary parameters.
    let bin = binary_params(case);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&base];
    params.extend(bin.iter().map(|r| r as &(dyn ToSql + Sync)));
    c.writer
        .execute(&c.stmts.insert, &params)
        .await
        .map_err(|e| format!("insert with binary parameters: {}", err(e)))?;
    record(base);
    // (b) parameters declared text (binary format of text = UTF-8).
    let texts: Vec<Raw> = spelled
        .iter()
        .map(|t| Raw(t.as_ref().map(|s| s.as_bytes().to_vec())))
        .collect();
    let id_b = base + 1;
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&id_b];
    params.extend(texts.iter().map(|r| r as &(dyn ToSql + Sync)));
    c.writer
        .execute(&c.stmts.insert_text, &params)
        .await
        .map_err(|e| format!("insert with text-typed parameters: {}", err(e)))?;
    record(id_b);
    // (c) text-format parameters (format 0), no declared types.
    let mut tparams = vec![Some((base + 2).to_string())];
    tparams.extend(spelled.iter().cloned());
    c.raw_writer
        .query(&insert_sql(), &tparams)
        .await
        .map_err(|e| format!("insert with text-format parameters: {e}"))?;
    record(base + 2);
    // (d) a simple query with literals.
    let lits: Vec<String> = spelled.iter().map(|t| literal(t.as_deref())).collect();
    c.writer
        .simple_query(&format!(
            "INSERT INTO prop (id, {}) VALUES ({}, {})",
            col_list(),
            base + 3,
            lits.join(", ")
        ))
        .await
        .map_err(|e| format!("insert with literals (simple query): {}", err(e)))?;
    record(base + 3);
    Ok(())
}

/// Step 3: reads through pgveil by the read role, in three ways, against
/// the oracle.
async fn check_reads(c: &mut Conns, base: i64, oracle: &Oracle) -> Result<(), String> {
    let rows = c
        .reader
        .query(&c.stmts.read, &[&base, &(base + 3)])
        .await
        .map_err(|e| format!("binary read: {}", err(e)))?;
    check!(rows.len() == 4, "binary read: {} rows", rows.len());
    for (k, r) in rows.iter().enumerate() {
        let got_types: Vec<&Type> = r.columns().iter().map(|c| c.type_()).collect();
        for i in 0..COLS.len() {
            check!(
                got_types[i] == &oracle.types[i],
                "written with {}, column {}: type {} through pgveil, {} in PostgreSQL",
                PATHS[k],
                COLS[i],
                got_types[i],
                oracle.types[i]
            );
        }
        let got = raw_row(r);
        for i in 0..COLS.len() {
            check!(
                same_binary(&got[i], &oracle.bin[i]),
                "written with {}, binary read of {}: pgveil {:?}, PostgreSQL {:?}",
                PATHS[k],
                COLS[i],
                got[i].as_ref().map(hex::encode),
                oracle.bin[i].as_ref().map(hex::encode)
            );
        }
    }
    let text_reads = [
        (
            "simple-query",
            simple_rows(
                &c.reader
                    .simple_query(&format!(
                        "SELECT {} FROM prop WHERE {}",
                        col_list(),
                        range(base)
                    ))
                    .await
                    .map_err(|e| format!("text read: {}", err(e)))?,
            ),
        ),
        (
            "extended text-format",
            c.raw_reader
                .query(
                    &read_sql(),
                    &[Some(base.to_string()), Some((base + 3).to_string())],
                )
                .await
                .map_err(|e| format!("extended text read: {e}"))?,
        ),
    ];
    for (how, rows) in &text_reads {
        check!(rows.len() == 4, "{how} read: {} rows", rows.len());
        for (k, r) in rows.iter().enumerate() {
            for i in 0..COLS.len() {
                check!(
                    r[i] == oracle.text[i],
                    "written with {}, {how} read of {}: pgveil {:?}, PostgreSQL {:?}",
                    PATHS[k],
                    COLS[i],
                    r[i],
                    oracle.text[i]
                );
            }
        }
    }
    Ok(())
}

/// Step 4: what PostgreSQL holds: envelopes, blind indexes, no sentinel.
async fn check_stored(c: &Conns, base: i64, case: &Case) -> Result<(), String> {
    let mut stored_cols = vec![];
    for (i, c) in COLS.iter().enumerate() {
        stored_cols.push(if i == NOTE {
            "convert_to(note, 'UTF8')".to_string()
        } else {
            c.to_string()
        });
    }
    for (_, b) in BIDX {
        stored_cols.push(b.to_string());
    }
    let stored = c
        .direct
        .query(
            &format!(
                "SELECT {} FROM prop WHERE {}",
                stored_cols.join(", "),
                range(base)
            ),
            &[],
        )
        .await
        .map_err(err)?;
    check!(stored.len() == 4, "direct read: {} rows", stored.len());
    let stored: Vec<Vec<Option<Vec<u8>>>> = stored.iter().map(raw_row).collect();
    let mut envelopes = std::collections::HashSet::new();
    for (k, r) in stored.iter().enumerate() {
        for i in 0..COLS.len() {
            match (&case.row[i], &r[i]) {
                (None, None) => {}
                (Some(_), Some(v)) => {
                    let env = if i == NOTE {
                        let s = std::str::from_utf8(v).map_err(|e| e.to_string())?;
                        let b64 = s.strip_prefix("pgv1:").ok_or_else(|| {
                            format!("row {k}: text-stored note is not pgv1: ({} bytes)", s.len())
                        })?;
                        use base64::Engine as _;
                        base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .decode(b64)
                            .map_err(|e| format!("row {k}: note is not base64url: {e}"))?
                    } else {
                        v.clone()
                    };
                    check_envelope(&env)
                        .map_err(|e| format!("row {k}, column {}: {e}", COLS[i]))?;
                    check!(
                        envelopes.insert(env),
                        "row {k}, column {}: the same envelope twice",
                        COLS[i]
                    );
                }
                (want, got) => {
                    return Err(format!(
                        "row {k}, column {}: NULL in/out mismatch (wrote {}, stored {})",
                        COLS[i],
                        if want.is_some() { "a value" } else { "NULL" },
                        if got.is_some() { "a value" } else { "NULL" }
                    ));
                }
            }
        }
        for (n, (i, b)) in BIDX.iter().enumerate() {
            let idx = &r[COLS.len() + n];
            check!(
                idx.is_some() == case.row[*i].is_some(),
                "row {k}: {b} is {} for a {} value",
                if idx.is_some() { "set" } else { "NULL" },
                if case.row[*i].is_some() {
                    "non-NULL"
                } else {
                    "NULL"
                }
            );
            check!(
                idx.as_ref().is_none_or(|v| v.len() == 32),
                "row {k}: {b} is not 32 bytes"
            );
            check!(
                *idx == stored[0][COLS.len() + n],
                "{b}: row {k} differs from row 0 for the same value (text and binary input must index alike)"
            );
        }
    }
    let dump = simple_rows(
        &c.direct
            .simple_query(&format!("SELECT p::text FROM prop p WHERE {}", range(base)))
            .await
            .map_err(err)?,
    );
    let dump = format!("{dump:?}").to_lowercase();
    for v in case.row.iter().flatten() {
        if let Val::Text(s) = v {
            check!(
                !dump.contains(&s[..7]),
                "sentinel {:?} stored in PostgreSQL",
                &s[..7]
            );
        }
    }
    Ok(())
}

/// Per blind-indexed column, the ids of every row written so far whose
/// value equals the case's (empty for NULL: no lookup).
fn expected_lookups(ledger: &Ledger, case: &Case) -> Vec<Vec<i64>> {
    BIDX.iter()
        .map(|&(i, _)| {
            let Some(v) = &case.row[i] else {
                return vec![];
            };
            ledger
                .iter()
                .filter(|(_, r)| r[i].as_ref().is_some_and(|x| x.same(v)))
                .map(|(id, _)| *id)
                .collect()
        })
        .collect()
}

/// Step 5: lookups by each blind-indexed column return exactly `want`.
async fn check_lookups(
    c: &Conns,
    case: &Case,
    want: &[Vec<i64>],
    spelled: &[Option<String>],
) -> Result<(), String> {
    for (n, (i, _)) in BIDX.into_iter().enumerate() {
        let Some(v) = &case.row[i] else { continue };
        let want = &want[n];
        let got: Vec<i64> = c
            .reader
            .query(&c.stmts.lookup[n], &[&Raw(Some(v.binary()))])
            .await
            .map_err(|e| format!("lookup by {} (binary): {}", COLS[i], err(e)))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        check!(
            got == *want,
            "lookup by {} (binary parameter): ids {got:?}, expected {want:?}",
            COLS[i]
        );
        let lit = literal(spelled[i].as_deref());
        let got: Vec<i64> = simple_rows(
            &c.reader
                .simple_query(&format!(
                    "SELECT id FROM prop WHERE {} = {lit} ORDER BY id",
                    COLS[i]
                ))
                .await
                .map_err(|e| format!("lookup by {} (literal): {}", COLS[i], err(e)))?,
        )
        .iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
        check!(
            got == *want,
            "lookup by {} (literal): ids {got:?}, expected {want:?}",
            COLS[i]
        );
    }
    Ok(())
}

/// Binary values are compared byte for byte, with one exception:
/// PostgreSQL's `numeric_send` reports display scale 32 for ±Infinity (it
/// reads the scale bits of the special value's short header), pgveil 0.
/// Clients ignore the scale of an infinity.
fn same_binary(got: &Option<Vec<u8>>, want: &Option<Vec<u8>>) -> bool {
    match (got, want) {
        (Some(g), Some(w))
            if g.len() == 8 && w.len() == 8 && matches!(w[4..6], [0xd0 | 0xf0, 0]) =>
        {
            g[..6] == w[..6] && g[6..] == [0, 0] && w[6..] == [0, 0x20]
        }
        _ => got == want,
    }
}

/// docs/crypto.md §2: magic, version, and lengths that add up (12-byte
/// nonce, ciphertext length, ciphertext, 16-byte tag).
fn check_envelope(e: &[u8]) -> Result<(), String> {
    if e.len() < 44 || &e[..3] != b"pv\x01" {
        return Err(format!("not an envelope: {:?}", &e[..e.len().min(3)]));
    }
    let t = e[11] as usize;
    let n = e
        .get(24 + t..28 + t)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap()) as usize)
        .ok_or("envelope header truncated")?;
    if e.len() != 28 + t + n + 16 {
        return Err(format!(
            "envelope length {} does not match its header ({})",
            e.len(),
            28 + t + n + 16
        ));
    }
    Ok(())
}

#[test]
fn random_rows_round_trip_through_pgveil_and_stay_encrypted() {
    let started = Instant::now();
    let fx = Calmony::builder().policy(POLICY).extra_sql(SCHEMA).start();
    // The plaintext model lives in a cluster of its own: the scan at the end
    // reads every database of `fx.pg`, and must find nothing there.
    let model = PgCluster::start(Hba::Trust);
    model.create_database("shadow");
    model.psql("shadow", SHADOW);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let conns = RefCell::new(rt.block_on(async {
        let shadow = model.connect("postgres", None, "shadow").await;
        shadow.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
        let writer = fx.app("prop_writer").await;
        let reader = fx.app("prop_reader").await;
        Conns {
            stmts: Stmts::prepare(&writer, &reader).await,
            writer,
            reader,
            raw_writer: RawConn::connect(fx.pv.port(), "prop_writer", "app").await,
            raw_reader: RawConn::connect(fx.pv.port(), "prop_reader", "app").await,
            direct: fx.direct().await,
            shadow,
        }
    }));
    let setup = started.elapsed();

    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 2000,
        // Failing seeds go to tests/properties.proptest-regressions and are
        // replayed before the random cases on every run.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        source_file: Some(file!()),
        ..Config::default()
    });
    let ledger = RefCell::new(Ledger::new());
    let next_id = RefCell::new(1i64);
    let sentinels = RefCell::new(Vec::new());
    let result = runner.run(&case_strategy(), |case| {
        let mut c = conns.borrow_mut();
        rt.block_on(run_case(&mut c, &ledger, &next_id, &case, &sentinels))
            .map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, case)) => {
            panic!("property failed: {why}\nminimal failing case: {case:#?}")
        }
        Err(e) => panic!("{e}"),
    }
    let sentinels = sentinels.into_inner();
    let refs: Vec<&str> = sentinels.iter().map(String::as_str).collect();
    rt.block_on(fx.assert_no_plaintext(&refs));
    eprintln!(
        "properties: {cases} cases, {} rows through pgveil, setup {:.1?}, total {:.1?}",
        ledger.borrow().len(),
        setup,
        started.elapsed()
    );
}
