//! A lexer that reads SQL text the way PostgreSQL 15's `scan.l` does (with
//! `standard_conforming_strings = on` and a client encoding in which a
//! backslash is always a backslash; the session refuses protected
//! statements otherwise). It is the reference for every boundary pgveil
//! relies on: where a literal, identifier or comment starts and ends, and
//! what a string literal's value is.
//!
//! The analyzer parses with sqlparser, whose tokenizer is not PostgreSQL's.
//! [`agree`] compares the two readings token by token (same byte spans, same
//! kinds, same literal values); a statement on which they disagree is
//! refused, so the AST pgveil reasons about is always the statement
//! PostgreSQL will run. Anything this lexer does not model exactly (string
//! continuation across newlines, `UESCAPE`, over-long identifiers, junk
//! after numbers, characters PostgreSQL rejects) comes out as
//! [`Kind::Unsure`], which never agrees.

use std::ops::Range;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token as SqlToken, Tokenizer, Whitespace};

/// What a token is, as PostgreSQL reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Unquoted identifier or keyword.
    Ident,
    /// `"…"` identifier.
    QuotedIdent,
    /// `U&"…"` identifier.
    UnicodeIdent,
    /// `'…'`.
    String,
    /// `E'…'` (backslash escapes).
    EString,
    /// `N'…'`.
    NString,
    /// `B'…'`.
    BitString,
    /// `X'…'`.
    HexString,
    /// `U&'…'`.
    UnicodeString,
    /// `$tag$…$tag$`.
    Dollar,
    /// Integer, decimal or real constant.
    Number,
    /// `$n`.
    Param,
    /// Operator or punctuation (`::`, `(`, `,`, `<>`, `;` …).
    Op,
    /// Something PostgreSQL rejects or this lexer does not model exactly.
    Unsure,
}

impl Kind {
    /// A string constant of any form (dollar-quoted included).
    pub fn is_string(self) -> bool {
        matches!(
            self,
            Kind::String
                | Kind::EString
                | Kind::NString
                | Kind::BitString
                | Kind::HexString
                | Kind::UnicodeString
                | Kind::Dollar
        )
    }
}

/// One token: its kind and its byte range in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// What it is.
    pub kind: Kind,
    /// Where it is.
    pub span: Range<usize>,
}

/// PostgreSQL's NAMEDATALEN - 1: longer identifiers are truncated.
const MAX_IDENT: usize = 63;

fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn ident_cont(c: u8) -> bool {
    ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

fn op_char(c: u8) -> bool {
    matches!(
        c,
        b'~' | b'!'
            | b'@'
            | b'#'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
            | b'+'
            | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'<'
            | b'>'
            | b'='
    )
}

fn self_char(c: u8) -> bool {
    matches!(
        c,
        b',' | b'('
            | b')'
            | b'['
            | b']'
            | b'.'
            | b';'
            | b':'
            | b'+'
            | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'^'
            | b'<'
            | b'>'
            | b'='
    )
}

/// Tokens of `sql`, comments and whitespace left out.
pub fn tokens(sql: &str) -> Vec<Token> {
    Tokens::new(sql).collect()
}

/// The tokens of a text, one at a time (a caller that needs only the first
/// few words of a statement lexes no further).
pub struct Tokens<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Tokens<'a> {
    /// The tokens of `sql`, from the start.
    pub fn new(sql: &'a str) -> Tokens<'a> {
        Tokens {
            b: sql.as_bytes(),
            i: 0,
        }
    }
}

impl Iterator for Tokens<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let b = self.b;
        let mut i = self.i;
        while i < b.len() {
            let c = b[i];
            if is_space(c) {
                i += 1;
                continue;
            }
            if c == b'-' && b.get(i + 1) == Some(&b'-') {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
                continue;
            }
            if c == b'/' && b.get(i + 1) == Some(&b'*') {
                let start = i;
                let mut depth = 1;
                i += 2;
                while i < b.len() && depth > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                if depth > 0 {
                    self.i = b.len();
                    return Some(Token {
                        kind: Kind::Unsure,
                        span: start..b.len(),
                    });
                }
                continue;
            }
            let (kind, mut end) = token_at(b, i);
            // A token may end inside a multi-byte character (junk right
            // after a number): the span always ends on a character
            // boundary, so that every span slices the text.
            while end < b.len() && (b[end] & 0xC0) == 0x80 {
                end += 1;
            }
            self.i = end.max(i + 1);
            return Some(Token { kind, span: i..end });
        }
        self.i = b.len();
        None
    }
}

