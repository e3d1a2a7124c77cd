//! Cursors through pgveil with the reference policy: SQL `DECLARE` / `FETCH`
//! / `MOVE` / `CLOSE` (every direction, `SCROLL`, `BINARY`, `WITH HOLD`) and
//! protocol portals read with a row limit (Execute with max rows,
//! PortalSuspended: what pgjdbc's `setFetchSize` and node's `pg-cursor`
//! do). A cursor's rows must come out exactly as the SELECT it runs would:
//! plaintext for the columns the role may read, ciphertext for the rest,
//! blind indexes masked for roles that may not search them, and the same
//! refusals for the query it declares. Every test ends with the plaintext
//! scan of the database and the logs.

mod common;

use common::*;
use tokio_postgres::SimpleQueryMessage;

const EMAILS: [&str; 3] = [
    "cursor.one@example.com",
    "cursor.two@example.com",
    "cursor.three@example.com",
];
const NAMES: [&str; 3] = ["Cursorine One", "Cursorine Two", "Cursorine Three"];

async fn seed(fx: &Calmony) {
    fx.seed_users(&EMAILS, &NAMES).await
}

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    simple_rows(msgs)
}

fn expected(range: std::ops::Range<usize>) -> Vec<Vec<Option<String>>> {
    range
        .map(|i| vec![Some(EMAILS[i].to_string()), Some(NAMES[i].to_string())])
        .collect()
}

async fn q(c: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    rows(
        &c.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", err_text(&e))),
    )
}

