//! Turning the analyzer's rewritten AST back into SQL without printing the
//! client's statement: the text sent upstream is the client's bytes with
//! pgveil's edits spliced in at token boundaries found by
//! [`super::pglex`], PostgreSQL's own reading of the text.
//!
//! The rewrite walks sqlparser's AST and changes it in place (a literal
//! becomes a slot marker, `email` becomes `email_bidx`, columns and values
//! are appended …). Printing that AST would re-quote every literal and
//! identifier of the statement in sqlparser's style, which is not
//! PostgreSQL's, so PostgreSQL could read a different statement from the
//! one pgveil analysed. Instead:
//!
//! 1. print the AST before and after the rewrite and lex both prints; the
//!    token difference between them is exactly what pgveil changed;
//! 2. align the print of the unchanged AST with the client's own tokens
//!    (the printer adds `AS`, changes keyword case …; those differences
//!    are never edited);
//! 3. apply each change at the byte span of the client tokens it replaces
//!    or sits between; a change that touches a client token the alignment
//!    cannot place makes the splice fail;
//! 4. check the result: PostgreSQL's and sqlparser's readings of it agree,
//!    and sqlparser reads it as the rewritten AST (same print). Any doubt
//!    fails, and the caller refuses the statement.
//!
//! Every byte outside the returned edit spans is the client's.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::ops::Range;

use sqlparser::ast::{Expr, Statement, Value, ValueWithSpan, visit_expressions_mut};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::pglex::{self, Kind, Token};

/// How far the aligner looks ahead for the next common token. Changes made
/// by the rewrite are a few tokens each; the printer's own differences
/// (an added `AS`, `INNER`) are one or two.
const LOOKAHEAD: usize = 12;

/// One change: the client's bytes `span` (of the statement text) replaced
/// by `text`. An empty span is an insertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The bytes replaced.
    pub span: Range<usize>,
    /// What replaces them.
    pub text: String,
}

/// Splice the rewrite that turned `before` (the client's statement as
/// parsed from `original`) into `after` into the client's own text. Returns
/// the new text and the edits, or `None` when the splice cannot be proven
/// right.
pub fn splice_statement(
    original: &str,
    before: &Statement,
    after: &Statement,
) -> Option<(String, Vec<Edit>)> {
    let before = Before((!original.contains(LIT)).then(|| literal_free(before)));
    splice_printed(original, &before, after)
}

/// What the splice needs of the client's statement as parsed: its print
/// with every string literal replaced by a stand-in. Kept instead of a copy
/// of the statement, which holds every literal (a long one whole).
#[derive(Debug)]
pub struct Before(Option<String>);

impl Before {
    /// The print of `stmt` (parsed from `original`), made in place: each
    /// string literal is taken out for the print and put back, so none is
    /// copied. `stmt` is left as it was. Unusable (the splice then fails)
    /// when the client's text contains a stand-in's prefix, as
    /// [`splice_statement`] refuses.
    pub fn of(original: &str, stmt: &mut Statement) -> Before {
        if original.contains(LIT) {
            return Before(None);
        }
        let mut taken: HashMap<String, Expr> = HashMap::new();
        let _ = visit_expressions_mut(stmt, |e| {
            if let Expr::Value(v) = e
                && is_string(&v.value)
                && v.span.start.line > 0
            {
                let stand_in = format!("{LIT}{}_{}", v.span.start.line, v.span.start.column);
                let lit = Expr::Value(ValueWithSpan::from(Value::Placeholder(stand_in.clone())));
                taken.insert(stand_in, std::mem::replace(e, lit));
            }
            ControlFlow::<()>::Continue(())
        });
        let print = stmt.to_string();
        // Every stand-in is one of these (the client's text has none of its
        // own, checked above), each at one literal's position.
        let _ = visit_expressions_mut(stmt, |e| {
            if let Expr::Value(v) = e
                && let Value::Placeholder(p) = &v.value
                && let Some(lit) = taken.remove(p)
            {
                *e = lit;
            }
            ControlFlow::<()>::Continue(())
        });
        debug_assert!(taken.is_empty(), "a literal was not put back");
        Before(Some(print))
    }
}

/// [`splice_statement`] with the client's statement given as its
/// [`Before`] print.
pub fn splice_printed(
    original: &str,
    before: &Before,
    after: &Statement,
) -> Option<(String, Vec<Edit>)> {
    let before = before.0.as_deref()?;
    if original.contains(LIT) {
        return None;
    }
    splice(original, before, &literal_free(after), &after.to_string())
}

