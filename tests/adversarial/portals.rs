//! Portals as PostgreSQL keeps them (issue 14, class 3): a portal pgveil
//! bound leaves its map when PostgreSQL drops it (the transaction ends, a
//! lone `CLOSE name`, `CLOSE ALL`, `DISCARD ALL`, a protocol Close), and
//! where pgveil cannot follow the drop (a `CLOSE` in a batch or a function,
//! a rolled-back savepoint, a prepared `CLOSE`) the stale name is harmless:
//! every Execute of a protected portal is shaped by PostgreSQL's own
//! description of the portal the name refers to right then. A cursor
//! declared under the name of a dropped portal is shaped as that cursor,
//! for every role: a role without `search` never gets a blind index, a
//! `read` role gets its plaintext, and the audit log names the columns that
//! were decrypted. Raw protocol frames (drivers do not reuse names so).

use crate::common::raw::{
    self, Raw, bind, describe_portal, errors, execute, flush, parse, query, rows, sync, tags,
};
use crate::common::*;

const EMAILS: [&str; 3] = [
    "portal.reuse.one-4417@example.com",
    "portal.reuse.two-4417@example.com",
    "portal.reuse.one-4417@example.com",
];
const NAMES: [&str; 3] = ["Reuse Name Zero", "Reuse Name One", "Reuse Name Two"];

/// Three users (two with the same email: equal blind indexes), written by
/// the read role.
async fn seed(fx: &Calmony) {
    fx.seed_users(&EMAILS, &NAMES).await
}

/// Send `parts`, read up to the next ReadyForQuery, assert no error.
async fn ok(c: &mut Raw, parts: &[Vec<u8>], what: &str) -> Vec<raw::Msg> {
    c.send(parts).await;
    let m = c.until_ready().await;
    assert!(
        errors(&m).is_empty(),
        "{what}: {:?} ({})",
        errors(&m),
        tags(&m)
    );
    m
}