#[tokio::test]
async fn sql_cursors_decrypt_for_read_roles_in_every_direction() {
    let fx = Calmony::start();
    seed(&fx).await;
    let app = fx.app("calmony_app").await;

    // A plain cursor in a transaction, simple protocol, both FETCH forms
    // (with and without FROM/IN, counts, directions).
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("DECLARE c CURSOR FOR SELECT email, name FROM users ORDER BY id")
        .await
        .unwrap();
    assert_eq!(q(&app, "FETCH 1 FROM c").await, expected(0..1));
    assert_eq!(q(&app, "FETCH NEXT IN c").await, expected(1..2));
    assert_eq!(q(&app, "fetch forward all from c").await, expected(2..3));
    assert_eq!(q(&app, "FETCH c").await, vec![] as Vec<Vec<Option<String>>>);
    app.batch_execute("CLOSE c").await.unwrap();

    // SCROLL: backward, absolute, relative, prior, first, last; MOVE.
    app.batch_execute("DECLARE s SCROLL CURSOR FOR SELECT email, name FROM users ORDER BY id")
        .await
        .unwrap();
    assert_eq!(q(&app, "FETCH LAST FROM s").await, expected(2..3));
    assert_eq!(q(&app, "FETCH PRIOR FROM s").await, expected(1..2));
    assert_eq!(q(&app, "FETCH ABSOLUTE 1 FROM s").await, expected(0..1));
    assert_eq!(q(&app, "FETCH RELATIVE 2 FROM s").await, expected(2..3));
    assert_eq!(q(&app, "FETCH RELATIVE -1 FROM s").await, expected(1..2));
    assert_eq!(q(&app, "FETCH FIRST FROM s").await, expected(0..1));
    let mut back = expected(0..3);
    back.reverse();
    app.batch_execute("MOVE LAST IN s").await.unwrap();
    assert_eq!(
        q(&app, "FETCH BACKWARD ALL FROM s").await,
        back[1..].to_vec()
    );
    app.batch_execute("MOVE ABSOLUTE 0 IN s").await.unwrap();
    assert_eq!(q(&app, "FETCH 2 s").await, expected(0..2));
    // A FETCH after a comment, in a query of several statements.
    let msgs = app
        .simple_query("MOVE ABSOLUTE 0 IN s; /* next */ FETCH 1 FROM s; SELECT 1")
        .await
        .unwrap();
    assert_eq!(rows(&msgs)[0], expected(0..1)[0]);

    // A prepared FETCH is refused (its columns are fixed at Bind, its rows
    // read at Execute from whatever cursor then has the name).
    let e = app.query("FETCH FORWARD 2 FROM s", &[]).await.unwrap_err();
    assert_eq!(code(&e), "0A000", "{}", err_text(&e));
    app.batch_execute("ROLLBACK").await.unwrap();
    app.batch_execute("BEGIN").await.unwrap();

    // BINARY: text columns in binary format are their UTF-8 bytes.
    app.batch_execute("DECLARE b BINARY CURSOR FOR SELECT email, name FROM users ORDER BY id")
        .await
        .unwrap();
    assert_eq!(q(&app, "FETCH ALL FROM b").await, expected(0..3));

    // An equality predicate in the declared query is rewritten to the
    // blind index, with a literal and with a parameter.
    app.batch_execute(&format!(
        "DECLARE e CURSOR FOR SELECT email, name FROM users WHERE email = '{}'",
        EMAILS[1].to_uppercase()
    ))
    .await
    .unwrap();
    assert_eq!(q(&app, "FETCH ALL FROM e").await, expected(1..2));
    app.execute(
        "DECLARE p CURSOR FOR SELECT email, name FROM users WHERE email = $1",
        &[&EMAILS[2]],
    )
    .await
    .unwrap();
    assert_eq!(q(&app, "FETCH ALL FROM p").await, expected(2..3));
    app.batch_execute("COMMIT").await.unwrap();

    // WITH HOLD outlives its transaction (PostgreSQL materialises it at
    // COMMIT and still describes its columns' origin).
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("DECLARE h CURSOR WITH HOLD FOR SELECT email, name FROM users ORDER BY id")
        .await
        .unwrap();
    app.batch_execute("COMMIT").await.unwrap();
    assert_eq!(q(&app, "FETCH 2 FROM h").await, expected(0..2));
    assert_eq!(q(&app, "FETCH ALL FROM h").await, expected(2..3));
    app.batch_execute("CLOSE h").await.unwrap();
    // Outside a transaction block (allowed for WITH HOLD).
    app.batch_execute("DECLARE h2 CURSOR WITH HOLD FOR SELECT email, name FROM users ORDER BY id")
        .await
        .unwrap();
    assert_eq!(q(&app, "FETCH ALL FROM h2").await, expected(0..3));
    app.batch_execute("CLOSE ALL").await.unwrap();

    // Every FETCH that decrypted is audited with the columns it showed.
    let audit = std::fs::read_to_string(fx.pv.dir().join("audit.jsonl")).unwrap();
    let fetches: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"command\":\"FETCH"))
        .collect();
    assert!(fetches.len() >= 10, "{audit}");
    assert!(
        fetches
            .iter()
            .all(|l| l.contains("public.users.email") && l.contains("\"decrypted\":true")),
        "{audit}"
    );

    let mut sentinels: Vec<&str> = EMAILS.to_vec();
    sentinels.extend(NAMES);
    let upper = EMAILS[1].to_uppercase();
    sentinels.push(&upper);
    fx.assert_no_plaintext(&sentinels).await;
}