/// The first `n` words of a statement, lower-cased: unquoted identifiers
/// and keywords only (stops at the first other token).
pub fn leading_words(sql: &str, n: usize) -> Vec<String> {
    Tokens::new(sql)
        .take(n)
        .take_while(|t| t.kind == Kind::Ident)
        .map(|t| sql[t.span].to_ascii_lowercase())
        .collect()
}

/// The token starting at `i` (not whitespace or a comment): kind and end.
fn token_at(b: &[u8], i: usize) -> (Kind, usize) {
    let c = b[i];
    let next = b.get(i + 1).copied();
    // Prefixed strings: the prefix letter is only a prefix at a token start.
    match (c, next) {
        (b'e' | b'E', Some(b'\'')) => return quoted_string(b, i + 1, Kind::EString),
        (b'n' | b'N', Some(b'\'')) => return quoted_string(b, i + 1, Kind::NString),
        (b'b' | b'B', Some(b'\'')) => return quoted_string(b, i + 1, Kind::BitString),
        (b'x' | b'X', Some(b'\'')) => return quoted_string(b, i + 1, Kind::HexString),
        (b'u' | b'U', Some(b'&')) => match b.get(i + 2) {
            Some(b'\'') => {
                let (k, e) = quoted_string(b, i + 2, Kind::UnicodeString);
                return (uescape_check(b, k, e), e);
            }
            Some(b'"') => {
                let (k, e) = quoted_ident(b, i + 2, Kind::UnicodeIdent);
                return (uescape_check(b, k, e), e);
            }
            _ => {}
        },
        _ => {}
    }
    if c == b'\'' {
        return quoted_string(b, i, Kind::String);
    }
    if c == b'"' {
        return quoted_ident(b, i, Kind::QuotedIdent);
    }
    if ident_start(c) {
        let mut j = i;
        while j < b.len() && ident_cont(b[j]) {
            j += 1;
        }
        let kind = if j - i > MAX_IDENT {
            Kind::Unsure
        } else {
            Kind::Ident
        };
        return (kind, j);
    }
    if c == b'$' {
        if next.is_some_and(|d| d.is_ascii_digit()) {
            let mut j = i + 1;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            // `$1abc` is an error in PostgreSQL.
            if j < b.len() && ident_cont(b[j]) {
                return (Kind::Unsure, j + 1);
            }
            return (Kind::Param, j);
        }
        if let Some(tag_end) = dollar_tag(b, i) {
            let tag = &b[i..tag_end];
            let mut j = tag_end;
            while j + tag.len() <= b.len() {
                if &b[j..j + tag.len()] == tag {
                    return (Kind::Dollar, j + tag.len());
                }
                j += 1;
            }
            return (Kind::Unsure, b.len());
        }
        return (Kind::Unsure, i + 1);
    }
    if c.is_ascii_digit() || (c == b'.' && next.is_some_and(|d| d.is_ascii_digit())) {
        return number(b, i);
    }
    // Two-character punctuation that is not an operator run.
    if c == b':' {
        if next == Some(b':') {
            return (Kind::Op, i + 2);
        }
        if next == Some(b'=') {
            return (Kind::Op, i + 2);
        }
        return (Kind::Op, i + 1);
    }
    if c == b'.' {
        if next == Some(b'.') {
            return (Kind::Op, i + 2);
        }
        return (Kind::Op, i + 1);
    }
    if op_char(c) {
        return (Kind::Op, operator_end(b, i));
    }
    if self_char(c) {
        return (Kind::Op, i + 1);
    }
    // A character PostgreSQL's grammar never accepts here (`\`, `{`, a
    // control character …).
    (Kind::Unsure, i + 1)
}

/// The end of an operator starting at `i`, by scan.l's rules: the longest
/// run of operator characters, cut before `--` or `/*`, and without
/// trailing `+`/`-` unless the operator contains one of `~!@#%^&|`?`.
fn operator_end(b: &[u8], i: usize) -> usize {
    let mut j = i;
    while j < b.len() && op_char(b[j]) {
        j += 1;
    }
    let run = &b[i..j];
    let mut n = run.len();
    for k in 0..run.len().saturating_sub(1) {
        if (run[k] == b'/' && run[k + 1] == b'*') || (run[k] == b'-' && run[k + 1] == b'-') {
            n = k;
            break;
        }
    }
    // The caller has already taken comments, so the run starts with an
    // operator character that is not the start of a comment.
    let n = n.max(1);
    let keeps_sign = |c: &u8| {
        matches!(
            c,
            b'~' | b'!' | b'@' | b'#' | b'^' | b'&' | b'|' | b'`' | b'?' | b'%'
        )
    };
    let mut n = n;
    if n > 1 && matches!(run[n - 1], b'+' | b'-') && !run[..n - 1].iter().any(keeps_sign) {
        loop {
            n -= 1;
            if !(n > 1 && matches!(run[n - 1], b'+' | b'-')) {
                break;
            }
        }
    }
    i + n
}

