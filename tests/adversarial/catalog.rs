//! The catalog pgveil plans against: children and partitions of protected
//! tables, temporary objects, another session's `search_path` and
//! operators, view columns pgveil cannot map, and tenant ids spelled in
//! several ways. Every attack is followed by the plaintext scan.

use std::time::Duration;

use crate::common::calmony::POLICY;
use crate::common::*;

/// SQLSTATE and message of a server error (panics on other errors).
fn db_err(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// The statement must be refused with `sqlstate`, by a message that does
/// not contain `secret` and does contain every one of `names`.
async fn refused(
    c: &tokio_postgres::Client,
    sql: &str,
    sqlstate: &str,
    secret: &str,
    names: &[&str],
) -> String {
    let e = c
        .simple_query(sql)
        .await
        .expect_err(&format!("must be refused: {sql}"));
    let (code, msg) = db_err(&e);
    assert_eq!(code, sqlstate, "{sql}: {msg}");
    assert!(!msg.contains(secret), "the refusal shows the value: {msg}");
    for n in names {
        assert!(msg.contains(n), "{sql}: the refusal should name {n}: {msg}");
    }
    msg
}

/// Raw stored value of `col` in the row of `table` with `id` (superuser,
/// straight to PostgreSQL), as hex.
async fn stored(fx: &Calmony, table: &str, col: &str, id: i64) -> Option<String> {
    let d = fx.direct().await;
    let r = d
        .query_one(
            &format!("SELECT encode({col}::bytea, 'hex') FROM {table} WHERE id = $1"),
            &[&id],
        )
        .await
        .unwrap();
    r.get(0)
}

const ENVELOPE_HEX: &str = "707601"; // "pv" + format version 1

#[tokio::test]
async fn children_of_a_protected_table_are_planned_as_the_parent() {
    let fx = Calmony::builder()
        .extra_sql(
            "CREATE TABLE public.users_inh () INHERITS (public.users);
             CREATE TABLE public.users_grand () INHERITS (public.users_inh);
             CREATE TABLE public.users_wide (extra text) INHERITS (public.users);",
        )
        .start();
    let s_child = "attack-inh-child-5521@example.com";
    let s_grand = "attack-inh-grand-5522@example.com";
    let s_signup = "attack-inh-signup-5523@example.com";
    let s_wide = "attack-inh-wide-5524@example.com";
    let s_dba = "attack-inh-dba-5525@example.com";
    let s_late = "attack-inh-late-5526@example.com";
    let app = fx.app("calmony_app").await;

    // Writes naming the child and the grandchild are encrypted with the
    // parent's columns, blind index maintained.
    let id_child: i64 = app
        .query_one(
            "INSERT INTO users_inh (email, name) VALUES ($1, 'Inh Child') RETURNING id",
            &[&s_child],
        )
        .await
        .unwrap()
        .get(0);
    let msgs = app
        .simple_query(&format!(
            "INSERT INTO public.users_grand (email, name) VALUES ('{s_grand}', 'Inh Grand') RETURNING id"
        ))
        .await
        .unwrap();
    let id_grand: i64 = simple_rows(&msgs)[0][0].as_ref().unwrap().parse().unwrap();
    for (table, id) in [("users_inh", id_child), ("users_grand", id_grand)] {
        let email = stored(&fx, table, "email", id).await.unwrap();
        assert!(email.starts_with(ENVELOPE_HEX), "{table}: {email}");
        assert!(
            stored(&fx, table, "email_bidx", id).await.is_some(),
            "{table}: blind index not maintained"
        );
    }

    // Read through the parent (RowDescription names the parent): decrypts
    // rows stored in children, lookups find them by blind index.
    let r = app
        .query(
            "SELECT email, name FROM users WHERE email = $1",
            &[&s_grand],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, String>(0), s_grand);
    assert_eq!(r[0].get::<_, String>(1), "Inh Grand");
    // Read naming the child (RowDescription names the child): decrypts.
    let r = app
        .query(
            "SELECT email, name FROM users_inh WHERE email = $1",
            &[&s_child],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, String>(0), s_child);
    let msgs = app
        .simple_query(&format!(
            "SELECT email FROM users_grand WHERE email = '{s_grand}'"
        ))
        .await
        .unwrap();
    assert_eq!(simple_rows(&msgs), vec![vec![Some(s_grand.to_string())]]);

    // A write-only role writes the child encrypted, and cannot look up.
    let signup = fx.app("signup").await;
    signup
        .execute("INSERT INTO users_inh (email) VALUES ($1)", &[&s_signup])
        .await
        .unwrap();
    refused(
        &signup,
        &format!("SELECT id FROM users_inh WHERE email = '{s_signup}'"),
        "42501",
        s_signup,
        &[],
    )
    .await;
    // A role without access cannot store plaintext in the child.
    let dba = fx.app("dba").await;
    refused(
        &dba,
        &format!("INSERT INTO users_inh (email) VALUES ('{s_dba}')"),
        "42501",
        s_dba,
        &[],
    )
    .await;

    // A child whose columns are not the parent's is refused, naming the
    // parent and the policy change.
    refused(
        &app,
        &format!("INSERT INTO users_wide (email, extra) VALUES ('{s_wide}', 'x')"),
        "0A000",
        s_wide,
        &[
            "public.users_wide",
            "public.users",
            "add public.users_wide to the policy",
        ],
    )
    .await;
    refused(
        &app,
        &format!("SELECT id FROM users_wide WHERE email = '{s_wide}'"),
        "0A000",
        s_wide,
        &["public.users_wide"],
    )
    .await;

    // A child created after the catalog was loaded (DDL through pgveil):
    // the reloaded catalog knows it.
    let owner = fx.app("postgres").await;
    owner
        .simple_query("CREATE TABLE public.users_late () INHERITS (public.users)")
        .await
        .unwrap();
    owner
        .simple_query("GRANT ALL ON public.users_late TO PUBLIC")
        .await
        .unwrap();
    let app2 = fx.app("calmony_app").await;
    let id_late: i64 = app2
        .query_one(
            "INSERT INTO users_late (email, name) VALUES ($1, 'Late') RETURNING id",
            &[&s_late],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        stored(&fx, "users_late", "email", id_late)
            .await
            .unwrap()
            .starts_with(ENVELOPE_HEX)
    );
    let r = app2
        .query("SELECT email FROM users WHERE email = $1", &[&s_late])
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, String>(0), s_late);

    fx.assert_no_plaintext(&[s_child, s_grand, s_signup, s_wide, s_dba, s_late])
        .await;
}