#[tokio::test]
async fn cursors_give_other_roles_ciphertext_and_no_oracle() {
    let fx = Calmony::start();
    seed(&fx).await;
    let direct = fx.direct().await;
    let stored: Vec<Vec<Option<String>>> =
        q(&direct, "SELECT email::text, name FROM users ORDER BY id").await;

    // No access (dba) and write-only (signup): ciphertext as stored, the
    // blind index masked (NULL), as their SELECT gets it. They may not
    // name the blind index: `*` shows it (masked).
    for role in ["dba", "signup"] {
        let c = fx.app(role).await;
        let cols = "SELECT id, email, name FROM users ORDER BY id";
        let select = q(&c, cols).await;
        c.batch_execute("BEGIN").await.unwrap();
        // A cursor may not carry a blind index this role may not search
        // (`*` includes email_bidx): refused, unlike the SELECT (masked).
        let e = c
            .simple_query("DECLARE star CURSOR FOR SELECT * FROM users")
            .await
            .unwrap_err();
        assert_eq!(code(&e), "42501", "{role}: {}", err_text(&e));
        c.batch_execute("ROLLBACK").await.unwrap();
        c.batch_execute("BEGIN").await.unwrap();
        c.batch_execute(&format!("DECLARE c SCROLL CURSOR FOR {cols}"))
            .await
            .unwrap();
        let fetched = q(&c, "FETCH ALL FROM c").await;
        assert_eq!(fetched, select, "{role}");
        for (i, r) in fetched.iter().enumerate() {
            assert_eq!(r[1], stored[i][0], "{role}: email as stored");
            assert_eq!(r[2], stored[i][1], "{role}: name as stored");
            assert!(r[2].as_deref().unwrap().starts_with("pgv1:"), "{role}");
        }

        // The declared query keeps the SELECT's refusals: no equality on a
        // column the role may not search, no blind index carried out of
        // the masked path by a set operation or an expression.
        for sql in [
            "DECLARE x CURSOR FOR SELECT id FROM users WHERE email = 'cursor.one@example.com'",
            "DECLARE x CURSOR FOR SELECT id, email_bidx FROM users UNION SELECT id, email_bidx FROM users",
            "DECLARE x CURSOR FOR SELECT encode(email_bidx, 'hex') FROM users",
        ] {
            let plain = sql.split(" FOR ").nth(1).unwrap();
            let e_sel = c.simple_query(plain).await.unwrap_err();
            c.batch_execute("ROLLBACK").await.unwrap();
            c.batch_execute("BEGIN").await.unwrap();
            let e_cur = c.simple_query(sql).await.unwrap_err();
            assert_eq!(code(&e_cur), code(&e_sel), "{role}: {sql}");
            assert!(["42501", "0A000"].contains(&code(&e_cur).as_str()), "{sql}");
            c.batch_execute("ROLLBACK").await.unwrap();
            c.batch_execute("BEGIN").await.unwrap();
        }
        c.batch_execute("ROLLBACK").await.unwrap();
    }

    // search (support_agent on pay_customers.email): ciphertext, blind
    // index shown; read on name: plaintext.
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO pay_customers (org_id, email, name) VALUES (7, $1, $2)",
        &[&"tenant.cursor@example.com", &"Tenant Cursorina"],
    )
    .await
    .unwrap();
    let s = fx.app("support_agent").await;
    let want = q(&s, "SELECT email, email_bidx, name FROM pay_customers").await;
    assert!(want[0][1].is_some(), "search role sees the blind index");
    assert_eq!(want[0][2].as_deref(), Some("Tenant Cursorina"));
    s.batch_execute("BEGIN").await.unwrap();
    s.batch_execute("DECLARE c CURSOR FOR SELECT email, email_bidx, name FROM pay_customers")
        .await
        .unwrap();
    assert_eq!(q(&s, "FETCH ALL FROM c").await, want);
    // Its lookup through a cursor is rewritten to the blind index.
    s.batch_execute(
        "DECLARE l CURSOR FOR SELECT name FROM pay_customers WHERE email = ' TENANT.cursor@example.com'",
    )
    .await
    .unwrap();
    assert_eq!(
        q(&s, "FETCH ALL FROM l").await,
        vec![vec![Some("Tenant Cursorina".to_string())]]
    );
    s.batch_execute("COMMIT").await.unwrap();
    // Tenant table through a read role's cursor.
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("DECLARE t CURSOR FOR SELECT org_id, email, name FROM pay_customers")
        .await
        .unwrap();
    assert_eq!(
        q(&app, "FETCH ALL FROM t").await,
        vec![vec![
            Some("7".to_string()),
            Some("tenant.cursor@example.com".to_string()),
            Some("Tenant Cursorina".to_string())
        ]]
    );
    app.batch_execute("COMMIT").await.unwrap();

    let mut sentinels: Vec<&str> = EMAILS.to_vec();
    sentinels.extend(NAMES);
    sentinels.extend([
        "tenant.cursor@example.com",
        "Tenant Cursorina",
        "TENANT.cursor",
    ]);
    fx.assert_no_plaintext(&sentinels).await;
}