/// A numeric constant at `i`: integer, decimal (`1.`, `.5`, `1.5`) or real
/// (`1e5`, `1.5E-3`). Junk right after it is an error in PostgreSQL 15.
fn number(b: &[u8], i: usize) -> (Kind, usize) {
    let mut j = i;
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    if j < b.len() && b[j] == b'.' && b.get(j + 1) != Some(&b'.') {
        j += 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
    }
    if j < b.len() && matches!(b[j], b'e' | b'E') {
        let mut k = j + 1;
        if k < b.len() && matches!(b[k], b'+' | b'-') {
            k += 1;
        }
        if k < b.len() && b[k].is_ascii_digit() {
            while k < b.len() && b[k].is_ascii_digit() {
                k += 1;
            }
            j = k;
        } else {
            return (Kind::Unsure, k);
        }
    }
    if j < b.len() && (ident_start(b[j]) || b[j] == b'.' && b.get(j + 1) != Some(&b'.')) {
        return (Kind::Unsure, j + 1);
    }
    (Kind::Number, j)
}

/// `$tag$` starting at `i`: the index after its closing `$`.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() && b[j] != b'$' {
        let c = b[j];
        let ok =
            c == b'_' || c.is_ascii_alphabetic() || c >= 0x80 || (j > i + 1 && c.is_ascii_digit());
        if !ok {
            return None;
        }
        j += 1;
    }
    (j < b.len()).then_some(j + 1)
}

/// A `'…'` string whose opening quote is at `q`. `E` strings honour
/// backslash escapes while lexing. A string followed by whitespace with a
/// newline and another quote would be continued by PostgreSQL: not
/// modelled, so `Unsure`.
fn quoted_string(b: &[u8], q: usize, kind: Kind) -> (Kind, usize) {
    let mut j = q + 1;
    while j < b.len() {
        if kind == Kind::EString && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == b'\'' {
            if b.get(j + 1) == Some(&b'\'') {
                j += 2;
                continue;
            }
            let end = j + 1;
            return (
                if continues(b, end) {
                    Kind::Unsure
                } else {
                    kind
                },
                end,
            );
        }
        j += 1;
    }
    (Kind::Unsure, b.len())
}

/// Whether PostgreSQL would continue the string that ends at `end`:
/// whitespace (or `--` comments) holding a newline, then a quote.
fn continues(b: &[u8], end: usize) -> bool {
    let mut j = end;
    let mut newline = false;
    while j < b.len() {
        match b[j] {
            b'\n' | b'\r' => newline = true,
            b' ' | b'\t' | b'\x0c' => {}
            b'-' if b.get(j + 1) == Some(&b'-') => {
                while j < b.len() && b[j] != b'\n' && b[j] != b'\r' {
                    j += 1;
                }
                continue;
            }
            // A `/* */` comment is not continuation whitespace.
            b'\'' => return newline,
            _ => return false,
        }
        j += 1;
    }
    false
}

fn quoted_ident(b: &[u8], q: usize, kind: Kind) -> (Kind, usize) {
    let mut j = q + 1;
    while j < b.len() {
        if b[j] == b'"' {
            if b.get(j + 1) == Some(&b'"') {
                j += 2;
                continue;
            }
            let len = j - q - 1;
            // Empty or over-long quoted identifiers: rejected or truncated.
            let kind = if len == 0 || len > MAX_IDENT {
                Kind::Unsure
            } else {
                kind
            };
            return (kind, j + 1);
        }
        j += 1;
    }
    (Kind::Unsure, b.len())
}

/// `U&'…' UESCAPE '…'` changes the escape character: not modelled.
fn uescape_check(b: &[u8], kind: Kind, end: usize) -> Kind {
    let mut j = end;
    while j < b.len() && is_space(b[j]) {
        j += 1;
    }
    if j + 7 <= b.len() && b[j..j + 7].eq_ignore_ascii_case(b"uescape") {
        Kind::Unsure
    } else {
        kind
    }
}