#[tokio::test]
async fn partitions_and_partitions_of_partitions_are_protected() {
    let policy = format!(
        "{POLICY}
  public.events:
    columns:
      email:
        type: text
        blind_index: {{ column: email_bidx, normalize: [trim, lowercase] }}
        access: {{ billing_app: read }}
"
    );
    let fx = Calmony::builder()
        .policy(&policy)
        .extra_sql(
            "CREATE TABLE public.events (id bigint, org text, email bytea, email_bidx bytea)
                 PARTITION BY LIST (org);
             CREATE TABLE public.events_a PARTITION OF public.events FOR VALUES IN ('a')
                 PARTITION BY RANGE (id);
             CREATE TABLE public.events_a1 PARTITION OF public.events_a FOR VALUES FROM (0) TO (1000);
             CREATE TABLE public.events_b PARTITION OF public.events FOR VALUES IN ('b');",
        )
        .start();
    let s_parent = "attack-part-parent-6631@example.com";
    let s_leaf = "attack-part-leaf-6632@example.com";
    let s_mid = "attack-part-mid-6633@example.com";
    let s_dba = "attack-part-dba-6634@example.com";
    let app = fx.app("calmony_app").await;
    // Through the root (routed to a leaf), naming a leaf, naming a middle
    // partition.
    app.execute(
        "INSERT INTO events (id, org, email) VALUES (1, 'a', $1)",
        &[&s_parent],
    )
    .await
    .unwrap();
    app.simple_query(&format!(
        "INSERT INTO events_a1 (id, org, email) VALUES (2, 'a', '{s_leaf}')"
    ))
    .await
    .unwrap();
    app.execute(
        "INSERT INTO public.events_b (id, org, email) VALUES (3, 'b', $1)",
        &[&s_mid],
    )
    .await
    .unwrap();
    for id in [1i64, 2, 3] {
        let email = stored(&fx, "events", "email", id).await.unwrap();
        assert!(email.starts_with(ENVELOPE_HEX), "{id}: {email}");
        assert!(stored(&fx, "events", "email_bidx", id).await.is_some());
    }
    // Read through the root, a middle partition and a leaf.
    for (sql, want) in [
        ("SELECT email FROM events WHERE email = $1", s_leaf),
        ("SELECT email FROM events_a WHERE email = $1", s_parent),
        ("SELECT email FROM events_a1 WHERE email = $1", s_leaf),
        ("SELECT email FROM events_b WHERE email = $1", s_mid),
    ] {
        let r = app.query(sql, &[&want]).await.unwrap();
        assert_eq!(r.len(), 1, "{sql}");
        assert_eq!(r[0].get::<_, String>(0), want, "{sql}");
    }
    // No plaintext into a partition from a role without access; no lookup.
    let dba = fx.app("dba").await;
    refused(
        &dba,
        &format!("INSERT INTO events_a1 (id, org, email) VALUES (4, 'a', '{s_dba}')"),
        "42501",
        s_dba,
        &[],
    )
    .await;
    refused(
        &dba,
        &format!("SELECT id FROM events_a WHERE email = '{s_dba}'"),
        "42501",
        s_dba,
        &[],
    )
    .await;
    fx.assert_no_plaintext(&[s_parent, s_leaf, s_mid, s_dba])
        .await;
}