/// Prefix of the stand-ins for the client's string literals in prints.
const LIT: &str = "__pgv_lit_";

/// Print a statement with each of the client's string literals replaced by
/// a stand-in naming the literal's position in the client's text. The
/// printer's own quoting of strings is not PostgreSQL's (it is exactly what
/// went wrong when pgveil sent printed statements); with stand-ins, no
/// printed string is ever compared or sent, and a literal that must move
/// is copied from the client's bytes.
fn literal_free(stmt: &Statement) -> String {
    let mut s = stmt.clone();
    let _ = visit_expressions_mut(&mut s, |e| {
        if let Expr::Value(v) = e
            && is_string(&v.value)
            && v.span.start.line > 0
        {
            let stand_in = format!("{LIT}{}_{}", v.span.start.line, v.span.start.column);
            *e = Expr::Value(ValueWithSpan::from(Value::Placeholder(stand_in)));
        }
        ControlFlow::<()>::Continue(())
    });
    s.to_string()
}

fn is_string(v: &Value) -> bool {
    matches!(
        v,
        Value::SingleQuotedString(_)
            | Value::EscapedStringLiteral(_)
            | Value::UnicodeStringLiteral(_)
            | Value::NationalStringLiteral(_)
            | Value::DollarQuotedString(_)
            | Value::HexStringLiteral(_)
            | Value::SingleQuotedByteStringLiteral(_)
    )
}

/// The (line, column) a stand-in names.
fn stand_in_position(token: &str) -> Option<(u64, u64)> {
    let (l, c) = token.strip_prefix(LIT)?.split_once('_')?;
    Some((l.parse().ok()?, c.parse().ok()?))
}

/// Splice the token difference between the prints `before` and `after`
/// into `original`; `full_after` is the plain print of the rewritten
/// statement, which the result must parse back to.
fn splice(
    original: &str,
    before: &str,
    after: &str,
    full_after: &str,
) -> Option<(String, Vec<Edit>)> {
    let orig = pglex::tokens(original);
    let pb = pglex::tokens(before);
    let pa = pglex::tokens(after);
    if [&orig, &pb, &pa]
        .iter()
        .any(|ts| ts.iter().any(|t| t.kind == Kind::Unsure))
    {
        return None;
    }
    // print-before token index → client token index.
    let pos = pglex::Positions::new(original);
    // Client token index by the start byte of each string literal.
    let literal_at = |t: &str| -> Option<usize> {
        let (l, c) = stand_in_position(t)?;
        let at = pos.byte(l, c)?;
        orig.iter()
            .position(|o| o.span.start == at && o.kind.is_string())
    };
    let mut to_orig: Vec<Option<usize>> = vec![None; pb.len()];
    for (b, o) in align(pb.len(), orig.len(), |i, j| {
        let t = &before[pb[i].span.clone()];
        if t.starts_with(LIT) {
            return literal_at(t) == Some(j);
        }
        same_meaning(before, &pb[i], original, &orig[j])
    }) {
        to_orig[b] = Some(o);
    }
    let tb: Vec<&str> = pb.iter().map(|t| &before[t.span.clone()]).collect();
    let ta: Vec<&str> = pa.iter().map(|t| &after[t.span.clone()]).collect();
    let hunks = diff(&tb, &ta)?;
    let mut edits = Vec::with_capacity(hunks.len());
    for h in hunks {
        let text = if h.new.is_empty() {
            String::new()
        } else {
            // Keep the printer's spacing before an inserted run.
            let from = if h.old.is_empty() && h.new.start > 0 {
                pa[h.new.start - 1].span.end
            } else {
                pa[h.new.start].span.start
            };
            // The printer's text, with stand-ins turned back into the
            // client's literals, byte for byte.
            let mut text = String::new();
            let mut at = from;
            for t in &pa[h.new.clone()] {
                let tok = &after[t.span.clone()];
                if tok.starts_with(LIT) {
                    let o = literal_at(tok)?;
                    text.push_str(&after[at..t.span.start]);
                    text.push_str(&original[orig[o].span.clone()]);
                    at = t.span.end;
                }
            }
            text.push_str(&after[at..pa[h.new.end - 1].span.end]);
            text
        };
        let span = if h.old.is_empty() {
            // Insertion between two print tokens: both must be the
            // client's and adjacent in the client's text.
            let prev = h.old.start.checked_sub(1).map(|i| to_orig[i]);
            let next = pb.get(h.old.start).map(|_| to_orig[h.old.start]);
            match (prev, next) {
                (Some(Some(p)), Some(Some(n))) if n == p + 1 => orig[p].span.end..orig[p].span.end,
                (Some(Some(p)), None) if p + 1 == orig.len() => orig[p].span.end..orig[p].span.end,
                (None, Some(Some(0))) => orig[0].span.start..orig[0].span.start,
                _ => return None,
            }
        } else {
            let first = to_orig[h.old.start]?;
            for (k, i) in h.old.clone().enumerate() {
                if to_orig[i] != Some(first + k) {
                    return None;
                }
            }
            let last = first + h.old.len() - 1;
            orig[first].span.start..orig[last].span.end
        };
        edits.push(Edit { span, text });
    }
    let out = apply(original, &mut edits);
    verify(&out, full_after)?;
    Some((out, edits))
}