/// A way to drop the portal: what it is, the frames before the Bind, the
/// frames after it.
type Dropping = (&'static str, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Ways PostgreSQL drops the portal `d` bound by `bind`, and what runs
/// them: `(what, before the Bind, after the Bind)`. The Bind is sent with
/// its own Sync; every case ends inside a transaction block, where the
/// cursor `d` is declared next.
fn drops() -> Vec<Dropping> {
    vec![
        // Implicit transaction: the Bind's Sync drops it.
        (
            "end of the implicit transaction",
            vec![],
            vec![query("BEGIN")],
        ),
        (
            "COMMIT",
            vec![query("BEGIN")],
            vec![query("COMMIT"), query("BEGIN")],
        ),
        (
            "ROLLBACK",
            vec![query("BEGIN")],
            vec![query("ROLLBACK"), query("BEGIN")],
        ),
        ("a lone CLOSE", vec![query("BEGIN")], vec![query("CLOSE d")]),
        ("CLOSE ALL", vec![query("BEGIN")], vec![query("CLOSE ALL")]),
        (
            "a CLOSE inside a batch",
            vec![query("BEGIN")],
            vec![query("SELECT 1; CLOSE \"d\"; SELECT 2")],
        ),
        (
            "a CLOSE with a comment",
            vec![query("BEGIN")],
            vec![query("CLOSE /* the portal */ d")],
        ),
        (
            "a prepared CLOSE",
            vec![query("BEGIN")],
            vec![parse("", "CLOSE d"), bind("", "", &[]), execute(""), sync()],
        ),
        (
            "a CLOSE in a DO block",
            vec![query("BEGIN")],
            vec![query(
                "DO $$ DECLARE c refcursor := 'd'; BEGIN CLOSE c; END $$",
            )],
        ),
        (
            "ROLLBACK TO SAVEPOINT",
            vec![query("BEGIN; SAVEPOINT s")],
            vec![query("ROLLBACK TO SAVEPOINT s")],
        ),
    ]
}

/// A role without `search` or `read` binds a portal of one ciphertext
/// column, PostgreSQL drops it, and a cursor of three columns is declared
/// under its name and executed without a Describe, with one, and with a
/// row limit: every row is the cursor's, with nothing but ciphertext and
/// no blind index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_reusing_a_dropped_portal_name_is_shaped_as_the_cursor() {
    let fx = Calmony::start();
    seed(&fx).await;
    let bidx = fx.stored_bidx().await;
    assert_eq!(bidx.len(), 3);
    let mut c = Raw::login(fx.pv.addr(), "dba").await;
    ok(
        &mut c,
        &[parse("s", "SELECT email FROM users WHERE id > $1"), sync()],
        "parse s",
    )
    .await;
    for (what, before, after) in drops() {
        for part in before {
            ok(&mut c, &[part], what).await;
        }
        ok(&mut c, &[bind("d", "s", &["0"]), sync()], what).await;
        c.send(&after).await;
        let m = c.until_ready().await;
        assert!(errors(&m).is_empty(), "{what}: {:?}", errors(&m));
        if after.len() == 2 {
            // COMMIT/ROLLBACK, then BEGIN.
            c.until_ready().await;
        }
        ok(
            &mut c,
            &[query(
                "DECLARE d SCROLL CURSOR FOR SELECT id, name, email FROM users ORDER BY id",
            )],
            what,
        )
        .await;
        let mut limited = execute("d");
        let n = limited.len();
        limited[n - 4..].copy_from_slice(&2i32.to_be_bytes());
        for (how, msgs) in [
            ("Execute", vec![execute("d"), sync()]),
            (
                "Describe + Execute",
                vec![
                    query("MOVE ABSOLUTE 0 IN d"),
                    describe_portal("d"),
                    execute("d"),
                    sync(),
                ],
            ),
            (
                "Execute with a row limit",
                vec![query("MOVE ABSOLUTE 0 IN d"), limited.clone(), sync()],
            ),
        ] {
            c.send(&msgs).await;
            let mut m = c.until_ready().await;
            if msgs.len() > 2 {
                m.extend(c.until_ready().await);
            }
            assert!(errors(&m).is_empty(), "{what}, {how}: {:?}", errors(&m));
            let r = rows(&m);
            assert!(!r.is_empty(), "{what}, {how}: no rows ({})", tags(&m));
            for row in &r {
                assert_eq!(row.len(), 3, "{what}, {how}");
                assert!(
                    row[1].as_deref().unwrap().starts_with("pgv1:"),
                    "{what}, {how}: name as stored"
                );
                assert!(
                    row[2].as_deref().unwrap().starts_with("\\x7076"),
                    "{what}, {how}: email as stored"
                );
            }
            for row in &r {
                for v in row.iter().flatten() {
                    assert!(
                        !bidx.contains(v),
                        "{what}, {how}: a blind index reached a role without search ({})",
                        tags(&m)
                    );
                    assert!(
                        !EMAILS.iter().chain(NAMES.iter()).any(|p| v.contains(p)),
                        "{what}, {how}: plaintext reached a role without read"
                    );
                }
            }
        }
        ok(&mut c, &[query("ROLLBACK")], what).await;
    }
    let all: Vec<&str> = EMAILS.iter().chain(NAMES.iter()).copied().collect();
    fx.assert_no_plaintext(&all).await;
}