/// Protocol portals read a few rows at a time (Execute with a row limit,
/// PortalSuspended between them), as pgjdbc's `setFetchSize` and node's
/// `pg-cursor` do.
#[tokio::test]
async fn protocol_portals_with_a_row_limit_decrypt_each_batch() {
    let fx = Calmony::start();
    seed(&fx).await;
    let mut app = fx.app("calmony_app").await;
    let tx = app.transaction().await.unwrap();
    let st = tx
        .prepare("SELECT email, name FROM users WHERE id > $1 ORDER BY id")
        .await
        .unwrap();
    let portal = tx.bind(&st, &[&0i64]).await.unwrap();
    let mut got = vec![];
    loop {
        let batch = tx.query_portal(&portal, 2).await.unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 2);
        got.extend(
            batch
                .iter()
                .map(|r| vec![r.get::<_, Option<String>>(0), r.get::<_, Option<String>>(1)]),
        );
    }
    assert_eq!(got, expected(0..3));
    tx.commit().await.unwrap();

    // A portal abandoned after its first batch: what it decrypted is
    // audited all the same.
    let tx = app.transaction().await.unwrap();
    let st = tx
        .prepare("SELECT email FROM users ORDER BY id")
        .await
        .unwrap();
    let portal = tx.bind(&st, &[]).await.unwrap();
    let first = tx.query_portal(&portal, 1).await.unwrap();
    assert_eq!(first[0].get::<_, String>(0), EMAILS[0]);
    tx.rollback().await.unwrap();
    let audit = std::fs::read_to_string(fx.pv.dir().join("audit.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"command\":\"SUSPENDED\"") && l.contains("public.users.email")),
        "{audit}"
    );

    // Other roles: ciphertext and masked blind indexes, batch by batch.
    let mut dba = fx.app("dba").await;
    let tx = dba.transaction().await.unwrap();
    let st = tx.prepare("SELECT * FROM users ORDER BY id").await.unwrap();
    let portal = tx.bind(&st, &[]).await.unwrap();
    let mut n = 0;
    loop {
        let batch = tx.query_portal(&portal, 1).await.unwrap();
        if batch.is_empty() {
            break;
        }
        let email: Vec<u8> = batch[0].get(1);
        assert!(email.starts_with(b"pv"), "ciphertext");
        assert!(batch[0].get::<_, Option<Vec<u8>>>(2).is_none());
        n += 1;
    }
    assert_eq!(n, 3);
    tx.commit().await.unwrap();

    let mut sentinels: Vec<&str> = EMAILS.to_vec();
    sentinels.extend(NAMES);
    fx.assert_no_plaintext(&sentinels).await;
}

/// Writes through a cursor (`WHERE CURRENT OF`) are encrypted like any
/// UPDATE; a FETCH can never carry a value upstream.
#[tokio::test]
async fn updates_where_current_of_store_ciphertext() {
    let fx = Calmony::start();
    seed(&fx).await;
    let app = fx.app("calmony_app").await;
    app.batch_execute("BEGIN").await.unwrap();
    app.batch_execute("DECLARE u CURSOR FOR SELECT id, email FROM users ORDER BY id FOR UPDATE")
        .await
        .unwrap();
    q(&app, "FETCH 1 FROM u").await;
    let r = app
        .simple_query(
            "UPDATE users SET email = 'current.of.sentinel@example.com' WHERE CURRENT OF u",
        )
        .await;
    match r {
        Ok(_) => {
            app.batch_execute("COMMIT").await.unwrap();
            let back = q(&app, "SELECT email FROM users ORDER BY id LIMIT 1").await;
            assert_eq!(
                back[0][0].as_deref(),
                Some("current.of.sentinel@example.com")
            );
        }
        Err(e) => {
            assert!(
                ["42501", "0A000"].contains(&code(&e).as_str()),
                "{}",
                err_text(&e)
            );
            app.batch_execute("ROLLBACK").await.unwrap();
        }
    }
    let mut sentinels: Vec<&str> = EMAILS.to_vec();
    sentinels.push("current.of.sentinel");
    fx.assert_no_plaintext(&sentinels).await;
}
