//! Byte-level helpers: splitting a simple query into statements, and the
//! no-parse pre-check for protected names.

use std::ops::Range;

/// Split `sql` at top-level `;` tokens as PostgreSQL's lexer finds them
/// (`super::pglex`: outside strings, quoted identifiers, dollar quotes and
/// comments, a `--` comment ending at `\n` or `\r`). Returns the byte
/// range of each non-empty statement, trimmed of surrounding whitespace,
/// without the `;`. A `;` inside parentheses (rule actions) does not split.
pub fn split_statements(sql: &str) -> Vec<Range<usize>> {
    let mut out = vec![];
    let mut start = 0;
    let mut paren = 0i32;
    let push = |out: &mut Vec<Range<usize>>, s: usize, e: usize| {
        let piece = &sql[s..e];
        let lead = piece.len() - piece.trim_start().len();
        let trail = piece.len() - piece.trim_end().len();
        if s + lead < e - trail && !only_comments(&sql[s + lead..e - trail]) {
            out.push(s + lead..e - trail);
        }
    };
    for t in super::pglex::Tokens::new(sql) {
        if t.kind != super::pglex::Kind::Op {
            continue;
        }
        match &sql[t.span.clone()] {
            "(" => paren += 1,
            ")" => paren -= 1,
            ";" if paren <= 0 => {
                push(&mut out, start, t.span.start);
                start = t.span.end;
                paren = 0;
            }
            _ => {}
        }
    }
    push(&mut out, start, sql.len());
    out
}

fn only_comments(s: &str) -> bool {
    super::pglex::Tokens::new(s).next().is_none()
}

/// A name as SQL text writes it after a keyword.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlName {
    /// An identifier: a plain one folded to lower case (ASCII, as
    /// PostgreSQL does in UTF-8), a quoted one as written.
    Ident(String),
    /// A `U&"…"` identifier, which pgveil does not decode: any name.
    Unknown,
}

/// Whether `sql` contains the word EXECUTE anywhere, in any case (a cheap
/// byte scan before [`names_after_execute`]).
pub fn mentions_execute(sql: &str) -> bool {
    sql.as_bytes()
        .windows(7)
        .any(|w| w.eq_ignore_ascii_case(b"execute"))
}

/// The name after every word EXECUTE, on PostgreSQL's tokens
/// (`super::pglex`: never inside strings, quoted identifiers, dollar
/// quotes or comments): the prepared statements that SQL `EXECUTE name`,
/// `EXPLAIN … EXECUTE name` and `CREATE TABLE … AS EXECUTE name` run.
/// Other uses of the word (`GRANT EXECUTE ON`, `EXECUTE FUNCTION`) give
/// names too (`on`, `function`): harmless extra candidates.
pub fn names_after_execute(sql: &str) -> Vec<SqlName> {
    use super::pglex::Kind;
    let mut out = Vec::new();
    let mut tokens = super::pglex::Tokens::new(sql).peekable();
    while let Some(t) = tokens.next() {
        if t.kind != Kind::Ident || !sql[t.span].eq_ignore_ascii_case("execute") {
            continue;
        }
        let Some(next) = tokens.peek() else { break };
        match next.kind {
            Kind::Ident => out.push(SqlName::Ident(sql[next.span.clone()].to_ascii_lowercase())),
            Kind::QuotedIdent => out.push(SqlName::Ident(
                super::pglex::value(sql, next).unwrap_or_default(),
            )),
            // `U&"…"` is not decoded, and a token PostgreSQL may read
            // otherwise could be any name.
            Kind::UnicodeIdent | Kind::Unsure => out.push(SqlName::Unknown),
            _ => {}
        }
    }
    out
}

#[inline]
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Protected names for the pre-check, bucketed by length.
#[derive(Debug, Clone, Default)]
pub(crate) struct NameSet {
    by_len: Vec<Vec<Vec<u8>>>,
    /// Names that are not plain words (spaces, dots, quotes…): substring
    /// search, case-insensitive.
    odd: Vec<Vec<u8>>,
    min_len: usize,
}

impl NameSet {
    /// The set of `names` (lower-cased).
    pub(crate) fn new(names: impl IntoIterator<Item = String>) -> NameSet {
        let mut s = NameSet {
            min_len: usize::MAX,
            ..NameSet::default()
        };
        for n in names {
            let lower = n.to_ascii_lowercase().into_bytes();
            if lower.is_empty() {
                continue;
            }
            if lower.iter().all(|&c| is_word(c)) {
                if s.by_len.len() <= lower.len() {
                    s.by_len.resize(lower.len() + 1, vec![]);
                }
                if !s.by_len[lower.len()].contains(&lower) {
                    s.min_len = s.min_len.min(lower.len());
                    s.by_len[lower.len()].push(lower);
                }
            } else {
                s.odd.push(lower);
            }
        }
        s
    }