#[tokio::test]
async fn temporary_objects_over_protected_tables_are_refused() {
    let fx = Calmony::start();
    let secret = "attack-temp-obj-7741@example.com";
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, 'Temp')",
        &[&secret],
    )
    .await
    .unwrap();
    for sql in [
        "CREATE TEMP VIEW tv AS SELECT id, email FROM users",
        "CREATE VIEW pg_temp.tv2 AS SELECT id, email, email_bidx FROM public.users",
        "CREATE TEMPORARY TABLE tt AS SELECT id, email FROM users",
        "SELECT id, email INTO TEMP tt2 FROM users",
        "CREATE TEMP TABLE tchild () INHERITS (users)",
    ] {
        refused(&app, sql, "0A000", secret, &["temporary", "permanent"]).await;
    }
    // Nothing was created: a write through such a view would have stored
    // plaintext, since pgveil does not see it.
    let r = app
        .query(
            "SELECT count(*) FROM pg_catalog.pg_class WHERE relpersistence = 't'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, i64>(0), 0);
    fx.assert_no_plaintext(&[secret]).await;
}

/// Session A creates a temporary view (out of pgveil's sight, by dynamic
/// SQL) with the name of a permanent view over `users`, and makes the
/// catalog reload in its session. Session B, opened afterwards, gets the
/// shared catalog: it must not know A's temporary view.
#[tokio::test]
async fn another_sessions_temp_view_does_not_poison_the_catalog() {
    let fx = Calmony::builder()
        .extra_sql(
            "CREATE VIEW public.user_mail AS SELECT id, email, email_bidx FROM public.users;
             CREATE TABLE public.notes (id bigint, body text);",
        )
        .start();
    let secret = "attack-tempview-8851@example.com";
    let a = fx.app("calmony_app").await;
    a.simple_query(
        "DO $$ BEGIN
           EXECUTE 'CREATE TEMP VIEW ' || 'user_' || 'mail AS SELECT id, name AS email, email_bidx FROM pub' || 'lic.us' || 'ers';
           EXECUTE 'CREATE TEMP VIEW ' || 'no' || 'tes AS SELECT id, email AS body FROM pub' || 'lic.us' || 'ers';
         END $$",
    )
    .await
    .unwrap();
    // DDL through pgveil invalidates the catalog; A's next statement
    // reloads it on A's connection.
    let owner = fx.app("postgres").await;
    owner
        .simple_query("COMMENT ON TABLE public.users IS 'catalog reload'")
        .await
        .unwrap();
    a.simple_query("SELECT count(*) FROM public.users")
        .await
        .unwrap();
    // B: the permanent view works (lookup through it, decrypted), the
    // unrelated table `notes` is plain.
    let b = fx.app("calmony_app").await;
    b.execute(
        "INSERT INTO users (email, name) VALUES ($1, 'Temp View')",
        &[&secret],
    )
    .await
    .unwrap();
    let r = b
        .query("SELECT email FROM user_mail WHERE email = $1", &[&secret])
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, String>(0), secret);
    refused(
        &b,
        &format!("INSERT INTO user_mail (email) VALUES ('{secret}')"),
        "0A000",
        secret,
        &["public.user_mail"],
    )
    .await;
    b.execute("INSERT INTO notes (id, body) VALUES (1, 'plain note')", &[])
        .await
        .unwrap();
    let r = b.query("SELECT body FROM notes", &[]).await.unwrap();
    assert_eq!(r[0].get::<_, String>(0), "plain note");
    fx.assert_no_plaintext(&[secret]).await;
}

