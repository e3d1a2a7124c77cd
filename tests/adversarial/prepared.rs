//! Prepared statements and portals as PostgreSQL keeps them (issue 14,
//! class 3): pgveil's map of protected statements changes only on
//! PostgreSQL's confirmation (ParseComplete, BindComplete, CloseComplete, a
//! DEALLOCATE's CommandComplete), never for a message PostgreSQL rejected or
//! skipped, and SQL `EXECUTE` of a statement pgveil rewrote is refused.
//! Raw protocol frames: drivers do not send these sequences.

use crate::common::*;

use crate::common::raw;

use raw::{Raw, bind, close_statement, describe_portal, errors, execute, parse, query, rows, sync};

const INSERT: &str = "INSERT INTO users (email, name) VALUES ($1, $2)";

/// Exactly one error, with this SQLSTATE, whose message holds none of
/// `values`.
fn assert_refused(msgs: &[raw::Msg], sqlstate: &str, values: &[&str], what: &str) {
    let errs = errors(msgs);
    assert_eq!(errs.len(), 1, "{what}: {errs:?} ({})", raw::tags(msgs));
    assert_eq!(errs[0].1, sqlstate, "{what}: {errs:?}");
    for v in values {
        assert!(!errs[0].2.contains(v), "{what}: the error shows a value");
    }
}

/// The emails of `users` as `calmony_app` (read) sees them.
async fn emails(fx: &Calmony) -> Vec<String> {
    let c = fx.app("calmony_app").await;
    c.query("SELECT email FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_execute_of_a_statement_pgveil_rewrote_is_refused() {
    let fx = Calmony::start();
    let v = "attack-sqlexec-4417@example.com";
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;

    // Parse and SQL EXECUTE in one pipeline: the Parse is not confirmed
    // yet when the EXECUTE arrives.
    c.send(&[
        parse("s1", INSERT),
        sync(),
        query(&format!("EXECUTE s1('{v}', 'Alice')")),
    ])
    .await;
    let first = c.until_ready().await;
    assert!(errors(&first).is_empty(), "{:?}", errors(&first));
    let second = c.until_ready().await;
    assert_refused(&second, "0A000", &[v, "Alice"], "pipelined EXECUTE");
    assert!(errors(&second)[0].2.contains("Bind/Execute"));

    // Across round trips, in every spelling PostgreSQL accepts.
    for sql in [
        format!("EXECUTE s1('{v}', 'Alice')"),
        format!("execute S1 ('{v}', 'Alice')"),
        format!("EXECUTE/* c */\"s1\"('{v}', 'Alice')"),
        format!("SELECT 1; EXECUTE s1('{v}', 'Alice')"),
        format!("EXPLAIN ANALYZE EXECUTE s1('{v}', 'Alice')"),
        format!("EXPLAIN (ANALYZE, COSTS OFF) EXECUTE s1('{v}', 'Alice')"),
    ] {
        c.send(&[query(&sql)]).await;
        assert_refused(&c.until_ready().await, "0A000", &[v], &sql);
    }
    // A protected SELECT through CREATE TABLE … AS EXECUTE.
    c.send(&[
        parse("s2", "SELECT id, email FROM users WHERE email = $1"),
        sync(),
    ])
    .await;
    assert!(errors(&c.until_ready().await).is_empty());
    c.send(&[query(&format!("CREATE TABLE stolen AS EXECUTE s2('{v}')"))])
        .await;
    assert_refused(&c.until_ready().await, "0A000", &[v], "CREATE TABLE AS");
    // The extended protocol carrying SQL EXECUTE.
    c.send(&[
        parse("", &format!("EXECUTE s1('{v}', 'Alice')")),
        bind("", "", &[]),
        execute(""),
        sync(),
    ])
    .await;
    assert_refused(&c.until_ready().await, "0A000", &[v], "Parse of EXECUTE");

    // SQL PREPARE on a protected table is refused by the analyzer.
    c.send(&[query(&format!(
        "PREPARE p1(text) AS INSERT INTO users (email) VALUES ($1); EXECUTE p1('{v}')"
    ))])
    .await;
    assert_refused(&c.until_ready().await, "0A000", &[v], "SQL PREPARE");

    // Unprotected SQL prepared statements still work next to s1.
    c.send(&[query(
        "PREPARE q1(text) AS SELECT upper($1); EXECUTE q1('plain')",
    )])
    .await;
    let ok = c.until_ready().await;
    assert!(errors(&ok).is_empty(), "{:?}", errors(&ok));
    assert_eq!(rows(&ok), vec![vec![Some("PLAIN".to_string())]]);

    // The protocol-level way works and encrypts.
    c.send(&[bind("", "s1", &[v, "Alice"]), execute(""), sync()])
        .await;
    let ok = c.until_ready().await;
    assert!(errors(&ok).is_empty(), "{:?}", errors(&ok));
    assert_eq!(emails(&fx).await, vec![v.to_string()]);
    let d = fx.direct().await;
    let n: i64 = d
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'stolen'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    fx.assert_no_plaintext(&[v]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parse_postgres_rejects_never_takes_effect() {
    let fx = Calmony::start();
    let v1 = "attack-failparse-5521@example.com";
    let v2 = "attack-failparse-5522@example.com";
    let v3 = "attack-failparse-5523@example.com";
    let ok_v = "fine-failparse-5524@example.com";
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    c.send(&[parse("s", INSERT), sync()]).await;
    assert!(errors(&c.until_ready().await).is_empty());

    // Re-Parse of an existing name fails in PostgreSQL (42P05): `s` stays
    // the encrypting INSERT, and a Bind of it in a later round trip is
    // encrypted.
    c.send(&[parse("s", "SELECT $1::text, $2::text"), sync()])
        .await;
    let m = c.until_ready().await;
    assert_refused(&m, "42P05", &[], "re-Parse");
    c.send(&[bind("", "s", &[ok_v, "Bob"]), execute(""), sync()])
        .await;
    let m = c.until_ready().await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));

    // The same in one pipeline: the Bind comes before PostgreSQL has
    // answered the Parse, so pgveil cannot know which `s` it binds:
    // refused, nothing stored.
    c.send(&[
        parse("s", "SELECT $1::text, $2::text"),
        sync(),
        bind("", "s", &[v1, "Eve"]),
        execute(""),
        sync(),
    ])
    .await;
    assert_refused(&c.until_ready().await, "42P05", &[v1], "re-Parse");
    assert_refused(&c.until_ready().await, "0A000", &[v1], "Bind after it");

    // A protected Parse that PostgreSQL rejects, then Bind/Execute of its
    // name in the same pipeline (skipped) and in the next (the name does
    // not exist: 26000, the parameter never stored).
    c.send(&[
        parse(
            "t",
            "INSERT INTO users (email, name, plan) VALUES ($1, $2, no_such_function())",
        ),
        bind("", "t", &[v2, "Eve"]),
        execute(""),
        sync(),
    ])
    .await;
    assert_refused(&c.until_ready().await, "42883", &[v2], "bad Parse");
    c.send(&[bind("", "t", &[v2, "Eve"]), execute(""), sync()])
        .await;
    assert_refused(&c.until_ready().await, "26000", &[v2], "Bind of t");

    // A Parse skipped after an earlier error of its pipeline never takes
    // effect either: the unnamed statement stays the encrypting INSERT.
    c.send(&[parse("", INSERT), sync()]).await;
    assert!(errors(&c.until_ready().await).is_empty());
    c.send(&[
        execute("no_such_portal"),
        parse("", "SELECT $1::text, $2::text"),
        query("SELECT 1"),
        sync(),
    ])
    .await;
    assert_refused(&c.until_ready().await, "34000", &[], "Execute");
    c.send(&[bind("", "", &[v3, "Eve"]), execute(""), sync()])
        .await;
    let m = c.until_ready().await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));

    assert_eq!(
        emails(&fx).await,
        vec![ok_v.to_string(), v3.to_string()],
        "what went in, decrypted"
    );
    fx.assert_no_plaintext(&[v1, v2, v3, ok_v]).await;
}