/// Apply edits (sorted, non-overlapping) with a separating space where an
/// edit would otherwise glue onto a neighbouring token.
fn apply(original: &str, edits: &mut [Edit]) -> String {
    edits.sort_by_key(|e| (e.span.start, e.span.end));
    let b = original.as_bytes();
    let mut out = String::with_capacity(original.len() + 64);
    let mut at = 0;
    for e in edits.iter_mut() {
        out.push_str(&original[at..e.span.start]);
        let mut text = e.text.clone();
        if let (Some(&l), Some(&f)) = (out.as_bytes().last(), text.as_bytes().first())
            && glue(l, f)
        {
            text.insert(0, ' ');
        }
        if let (Some(&t), Some(&r)) = (text.as_bytes().last(), b.get(e.span.end))
            && glue(t, r)
        {
            text.push(' ');
        }
        out.push_str(&text);
        e.text = text;
        at = e.span.end;
    }
    out.push_str(&original[at..]);
    out
}

/// Whether two bytes side by side could merge into one token.
fn glue(a: u8, b: u8) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let op = |c: u8| b"~!@#^&|`?+-*/%<>=:.'\"".contains(&c);
    (word(a) && (word(b) || b == b'\'' || b == b'"')) || (op(a) && op(b))
}

/// The spliced text must be read by PostgreSQL and by sqlparser alike, and
/// sqlparser must read it as the rewritten statement: its print equals the
/// rewritten AST's (both hold the same literal values, so the printer's
/// quoting cannot hide a difference).
fn verify(out: &str, full_after: &str) -> Option<()> {
    pglex::agree(out).ok()?;
    let a = Parser::parse_sql(&PostgreSqlDialect {}, out).ok()?;
    (a.len() == 1 && a[0].to_string() == full_after).then_some(())
}

/// Whether a token of the printer's text means the same as a client token.
fn same_meaning(ps: &str, p: &Token, os: &str, o: &Token) -> bool {
    let pt = &ps[p.span.clone()];
    let ot = &os[o.span.clone()];
    match (p.kind, o.kind) {
        (Kind::Ident, Kind::Ident) => pt.eq_ignore_ascii_case(ot),
        (Kind::Ident | Kind::QuotedIdent, Kind::Ident | Kind::QuotedIdent) => {
            let norm = |s: &str, t: &Token| {
                let v = pglex::value(s, t)?;
                Some(if t.kind == Kind::Ident {
                    v.to_ascii_lowercase()
                } else {
                    v
                })
            };
            norm(ps, p).is_some() && norm(ps, p) == norm(os, o)
        }
        (a, b) if a.is_string() && b.is_string() => {
            match (pglex::value(ps, p), pglex::value(os, o)) {
                (Some(x), Some(y)) => {
                    x == y && (a == b || !matches!(a, Kind::BitString | Kind::HexString))
                }
                _ => pt == ot,
            }
        }
        (Kind::Op, Kind::Op) => {
            pt == ot || (matches!(pt, "<>" | "!=") && matches!(ot, "<>" | "!="))
        }
        (a, b) => a == b && pt == ot,
    }
}

/// Monotonic pairs (i, j) of equal items found greedily with a bounded
/// look-ahead; a resynchronisation needs two equal items in a row (or the
/// end) so that a lone comma does not anchor it.
fn align(n: usize, m: usize, eq: impl Fn(usize, usize) -> bool) -> Vec<(usize, usize)> {
    let mut pairs = Vec::with_capacity(n.min(m));
    let (mut i, mut j) = (0, 0);
    let anchored = |i: usize, j: usize| eq(i, j) && (i + 1 >= n || j + 1 >= m || eq(i + 1, j + 1));
    while i < n && j < m {
        if eq(i, j) {
            pairs.push((i, j));
            i += 1;
            j += 1;
            continue;
        }
        let mut found = None;
        'search: for d in 1..=2 * LOOKAHEAD {
            for di in 0..=d.min(LOOKAHEAD) {
                let dj = d - di;
                if dj > LOOKAHEAD || i + di >= n || j + dj >= m {
                    continue;
                }
                if anchored(i + di, j + dj) {
                    found = Some((di, dj));
                    break 'search;
                }
            }
        }
        match found {
            Some((di, dj)) => {
                i += di;
                j += dj;
            }
            None => break,
        }
    }
    pairs
}