/// Session A logs in with `search_path` pointing at a schema holding a
/// decoy `users` table and an `=` operator on `oid` that is never true,
/// and the catalog is (re)loaded in A's session. The catalog must still
/// be the real one: B's writes through a permanent view over `users` are
/// refused (they would store plaintext if the view were unknown), lookups
/// work.
#[tokio::test]
async fn search_path_and_operator_decoys_do_not_poison_the_catalog() {
    let fx = Calmony::builder()
        .extra_sql(
            "CREATE VIEW public.user_mail AS SELECT id, email, email_bidx FROM public.users;
             CREATE SCHEMA decoy;
             CREATE TABLE decoy.users (id bigint, email text, email_bidx text, name text);
             CREATE TABLE decoy.user_mail (id bigint, email text);
             CREATE FUNCTION decoy.never(oid, oid) RETURNS boolean
                 LANGUAGE sql IMMUTABLE AS 'SELECT false';
             CREATE OPERATOR decoy.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = decoy.never);
             GRANT USAGE ON SCHEMA decoy TO PUBLIC;",
        )
        .start();
    let secret = "attack-searchpath-9961@example.com";
    let secret_view = "attack-searchpath-view-9962@example.com";
    let mut cfg = pg_config(fx.pv.port(), "calmony_app", None, "app");
    cfg.options("-c search_path=decoy,pg_catalog,public");
    let a = connect_session(&cfg, None).await.unwrap();
    // Check the decoys are live in A's session.
    let r = a
        .client
        .simple_query("SELECT count(*) FROM pg_catalog.pg_class c WHERE c.oid = c.oid")
        .await
        .unwrap();
    assert_eq!(simple_rows(&r), vec![vec![Some("0".to_string())]]);
    // Force a reload of the catalog on A's connection.
    let owner = fx.app("postgres").await;
    owner
        .simple_query("COMMENT ON TABLE public.users IS 'catalog reload'")
        .await
        .unwrap();
    a.client
        .simple_query("SELECT count(*) FROM public.users")
        .await
        .unwrap();

    let b = fx.app("calmony_app").await;
    b.execute(
        "INSERT INTO users (email, name) VALUES ($1, 'Search Path')",
        &[&secret],
    )
    .await
    .unwrap();
    let r = b
        .query("SELECT email FROM user_mail WHERE email = $1", &[&secret])
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, String>(0), secret);
    for sql in [
        format!("INSERT INTO user_mail (id, email) VALUES (77, '{secret_view}')"),
        format!("UPDATE public.user_mail SET email = '{secret_view}' WHERE id = 1"),
    ] {
        refused(&b, &sql, "0A000", secret_view, &["public.user_mail"]).await;
    }
    fx.assert_no_plaintext(&[secret, secret_view]).await;
}

