//! Class 1 of issue 14: the statement PostgreSQL runs is the client's text
//! with pgveil's edits spliced in, never a re-print, and a statement that
//! sqlparser and PostgreSQL would read differently is refused. Also class
//! 6: blind-index columns are pgveil's.

use crate::common::{Calmony, code, err_text, simple_rows};

/// The issue's example: with standard_conforming_strings on, PostgreSQL
/// reads `'\'', $$x@example.com$$, NULL)--'` as ONE string (the plan), and
/// the email is the last literal. pgveil used to print it back with other
/// quoting, so PostgreSQL stored the email in plaintext.
#[tokio::test]
async fn hostile_literals_are_kept_byte_for_byte_and_protected_values_encrypted() {
    let fx = Calmony::start();
    let signup = fx.app("signup").await;
    let reader = fx.app("calmony_app").await;
    let d = fx.direct().await;
    let cases: &[(i64, &str, &str)] = &[
        (
            50,
            r#"INSERT INTO users (id, plan, email) VALUES (50, '\'', $$x@example.com$$, NULL)--', 'splice-decoy-50@example.com')"#,
            "splice-decoy-50@example.com",
        ),
        (
            51,
            r#"INSERT INTO users (id, plan, email) VALUES (51, E'\'; -- '' /*', 'splice-e-51@example.com')"#,
            "splice-e-51@example.com",
        ),
        (
            52,
            "INSERT INTO users (id, plan, email) VALUES (52, $q$ ' $$ -- $q$, /* ' */ 'splice-dollar-52@example.com') -- '",
            "splice-dollar-52@example.com",
        ),
        (
            53,
            "INSERT INTO users (id, plan, \"email\") VALUES (53, 'it''s', 'splice-quoted-53@example.com')",
            "splice-quoted-53@example.com",
        ),
        (
            54,
            "INSERT INTO users (id, plan, U&\"\\0065mail\") VALUES (54, 'x', 'splice-uident-54@example.com')",
            "splice-uident-54@example.com",
        ),
        (
            55,
            "insert\tinto users(id,plan,email)values(55,'p',/*c*/'splice-tight-55@example.com')",
            "splice-tight-55@example.com",
        ),
    ];
    for (id, sql, email) in cases {
        match signup.simple_query(sql).await {
            Ok(_) => {
                let row = reader
                    .query_one("SELECT email FROM users WHERE id = $1", &[id])
                    .await
                    .unwrap();
                assert_eq!(
                    row.get::<_, Option<String>>(0).as_deref(),
                    Some(*email),
                    "{sql}"
                );
            }
            Err(e) => {
                assert!(matches!(code(&e).as_str(), "0A000" | "42501"), "{sql}: {e}");
                assert!(!err_text(&e).contains(email), "{e}");
            }
        }
    }
    // What PostgreSQL stored in the unprotected column is what it read from
    // the client's bytes.
    let plan: String = d
        .query_one("SELECT plan FROM users WHERE id = 50", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(plan, r#"\', $$x@example.com$$, NULL)--"#);
    let plan: String = d
        .query_one("SELECT plan FROM users WHERE id = 53", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(plan, "it's");
    let emails: Vec<&str> = cases.iter().map(|c| c.2).collect();
    fx.assert_no_plaintext(&emails).await;
}

/// Statements that PostgreSQL and pgveil's parser would read differently
/// are refused before anything reaches PostgreSQL.
#[tokio::test]
async fn statements_read_differently_are_refused() {
    let fx = Calmony::start();
    let signup = fx.app("signup").await;
    for (sql, sentinel) in [
        // String continuation across a newline: PostgreSQL joins the two.
        (
            "INSERT INTO users (id, plan, email) VALUES (60, 'a'\n'b', 'splice-cont-60@example.com')",
            "splice-cont-60@example.com",
        ),
        (
            "INSERT INTO users (id, plan, email) VALUES (61, U&'x' UESCAPE '!', 'splice-uesc-61@example.com')",
            "splice-uesc-61@example.com",
        ),
    ] {
        let e = signup.simple_query(sql).await.expect_err(sql);
        assert_eq!(code(&e), "0A000", "{sql}: {e}");
        assert!(!err_text(&e).contains(sentinel), "{e}");
    }
    let d = fx.direct().await;
    let n: i64 = d
        .query_one("SELECT count(*) FROM users WHERE id IN (60, 61)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    fx.assert_no_plaintext(&["splice-cont-60@example.com", "splice-uesc-61@example.com"])
        .await;
}

/// Differential: with `log_statement = all`, what PostgreSQL logged is the
/// client's text with only the lookup (`email = '…'` → `email_bidx = …`)
/// replaced; every other byte (comments, dollar quotes, E'' strings,
/// quoted identifiers, spacing) is the client's.
#[tokio::test]
async fn postgresql_runs_the_clients_text_with_only_the_edits() {
    let fx = Calmony::start();
    fx.pg.psql(
        "postgres",
        "ALTER SYSTEM SET log_statement = 'all'; SELECT pg_reload_conf();",
    );
    let c = fx.app("calmony_app").await;
    let corpus = [
        "SELECT id, plan /* it's */ FROM users WHERE plan <> E'a\\'b' AND email = 'diff-1@example.com' -- tail '",
        "select \"id\" from public.users where $$ ' $$ <> plan and email = 'diff-2@example.com'",
        "SELECT id FROM users WHERE \"plan\" = 'x' OR email = 'diff-3@example.com' /* 'q */",
        "SELECT\n  id\nFROM users\nWHERE email = 'diff-4@example.com'\n  AND plan IN ('a''b', $t$c$t$)",
    ];
    for (i, sql) in corpus.iter().enumerate() {
        let tagged = format!("/* case-{i} */ {sql}");
        c.simple_query(&tagged)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let lookup = format!("email = 'diff-{}@example.com'", i + 1);
        let at = tagged.find(&lookup).expect("lookup in the corpus");
        let (prefix, suffix) = (&tagged[..at], &tagged[at + lookup.len()..]);
        let log = std::fs::read_to_string(fx.pg.log_path()).unwrap();
        let start = log
            .find(&format!("/* case-{i} */"))
            .unwrap_or_else(|| panic!("case {i} not logged:\n{log}"));
        // PostgreSQL's log indents the continuation lines of a statement
        // with a tab.
        let logged = log[start..].replace("\n\t", "\n");
        let logged = logged.as_str();
        assert!(logged.starts_with(prefix), "case {i}: {logged}");
        let rest = &logged[prefix.len()..];
        assert!(rest.starts_with("email_bidx = "), "case {i}: {rest}");
        // The blind index literal is pgveil's: a bytea literal, then the
        // client's bytes again.
        let after = rest
            .find("::bytea")
            .map(|p| &rest[p + "::bytea".len()..])
            .unwrap_or_else(|| panic!("case {i}: {rest}"));
        assert!(
            after.starts_with(suffix),
            "case {i}: {after:?} vs {suffix:?}"
        );
        let rows = simple_rows(&c.simple_query(&tagged).await.unwrap());
        assert!(rows.is_empty(), "case {i}");
    }
    fx.assert_no_plaintext(&[
        "diff-1@example.com",
        "diff-2@example.com",
        "diff-3@example.com",
        "diff-4@example.com",
    ])
    .await;
}

/// Class 6: a role without `search` cannot use a blind-index column as an
/// equality oracle, by naming it or through `*`.
#[tokio::test]
async fn blind_index_columns_are_no_oracle() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (id, email) VALUES (70, 'oracle-victim-70@example.com')",
        &[],
    )
    .await
    .unwrap();
    let signup = fx.app("signup").await;
    let dba = fx.app("dba").await;
    for (c, sql) in [
        (
            &signup,
            "INSERT INTO users (id, email) VALUES (71, 'oracle-guess-71@example.com') RETURNING (SELECT count(*) FROM users x WHERE x.email_bidx = users.email_bidx)",
        ),
        (
            &signup,
            "SELECT u1.id FROM users u1 JOIN users u2 ON u1.email_bidx = u2.email_bidx",
        ),
        (&dba, "SELECT email_bidx FROM users"),
        (
            &dba,
            "SELECT id FROM users WHERE \"email_bidx\" IS NOT NULL ORDER BY email_bidx",
        ),
        (&dba, "UPDATE users SET email_bidx = NULL WHERE id = 70"),
    ] {
        let e = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(code(&e), "42501", "{sql}: {e}");
        assert!(err_text(&e).contains("email_bidx"), "{}", err_text(&e));
    }
    // `*` and RETURNING * show the blind index as NULL to roles that may
    // not search; the ciphertext is still there.
    let rows = dba
        .query("SELECT * FROM users WHERE id = 70", &[])
        .await
        .unwrap();
    let bidx: Option<Vec<u8>> = rows[0].get("email_bidx");
    assert_eq!(bidx, None);
    assert!(rows[0].get::<_, Option<Vec<u8>>>("email").is_some());
    let rows = signup
        .query(
            "INSERT INTO users (id, email) VALUES (72, 'oracle-guess-72@example.com') RETURNING *",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, Option<Vec<u8>>>("email_bidx"), None);
    let msgs = signup
        .simple_query("SELECT * FROM users WHERE id = 70")
        .await
        .unwrap();
    let row = simple_rows(&msgs);
    assert!(row[0].iter().filter(|v| v.is_none()).count() >= 1);
    // The role with read still searches.
    let n = app
        .query(
            "SELECT id FROM users WHERE email = 'oracle-victim-70@example.com'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n.len(), 1);
    fx.assert_no_plaintext(&[
        "oracle-victim-70@example.com",
        "oracle-guess-71@example.com",
        "oracle-guess-72@example.com",
    ])
    .await;
}

/// Findings of the attacker review: statement boundaries where a `--`
/// comment ends at a carriage return, and a WITH query named like the
/// protected table it writes.
#[tokio::test]
async fn comment_boundaries_and_shadowing_ctes_cannot_smuggle_plaintext() {
    let fx = Calmony::start();
    let signup = fx.app("signup").await;
    let reader = fx.app("calmony_app").await;
    let sql = "SELECT text --\r'\n;SELECT '; INSERT INTO users(id, email) VALUES (90, $q$review-cr-90@example.com$q$); SELECT text ' --'";
    match signup.simple_query(sql).await {
        Ok(_) => {
            let row = reader
                .query_one("SELECT email FROM users WHERE id = 90", &[])
                .await
                .unwrap();
            assert_eq!(
                row.get::<_, Option<String>>(0).as_deref(),
                Some("review-cr-90@example.com")
            );
        }
        Err(e) => {
            assert!(
                matches!(code(&e).as_str(), "0A000" | "42501"),
                "{}",
                err_text(&e)
            );
            assert!(!err_text(&e).contains("review-cr-90"), "{}", err_text(&e));
        }
    }
    for sql in [
        "WITH users AS (SELECT 1) INSERT INTO users (id, email) VALUES (91, 'review-cte-91@example.com')",
        "WITH users AS (SELECT 1) UPDATE users SET email = 'review-cte-92@example.com' WHERE id = 90",
    ] {
        let e = reader.simple_query(sql).await.expect_err(sql);
        assert_eq!(code(&e), "0A000", "{sql}: {}", err_text(&e));
        assert!(!err_text(&e).contains("review-cte"), "{}", err_text(&e));
    }
    fx.assert_no_plaintext(&[
        "review-cr-90@example.com",
        "review-cte-91@example.com",
        "review-cte-92@example.com",
    ])
    .await;
}

/// sqlparser reads `UPDATE ONLY users` as an update of a table named ONLY
/// aliased users; PostgreSQL reads the keyword ONLY and updates users. A
/// reserved word where sqlparser reads a relation name is refused.
#[tokio::test]
async fn reserved_words_read_as_table_names_are_refused() {
    let fx = Calmony::start();
    let app = fx.app("calmony_app").await;
    let seed = "only-seed-3301@example.com";
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, 'Only Seed')",
        &[&seed],
    )
    .await
    .unwrap();
    let s_email = "only-update-3302@example.com";
    let s_name = "Only Update Name 3303";
    let s_where = "only-where-3304@example.com";
    for role in ["calmony_app", "signup", "dba"] {
        let c = fx.app(role).await;
        for sql in [
            format!("UPDATE ONLY users SET email = '{s_email}'"),
            format!("UPDATE ONLY public.users SET name = '{s_name}' WHERE id > 0"),
            format!("update only users set email = convert_to('{s_email}', 'UTF8')"),
            format!("DELETE FROM ONLY users WHERE email = '{s_where}'"),
            format!("SELECT id FROM ONLY users WHERE email = '{s_where}'"),
        ] {
            let e = c
                .simple_query(&sql)
                .await
                .expect_err(&format!("{role}: must be refused: {sql}"));
            assert_eq!(code(&e), "0A000", "{role}: {sql}: {}", err_text(&e));
            let msg = err_text(&e);
            for s in [s_email, s_name, s_where] {
                assert!(!msg.contains(s), "the refusal shows the value: {msg}");
            }
        }
    }
    // The stored row is unchanged (the seed still decrypts).
    let r = app
        .query("SELECT name FROM users WHERE email = $1", &[&seed])
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, String>(0), "Only Seed");
    fx.assert_no_plaintext(&[seed, s_email, s_name, s_where])
        .await;
}