/// PostgreSQL reads only the length -1 as NULL and fails a Bind with any
/// other negative length ("insufficient data left in message"). pgveil
/// reads it the same way: such a Bind of a protected statement is refused
/// in protocol step, never rewritten with a NULL in its place, and no
/// parameter of it (the bytes after the bad length included) reaches a
/// table or a log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_parameter_length_other_than_null_is_refused() {
    let fx = Calmony::start();
    let email = "attack-neglen-6611@example.com";
    let name = "Neglen Sentinel 6612";
    let trailing = "attack-neglen-6613@example.com";
    let ok_v = "fine-neglen-6614@example.com";
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    c.send(&[parse("s", INSERT), sync()]).await;
    assert!(errors(&c.until_ready().await).is_empty());

    for len in [-2i32, -5, i32::MIN] {
        for params in [
            // The bad length with nothing after it: read as NULL, the
            // Bind would decode and the row go in with the other value.
            vec![(email.len() as i32, email.as_bytes()), (len, &b""[..])],
            vec![(len, &b""[..]), (name.len() as i32, name.as_bytes())],
            // With bytes after it, which a wrong reading would take as
            // the next fields.
            vec![
                (email.len() as i32, email.as_bytes()),
                (len, name.as_bytes()),
            ],
            vec![
                (len, trailing.as_bytes()),
                (name.len() as i32, name.as_bytes()),
            ],
        ] {
            c.send(&[raw::bind_lengths("", "s", &params), execute(""), sync()])
                .await;
            let m = c.until_ready().await;
            let errs = errors(&m);
            assert_eq!(errs.len(), 1, "length {len}: {errs:?} ({})", raw::tags(&m));
            assert_eq!(errs[0].1, "08P01", "length {len}: {errs:?}");
            for v in [email, name, trailing] {
                assert!(
                    !errs[0].2.contains(v),
                    "length {len}: the error shows a value"
                );
            }
        }
    }
    // -1 is NULL, as ever: the row goes in, its email encrypted.
    c.send(&[
        raw::bind_lengths("", "s", &[(ok_v.len() as i32, ok_v.as_bytes()), (-1, b"")]),
        execute(""),
        sync(),
    ])
    .await;
    let m = c.until_ready().await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));

    assert_eq!(
        emails(&fx).await,
        vec![ok_v.to_string()],
        "only the NULL-name row went in"
    );
    fx.assert_no_plaintext(&[email, name, trailing, ok_v]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_then_parse_again_under_the_same_name() {
    let fx = Calmony::start();
    let v1 = "attack-reparse-6631@example.com";
    let v2 = "attack-reparse-6632@example.com";
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    c.send(&[parse("s", INSERT), sync()]).await;
    assert!(errors(&c.until_ready().await).is_empty());

    // Close and Parse again in one pipeline, Bind after another Sync:
    // whether the Close and Parse happened is not known yet: refused.
    c.send(&[
        close_statement("s"),
        sync(),
        parse("s", "SELECT $1::text, $2::text"),
        sync(),
        bind("", "s", &[v1, "Eve"]),
        execute(""),
        sync(),
    ])
    .await;
    assert!(errors(&c.until_ready().await).is_empty());
    assert!(errors(&c.until_ready().await).is_empty());
    assert_refused(&c.until_ready().await, "0A000", &[v1], "Bind");
    // Now confirmed: `s` is the plain SELECT, and binds as one.
    c.send(&[bind("", "s", &["echo", "x"]), execute(""), sync()])
        .await;
    let m = c.until_ready().await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    assert_eq!(
        rows(&m),
        vec![vec![Some("echo".to_string()), Some("x".to_string())]]
    );

    // And back: closed, parsed as the INSERT again, in one pipeline with
    // the Bind (same Sync): encrypted.
    c.send(&[
        close_statement("s"),
        parse("s", INSERT),
        bind("", "s", &[v2, "Alice"]),
        execute(""),
        sync(),
    ])
    .await;
    let m = c.until_ready().await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    assert_eq!(emails(&fx).await, vec![v2.to_string()]);
    fx.assert_no_plaintext(&[v1, v2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deallocate_and_discard_follow_command_complete() {
    let fx = Calmony::start();
    let v1 = "attack-dealloc-7741@example.com";
    let v2 = "attack-dealloc-7742@example.com";
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;

    for (reset, tag) in [
        ("DEALLOCATE s", "DEALLOCATE"),
        ("DEALLOCATE ALL", "DEALLOCATE ALL"),
        ("DISCARD ALL", "DISCARD ALL"),
    ] {
        c.send(&[parse("s", INSERT), sync()]).await;
        assert!(errors(&c.until_ready().await).is_empty(), "{reset}");
        // Sent together: the EXECUTE comes before the reset's
        // CommandComplete, so `s` may still be the INSERT: refused.
        c.send(&[
            query(reset),
            query(&format!(
                "PREPARE s(text, text) AS SELECT $1, $2; EXECUTE s('{v1}', 'x')"
            )),
        ])
        .await;
        let m = c.until_ready().await;
        assert!(errors(&m).is_empty(), "{reset}: {:?}", errors(&m));
        assert!(
            m.iter()
                .any(|(t, b)| *t == b'C' && b.starts_with(tag.as_bytes())),
            "{reset}"
        );
        assert_refused(&c.until_ready().await, "0A000", &[v1], reset);
        // After it: `s` is forgotten; a SQL-prepared `s` of plain SELECT
        // runs, by SQL and by Bind.
        c.send(&[query(
            "PREPARE s(text, text) AS SELECT $1, $2; EXECUTE s('plain', 'x')",
        )])
        .await;
        let m = c.until_ready().await;
        assert!(errors(&m).is_empty(), "{reset}: {:?}", errors(&m));
        assert_eq!(
            rows(&m),
            vec![vec![Some("plain".to_string()), Some("x".to_string())]]
        );
        c.send(&[query("DEALLOCATE s")]).await;
        assert!(errors(&c.until_ready().await).is_empty());
    }

    // A DEALLOCATE that fails (no such statement) changes nothing: `s`
    // stays the encrypting INSERT.
    c.send(&[parse("s", INSERT), sync()]).await;
    assert!(errors(&c.until_ready().await).is_empty());
    c.send(&[query("DEALLOCATE no_such_statement")]).await;
    assert_refused(&c.until_ready().await, "26000", &[], "DEALLOCATE");
    c.send(&[query(&format!("EXECUTE s('{v1}', 'x')"))]).await;
    assert_refused(&c.until_ready().await, "0A000", &[v1], "EXECUTE");
    c.send(&[bind("", "s", &[v2, "Alice"]), execute(""), sync()])
        .await;
    let m = c.until_ready().await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    assert_eq!(emails(&fx).await, vec![v2.to_string()]);
    fx.assert_no_plaintext(&[v1, v2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_pgveils_own_select_sequence_keeps_later_answers_in_step() {
    let fx = Calmony::start();
    let v = "attack-ownselect-8851@example.com";
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    c.send(&[
        parse("", INSERT),
        bind("", "", &[v, "Alice"]),
        execute(""),
        sync(),
    ])
    .await;
    assert!(errors(&c.until_ready().await).is_empty());
    // A simple-query SELECT that pgveil sends as Parse/Bind/Describe/
    // Execute/Sync (binary email), failing at Parse in PostgreSQL, with the
    // next Query already behind it: that one's rows are still decrypted.
    c.send(&[
        query("SELECT email FROM users WHERE no_such_function(id)"),
        query("SELECT email FROM users"),
    ])
    .await;
    assert_refused(&c.until_ready().await, "42883", &[v], "bad SELECT");
    let m = c.until_ready().await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    assert_eq!(rows(&m), vec![vec![Some(v.to_string())]]);
    fx.assert_no_plaintext(&[v]).await;
}

/// The `name` column of `users` as `calmony_app` (read) sees it.
async fn names(fx: &Calmony) -> Vec<String> {
    let c = fx.app("calmony_app").await;
    c.query("SELECT name FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

const INSERT_NAME: &str = "INSERT INTO users (name) VALUES ($1)";

fn assert_ok(msgs: &[raw::Msg], what: &str) {
    assert!(
        errors(msgs).is_empty(),
        "{what}: {:?} ({})",
        errors(msgs),
        raw::tags(msgs)
    );
}

/// The session ended: a FATAL 08P01 from pgveil, then the connection
/// closes, at the latest when the client sends its next message (which
/// must not reach PostgreSQL).
async fn assert_ended(c: &mut Raw, next: &[Vec<u8>], what: &str) {
    let mut got = Vec::new();
    while let Some(m) = c.next().await {
        let fatal = m.0 == b'E' && errors(std::slice::from_ref(&m))[0].0 == "FATAL";
        got.push(m);
        if fatal {
            break;
        }
    }
    let errs = errors(&got);
    let fatal = errs
        .last()
        .unwrap_or_else(|| panic!("{what}: no FATAL: {}", raw::tags(&got)));
    assert_eq!(
        (fatal.0.as_str(), fatal.1.as_str()),
        ("FATAL", "08P01"),
        "{what}: {errs:?}"
    );
    assert!(fatal.2.starts_with("pgveil: "), "{what}: {errs:?}");
    // Whatever the client sends now ends the session; nothing comes back.
    let _ = tokio::io::AsyncWriteExt::write_all(&mut c.s, &next.concat()).await;
    let rest = c.until_closed().await;
    assert!(
        rest.is_empty(),
        "{what}: answered after FATAL: {}",
        raw::tags(&rest)
    );
}

/// PostgreSQL 15 keys prepared statements and portals on the first 63
/// bytes of their names (NAMEDATALEN - 1): it is checked here against the
/// server itself, and pgveil keys them the same way, so an alias of a
/// protected statement or portal is rewritten like the statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_names_are_keyed_on_their_first_63_bytes_as_postgresql_does() {
    let fx = Calmony::start();
    let prefix = "a".repeat(63);
    let (long, alias) = (format!("{prefix}XXXXXXX"), format!("{prefix}YYYYYYY"));

    // The server: a Bind of the alias binds the statement.
    let pg = std::net::SocketAddr::from(([127, 0, 0, 1], fx.pg.port()));
    let mut d = Raw::login(pg, "calmony_app").await;
    d.send(&[parse(&long, "SELECT $1::text"), sync()]).await;
    assert_ok(&d.until_ready().await, "PostgreSQL: Parse");
    d.send(&[bind("", &alias, &["echo"]), execute(""), sync()])
        .await;
    let m = d.until_ready().await;
    assert_ok(&m, "PostgreSQL: Bind of the alias");
    assert_eq!(rows(&m), vec![vec![Some("echo".to_string())]]);
    d.send(&[parse(&alias, "SELECT 1"), sync()]).await;
    assert_refused(&d.until_ready().await, "42P05", &[], "PostgreSQL: re-Parse");

    // Through pgveil: statements.
    let v1 = "Attack-Name63-Sentinel-9904";
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    c.send(&[parse(&long, INSERT_NAME), sync()]).await;
    assert_ok(&c.until_ready().await, "Parse of the long name");
    c.send(&[bind("", &alias, &[v1]), execute(""), sync()])
        .await;
    assert_ok(&c.until_ready().await, "Bind of the alias");
    // Exactly 63 bytes, and 64 bytes, are the same statement too.
    let v2 = "Attack-Name63-Sentinel-9906";
    c.send(&[bind("", &prefix, &[v2]), execute(""), sync()])
        .await;
    assert_ok(&c.until_ready().await, "Bind of the 63-byte name");
    // Closed under an alias: pgveil forgets it with PostgreSQL, and a
    // plain statement under a third alias is plain.
    c.send(&[
        close_statement(&format!("{prefix}Z")),
        sync(),
        parse(&format!("{prefix}W"), "SELECT $1::text"),
        sync(),
    ])
    .await;
    assert_ok(&c.until_ready().await, "Close of an alias");
    assert_ok(&c.until_ready().await, "Parse of another alias");
    c.send(&[bind("", &long, &["plain"]), execute(""), sync()])
        .await;
    let m = c.until_ready().await;
    assert_ok(&m, "Bind of the plain statement");
    assert_eq!(rows(&m), vec![vec![Some("plain".to_string())]]);

    // Portals: a protected COPY bound under a long name, executed under
    // an alias, has its rows encrypted.
    let v3 = "Attack-Portal63-Sentinel-9905";
    let pprefix = "p".repeat(63);
    c.send(&[query("BEGIN")]).await;
    assert_ok(&c.until_ready().await, "BEGIN");
    c.send(&[
        parse("cp", "COPY users (name) FROM STDIN"),
        bind(&format!("{pprefix}XXXXXXX"), "cp", &[]),
        sync(),
    ])
    .await;
    assert_ok(&c.until_ready().await, "Parse/Bind of the COPY");
    c.send(&[
        execute(&format!("{pprefix}YYYYYYY")),
        raw::copy_data(format!("{v3}\n").as_bytes()),
        raw::copy_done(),
        sync(),
    ])
    .await;
    assert_ok(&c.until_ready().await, "Execute of the alias");
    c.send(&[query("COMMIT")]).await;
    assert_ok(&c.until_ready().await, "COMMIT");
    assert_eq!(names(&fx).await, vec![v1, v2, v3]);

    // Names pgveil cannot key as PostgreSQL does are refused.
    let v4 = "Attack-Name63-Sentinel-9907";
    let wide = "é".repeat(32); // 64 bytes
    c.send(&[parse(&wide, INSERT_NAME), sync()]).await;
    assert_refused(
        &c.until_ready().await,
        "0A000",
        &[v4],
        "long non-ASCII name",
    );
    c.send(&[
        parse("", INSERT_NAME),
        bind(&wide, "", &[v4]),
        execute(&wide),
        sync(),
    ])
    .await;
    assert_refused(
        &c.until_ready().await,
        "0A000",
        &[v4],
        "long non-ASCII portal",
    );
    // Short non-ASCII names work (client and server encoding UTF8).
    let v5 = "Attack-Name63-Sentinel-9908";
    c.send(&[
        parse("é", INSERT_NAME),
        bind("", "é", &[v5]),
        execute(""),
        sync(),
    ])
    .await;
    assert_ok(&c.until_ready().await, "short non-ASCII name");
    // With another client_encoding PostgreSQL converts names before it
    // keys them: non-ASCII names are refused, ASCII ones still alias.
    c.send(&[query("SET client_encoding = 'LATIN1'")]).await;
    assert_ok(&c.until_ready().await, "SET client_encoding");
    c.send(&[parse("é", INSERT_NAME), sync()]).await;
    assert_refused(
        &c.until_ready().await,
        "0A000",
        &[],
        "non-ASCII name in LATIN1",
    );
    let v6 = "Attack-Name63-Sentinel-9909";
    let b = "b".repeat(63);
    c.send(&[parse(&format!("{b}1"), INSERT_NAME), sync()])
        .await;
    assert_ok(&c.until_ready().await, "Parse in LATIN1");
    c.send(&[bind("", &format!("{b}2"), &[v6]), execute(""), sync()])
        .await;
    assert_ok(&c.until_ready().await, "Bind of the alias in LATIN1");
    assert_eq!(names(&fx).await, vec![v1, v2, v3, v5, v6]);
    fx.assert_no_plaintext(&[v1, v2, v3, v4, v5, v6]).await;
}

/// PostgreSQL ignores Sync and Flush while it is in COPY IN: they must not
/// leave an entry in pgveil's queue of pending answers (which would make
/// the next ParseComplete confirm the wrong request), whether the COPY ran
/// from a simple Query or from an Execute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_flush_inside_copy_keep_prepared_statements_in_step() {
    let fx = Calmony::builder()
        .extra_sql("CREATE TABLE public.scratch (t text);")
        .start();
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    let mut stored = Vec::new();
    for (i, copy) in [
        // Simple Query, Sync and Flush inside the data.
        vec![
            query("COPY scratch (t) FROM STDIN"),
            sync(),
            raw::copy_data(b"row\n"),
            raw::flush(),
            sync(),
            raw::copy_done(),
        ],
        // Extended protocol as libpq sends it: Sync right after Execute.
        vec![
            parse("", "COPY scratch (t) FROM STDIN"),
            bind("", "", &[]),
            execute(""),
            sync(),
            raw::copy_data(b"row\n"),
            raw::copy_done(),
            sync(),
        ],
        // Two COPYs in one Query, a Sync inside each one's data.
        vec![
            query("COPY scratch (t) FROM STDIN; COPY scratch (t) FROM STDIN"),
            raw::copy_data(b"row\n"),
            sync(),
            raw::copy_done(),
            sync(),
            raw::copy_data(b"row\n"),
            raw::copy_done(),
        ],
        // A protected COPY, with Syncs before and inside its data.
        vec![
            parse("", "COPY users (name) FROM STDIN"),
            bind("", "", &[]),
            execute(""),
            flush(),
            sync(),
            raw::copy_data(b"Attack-SyncCopy-Row-9911\n"),
            sync(),
            raw::copy_done(),
            sync(),
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let v = format!("Attack-SyncCopy-Sentinel-99{i:02}");
        c.send(&copy).await;
        assert_ok(&c.until_ready().await, "COPY");
        c.send(&[parse("s1", INSERT_NAME), sync()]).await;
        assert_ok(&c.until_ready().await, "Parse");
        c.send(&[bind("", "s1", &[&v]), execute(""), sync()]).await;
        assert_ok(&c.until_ready().await, "Bind");
        c.send(&[close_statement("s1"), sync()]).await;
        assert_ok(&c.until_ready().await, "Close");
        stored.push(v);
    }
    let mut want = vec!["Attack-SyncCopy-Row-9911".to_string()];
    want.splice(0..0, stored[..3].iter().cloned());
    want.push(stored[3].clone());
    assert_eq!(names(&fx).await, want);
    let mut sentinels: Vec<&str> = stored.iter().map(String::as_str).collect();
    sentinels.push("Attack-SyncCopy-Row-9911");
    fx.assert_no_plaintext(&sentinels).await;
}

use raw::flush;

/// PostgreSQL ignores CopyData, CopyDone and CopyFail outside COPY IN:
/// pgveil does not forward them, and they never cost a queue entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_messages_outside_copy_keep_prepared_statements_in_step() {
    let fx = Calmony::start();
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    let mut stored = Vec::new();
    for (i, stray) in [
        raw::copy_data(b"x"),
        raw::copy_done(),
        raw::copy_fail("x"),
        [raw::copy_data(b"x\n"), raw::copy_done()].concat(),
    ]
    .into_iter()
    .enumerate()
    {
        let v = format!("Attack-StrayCopy-Sentinel-99{i:02}");
        // After an Execute (the case pgveil used to read as the start of a
        // COPY), after a simple Query, and on their own.
        c.send(&[
            parse("", "SELECT 1"),
            bind("", "", &[]),
            execute(""),
            sync(),
            stray.clone(),
            query("SELECT 2"),
            stray.clone(),
            parse("s1", INSERT_NAME),
            sync(),
        ])
        .await;
        for what in ["Execute", "Query", "Parse"] {
            assert_ok(&c.until_ready().await, what);
        }
        c.send(&[bind("", "s1", &[&v]), execute(""), sync()]).await;
        assert_ok(&c.until_ready().await, "Bind");
        c.send(&[close_statement("s1"), sync()]).await;
        assert_ok(&c.until_ready().await, "Close");
        stored.push(v);
    }
    assert_eq!(names(&fx).await, stored);
    let sentinels: Vec<&str> = stored.iter().map(String::as_str).collect();
    fx.assert_no_plaintext(&sentinels).await;
}

/// A Sync sent inside a COPY that then fails: PostgreSQL answers it or not
/// depending on whether it read it before the failure, which pgveil cannot
/// see. It ends the session rather than guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_inside_a_failed_copy_ends_the_session() {
    let fx = Calmony::builder()
        .extra_sql("CREATE TABLE public.scratch (t int);")
        .start();
    let v = "Attack-FailedCopySync-Sentinel-9931";
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    c.send(&[
        parse("", "COPY scratch (t) FROM STDIN"),
        bind("", "", &[]),
        execute(""),
        sync(),
        raw::copy_data(b"not a number\n"),
        sync(),
        raw::copy_done(),
        parse("s1", INSERT_NAME),
        sync(),
    ])
    .await;
    assert_ended(
        &mut c,
        &[bind("", "s1", &[v]), execute(""), sync()],
        "failed COPY",
    )
    .await;
    let d = fx.direct().await;
    let n: i64 = d
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // Without a Sync inside, a failed COPY is an ordinary error.
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    c.send(&[
        parse("", "COPY scratch (t) FROM STDIN"),
        bind("", "", &[]),
        execute(""),
        raw::copy_data(b"not a number\n"),
        raw::copy_done(),
        sync(),
    ])
    .await;
    assert_refused(&c.until_ready().await, "22P02", &[], "failed COPY");
    c.send(&[
        parse("s1", INSERT_NAME),
        bind("", "s1", &[v]),
        execute(""),
        sync(),
    ])
    .await;
    assert_ok(&c.until_ready().await, "INSERT after it");
    assert_eq!(names(&fx).await, vec![v]);
    fx.assert_no_plaintext(&[v]).await;
}

/// A COPY FROM STDIN that pgveil did not count in its Query (here: SQL
/// `EXECUTE` of a COPY prepared at the protocol level) ends the session at
/// its CopyInResponse; the client's data for it never reaches PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_pgveil_did_not_plan_ends_the_session() {
    let fx = Calmony::builder()
        .extra_sql("CREATE TABLE public.scratch (t text);")
        .start();
    let v = "Attack-UnplannedCopy-Sentinel-9941";
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    c.send(&[parse("cs", "COPY scratch (t) FROM STDIN"), sync()])
        .await;
    assert_ok(&c.until_ready().await, "Parse");
    c.send(&[
        query("EXECUTE cs"),
        raw::copy_data(format!("{v}\n").as_bytes()),
        raw::copy_done(),
    ])
    .await;
    assert_ended(&mut c, &[query("SELECT 1")], "unplanned COPY").await;
    let d = fx.direct().await;
    let n: i64 = d
        .query_one("SELECT count(*) FROM scratch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    fx.assert_no_plaintext(&[v]).await;
}

/// FunctionCall ('F') calls any function by OID, out of pgveil's analysis:
/// refused while a policy is loaded, as PostgreSQL answers a failing one
/// (an error, then ReadyForQuery), so the session goes on in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_calls_are_refused_in_step() {
    let fx = Calmony::start();
    let v = "Attack-FunctionCall-Sentinel-9951";
    let d = fx.direct().await;
    let oid: u32 = d
        .query_one(
            "SELECT 'pg_catalog.query_to_xml(text, boolean, boolean, text)'::regprocedure::oid",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    c.send(&[raw::function_call(
        oid,
        &[
            &format!("INSERT INTO users (name) VALUES ('{v}') RETURNING 1"),
            "f",
            "f",
            "",
        ],
    )])
    .await;
    let m = c.until_ready().await;
    assert_refused(&m, "0A000", &[v], "FunctionCall");
    assert!(errors(&m)[0].2.contains("FunctionCall"), "{:?}", errors(&m));
    assert_eq!(m.last().unwrap().1, b"I");
    // Inside a transaction block it fails the block, like any error.
    c.send(&[
        query("BEGIN"),
        raw::function_call(oid, &["SELECT 1", "f", "f", ""]),
    ])
    .await;
    assert_ok(&c.until_ready().await, "BEGIN");
    let m = c.until_ready().await;
    assert_refused(&m, "0A000", &[], "FunctionCall in a block");
    assert_eq!(m.last().unwrap().1, b"E");
    c.send(&[query("ROLLBACK")]).await;
    assert_ok(&c.until_ready().await, "ROLLBACK");
    // In step: a prepared INSERT right after is encrypted.
    c.send(&[
        raw::function_call(oid, &["SELECT 1", "f", "f", ""]),
        parse("s1", INSERT_NAME),
        bind("", "s1", &[v]),
        execute(""),
        sync(),
    ])
    .await;
    assert_refused(&c.until_ready().await, "0A000", &[], "FunctionCall");
    assert_ok(&c.until_ready().await, "INSERT");
    assert_eq!(names(&fx).await, vec![v]);
    fx.assert_no_plaintext(&[v]).await;
}

/// Protocol portals and SQL cursors share one namespace: a SQL `FETCH` from
/// a portal pgveil bound for a statement on protected tables would bring
/// its rows back unplanned (blind indexes unmasked for a role that may not
/// search them). Refused, in a simple Query and in a Parse; fetching the
/// portal with Execute keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_fetch_from_a_protected_portal_is_refused() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    let victim = "attack-fetch-portal-7811@example.com";
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, 'Fetch Victim')",
        &[&victim],
    )
    .await
    .unwrap();
    let mut c = Raw::login(fx.pv.addr(), "signup").await;
    c.send(&[query("BEGIN")]).await;
    assert_ok(&c.until_ready().await, "BEGIN");
    c.send(&[
        raw::parse("s_all", "SELECT * FROM users"),
        raw::bind("p_all", "s_all", &[]),
        raw::sync(),
    ])
    .await;
    assert_ok(&c.until_ready().await, "Parse/Bind of a protected portal");
    for sql in [
        "FETCH ALL FROM p_all",
        "fetch forward 5 in \"p_all\"",
        "FETCH p_all",
    ] {
        c.send(&[query(sql)]).await;
        let m = c.until_ready().await;
        assert_refused(&m, "0A000", &[victim], sql);
        c.send(&[query("ROLLBACK")]).await;
        assert_ok(&c.until_ready().await, "ROLLBACK");
        c.send(&[
            query("BEGIN"),
            raw::bind("p_all", "s_all", &[]),
            raw::sync(),
        ])
        .await;
        assert_ok(&c.until_ready().await, "BEGIN");
        assert_ok(&c.until_ready().await, "rebind");
    }
    // Prepared as a statement of its own.
    c.send(&[
        raw::parse("", "FETCH ALL FROM p_all"),
        raw::bind("", "", &[]),
        raw::execute(""),
        raw::sync(),
    ])
    .await;
    let m = c.until_ready().await;
    assert_refused(&m, "0A000", &[victim], "Parse of FETCH");
    c.send(&[query("ROLLBACK")]).await;
    assert_ok(&c.until_ready().await, "ROLLBACK");
    // Execute of the portal itself: the blind index arrives masked.
    c.send(&[
        query("BEGIN"),
        raw::bind("p_all", "s_all", &[]),
        raw::execute("p_all"),
        raw::sync(),
    ])
    .await;
    assert_ok(&c.until_ready().await, "BEGIN");
    let m = c.until_ready().await;
    assert_ok(&m, "Execute of the portal");
    let r = rows(&m);
    assert_eq!(r.len(), 1, "{}", raw::tags(&m));
    assert_eq!(
        r[0][2], None,
        "the blind index reached a role that may not search"
    );
    fx.assert_no_plaintext(&[victim]).await;
}

/// SQL cursors are portals too: a client may Describe or Execute one
/// through the protocol (psycopg describes its named cursors). Its rows are
/// shaped as a FETCH's are: for a role that may not search, the blind index
/// arrives masked whether the cursor is fetched in SQL or executed as a
/// portal, with or without a Describe first, and with a row limit; a read
/// role gets plaintext and the plaintext type. A portal that does not
/// exist fails as it would without pgveil.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_cursors_executed_as_protocol_portals_are_shaped() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    let victim = "attack-cursor-portal-7812@example.com";
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, 'Cursor Portal Victim')",
        &[&victim],
    )
    .await
    .unwrap();
    let mut c = Raw::login(fx.pv.addr(), "signup").await;
    c.send(&[query(
        "BEGIN; DECLARE cur SCROLL CURSOR FOR SELECT id, email, name FROM users",
    )])
    .await;
    assert_ok(&c.until_ready().await, "DECLARE");
    // Execute without a Describe, with a row limit, then to the end.
    let mut limited = execute("cur");
    let n = limited.len();
    limited[n - 4..].copy_from_slice(&1i32.to_be_bytes());
    for msgs in [
        vec![limited.clone(), sync()],
        vec![query("MOVE ABSOLUTE 0 IN cur"), execute("cur"), sync()],
        vec![
            query("MOVE ABSOLUTE 0 IN cur"),
            describe_portal("cur"),
            execute("cur"),
            sync(),
        ],
    ] {
        c.send(&msgs).await;
        let mut m = c.until_ready().await;
        if msgs.len() >= 3 {
            m.extend(c.until_ready().await);
        }
        assert!(errors(&m).is_empty(), "{:?}", errors(&m));
        let r = rows(&m);
        assert_eq!(r.len(), 1, "{}", raw::tags(&m));
        assert!(
            r[0][2].as_deref().unwrap().starts_with("pgv1:"),
            "name as stored"
        );
        assert!(
            r[0][1].as_deref().unwrap().starts_with("\\x7076"),
            "email as stored"
        );
    }
    // A portal that does not exist: PostgreSQL's own error, in step.
    c.send(&[execute("nope"), sync()]).await;
    let m = c.until_ready().await;
    assert_eq!(errors(&m).len(), 1, "{}", raw::tags(&m));
    assert_eq!(errors(&m)[0].1, "34000");
    c.send(&[query("ROLLBACK")]).await;
    assert_ok(&c.until_ready().await, "ROLLBACK");

    // A read role: Describe shows text, Execute decrypts.
    let mut r = Raw::login(fx.pv.addr(), "calmony_app").await;
    r.send(&[query(
        "BEGIN; DECLARE cur CURSOR FOR SELECT email, name FROM users",
    )])
    .await;
    assert_ok(&r.until_ready().await, "DECLARE");
    r.send(&[describe_portal("cur"), execute("cur"), sync()])
        .await;
    let m = r.until_ready().await;
    assert!(errors(&m).is_empty(), "{:?}", errors(&m));
    let desc = m.iter().find(|m| m.0 == b'T').expect("RowDescription");
    // First field: name, table oid (4), attnum (2), type oid (4).
    let at = desc.1[2..].iter().position(|&b| b == 0).unwrap() + 3;
    let ty = u32::from_be_bytes(desc.1[at + 6..at + 10].try_into().unwrap());
    assert_eq!(ty, 25, "email described as text");
    assert_eq!(
        rows(&m),
        vec![vec![
            Some(victim.to_string()),
            Some("Cursor Portal Victim".to_string())
        ]]
    );
    fx.assert_no_plaintext(&[victim, "Cursor Portal Victim"])
        .await;
}