#[tokio::test]
async fn view_columns_pgveil_cannot_map_are_protected_unknown() {
    let fx = Calmony::builder()
        .extra_sql(
            "CREATE VIEW public.contact_union AS
                 SELECT id, email FROM public.users
                 UNION ALL SELECT id, email FROM public.pay_customers;
             CREATE VIEW public.user_rows AS SELECT u.id, u AS r FROM public.users u;
             CREATE VIEW public.user_expr AS SELECT id, lower(name) AS lname,
                 coalesce(email, email_bidx) AS mail FROM public.users;",
        )
        .start();
    let secret = "attack-unmapped-1071@example.com";
    let probe = "attack-unmapped-probe-1072@example.com";
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, 'Unmapped Name')",
        &[&secret],
    )
    .await
    .unwrap();
    for role in ["calmony_app", "dba"] {
        let c = fx.app(role).await;
        for sql in [
            format!("SELECT id FROM contact_union WHERE email = '{probe}'"),
            format!("SELECT id FROM public.contact_union WHERE email IN ('{probe}')"),
            format!("SELECT id FROM user_expr WHERE lname = '{probe}'"),
            format!("SELECT id FROM user_expr WHERE mail = '{probe}'::bytea"),
            format!("SELECT id FROM user_rows WHERE (r).email = '{probe}'"),
            format!("SELECT id FROM (SELECT * FROM contact_union) s WHERE s.email = '{probe}'"),
            format!(
                "INSERT INTO users (email) SELECT email FROM contact_union WHERE id = 1 AND '{probe}' <> ''"
            ),
            "SELECT id FROM contact_union ORDER BY email".to_string(),
        ] {
            let e = c
                .simple_query(&sql)
                .await
                .expect_err(&format!("{role}: must be refused: {sql}"));
            let (code, msg) = db_err(&e);
            assert!(
                code == "0A000" || code == "42501",
                "{role}: {sql}: {code} {msg}"
            );
            assert!(!msg.contains(probe) && !msg.contains(secret), "{msg}");
        }
    }
    // Reading such a column is allowed, as stored: ciphertext, never
    // decrypted (pgveil cannot tell which column's key it needs).
    let r = app
        .simple_query("SELECT email FROM contact_union")
        .await
        .unwrap();
    let rows = simple_rows(&r);
    assert_eq!(rows.len(), 1);
    let shown = rows[0][0].clone().unwrap();
    assert!(shown.starts_with("\\x7076"), "{shown}");
    assert!(!shown.contains(secret));
    fx.assert_no_plaintext(&[secret, probe]).await;
}

