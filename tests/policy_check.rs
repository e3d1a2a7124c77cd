//! `check_schema` and the catalog query against a real PostgreSQL.

mod common;

use std::path::Path;

use common::{Hba, PgCluster};
use pgveil::crypto::types::Storage;
use pgveil::policy::{Catalog, Policy, check_schema};
use pgveil::sql::{Analyzer, Mode, StatementPlan};

const POLICY: &str = "\
version: 1
tables:
  public.users:
    columns:
      email:
        type: text
        blind_index: { column: email_bidx, normalize: [trim, lowercase] }
        access: { app: read }
      name: { type: text, access: { app: read } }
      age: { type: int4, access: { app: read } }
  public.customers:
    tenant: org_id
    columns:
      email:
        type: text
        blind_index: { column: email_bidx }
        access: { app: read }
  public.missing:
    columns:
      x: { type: text }
";

#[tokio::test]
async fn schema_problems_come_with_policy_lines_and_fixes() {
    let pg = PgCluster::start(Hba::Trust);
    pg.psql(
        "postgres",
        "CREATE TABLE users (id bigint PRIMARY KEY, email bytea, name text, age int4);
         CREATE TABLE customers (id bigint PRIMARY KEY, email text, email_bidx text);",
    );
    let client = pg.connect("postgres", None, "postgres").await;
    let path = Path::new("policy.yaml");
    let policy = Policy::from_text(path, POLICY).unwrap();
    let problems = check_schema(&policy, POLICY, &client).await;
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let all = text.join("\n");
    assert!(
        all.contains(
            "policy.yaml:7: blind-index column public.users.email_bidx (of email) does not exist"
        ),
        "{all}"
    );
    assert!(
        all.contains("policy.yaml:16: blind-index column public.customers.email_bidx is text"),
        "{all}"
    );
    assert!(
        all.contains("ALTER TABLE public.users ADD COLUMN email_bidx bytea;"),
        "{all}"
    );
    assert!(
        all.contains("policy.yaml:10: protected column public.users.age is integer"),
        "{all}"
    );
    assert!(
        all.contains("ALTER TABLE public.users ALTER COLUMN age TYPE text USING age::text;"),
        "{all}"
    );
    assert!(
        all.contains(
            "ALTER TABLE public.customers ALTER COLUMN email_bidx TYPE bytea USING NULL::bytea;"
        ),
        "{all}"
    );
    assert!(
        all.contains("policy.yaml:12: tenant column public.customers.org_id does not exist"),
        "{all}"
    );
    assert!(all.contains("ADD COLUMN org_id"), "{all}");
    assert!(all.contains("table public.missing does not exist"), "{all}");

    // Apply every fix: the check comes back clean (except the missing table).
    for p in &problems {
        if let Some(fix) = &p.fix {
            pg.psql("postgres", fix);
        }
    }
    let again = check_schema(&policy, POLICY, &client).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(again[0].message.contains("public.missing"));
}

#[tokio::test]
async fn catalog_query_maps_tables_and_views() {
    let pg = PgCluster::start(Hba::Trust);
    pg.psql(
        "postgres",
        "CREATE TABLE users (id bigint PRIMARY KEY, email bytea, email_bidx bytea, name text, age text);
         CREATE TABLE customers (id bigint, org_id bigint, email text, email_bidx bytea);
         CREATE VIEW user_emails AS SELECT u.id, u.email AS mail, u.email_bidx, lower(u.name) AS lname FROM users u;
         CREATE VIEW v2 AS SELECT mail, email_bidx FROM user_emails;
         CREATE TABLE unrelated (email text);",
    );
    let client = pg.connect("postgres", None, "postgres").await;
    let policy = Policy::from_text(Path::new("p.yaml"), POLICY).unwrap();
    let rows = client
        .query(
            pgveil::policy::CATALOG_QUERY.as_str(),
            &[&Catalog::query_param(&policy)],
        )
        .await
        .unwrap();
    let rows: Vec<Vec<Option<String>>> = rows
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect();
    // The simple-protocol variant returns the same rows.
    let simple = client
        .simple_query(&Catalog::simple_query(&policy))
        .await
        .unwrap();
    let n_simple = simple
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(n_simple, rows.len());

    let cat = Catalog::from_rows(&policy, rows);
    let users = cat.relation("public", "users").unwrap();
    let a = cat.protected_attr(users.oid, 2).unwrap();
    assert_eq!(a.column.to_string(), "public.users.email");
    assert_eq!(a.storage, Storage::Bytea);
    assert_eq!(
        cat.protected_attr(users.oid, 5).unwrap().storage,
        Storage::Text
    );
    let cust = cat.relation("public", "customers").unwrap();
    assert_eq!(cat.tenant.get(&(cust.oid, 2)).unwrap().column, "org_id");
    let view = cat.relation("public", "user_emails").unwrap();
    assert_eq!(
        cat.protected_attr(view.oid, 2).unwrap().column.column,
        "email"
    );
    assert!(cat.protected_attr(view.oid, 4).is_none());
    let v2 = cat.relation("public", "v2").unwrap();
    assert_eq!(
        cat.protected_attr(v2.oid, 1).unwrap().column.column,
        "email"
    );
    assert!(cat.relation("public", "unrelated").is_none());

    // The table OID / attnum PostgreSQL reports in RowDescription match.
    let stmt = client
        .prepare("SELECT mail FROM user_emails")
        .await
        .unwrap();
    let col = &stmt.columns()[0];
    assert_eq!(col.table_oid(), Some(view.oid));
    assert_eq!(col.column_id(), Some(2));

    // The analyzer knows the views for the pre-check and lookups.
    let an = Analyzer::with_catalog(std::sync::Arc::new(policy), &cat);
    assert!(an.may_touch_protected("select * from v2"));
    let plans = an.plan(
        "select id from user_emails where mail = $1",
        "app",
        Mode::Extended { param_types: &[] },
    );
    let StatementPlan::Rewrite(r) = &plans[0] else {
        panic!("{plans:?}")
    };
    let sql = r.render(|_, _| unreachable!());
    assert_eq!(sql, "select id from user_emails where email_bidx = $1");
    client.prepare(&sql).await.unwrap();
}