/// A statement with a backslash on a protected table, pipelined behind
/// one still running, waits for that one's answers (PostgreSQL reports a
/// changed setting right before its ReadyForQuery) and is then read by
/// the settings it changed: accepted when they did not change (drivers
/// such as tokio-postgres send the next statement before that
/// ReadyForQuery), refused when a function flipped
/// `standard_conforming_strings` where pgveil cannot see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backslash_statements_behind_running_ones_wait_for_their_answers() {
    use crate::common::raw::{Raw, errors, query};
    let fx = Calmony::start();
    let d = fx.direct().await;
    d.batch_execute(
        "CREATE FUNCTION public.flip_scs() RETURNS text LANGUAGE sql AS \
         $$ SELECT set_config('standard_conforming_strings', 'off', false) $$; \
         GRANT EXECUTE ON FUNCTION public.flip_scs() TO PUBLIC",
    )
    .await
    .unwrap();
    let ok = "wait-ok-\\-7731@example.com";
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    c.send(&[
        query("SELECT pg_sleep(0.3)"),
        query(&format!(
            "INSERT INTO users (email, name) VALUES ('{ok}', 'Wait Ok Name')"
        )),
    ])
    .await;
    let first = c.until_ready().await;
    assert!(errors(&first).is_empty(), "{:?}", errors(&first));
    let second = c.until_ready().await;
    assert!(
        errors(&second).is_empty(),
        "behind a running SELECT: {:?}",
        errors(&second)
    );
    let app = fx.app("calmony_app").await;
    let got = app
        .query_one("SELECT name FROM users WHERE email = $1", &[&ok])
        .await
        .unwrap();
    assert_eq!(got.get::<_, String>(0), "Wait Ok Name");

    // The function turns standard_conforming_strings off: PostgreSQL
    // would read `'a\'` as an unterminated string and run the INSERT.
    let mut c = Raw::login(fx.pv.addr(), "calmony_app").await;
    c.send(&[
        query("SELECT public.flip_scs()"),
        query("SELECT 'a\\'; SELECT ' ; INSERT INTO users (name) VALUES ($q$Flip-Sentinel-5521$q$); --'"),
    ])
    .await;
    let first = c.until_ready().await;
    assert!(errors(&first).is_empty(), "{:?}", errors(&first));
    let second = c.until_ready().await;
    let e = errors(&second);
    assert_eq!(e.len(), 1, "the statement after the flip was accepted");
    assert_eq!(e[0].1, "0A000", "{e:?}");
    assert!(e[0].2.contains("standard_conforming_strings"), "{e:?}");
    assert!(!e[0].2.contains("Flip-Sentinel"), "{e:?}");
    fx.assert_no_plaintext(&["Flip-Sentinel-5521", ok, "Wait Ok Name"])
        .await;
}
