//! Large client messages with a policy (review): a Bind or CopyData over
//! the streaming threshold passes upstream unread only when pgveil would
//! have forwarded it unchanged anyway. Each case sends a Bind of a few
//! hundred KiB that carries a sentinel and checks that the sentinel never
//! reaches PostgreSQL in plaintext. Raw protocol frames.

use crate::common::raw::{self, Raw, bind, describe_statement, errors, execute, parse, sync, tags};
use crate::common::*;

/// Bytes of padding after the sentinel: well over the streaming threshold.
const BIG: usize = 264 << 10;

fn fixture() -> Calmony {
    Calmony::builder()
        .rust_log("info")
        .extra_yaml(
            "limits:\n  max_message_bytes: 268435456\n  max_buffered_bytes: 16777216\n  buffer_wait: 1s\n",
        )
        .start()
}

/// A Bind of `stmt` to `portal` with these text parameters.
fn big_bind(portal: &str, stmt: &str, params: &[String]) -> Vec<u8> {
    let p: Vec<&str> = params.iter().map(String::as_str).collect();
    bind(portal, stmt, &p)
}

/// Parameters for PostgreSQL's statement as it is now (`types`: its
/// parameter types): each the sentinel, one of them (a `text` one if
/// there is one: not an indexed blind index) followed by `BIG` bytes.
fn params(sentinel: &str, types: &[u32]) -> Vec<String> {
    let n = types.len().max(2);
    let big = types.iter().rposition(|&t| t == 25).unwrap_or(n - 1);
    (0..n)
        .map(|i| {
            if i == big {
                format!("{sentinel}{}", "x".repeat(BIG))
            } else {
                sentinel.to_string()
            }
        })
        .collect()
}

/// The parameter types of PostgreSQL's statement `stmt` now.
async fn param_types(c: &mut Raw, stmt: &str) -> Vec<u32> {
    let m = c.send_ready(&[describe_statement(stmt), sync()]).await;
    m.iter()
        .find(|m| m.0 == b't')
        .map(|m| {
            let n = u16::from_be_bytes([m.1[0], m.1[1]]) as usize;
            (0..n)
                .map(|i| u32::from_be_bytes(m.1[2 + 4 * i..6 + 4 * i].try_into().unwrap()))
                .collect()
        })
        .unwrap_or_else(|| vec![25, 25])
}

/// Large Binds of a protected INSERT in the orderings where pgveil's view
/// of the statement could lag PostgreSQL's: behind its own unconfirmed
/// Parse, after `DEALLOCATE ALL` / `DISCARD ALL` (the unnamed statement
/// survives them), with a portal name that crosses the inspected head,
/// and behind a re-Parse of the unnamed statement that PostgreSQL rejects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_binds_of_protected_statements_are_never_streamed_raw() {
    let fx = fixture();
    let insert = "INSERT INTO users (email, name) VALUES ($1, $2)";
    let mut sentinels: Vec<String> = Vec::new();
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;

    // 1. Parse and large Bind in one write, nothing confirmed yet.
    let s = "stream.unconfirmed-9034@example.com".to_string();
    let m = c
        .send_ready(&[
            parse("", insert),
            big_bind("", "", &params(&s, &[25, 25])),
            execute(""),
            sync(),
        ])
        .await;
    println!("unconfirmed parse: {:?} ({})", errors(&m), tags(&m));
    sentinels.push(s);

    // 2. DEALLOCATE ALL / DISCARD ALL through the protocol, then a large
    //    Bind of the unnamed statement (sized for PostgreSQL's statement).
    for (what, s) in [
        ("DEALLOCATE ALL", "stream.dealloc-9034@example.com"),
        ("DISCARD ALL", "stream.discard-9034@example.com"),
    ] {
        let m = c.send_ready(&[parse("", insert), sync()]).await;
        assert!(errors(&m).is_empty(), "{what}: {:?}", errors(&m));
        let m = c
            .send_ready(&[parse("x", what), bind("q", "x", &[]), execute("q"), sync()])
            .await;
        assert!(errors(&m).is_empty(), "{what}: {:?}", errors(&m));
        let types = param_types(&mut c, "").await;
        let m = c
            .send_ready(&[big_bind("", "", &params(s, &types)), execute(""), sync()])
            .await;
        println!(
            "{what}: parameters {types:?}: {:?} ({})",
            errors(&m),
            tags(&m)
        );
        sentinels.push(s.to_string());
    }

    // 3. A portal name longer than the inspected head.
    let s = "stream.longportal-9034@example.com".to_string();
    let m = c.send_ready(&[parse("ins", insert), sync()]).await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    let long = "p".repeat(3000);
    let m = c
        .send_ready(&[
            big_bind(&long, "ins", &params(&s, &[25, 25])),
            execute(&long),
            sync(),
        ])
        .await;
    println!("long portal name: {:?} ({})", errors(&m), tags(&m));
    sentinels.push(s);

    // 4. The unnamed statement re-parsed (rejected by PostgreSQL) right
    //    before the large Bind: PostgreSQL skips the Bind.
    let s = "stream.reparse-9034@example.com".to_string();
    let m = c.send_ready(&[parse("", insert), sync()]).await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    let types = param_types(&mut c, "").await;
    let m = c
        .send_ready(&[
            parse("", "SELECT $1::text, $2::text FROM no_such_table"),
            big_bind("", "", &params(&s, &types)),
            execute(""),
            sync(),
        ])
        .await;
    println!("rejected re-parse: {:?} ({})", errors(&m), tags(&m));
    sentinels.push(s);

    let m = c.send_ready(&[raw::query("SELECT 1")]).await;
    assert!(
        errors(&m).is_empty(),
        "session still usable: {:?}",
        errors(&m)
    );
    let all: Vec<&str> = sentinels.iter().map(String::as_str).collect();
    fx.assert_no_plaintext(&all).await;
}