/// The value of a string or identifier token as PostgreSQL computes it;
/// `None` where PostgreSQL would reject it or this lexer does not decode
/// it (bit and hex strings keep their digits).
pub fn value(sql: &str, t: &Token) -> Option<String> {
    let s = &sql[t.span.clone()];
    match t.kind {
        Kind::String => Some(s[1..s.len() - 1].replace("''", "'")),
        Kind::NString | Kind::BitString | Kind::HexString => {
            Some(s[2..s.len() - 1].replace("''", "'"))
        }
        Kind::QuotedIdent => Some(s[1..s.len() - 1].replace("\"\"", "\"")),
        Kind::EString => unescape_e(&s[2..s.len() - 1]),
        Kind::UnicodeString => unescape_u(&s[3..s.len() - 1].replace("''", "'")),
        Kind::UnicodeIdent => unescape_u(&s[3..s.len() - 1].replace("\"\"", "\"")),
        Kind::Dollar => {
            let tag_end = s[1..].find('$')? + 2;
            Some(s[tag_end..s.len() - tag_end].to_string())
        }
        Kind::Ident => Some(s.to_string()),
        _ => None,
    }
}

/// `E'…'` escapes as PostgreSQL decodes them (`\b \f \n \r \t`, octal,
/// `\x` hex, `\u`/`\U` code points, `''`, any other `\c` is `c`). Invalid
/// UTF-8, a zero byte or a surrogate make it `None`.
fn unescape_e(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\'' {
            // Doubled quote inside the literal.
            out.push(b'\'');
            i += 2;
            continue;
        }
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *b.get(i + 1)?;
        i += 2;
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'0'..=b'7' => {
                let mut v: u32 = (e - b'0') as u32;
                let mut n = 1;
                while n < 3 && i < b.len() && (b'0'..=b'7').contains(&b[i]) {
                    v = v * 8 + (b[i] - b'0') as u32;
                    i += 1;
                    n += 1;
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if i < b.len() && b[i].is_ascii_hexdigit() => {
                let mut v: u32 = 0;
                let mut n = 0;
                while n < 2 && i < b.len() && b[i].is_ascii_hexdigit() {
                    v = v * 16 + (b[i] as char).to_digit(16)?;
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            b'u' | b'U' => {
                let n = if e == b'u' { 4 } else { 8 };
                let hex = s.get(i..i + n)?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                let cp = u32::from_str_radix(hex, 16).ok()?;
                let ch = char::from_u32(cp)?;
                i += n;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
            other => out.push(other),
        }
    }
    if out.contains(&0) {
        return None;
    }
    String::from_utf8(out).ok()
}

/// `U&` escapes with the default escape character: `\XXXX`, `\+XXXXXX`,
/// `\\`.
fn unescape_u(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i..].chars().next()?;
        if c != '\\' {
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        if s[i + 1..].starts_with('\\') {
            out.push('\\');
            i += 2;
            continue;
        }
        let (n, skip) = if s[i + 1..].starts_with('+') {
            (6, 2)
        } else {
            (4, 1)
        };
        let hex = s.get(i + skip..i + skip + n)?;
        if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let cp = u32::from_str_radix(hex, 16).ok()?;
        if cp == 0 {
            return None;
        }
        out.push(char::from_u32(cp)?);
        i += skip + n;
    }
    Some(out)
}

/// Byte offset of every char index, and the char index where each line
/// starts (sqlparser counts lines at `\n` and columns in chars, from 1).
pub(crate) struct Positions<'a> {
    sql: &'a str,
    /// The byte offset of every [`Self::STEP`]-th character: a table of
    /// every character's offset would be eight bytes per byte of a long
    /// literal (it was most of what planning one held).
    every: Vec<usize>,
    /// Characters in `sql`.
    chars: usize,
    line_char: Vec<usize>,
}

impl<'a> Positions<'a> {
    const STEP: usize = 64;

    /// The position table of `sql` (one pass over it).
    pub(crate) fn new(sql: &'a str) -> Positions<'a> {
        let mut every = Vec::with_capacity(sql.len() / Self::STEP + 1);
        let mut line_char = vec![0];
        let mut chars = 0;
        for (n, (b, c)) in sql.char_indices().enumerate() {
            if n % Self::STEP == 0 {
                every.push(b);
            }
            if c == '\n' {
                line_char.push(n + 1);
            }
            chars = n + 1;
        }
        Positions {
            sql,
            every,
            chars,
            line_char,
        }
    }

    /// The byte offset of a 1-based (line, column in characters) position;
    /// the end of the text is one past its last character.
    pub(crate) fn byte(&self, line: u64, column: u64) -> Option<usize> {
        let l = usize::try_from(line).ok()?.checked_sub(1)?;
        let c = usize::try_from(column).ok()?.checked_sub(1)?;
        let n = self.line_char.get(l)?.checked_add(c)?;
        if n >= self.chars {
            return (n == self.chars).then_some(self.sql.len());
        }
        let from = self.every[n / Self::STEP];
        self.sql[from..]
            .char_indices()
            .nth(n % Self::STEP)
            .map(|(i, _)| from + i)
    }
}

/// Why the two readings of a statement differ (for logs; never a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// Byte offset in the statement where the readings part.
    pub at: usize,
}

/// Check that sqlparser's tokenizer reads `sql` exactly as PostgreSQL does:
/// the same tokens with the same byte spans, kinds that correspond, and the
/// same values for every string literal and quoted identifier.
pub fn agree(sql: &str) -> Result<(), Disagreement> {
    let pg = tokens(sql);
    if let Some(t) = pg.iter().find(|t| t.kind == Kind::Unsure) {
        return Err(Disagreement { at: t.span.start });
    }
    let dialect = PostgreSqlDialect {};
    let theirs = Tokenizer::new(&dialect, sql)
        .with_unescape(true)
        .tokenize_with_location()
        .map_err(|_| Disagreement { at: 0 })?;
    let pos = Positions::new(sql);
    let mut k = 0;
    for t in theirs {
        if matches!(t.token, SqlToken::Whitespace(_) | SqlToken::EOF) {
            if let SqlToken::Whitespace(Whitespace::MultiLineComment(_)) = &t.token {
                // Must also be a comment to PostgreSQL: no token inside.
                let (Some(s), Some(e)) = (
                    pos.byte(t.span.start.line, t.span.start.column),
                    pos.byte(t.span.end.line, t.span.end.column),
                ) else {
                    return Err(Disagreement { at: 0 });
                };
                if pg.iter().any(|p| p.span.start >= s && p.span.start < e) {
                    return Err(Disagreement { at: s });
                }
            }
            continue;
        }
        let (Some(s), Some(e)) = (
            pos.byte(t.span.start.line, t.span.start.column),
            pos.byte(t.span.end.line, t.span.end.column),
        ) else {
            return Err(Disagreement { at: 0 });
        };
        let Some(p) = pg.get(k) else {
            return Err(Disagreement { at: s });
        };
        if p.span != (s..e) || !same_token(sql, p, &t.token) {
            return Err(Disagreement {
                at: s.min(p.span.start),
            });
        }
        k += 1;
    }
    if let Some(p) = pg.get(k) {
        return Err(Disagreement { at: p.span.start });
    }
    Ok(())
}

/// Whether [`value`] of `t` is `want`, without building the value when it
/// is the token's own text (no doubled quote to undo): a long literal is
/// compared in place, not copied.
fn value_is(sql: &str, t: &Token, want: &str) -> bool {
    let s = &sql[t.span.clone()];
    let inner = match t.kind {
        Kind::String | Kind::QuotedIdent => s.get(1..s.len() - 1),
        Kind::NString | Kind::BitString | Kind::HexString => s.get(2..s.len() - 1),
        _ => None,
    };
    let doubled = if t.kind == Kind::QuotedIdent {
        "\"\""
    } else {
        "''"
    };
    match inner {
        Some(v) if !v.contains(doubled) => v == want,
        _ => value(sql, t).as_deref() == Some(want),
    }
}

fn same_token(sql: &str, p: &Token, t: &SqlToken) -> bool {
    use SqlToken as T;
    match (p.kind, t) {
        (Kind::Ident, T::Word(w)) => w.quote_style.is_none(),
        (Kind::QuotedIdent, T::Word(w)) => w.quote_style == Some('"') && value_is(sql, p, &w.value),
        (Kind::String, T::SingleQuotedString(v))
        | (Kind::EString, T::EscapedStringLiteral(v))
        | (Kind::NString, T::NationalStringLiteral(v))
        | (Kind::UnicodeString, T::UnicodeStringLiteral(v)) => value_is(sql, p, v),
        (Kind::HexString, T::HexStringLiteral(v))
        | (Kind::BitString, T::SingleQuotedByteStringLiteral(v)) => value_is(sql, p, v),
        (Kind::Dollar, T::DollarQuotedString(d)) => value_is(sql, p, &d.value),
        (Kind::Number, T::Number(..)) => true,
        (Kind::Param, T::Placeholder(s)) => s.as_str() == &sql[p.span.clone()],
        (Kind::Op, t) => !matches!(
            t,
            T::Word(_)
                | T::Number(..)
                | T::Placeholder(_)
                | T::Char(_)
                | T::SingleQuotedString(_)
                | T::DoubleQuotedString(_)
                | T::DollarQuotedString(_)
                | T::EscapedStringLiteral(_)
                | T::NationalStringLiteral(_)
                | T::UnicodeStringLiteral(_)
                | T::HexStringLiteral(_)
                | T::SingleQuotedByteStringLiteral(_)
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