/// Every rewritten statement shape is valid PostgreSQL: rendered with dummy
/// ciphertext literals, each one prepares (parse + plan) on a real server.
#[tokio::test]
async fn rewritten_statements_prepare_on_postgresql() {
    let pg = PgCluster::start(Hba::Trust);
    pg.psql(
        "postgres",
        "CREATE TABLE users (id bigint PRIMARY KEY, email bytea, email_bidx bytea UNIQUE, name text, age text);
         CREATE TABLE customers (id bigint PRIMARY KEY, org_id bigint, email text, email_bidx bytea,
                                 UNIQUE (org_id, email_bidx));
         CREATE TABLE orders (id bigint, user_id bigint, total numeric);",
    );
    let client = pg.connect("postgres", None, "postgres").await;
    let policy = std::sync::Arc::new(Policy::from_text(Path::new("p.yaml"), POLICY).unwrap());
    let an = Analyzer::new(policy);
    let shapes = [
        "SELECT id, name FROM users WHERE email = $1",
        "select * from users u where 'a@b.c' = u.email and u.id > $1",
        "select id from users where email in ($1, 'x', NULL)",
        "select id from users where email not in ('a', 'b')",
        "select id from users where email = any($1)",
        "select id from users where email <> all(array['a', $1])",
        "select a.id from users a join users b on a.email = b.email",
        "with t as (select id from users where email = $1) select * from orders where user_id in (select id from t)",
        "select o.* from orders o where exists (select 1 from users u where u.id = o.user_id and u.email = $1)",
        "select count(email), count(*) from users where email is not null",
        "INSERT INTO users (id, email, name) VALUES ($1, $2, $3), (2, 'x', NULL) RETURNING id, email",
        "insert into users (id, email, age) values ($1, $2, DEFAULT) on conflict (email) do update set email = excluded.email, name = excluded.name",
        "insert into customers (id, org_id, email) values ($1, $2, $3) on conflict (org_id, email) do update set email = excluded.email",
        "UPDATE users SET email = $1, name = 'Bob' WHERE id = $2",
        "update users set email = null where email = $1",
        "update users set email = $1 where email = $1 returning *",
        "update customers c set email = $1 where c.org_id = $2 and id = $3",
        "delete from users where email = $1 returning id, email",
        "declare c cursor for select email from users where email = 'x'",
    ];
    for sql in shapes {
        let plans = an.plan(sql, "app", Mode::Extended { param_types: &[] });
        let StatementPlan::Rewrite(r) = &plans[0] else {
            panic!("{sql}: {plans:?}")
        };
        let text = r.render(|_, s| match s.target.table.as_str() {
            "users" => "'\\x00'::bytea".to_string(),
            _ => "'pgv1:x'".to_string(),
        });
        let text = if text.starts_with("declare") || text.starts_with("DECLARE") {
            client.batch_execute("BEGIN").await.unwrap();
            client.batch_execute(&text).await.unwrap();
            client.batch_execute("ROLLBACK").await.unwrap();
            continue;
        } else {
            text
        };
        if let Err(e) = client.prepare(&text).await {
            panic!(
                "{sql}\n  rewritten: {text}\n  error: {}",
                common::err_text(&e)
            );
        }
    }
}

/// `policy check` reports every secret problem at once, each on the line
/// of its config entry, and suggests the closest key for a typo.
#[test]
fn policy_check_reports_every_secret_problem_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    let cfg = "\
listen: 127.0.0.1:6432
upstream: { host: 127.0.0.1, port: 5432, tls: disable }
policy: policy.yaml
keys:
  provider: local
  local:
    master_keys:
      - { id: k2, env: PGVEIL_TEST_UNSET_MASTER_K2 }
      - { id: k1, file: missing-k1.key }
  blind_index_key:
    env: PGVEIL_TEST_UNSET_BIDX
  keystore:
    database: postgres://keys@127.0.0.1:1/pgveil_keys
";
    std::fs::write(dir.path().join("pgveil.yaml"), cfg).unwrap();
    let out = common::pgveil::pgveil_cmd()
        .args(["policy", "check", "--offline", "--json", "--config"])
        .arg(dir.path().join("pgveil.yaml"))
        .env_remove("PGVEIL_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems: Vec<String> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems[0].contains("pgveil.yaml:8: master key k2")
            && problems[0].contains("PGVEIL_TEST_UNSET_MASTER_K2"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("pgveil.yaml:9: master key k1: cannot read"),
        "{problems:?}"
    );
    assert!(
        problems[2].contains("pgveil.yaml:10: keys.blind_index_key")
            && problems[2].contains("PGVEIL_TEST_UNSET_BIDX"),
        "{problems:?}"
    );
    // A typo in a config key: the line and the closest key.
    std::fs::write(
        dir.path().join("pgveil.yaml"),
        cfg.replace("listen:", "lisen:"),
    )
    .unwrap();
    let out = common::pgveil::pgveil_cmd()
        .args(["policy", "check", "--offline", "--config"])
        .arg(dir.path().join("pgveil.yaml"))
        .env_remove("PGVEIL_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pgveil.yaml:1: unknown field `lisen`")
            && err.contains("did you mean `listen`?"),
        "{err}"
    );
}
