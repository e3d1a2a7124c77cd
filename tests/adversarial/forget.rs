//! Names pgveil forgets while PostgreSQL keeps them (review): every way
//! pgveil drops a statement or portal from its maps must match what
//! PostgreSQL drops, or a later Bind/Execute of the name goes out as if it
//! were a pass-through statement. Raw protocol frames.

use crate::common::raw::{
    self, Raw, bind, describe_portal, describe_statement, errors, execute, parse, rows, sync, tags,
};
use crate::common::*;

const EMAILS: [&str; 2] = [
    "forget.unnamed.one-7731@example.com",
    "forget.unnamed.two-7731@example.com",
];
const NAMES: [&str; 2] = ["Forget Name One 7731", "Forget Name Two 7731"];

async fn seed(fx: &Calmony) {
    fx.seed_users(&EMAILS, &NAMES).await
}

/// The statements that make PostgreSQL drop every named prepared
/// statement but keep the unnamed one (sent through the protocol on a
/// named statement, so that the Parse does not replace the unnamed one).
const DROP_NAMED: [&str; 2] = ["DEALLOCATE ALL", "DISCARD ALL"];

/// `SELECT *` prepared as the unnamed statement by a role without
/// `search`, then `DEALLOCATE ALL` / `DISCARD ALL` run through the
/// protocol: PostgreSQL keeps the unnamed statement, so a Bind of it and
/// its Execute must still be shaped (no blind index reaches dba).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_keeps_the_unnamed_statement_shaped() {
    let fx = Calmony::start();
    seed(&fx).await;
    let bidx = fx.stored_bidx().await;
    assert_eq!(bidx.len(), 2);
    for what in DROP_NAMED {
        let mut c = Raw::login(fx.pv.addr(), "dba").await;
        let m = c
            .send_ready(&[parse("", "SELECT * FROM users ORDER BY id"), sync()])
            .await;
        assert!(errors(&m).is_empty(), "{what}: parse: {:?}", errors(&m));
        let m = c
            .send_ready(&[parse("x", what), bind("q", "x", &[]), execute("q"), sync()])
            .await;
        assert!(errors(&m).is_empty(), "{what}: {:?}", errors(&m));
        let m = c
            .send_ready(&[bind("", "", &[]), execute(""), sync()])
            .await;
        let r = rows(&m);
        for row in &r {
            for v in row.iter().flatten() {
                assert!(
                    !bidx.contains(v),
                    "{what}: a blind index reached a role without search: {row:?} ({})",
                    tags(&m)
                );
            }
        }
        // Whatever happened, the same through a Describe first.
        let m = c
            .send_ready(&[bind("", "", &[]), describe_portal(""), execute(""), sync()])
            .await;
        for row in &rows(&m) {
            for v in row.iter().flatten() {
                assert!(!bidx.contains(v), "{what} (described): {row:?}");
            }
        }
    }
}

/// An INSERT into protected columns prepared as the unnamed statement
/// (pgveil rewrote it to take envelopes and blind indexes), then
/// `DEALLOCATE ALL` / `DISCARD ALL` through the protocol: a Bind of the
/// unnamed statement must still have its parameters encrypted (or be
/// refused), never reach PostgreSQL as plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_all_keeps_the_unnamed_insert_encrypted() {
    let fx = Calmony::start();
    let sentinels = [
        "dealloc.plain-5512@example.com",
        "Dealloc Plain Name 5512",
        "discard.plain-5512@example.com",
        "Discard Plain Name 5512",
    ];
    for (i, what) in DROP_NAMED.iter().enumerate() {
        let (email, name) = (sentinels[2 * i], sentinels[2 * i + 1]);
        let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
        let m = c
            .send_ready(&[
                parse("", "INSERT INTO users (email, name) VALUES ($1, $2)"),
                sync(),
            ])
            .await;
        assert!(errors(&m).is_empty(), "{what}: parse: {:?}", errors(&m));
        let m = c
            .send_ready(&[parse("x", what), bind("q", "x", &[]), execute("q"), sync()])
            .await;
        assert!(errors(&m).is_empty(), "{what}: {:?}", errors(&m));
        // How many parameters PostgreSQL's unnamed statement takes now.
        let m = c.send_ready(&[describe_statement(""), sync()]).await;
        let n = m
            .iter()
            .find(|m| m.0 == b't')
            .map(|m| u16::from_be_bytes([m.1[0], m.1[1]]) as usize)
            .unwrap_or(2);
        let mut params: Vec<&str> = vec![email, name];
        while params.len() < n {
            params.push(if params.len().is_multiple_of(2) {
                email
            } else {
                name
            });
        }
        params.truncate(n.max(2));
        let m = c
            .send_ready(&[bind("", "", &params), execute(""), sync()])
            .await;
        println!("{what}: {n} parameters: {:?} ({})", errors(&m), tags(&m));
    }
    fx.assert_no_plaintext(&sentinels).await;
}

/// A simple Query with no statement in it (empty, only `;`, only a
/// comment) drops the unnamed statement but runs nothing, so PostgreSQL
/// creates no unnamed portal for it and the client's unnamed portal stays:
/// inside a transaction block its Execute must still be shaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_query_keeps_the_unnamed_portal_shaped() {
    let fx = Calmony::start();
    seed(&fx).await;
    let bidx = fx.stored_bidx().await;
    let mut c = Raw::login(fx.pv.addr(), "dba").await;
    let m = c
        .send_ready(&[parse("s", "SELECT * FROM users ORDER BY id"), sync()])
        .await;
    assert!(errors(&m).is_empty(), "parse: {:?}", errors(&m));
    for empty in ["", ";", " -- nothing\n", "/* nothing */ ;;"] {
        let m = c.send_ready(&[raw::query("BEGIN")]).await;
        assert!(errors(&m).is_empty(), "{empty:?}: {:?}", errors(&m));
        let m = c.send_ready(&[bind("", "s", &[]), sync()]).await;
        assert!(errors(&m).is_empty(), "{empty:?}: bind: {:?}", errors(&m));
        let m = c.send_ready(&[raw::query(empty)]).await;
        assert!(errors(&m).is_empty(), "{empty:?}: {:?}", errors(&m));
        let m = c.send_ready(&[execute(""), sync()]).await;
        let r = rows(&m);
        for row in &r {
            for v in row.iter().flatten() {
                assert!(
                    !bidx.contains(v),
                    "{empty:?}: a blind index reached a role without search: {row:?} ({})",
                    tags(&m)
                );
            }
        }
        c.send_ready(&[raw::query("ROLLBACK")]).await;
    }
}