/// A CopyData row for `users (email, name)` carrying `sentinel`, padded
/// past the streaming threshold (in the name).
fn big_row(sentinel: &str) -> Vec<u8> {
    format!("{sentinel}@example.com\t{sentinel} {}\n", "z".repeat(BIG)).into_bytes()
}

/// Large CopyData where pgveil's view of the COPY could differ from
/// PostgreSQL's: a protected COPY behind an unprotected one in one Query,
/// data behind a CopyFail, a protected COPY right after an unprotected one
/// ended in the same write, a protected COPY through the protocol, and two
/// COPY portals executed back to back (PostgreSQL ends the connection at
/// the second Execute: nothing but COPY messages may come during COPY IN). The rows for the protected table
/// never reach PostgreSQL's storage or logs in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_copy_data_never_reaches_a_protected_copy_raw() {
    let fx = Calmony::builder()
        .rust_log("info")
        .extra_sql("CREATE TABLE public.blobs (id serial PRIMARY KEY, v text); GRANT ALL ON public.blobs, public.blobs_id_seq TO PUBLIC;")
        .extra_yaml(
            "limits:\n  max_message_bytes: 268435456\n  max_buffered_bytes: 16777216\n  buffer_wait: 1s\n",
        )
        .start();
    let users = "COPY users (email, name) FROM STDIN";
    let blobs = "COPY blobs (v) FROM STDIN";
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    let mut sentinels = Vec::new();
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "two COPYs in one Query",
            vec![
                raw::query(&format!("{blobs}; {users}")),
                raw::copy_done(),
                raw::copy_data(&big_row("copytwoinone9034")),
                raw::copy_done(),
            ],
        ),
        (
            "data behind a CopyFail",
            vec![
                raw::query(users),
                raw::copy_fail("client gave up"),
                raw::copy_data(&big_row("copyafterfail9034")),
                raw::copy_done(),
            ],
        ),
        (
            "a protected COPY right after an unprotected one",
            vec![
                raw::query(blobs),
                raw::copy_data(b"plain blob\n"),
                raw::copy_done(),
                raw::query(users),
                raw::copy_data(&big_row("copyafterplain9034")),
                raw::copy_done(),
            ],
        ),
        (
            "a protected COPY through the protocol",
            vec![
                parse("cu", users),
                bind("pu", "cu", &[]),
                execute("pu"),
                raw::copy_data(&big_row("copyprotocol9034")),
                raw::copy_done(),
                sync(),
            ],
        ),
        (
            "an unprotected COPY portal executed behind a protected one",
            vec![
                parse("cu2", users),
                parse("cb2", blobs),
                bind("pu2", "cu2", &[]),
                bind("pb2", "cb2", &[]),
                execute("pu2"),
                execute("pb2"),
                raw::copy_data(&big_row("copybehind9034")),
                raw::copy_done(),
                sync(),
            ],
        ),
    ];
    for (what, msgs) in cases {
        c.send(&msgs).await;
        let mut m = c.until_ready().await;
        // A simple Query answers each of its own ReadyForQuery.
        let queries = msgs.iter().filter(|f| f[0] == b'Q').count();
        for _ in 1..queries {
            m.extend(c.until_ready().await);
        }
        println!("{what}: {:?} ({})", errors(&m), tags(&m));
    }
    for s in [
        "copytwoinone9034",
        "copyafterfail9034",
        "copyafterplain9034",
        "copyprotocol9034",
        "copybehind9034",
    ] {
        sentinels.push(s.to_string());
    }
    // (The last case ends the session: PostgreSQL closes a connection that
    // sends anything but CopyData, CopyDone or CopyFail during COPY IN.)
    let all: Vec<&str> = sentinels.iter().map(String::as_str).collect();
    fx.assert_no_plaintext(&all).await;
}