/// The same for the read role: the cursor's rows are decrypted as the
/// cursor's columns (not the dropped portal's), and the audit log names
/// the columns it decrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_role_gets_the_reused_names_cursor_decrypted_and_audited() {
    let fx = Calmony::start();
    seed(&fx).await;
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    ok(
        &mut c,
        &[parse("s", "SELECT email FROM users WHERE id > $1"), sync()],
        "parse s",
    )
    .await;
    let expected: Vec<Vec<Option<String>>> = NAMES
        .iter()
        .zip(EMAILS)
        .map(|(n, e)| vec![Some(n.to_string()), Some(e.to_string())])
        .collect();
    for (what, before, after) in drops() {
        let audited_before = audit_lines(&fx).len();
        for part in before {
            ok(&mut c, &[part], what).await;
        }
        ok(&mut c, &[bind("d", "s", &["0"]), sync()], what).await;
        c.send(&after).await;
        c.until_ready().await;
        if after.len() == 2 {
            c.until_ready().await;
        }
        ok(
            &mut c,
            &[query(
                "DECLARE d CURSOR FOR SELECT name, email FROM users ORDER BY id",
            )],
            what,
        )
        .await;
        c.send(&[execute("d"), sync()]).await;
        let m = c.until_ready().await;
        assert!(errors(&m).is_empty(), "{what}: {:?}", errors(&m));
        assert_eq!(rows(&m), expected, "{what}");
        ok(&mut c, &[query("ROLLBACK")], what).await;
        // The Execute's record names the cursor's columns.
        let found = wait_audit(&fx, audited_before, |l| {
            l.contains("public.users.name")
                && l.contains("public.users.email")
                && l.contains("\"decrypted\":true")
        });
        assert!(found, "{what}: {:?}", &audit_lines(&fx)[audited_before..]);
    }
    let all: Vec<&str> = EMAILS.iter().chain(NAMES.iter()).copied().collect();
    fx.assert_no_plaintext(&all).await;
}

/// The audit log's records so far.
fn audit_lines(fx: &Calmony) -> Vec<String> {
    std::fs::read_to_string(fx.pv.dir().join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Whether a record after the first `from` matches, waiting up to 5 s for
/// the audit writer (a thread of its own) to write it.
fn wait_audit(fx: &Calmony, from: usize, want: impl Fn(&str) -> bool) -> bool {
    for _ in 0..250 {
        if audit_lines(fx).iter().skip(from).any(|l| want(l)) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// Read messages up to and including the first with tag `want`.
async fn until_tag(c: &mut Raw, want: u8) -> Vec<raw::Msg> {
    let mut v = Vec::new();
    while let Some(m) = c.next().await {
        let done = m.0 == want;
        v.push(m);
        if done {
            break;
        }
    }
    v
}

/// Review finding: a Bind of a name pgveil already maps to the same
/// statement is no change to its map (op 0), so it does not mark the
/// transaction as having bound portals. When that Bind follows a Sync
/// whose ReadyForQuery `I` is still on its way (the earlier Bind's
/// BindComplete already read), the `I` forgets the name — PostgreSQL's
/// portal from the second Bind lives on in the new implicit transaction,
/// and its Execute goes out unshaped: a role without `search` gets the
/// raw blind indexes of `SELECT *`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_bound_again_behind_the_sync_that_ends_its_transaction_stays_shaped() {
    let fx = Calmony::start();
    seed(&fx).await;
    let bidx = fx.stored_bidx().await;
    let mut c = Raw::login(fx.pv.addr(), "dba").await;
    ok(
        &mut c,
        &[parse("s", "SELECT * FROM users ORDER BY id"), sync()],
        "parse s",
    )
    .await;
    // Bound in an implicit transaction; its BindComplete is read (the
    // backend confirmed the Bind) before the transaction ends.
    c.send(&[bind("p", "s", &[]), flush()]).await;
    let m = until_tag(&mut c, b'2').await;
    assert!(errors(&m).is_empty(), "first bind: {:?}", errors(&m));
    // The Sync ends it (PostgreSQL drops p) and p is bound again at once.
    c.send(&[sync(), bind("p", "s", &[]), flush()]).await;
    let mut m = until_tag(&mut c, b'Z').await;
    m.extend(until_tag(&mut c, b'2').await);
    assert!(errors(&m).is_empty(), "second bind: {:?}", errors(&m));
    c.send(&[execute("p"), sync()]).await;
    let m = c.until_ready().await;
    assert!(errors(&m).is_empty(), "execute: {:?}", errors(&m));
    let r = rows(&m);
    assert_eq!(r.len(), 3, "{}", tags(&m));
    for row in &r {
        for v in row.iter().flatten() {
            assert!(
                !bidx.contains(v),
                "a blind index reached a role without search: {row:?}"
            );
        }
    }
}
