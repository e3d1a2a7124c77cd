//! The ORM matrix: application code written with SQLAlchemy 2 (psycopg 3
//! and asyncpg), Django 5.2 (client-side and server-side binding), knex and
//! Sequelize on node-postgres (and `pg-cursor`), unchanged but for the
//! connection string, through pgveil with the reference policy. Versions are
//! locked in `tests/orm/python/requirements.txt` and
//! `tests/orm/node/package-lock.json` (`.ci/run` installs both). JDBC with
//! `setFetchSize` and batch inserts is in `tests/drivers.rs` (`jdbc`).
//!
//! Each program prints one JSON line per step (`"ok": true`), then the rows
//! it expects to remain and every plaintext it wrote. This side reads the
//! rows back through pgveil, checks that PostgreSQL holds envelopes only,
//! and scans the database and the logs for every plaintext.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn orm_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/orm")
        .join(rel)
}

/// Run an ORM program against `fx`; every step must report ok and `steps`
/// must all be reported. Returns the final report line.
fn run(fx: &Calmony, what: &str, cmd: &mut Command, steps: &[&str]) -> serde_json::Value {
    let lines = run_program(fx, what, cmd, steps);
    lines
        .into_iter()
        .find(|l| l["step"] == "final")
        .unwrap_or_else(|| panic!("{what}: no final report"))
}

/// The rows the program expects are what a `read` role gets back through
/// pgveil; PostgreSQL holds envelopes in every row; no plaintext the
/// program wrote is anywhere.
async fn verify(fx: &Calmony, report: &serde_json::Value) {
    let want: Vec<(String, String)> = report["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                r[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(!want.is_empty());
    let app = fx.app("calmony_app").await;
    let rows = app
        .query("SELECT email, name FROM users ORDER BY id", &[])
        .await
        .unwrap();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, want, "rows read back through pgveil");
    let d = fx.direct().await;
    let bad: i64 = d
        .query_one(
            "SELECT count(*) FROM users WHERE NOT (substring(email FROM 1 FOR 2) = 'pv'::bytea \
             AND octet_length(email_bidx) = 32 AND name LIKE 'pgv1:%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0, "every users row holds envelopes and a blind index");
    let sentinels: Vec<String> = report["sentinels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert!(sentinels.len() >= want.len() * 2);
    let refs: Vec<&str> = sentinels.iter().map(String::as_str).collect();
    fx.assert_no_plaintext(&refs).await;
}

/// `python3` with the ORM matrix's packages importable, or a panic that
/// says how to install them.
fn python() -> Command {
    let probe = Command::new("python3")
        .args([
            "-c",
            "import django, sqlalchemy, psycopg, asyncpg, greenlet",
        ])
        .output();
    match probe {
        Ok(o) if o.status.success() => Command::new("python3"),
        Ok(o) => panic!(
            "the ORM matrix's Python packages are not installed ({}): run \
             `python3 -m pip install -r tests/orm/python/requirements.txt` (or .ci/run)",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("python3 is not installed ({e})"),
    }
}

const SQLALCHEMY_STEPS: &[&str] = &[
    "orm_add",
    "bulk_insert",
    "lookup",
    "bulk_update_delete",
    "transaction_rollback",
];

async fn sqlalchemy(mode: &str, streaming: &[&str]) {
    let fx = Calmony::start();
    let tag = format!("sqla-{mode}");
    let mut steps = SQLALCHEMY_STEPS.to_vec();
    steps.extend_from_slice(streaming);
    let report = run(
        &fx,
        &tag,
        python().arg(orm_path("python/sqlalchemy_matrix.py")).args([
            mode,
            &tag,
            &fx.pv.port().to_string(),
        ]),
        &steps,
    );
    verify(&fx, &report).await;
}

/// SQLAlchemy 2 ORM on psycopg 3: unit of work, `add_all` (insertmanyvalues
/// with ordered RETURNING), Core executemany, `==`/`in_` lookups, bulk
/// `update`/`delete`, rollback, `yield_per` (a named server-side cursor)
/// and `stream_results`.
#[tokio::test]
async fn sqlalchemy_psycopg() {
    sqlalchemy("psycopg", &["yield_per", "stream_results", "refusals"]).await;
}

/// SQLAlchemy 2 asyncio on asyncpg: the same application code, binary
/// typed parameters, `AsyncSession.stream` (a protocol portal read in
/// batches).
#[tokio::test]
async fn sqlalchemy_asyncpg() {
    sqlalchemy("asyncpg", &["stream"]).await;
}

const DJANGO_STEPS: &[&str] = &[
    "create",
    "bulk_create",
    "get",
    "filter_in",
    "update",
    "delete",
    "get_or_create",
    "exclude_isnull",
    "refusals",
    "transaction_rollback",
    "iterator",
];

async fn django(binding: &str) {
    let fx = Calmony::start();
    let tag = format!("django-{binding}");
    let report = run(
        &fx,
        &tag,
        python().arg(orm_path("python/django_matrix.py")).args([
            binding,
            &tag,
            &fx.pv.port().to_string(),
        ]),
        DJANGO_STEPS,
    );
    verify(&fx, &report).await;
}

/// Django 5.2 on psycopg 3 with client-side binding (the default: values
/// interpolated as literals, simple protocol).
#[tokio::test]
async fn django_client_side_binding() {
    django("client").await;
}

/// Django 5.2 with `server_side_binding: True` (parameters bound in the
/// extended protocol).
#[tokio::test]
async fn django_server_side_binding() {
    django("server").await;
}

fn node_ready() -> PathBuf {
    let dir = orm_path("node");
    assert!(
        Command::new("sh")
            .args(["-c", "command -v node"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "Node.js is not installed: run `apt-get install nodejs npm` (or .ci/run)"
    );
    for m in ["knex", "sequelize", "pg", "pg-cursor"] {
        assert!(
            dir.join("node_modules")
                .join(m)
                .join("package.json")
                .exists(),
            "{m} is not installed in {}: run `npm ci --prefix tests/orm/node` (or .ci/run)",
            dir.display()
        );
    }
    dir
}

async fn node(script: &str, steps: &[&str]) {
    let dir = node_ready();
    let fx = Calmony::start();
    let tag = script.trim_end_matches(".js").to_string();
    let report = run(
        &fx,
        &tag,
        Command::new("node")
            .current_dir(&dir)
            .arg(script)
            .args([&tag, &fx.pv.port().to_string()]),
        steps,
    );
    verify(&fx, &report).await;
}

/// knex 3 on node-postgres: inserts (single and batch) with RETURNING,
/// `where`/`whereIn` lookups, update, delete, a rolled-back transaction,
/// and `pg-cursor` reading in batches.
#[tokio::test]
async fn knex() {
    node(
        "knex.js",
        &[
            "insert",
            "batch_insert",
            "lookup",
            "refusals",
            "update",
            "delete",
            "transaction_rollback",
            "pg_cursor",
        ],
    )
    .await;
}

/// Sequelize 6 on node-postgres: `create`, `bulkCreate`, `findOne` /
/// `findAll` with `Op.in`, `update`, `destroy`, `findOrCreate` in a
/// transaction, a rolled-back managed transaction.
#[tokio::test]
async fn sequelize() {
    node(
        "sequelize.js",
        &[
            "create",
            "bulk_create",
            "lookup",
            "refusals",
            "update",
            "destroy",
            "find_or_create",
            "transaction_rollback",
        ],
    )
    .await;
}
