//! Unit tests of the frontend's pure pieces: the COMMIT/ROLLBACK reading
//! used after a failed transaction, the lexer settings fed by
//! ParameterStatus, the statement/portal map that changes only on
//! PostgreSQL's confirmation, the lone DEALLOCATE/CLOSE reading and the
//! quoting of the statement that makes PostgreSQL raise a refusal.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::LexState;
use super::names::{Names, Space, View, same};
use super::refusal::{raise_sql, refuse};
use super::sql_names::{closed_cursor, deallocated};
use super::txn::{ends_transaction, is_commit};
use crate::session::{Prepared, Resolution};
use crate::sql::SqlName;
use crate::wire::codec::Frame;

fn status(name: &str, value: &str) -> Vec<u8> {
    [name.as_bytes(), &[0], value.as_bytes(), &[0]].concat()
}

#[test]
fn commit_and_rollback_are_recognised_after_a_failed_transaction() {
    let q = |sql: &str| Frame {
        tag: b'Q',
        raw: bytes::Bytes::from([&b"Q\0\0\0\0"[..], sql.as_bytes(), b"\0"].concat()),
    };
    let p = |name: &str, sql: &str| Frame {
        tag: b'P',
        raw: bytes::Bytes::from(
            [
                &b"P\0\0\0\0"[..],
                name.as_bytes(),
                b"\0",
                sql.as_bytes(),
                b"\0\0\0",
            ]
            .concat(),
        ),
    };
    for yes in ["COMMIT", "commit;", "  End Transaction ;", "COMMIT WORK"] {
        assert!(is_commit(q(yes).body()), "{yes}");
    }
    for no in [
        "COMMIT; DELETE FROM t",
        "COMMIT AND CHAIN",
        "ROLLBACK",
        "SELECT 1",
        "",
    ] {
        assert!(!is_commit(q(no).body()), "{no}");
    }
    for yes in [
        "ROLLBACK",
        " rollback to savepoint s",
        ";ABORT",
        "Rollback;",
    ] {
        assert!(ends_transaction(&q(yes)), "{yes}");
        assert!(ends_transaction(&p("s1", yes)), "{yes}");
    }
    for no in ["COMMIT", "SELECT 'rollback'", "rollbackx", "/* */ ROLLBACK"] {
        assert!(!ends_transaction(&q(no)), "{no}");
    }
}

#[test]
fn lex_state_follows_parameter_status() {
    let l = LexState::default();
    let scs = |l: &LexState| l.standard_strings.load(Ordering::SeqCst);
    let enc = |l: &LexState| l.backslash_safe_encoding.load(Ordering::SeqCst);
    assert!(scs(&l) && enc(&l));
    l.observe(&status("standard_conforming_strings", "off"));
    assert!(!scs(&l));
    l.observe(&status("standard_conforming_strings", "on"));
    assert!(scs(&l));
    for bad in [
        "SJIS",
        "SHIFT_JIS_2004",
        "BIG5",
        "GBK",
        "UHC",
        "GB18030",
        "JOHAB",
        "NEW_ONE",
    ] {
        l.observe(&status("client_encoding", bad));
        assert!(!enc(&l), "{bad}");
    }
    for good in [
        "UTF8",
        "SQL_ASCII",
        "LATIN1",
        "WIN1252",
        "EUC_JP",
        "KOI8R",
        "ISO_8859_5",
    ] {
        l.observe(&status("client_encoding", good));
        assert!(enc(&l), "{good}");
    }
    l.observe(&status("application_name", "off"));
    l.observe(b"truncated");
    assert!(scs(&l) && enc(&l));
}

fn prepared(n: usize) -> Arc<Prepared> {
    Arc::new(Prepared {
        plan: None,
        deferred_literals: vec![],
        copy: None,
        client_params: n,
        declared: vec![],
    })
}

fn is(v: View, want: Option<&Arc<Prepared>>) -> bool {
    matches!(v, View::Known(got) if same(got.as_ref(), want))
}