/// `'042'`, `' 42'`, `42` and `0042` in COPY are one tenant of a `bigint`
/// tenant column: one key, and `pgveil shred --tenant 42` makes every value
/// unreadable, including keys stored under another spelling by earlier
/// versions.
#[tokio::test]
async fn tenant_ids_are_canonical_before_they_select_a_key() {
    let fx = Calmony::builder().cache_ttl("1s").start();
    let s_lit = "attack-tenant-lit-2081@example.com";
    let s_space = "attack-tenant-space-2082@example.com";
    let s_param = "attack-tenant-param-2083@example.com";
    let s_copy = "attack-tenant-copy-2084@example.com";
    let app = fx.app("calmony_app").await;
    app.simple_query(&format!(
        "INSERT INTO pay_customers (org_id, email) VALUES ('042', '{s_lit}')"
    ))
    .await
    .unwrap();
    app.simple_query(&format!(
        "INSERT INTO pay_customers (org_id, email) VALUES (' 42', '{s_space}')"
    ))
    .await
    .unwrap();
    app.execute(
        "INSERT INTO pay_customers (org_id, email) VALUES ($1, $2)",
        &[&42i64, &s_param],
    )
    .await
    .unwrap();
    {
        use futures::SinkExt;
        let sink = app
            .copy_in("COPY pay_customers (org_id, email) FROM STDIN")
            .await
            .unwrap();
        let mut sink = Box::pin(sink);
        sink.send(bytes::Bytes::from(format!("0042\t{s_copy}\n")))
            .await
            .unwrap();
        sink.as_mut().finish().await.unwrap();
    }
    // Every row decrypts, with and without the tenant column in the result.
    let r = app
        .query(
            "SELECT org_id, email FROM pay_customers WHERE org_id = 42 ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<String> = r.iter().map(|r| r.get::<_, String>(1)).collect();
    assert_eq!(got, vec![s_lit, s_space, s_param, s_copy]);
    // One key family for the tenant, under its canonical id.
    let keys = fx.pg.connect("postgres", None, "pgveil_keys").await;
    let r = keys
        .query(
            "SELECT tenant FROM pgveil_key_families WHERE scope = 'public.pay_customers' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let tenants: Vec<String> = r.iter().map(|r| r.get(0)).collect();
    assert_eq!(tenants, vec!["42".to_string()]);
    // A value an earlier version wrote with the tenant as the client spelled
    // it (`042`): its own key family and associated data. It still reads
    // through pgveil, with and without the tenant column in the result.
    let s_legacy = "attack-tenant-legacy-2085@example.com";
    {
        use ::pgveil::crypto::{ColumnContext, PgType, envelope};
        use ::pgveil::keys::{KeyManager, KeyManagerOptions, Keystore, LocalProvider};
        let provider = LocalProvider::new(vec![(
            "k1".to_string(),
            zeroize::Zeroizing::new([0x11; 32]),
        )])
        .unwrap();
        let km = KeyManager::new(
            std::sync::Arc::new(provider),
            Keystore::new_no_tls(&fx.pg.url("postgres", "pgveil_keys")).unwrap(),
            KeyManagerOptions::default(),
        );
        let ctx =
            ColumnContext::new("public", "pay_customers", "email", PgType::Text).with_tenant("042");
        let (key, dek) = km.encryption_key(&ctx).await.unwrap();
        let env = envelope::encrypt(&dek, &key, &ctx, s_legacy.as_bytes()).unwrap();
        fx.direct()
            .await
            .execute(
                "INSERT INTO pay_customers (org_id, email) VALUES (42, $1)",
                &[&env],
            )
            .await
            .unwrap();
    }
    let r = app
        .query(
            "SELECT org_id, email FROM pay_customers WHERE org_id = 42 ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 5);
    assert_eq!(r[4].get::<_, String>(1), s_legacy);
    let r = app
        .query(
            "SELECT email FROM pay_customers WHERE org_id = 42 ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r[4].get::<_, String>(0), s_legacy);
    // Shredding 42 destroys the keys of both spellings.
    let out = fx.run(&["shred", "--tenant", "42", "--yes"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("destroyed 2 data key version"), "{text}");
    let r = keys
        .query(
            "SELECT count(*) FROM pgveil_data_keys d JOIN pgveil_key_families f USING (key_id)
             WHERE f.scope = 'public.pay_customers' AND d.destroyed_at IS NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, i64>(0), 0);
    // Once pgveil's key cache (1 s) has expired, nothing of tenant 42 reads.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match app
            .query("SELECT email FROM pay_customers WHERE org_id = 42", &[])
            .await
        {
            Err(e) => {
                let (_, msg) = db_err(&e);
                assert!(msg.contains("key destroyed"), "{msg}");
                assert!(!msg.contains("attack-tenant"), "{msg}");
                break;
            }
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "tenant 42 still readable after shred"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    fx.assert_no_plaintext(&[s_lit, s_space, s_param, s_copy])
        .await;
}

#[tokio::test]
async fn parents_of_protected_tables_are_refused() {
    // public.users_all: an unprotected partitioned parent whose (default)
    // partition is the protected public.users; public.contacts: an
    // inheritance parent of public.pay_payment_methods; views over both.
    let fx = Calmony::builder()
        .extra_sql(
            "CREATE TABLE public.users_all (LIKE public.users INCLUDING DEFAULTS)
                 PARTITION BY LIST (plan);
             ALTER TABLE public.users_all ATTACH PARTITION public.users DEFAULT;
             CREATE TABLE public.contacts (billing_name bytea);
             ALTER TABLE public.pay_payment_methods INHERIT public.contacts;
             CREATE VIEW public.all_users AS SELECT * FROM public.users_all;
             CREATE VIEW public.all_contacts AS SELECT billing_name FROM public.contacts;",
        )
        .start();
    let s_ins = "attack-parent-insert-8811@example.com";
    let s_upd = "attack-parent-update-8812@example.com";
    let s_view = "attack-parent-view-8813@example.com";
    let s_copy = "attack-parent-copy-8814@example.com";
    let s_inh = "Attack Parent Inherit 8815";
    let s_seed = "attack-parent-seed-8816@example.com";
    let app = fx.app("calmony_app").await;
    // A legitimate row through the protected partition itself.
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, 'Seed')",
        &[&s_seed],
    )
    .await
    .unwrap();
    let dba = fx.app("dba").await;
    for c in [&app, &dba] {
        for sql in [
            format!("INSERT INTO users_all (email, name) VALUES ('{s_ins}', 'x')"),
            format!(
                "INSERT INTO public.users_all (email, plan) VALUES (decode('{}', 'hex'), 'free')",
                hex::encode(s_ins)
            ),
            format!("UPDATE users_all SET name = '{s_upd}'"),
            format!("UPDATE ONLY users_all SET email = '{s_upd}'"),
            format!("INSERT INTO all_users (email, name) VALUES ('{s_view}', 'v')"),
            format!("UPDATE all_users SET name = '{s_view}'"),
            format!("SELECT id FROM users_all WHERE email = '{s_view}'"),
            "SELECT email_bidx FROM users_all".to_string(),
            "SELECT * FROM users_all".to_string(),
            "SELECT * FROM all_users".to_string(),
            format!("UPDATE contacts SET billing_name = '{s_inh}'"),
            format!("INSERT INTO all_contacts (billing_name) VALUES ('{s_inh}')"),
            "SELECT billing_name FROM contacts".to_string(),
        ] {
            let secret = [s_ins, s_upd, s_view, s_inh]
                .into_iter()
                .find(|s| sql.contains(s))
                .unwrap_or("no-secret-in-this-statement");
            // Parents are named in the refusal (views over them refuse
            // their columns as unmappable); a role that may not search is
            // refused a blind index first.
            let code = if sql.contains("email_bidx") && !std::ptr::eq(c, &app) {
                "42501"
            } else {
                "0A000"
            };
            let msg = refused(c, &sql, code, secret, &[]).await;
            assert!(
                msg.contains("parent of protected table")
                    || msg.contains("reserved word ONLY")
                    || msg.contains("blind index")
                    || sql.contains(" all_"),
                "{sql}: {msg}"
            );
        }
    }
    let owner = fx.app("postgres").await;
    let Err(e) = owner
        .copy_in::<_, bytes::Bytes>("COPY users_all (email, name) FROM STDIN")
        .await
    else {
        panic!("COPY into a parent must be refused");
    };
    let (code, msg) = db_err(&e);
    assert_eq!(code, "0A000", "{msg}");
    assert!(msg.contains("public.users_all"), "{msg}");
    // The seed is still there and decrypts through the partition.
    let r = app
        .query("SELECT name FROM users WHERE email = $1", &[&s_seed])
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    // policy check names both parents.
    let out = fx.run(&[
        "policy",
        "check",
        "--database",
        &fx.pg.url("postgres", "app"),
    ]);
    assert_eq!(out.status.code(), Some(1), "policy check must fail");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for p in ["public.users_all", "public.contacts"] {
        assert!(text.contains(p), "policy check should name {p}: {text}");
    }
    fx.assert_no_plaintext(&[s_ins, s_upd, s_view, s_copy, s_inh, s_seed])
        .await;
}

#[tokio::test]
async fn whole_row_references_are_refused() {
    let fx = Calmony::start();
    let secret = "attack-whole-row-9921@example.com";
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, 'Whole Row')",
        &[&secret],
    )
    .await
    .unwrap();
    let signup = fx.app("signup").await;
    let dba = fx.app("dba").await;
    for c in [&app, &signup, &dba] {
        for sql in [
            "SELECT to_jsonb(u) ->> 'email_bidx' FROM users u".to_string(),
            "SELECT u FROM users u".to_string(),
            "SELECT u.to_jsonb FROM users u".to_string(),
            "SELECT users.row_to_json FROM users".to_string(),
            "SELECT (u).email_bidx FROM users u".to_string(),
            "SELECT u::text FROM users u".to_string(),
            "SELECT ROW(u.*) FROM users u".to_string(),
            format!("SELECT id FROM users u WHERE (u).email = '{secret}'"),
            format!("SELECT id FROM users u WHERE u.to_jsonb ->> 'email' = '{secret}'"),
            "UPDATE users u SET plan = plan RETURNING to_jsonb(u)".to_string(),
        ] {
            // Naming the blind index is refused first (42501) for roles
            // that may not search.
            let code = if sql.contains(").email_bidx") && !std::ptr::eq(c, &app) {
                "42501"
            } else {
                "0A000"
            };
            let msg = refused(c, &sql, code, secret, &[]).await;
            assert!(
                msg.contains("whole-row")
                    || msg.contains("blind index")
                    || msg.contains("over all columns of u"),
                "{sql}: {msg}"
            );
        }
    }
    fx.assert_no_plaintext(&[secret]).await;
}

/// A view can show a blind index under another name, or inside a column
/// pgveil cannot map: neither reaches a role that may not search it.
#[tokio::test]
async fn views_show_blind_indexes_only_to_roles_that_may_search() {
    let fx = Calmony::builder()
        .extra_sql(
            "CREATE VIEW public.user_hashes AS SELECT id, email_bidx AS h FROM public.users;
             CREATE VIEW public.user_union AS
                 SELECT id, email_bidx AS h FROM public.users
                 UNION ALL SELECT id, email_bidx FROM public.users;",
        )
        .start();
    let secret = "attack-view-bidx-4411@example.com";
    let guess = "attack-view-guess-4412@example.com";
    let app = fx.app("calmony_app").await;
    app.execute(
        "INSERT INTO users (email, name) VALUES ($1, 'View Bidx')",
        &[&secret],
    )
    .await
    .unwrap();
    // The write-only role writes a guess, then tries to compare its blind
    // index with the other rows through the views.
    let signup = fx.app("signup").await;
    signup
        .execute("INSERT INTO users (email) VALUES ($1)", &[&guess])
        .await
        .unwrap();
    for role in ["signup", "dba"] {
        let c = fx.app(role).await;
        for sql in [
            "SELECT h FROM user_hashes",
            "SELECT * FROM user_hashes",
            "SELECT count(*) FROM user_hashes a JOIN user_hashes b ON a.h = b.h AND a.id <> b.id",
            "SELECT h FROM user_union",
            "SELECT * FROM user_union",
        ] {
            let e = c
                .simple_query(sql)
                .await
                .expect_err(&format!("{role}: must be refused: {sql}"));
            let code = code(&e);
            assert!(
                code == "42501" || code == "0A000",
                "{role}: {sql}: {}",
                err_text(&e)
            );
        }
    }
    // A role that may search sees them.
    let r = app.simple_query("SELECT h FROM user_hashes").await.unwrap();
    assert_eq!(simple_rows(&r).len(), 2);
    let r = app.simple_query("SELECT * FROM user_union").await.unwrap();
    assert_eq!(simple_rows(&r).len(), 4);
    fx.assert_no_plaintext(&[secret, guess]).await;
}