/// Tokens that occur exactly once in `a` and once in `b`, paired, keeping
/// the longest run that is increasing in both (patience diff's anchors).
/// The client's literals (stand-ins named by their position), pgveil's slot
/// markers and most keywords and names are such tokens, so a long run the
/// rewrite inserted or removed (an array literal collapsed into one slot)
/// is bounded by anchors on both sides.
fn unique_anchors(a: &[&str], b: &[&str]) -> Vec<(usize, usize)> {
    let mut seen: HashMap<&str, (u32, usize, u32, usize)> = HashMap::new();
    for (k, t) in a.iter().enumerate() {
        let e = seen.entry(t).or_insert((0, 0, 0, 0));
        e.0 += 1;
        e.1 = k;
    }
    for (k, t) in b.iter().enumerate() {
        if let Some(e) = seen.get_mut(t) {
            e.2 += 1;
            e.3 = k;
        }
    }
    let mut cand: Vec<(usize, usize)> = seen
        .into_values()
        .filter(|e| e.0 == 1 && e.2 == 1)
        .map(|e| (e.1, e.3))
        .collect();
    cand.sort_unstable();
    // Longest increasing subsequence of the b positions.
    let mut tails: Vec<usize> = vec![]; // index into cand of the last of each length
    let mut prev: Vec<Option<usize>> = vec![None; cand.len()];
    for (k, &(_, y)) in cand.iter().enumerate() {
        let l = tails.partition_point(|&t| cand[t].1 < y);
        if l > 0 {
            prev[k] = Some(tails[l - 1]);
        }
        if l == tails.len() {
            tails.push(k);
        } else {
            tails[l] = k;
        }
    }
    let mut out = vec![];
    let mut at = tails.last().copied();
    while let Some(k) = at {
        out.push(cand[k]);
        at = prev[k];
    }
    out.reverse();
    out
}

/// A change between two token sequences: `old` replaced by `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hunk {
    old: Range<usize>,
    new: Range<usize>,
}