    /// Whether `sql` may name one of the names: as a word, or anywhere
    /// for names that are not plain words (case-insensitive).
    pub(crate) fn matches(&self, sql: &str) -> bool {
        let b = sql.as_bytes();
        if !self.odd.is_empty() {
            let lower = sql.to_ascii_lowercase().into_bytes();
            if self
                .odd
                .iter()
                .any(|n| lower.windows(n.len()).any(|w| w == n.as_slice()))
            {
                return true;
            }
        }
        let max = self.by_len.len();
        let mut i = 0;
        while i < b.len() {
            if !is_word(b[i]) {
                // U&"…" identifiers may spell any name with escapes.
                if b[i] == b'&'
                    && i > 0
                    && (b[i - 1] == b'u' || b[i - 1] == b'U')
                    && b.get(i + 1) == Some(&b'"')
                {
                    return true;
                }
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && is_word(b[i]) {
                i += 1;
            }
            let len = i - start;
            if len >= self.min_len && len < max {
                let w = &b[start..i];
                if self.by_len[len].iter().any(|n| n.eq_ignore_ascii_case(w)) {
                    return true;
                }
            }
        }
        false
    }
}

/// Reserved words (defined with identifier quoting, in the policy layer).
pub(crate) use crate::policy::ident::is_reserved;

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(s: &str) -> Vec<&str> {
        split_statements(s).into_iter().map(|r| &s[r]).collect()
    }

    #[test]
    fn splits_at_top_level_semicolons() {
        assert_eq!(pieces("select 1; select 2;"), vec!["select 1", "select 2"]);
        assert_eq!(
            pieces("select ';' ; select \"a;b\""),
            vec!["select ';'", "select \"a;b\""]
        );
        assert_eq!(
            pieces("do $$ begin; end $$; select 1"),
            vec!["do $$ begin; end $$", "select 1"]
        );
        assert_eq!(
            pieces("select $tag$ ; $x$ $tag$; select 2"),
            vec!["select $tag$ ; $x$ $tag$", "select 2"]
        );
        assert_eq!(
            pieces("select 1 -- a;b\n; select /* ; /* ; */ */ 2"),
            vec!["select 1 -- a;b", "select /* ; /* ; */ */ 2"]
        );
        assert_eq!(
            pieces("select E'\\';' ; select 2"),
            vec!["select E'\\';'", "select 2"]
        );
        assert_eq!(pieces(" ; ;; -- only a comment\n"), Vec::<&str>::new());
        assert_eq!(pieces("select $1; select 2"), vec!["select $1", "select 2"]);
    }

    #[test]
    fn names_after_execute_as_postgres_reads_them() {
        let id = |s: &str| SqlName::Ident(s.to_string());
        assert_eq!(
            names_after_execute("EXECUTE S1(55, 'Alice')"),
            vec![id("s1")]
        );
        assert_eq!(
            names_after_execute("explain (analyze, format json) execute \"S_1\" (1)"),
            vec![id("S_1")]
        );
        assert_eq!(
            names_after_execute("create temp table t as execute/* x */s2"),
            vec![id("s2")]
        );
        assert_eq!(
            names_after_execute("ExEcUtE -- c\n \"a\"\"b\"; execute U&\"\\0073\""),
            vec![id("a\"b"), SqlName::Unknown]
        );
        for none in [
            "select 'execute s1'",
            "select $$ execute s1 $$",
            "select E'\\' execute s1'",
            "select 1 -- execute s1",
            "select executed, execute_at from t",
            "select \"execute s1\"",
            "execute",
        ] {
            assert!(names_after_execute(none).is_empty(), "{none}");
        }
        assert!(mentions_execute("x EXECUTE y") && !mentions_execute("select 1"));
    }

    #[test]
    fn name_set_matches_words_case_insensitively() {
        let n = NameSet::new(["users".to_string(), "member_profile".to_string()]);
        assert!(n.matches("SELECT * FROM Users"));
        assert!(n.matches("select * from public.\"USERS\""));
        assert!(n.matches("select * from phi.member_profile where x=1"));
        assert!(n.matches("select 'users'")); // conservative
        assert!(n.matches("do $$ begin insert into users values (1); end $$"));
        assert!(!n.matches("select * from users_archive"));
        assert!(!n.matches("select * from myusers"));
        assert!(!n.matches("select 1"));
        assert!(n.matches("select * from U&\"\\0075sers\""));
        let odd = NameSet::new(["my table".to_string()]);
        assert!(odd.matches("select * from \"My Table\""));
    }
}