#[test]
fn names_change_only_on_confirmation() {
    use Space::{Portal, Statement};
    let (a, b) = (prepared(1), prepared(2));
    let mut n = Names::default();
    // Nothing protected, nothing pending: nothing to record.
    assert_eq!(n.set(Statement, "x", None), 0);
    assert!(n.is_empty());
    // A Parse counts for the messages behind it before its Sync …
    let id = n.set(Statement, "s", Some(a.clone()));
    assert!(id > 0 && is(n.view(Statement, "s"), Some(&a)));
    // … and after it (the name did not exist: a Bind of it fails).
    n.segment += 1;
    assert!(is(n.view(Statement, "s"), Some(&a)));
    // Rejected: it never happened.
    n.apply(Resolution::Op(id, false));
    assert!(is(n.view(Statement, "s"), None));
    let id = n.set(Statement, "s", Some(a.clone()));
    n.apply(Resolution::Op(id, true));
    assert!(is(n.view(Statement, "s"), Some(&a)));
    // Parsed again as something unprotected, then a Sync: `s` may
    // still be the protected one.
    let id = n.set(Statement, "s", None);
    assert!(is(n.view(Statement, "s"), None));
    n.segment += 1;
    assert!(matches!(n.view(Statement, "s"), View::Ambiguous));
    assert!(n.may_be_protected(&SqlName::Ident("s".into())));
    assert!(!n.may_be_protected(&SqlName::Ident("t".into())));
    assert!(n.may_be_protected(&SqlName::Unknown));
    n.apply(Resolution::Op(id, false)); // 42P05
    assert!(is(n.view(Statement, "s"), Some(&a)));
    // A DEALLOCATE is never certain before its answer.
    let id = n.set_in(Statement, "s", None, u64::MAX);
    assert!(matches!(n.view(Statement, "s"), View::Ambiguous));
    n.apply(Resolution::Op(id, true));
    assert!(is(n.view(Statement, "s"), None) && n.is_empty());
    // An answer to a later change: the older unanswered ones did not
    // happen.
    let p = n.set(Portal, "p", Some(b.clone()));
    let q = n.set(Portal, "q", Some(b.clone()));
    assert!(p > 0 && q > p);
    n.apply(Resolution::Op(q, true));
    assert!(is(n.view(Portal, "p"), None) && is(n.view(Portal, "q"), Some(&b)));
    let id = n.set(Statement, "s", Some(a.clone()));
    n.apply(Resolution::Op(id, true));
    n.apply(Resolution::ForgetAll { portals: false });
    assert!(is(n.view(Statement, "s"), None) && is(n.view(Portal, "q"), Some(&b)));
    n.apply(Resolution::ForgetAll { portals: true });
    assert!(n.is_empty());
}

#[test]
fn lone_deallocate_is_read_as_postgres_reads_it() {
    assert_eq!(deallocated("DEALLOCATE s1"), Some("s1".into()));
    assert_eq!(deallocated("deallocate  Foo"), Some("foo".into()));
    assert_eq!(
        deallocated("DEALLOCATE PREPARE \"S\"\"1\""),
        Some("S\"1".into())
    );
    // Not read with certainty: left in the map (only stale).
    for none in [
        "DEALLOCATE \"a b\"",
        "DEALLOCATE ALL",
        "deallocate prepare all",
        "DEALLOCATE s1 extra",
        "DEALLOCATE",
        "DEALLOCATE 1x",
        "SELECT 1",
        "/* c */ DEALLOCATE s1",
    ] {
        assert_eq!(deallocated(none), None, "{none}");
    }
}

#[test]
fn lone_close_is_read_as_postgres_reads_it() {
    assert_eq!(closed_cursor("CLOSE d"), Some("d".into()));
    assert_eq!(closed_cursor("close  CUR_1"), Some("cur_1".into()));
    assert_eq!(closed_cursor("CLOSE \"D\"\"x\""), Some("D\"x".into()));
    // CLOSE ALL is followed by its tag; the rest stays in the map (a
    // stale name is described again before each Execute).
    for none in [
        "CLOSE ALL",
        "close all",
        "CLOSE \"\"",
        "CLOSE d e",
        "CLOSE /* c */ d",
        "CLOSE",
        "CLOSE 1d",
        "CLOSE PREPARE d",
        "DEALLOCATE d",
    ] {
        assert_eq!(closed_cursor(none), None, "{none}");
    }
}

#[test]
fn raise_sql_quotes_message() {
    let s = raise_sql(&refuse("42501", "it's $pgveil$ bad"));
    assert!(s.contains("ERRCODE = '42501'"));
    assert!(s.contains("it''s  bad"));
    assert_eq!(s.matches("$pgveil$").count(), 2);
}