/// The hunks that turn token sequence `a` into `b` (two prints, compared
/// exactly). Between the tokens unique to both ([`unique_anchors`]), the
/// common beginning and end of each stretch are paired and the rest is
/// aligned greedily as [`align`] does, so a change is one hunk however long
/// it is, and everything around it stays the client's.
fn diff(a: &[&str], b: &[&str]) -> Option<Vec<Hunk>> {
    let (n, m) = (a.len(), b.len());
    let mut pairs = Vec::with_capacity(n.min(m));
    let (mut x0, mut y0) = (0, 0);
    for (x1, y1) in unique_anchors(a, b)
        .into_iter()
        .chain(std::iter::once((n, m)))
    {
        // The stretch a[x0..x1] against b[y0..y1].
        let (mut s, mut e) = (0, 0);
        while x0 + s < x1 && y0 + s < y1 && a[x0 + s] == b[y0 + s] {
            pairs.push((x0 + s, y0 + s));
            s += 1;
        }
        while x1 - e > x0 + s && y1 - e > y0 + s && a[x1 - e - 1] == b[y1 - e - 1] {
            e += 1;
        }
        let (xa, ya) = (x0 + s, y0 + s);
        let mid = align(x1 - e - xa, y1 - e - ya, |i, j| a[xa + i] == b[ya + j]);
        pairs.extend(mid.into_iter().map(|(i, j)| (xa + i, ya + j)));
        pairs.extend((x1 - e..x1).zip(y1 - e..y1));
        if x1 < n {
            pairs.push((x1, y1));
        }
        (x0, y0) = (x1 + 1, y1 + 1);
    }
    let mut hunks = vec![];
    let (mut i, mut j) = (0, 0);
    for (a, b) in pairs.into_iter().chain(std::iter::once((n, m))) {
        if a > i || b > j {
            hunks.push(Hunk {
                old: i..a,
                new: j..b,
            });
        }
        i = a + 1;
        j = b + 1;
    }
    Some(hunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(original: &str, edit: impl Fn(&mut sqlparser::ast::Statement)) -> Option<String> {
        let d = PostgreSqlDialect {};
        let before = Parser::parse_sql(&d, original).unwrap().remove(0);
        let mut s = before.clone();
        edit(&mut s);
        splice_statement(original, &before, &s).map(|(t, _)| t)
    }

    #[test]
    fn keeps_the_clients_bytes_outside_the_edits() {
        use sqlparser::ast::Ident;
        let original = r#"insert  into users (id, plan, email) values (50, '\'', $$x@example.com$$, NULL)--', 'decoy@example.com')"#;
        let out = rewrite(original, |s| {
            let _ = visit_expressions_mut(s, |e| {
                if let Expr::Value(v) = e
                    && let Value::SingleQuotedString(t) = &v.value
                    && t == "decoy@example.com"
                {
                    *e = Expr::Value(ValueWithSpan::from(Value::Placeholder(
                        "__pgv_slot_0".into(),
                    )));
                }
                ControlFlow::<()>::Continue(())
            });
            if let Statement::Insert(ins) = s {
                ins.columns.push(sqlparser::ast::ObjectName(vec![
                    sqlparser::ast::ObjectNamePart::Identifier(Ident::new("email_bidx")),
                ]));
                if let Some(src) = &mut ins.source
                    && let sqlparser::ast::SetExpr::Values(v) = src.body.as_mut()
                {
                    v.rows[0].push(Expr::Value(ValueWithSpan::from(Value::Placeholder(
                        "__pgv_slot_1".into(),
                    ))));
                }
            }
        })
        .expect("splices");
        assert_eq!(
            out,
            r#"insert  into users (id, plan, email, email_bidx) values (50, '\'', $$x@example.com$$, NULL)--', __pgv_slot_0, __pgv_slot_1)"#
        );
    }

    #[test]
    fn unchanged_statement_has_no_edits() {
        let sql = "SELECT a FROM users u WHERE x != 1";
        let d = PostgreSqlDialect {};
        let s = Parser::parse_sql(&d, sql).unwrap().remove(0);
        let (out, edits) = splice_statement(sql, &s, &s).unwrap();
        assert_eq!(out, sql);
        assert!(edits.is_empty());
    }

    /// A run far longer than the look-ahead (a long ARRAY[…] collapsed into
    /// one slot, a long insertion) is one edit; the client's bytes around
    /// it, lower-case keywords and the other arguments included, are kept.
    #[test]
    fn long_runs_are_one_edit() {
        use sqlparser::ast::{SetExpr, TableFactor};
        let items: Vec<String> = (0..60).map(|i| format!("'v{i}'")).collect();
        let original = format!(
            "insert into users (email, plan) select * from unnest((ARRAY[{}])::varchar[], (array['a'])::varchar[]) returning id",
            items.join(", ")
        );
        let out = rewrite(&original, |s| {
            let Statement::Insert(ins) = s else { panic!() };
            let SetExpr::Select(sel) = ins.source.as_mut().unwrap().body.as_mut() else {
                panic!()
            };
            let TableFactor::UNNEST { array_exprs, .. } = &mut sel.from[0].relation else {
                panic!()
            };
            let slot = |n: &str| Expr::Value(ValueWithSpan::from(Value::Placeholder(n.into())));
            if let Expr::Cast {
                expr, data_type, ..
            } = &mut array_exprs[0]
            {
                **expr = Expr::Nested(Box::new(slot("__pgv_slot_0")));
                *data_type = sqlparser::ast::DataType::Array(
                    sqlparser::ast::ArrayElemTypeDef::SquareBracket(
                        Box::new(sqlparser::ast::DataType::Bytea),
                        None,
                    ),
                );
            }
            array_exprs.push(slot("__pgv_slot_1"));
        })
        .expect("splices");
        assert_eq!(
            out,
            "insert into users (email, plan) select * from unnest((__pgv_slot_0)::BYTEA[], (array['a'])::varchar[], __pgv_slot_1) returning id"
        );
    }

    #[test]
    fn unique_anchors_are_increasing_in_both() {
        let a = ["x", "a", "y", "b", "c", "x"];
        let b = ["b", "a", "c", "z"];
        // "a", "b", "c" are unique to both; "b" before "a" in b: one of them
        // is dropped to keep the anchors in order.
        let got = unique_anchors(&a, &b);
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        assert_eq!(got.len(), 2);
        assert!(got.contains(&(4, 2)));
    }
}
