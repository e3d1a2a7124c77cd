//! Authentication through pgveil against real clusters: SCRAM terminated
//! with verifiers from `auth.query` (a SECURITY DEFINER function, no
//! superuser) or `auth.file`, md5 relayed, TLS and channel binding on both
//! legs, unknown users, rate limiting. Clients: psql (libpq defaults),
//! tokio-postgres, psycopg 3 and asyncpg.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USER: &str = "app";
const PW: &str = "app-secret-pw";
const DB: &str = "appdb";
const AUTH_USER: &str = "pgveil_auth";
const AUTH_PW: &str = "auth-lookup-pw";

/// The lookup function of docs/operations.md, created by a superuser in
/// `db`; the auth role needs only EXECUTE on it.
fn install_lookup(pg: &PgCluster, db: &str) {
    pg.psql(
        db,
        "CREATE SCHEMA pgveil_auth;
         CREATE FUNCTION pgveil_auth.lookup(u text)
           RETURNS TABLE (usename name, passwd text)
           LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
           AS $$ SELECT usename, passwd FROM pg_shadow WHERE usename = u $$;
         REVOKE ALL ON FUNCTION pgveil_auth.lookup(text) FROM PUBLIC;
         GRANT USAGE ON SCHEMA pgveil_auth TO pgveil_auth;
         GRANT EXECUTE ON FUNCTION pgveil_auth.lookup(text) TO pgveil_auth;",
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Query,
    File,
    /// `auth: {}`: no verifier source.
    None,
    /// The whole `auth:` section comes from `auth_yaml`.
    Custom,
    /// `auth.file` listing [`USER`], in front of `auth.query`.
    FileAndQuery,
}

struct Setup {
    hba: Hba,
    client_tls: bool,
    upstream_tls: bool,
    source: Source,
    extra_yaml: String,
}

impl Setup {
    fn new(hba: Hba, client_tls: bool, upstream_tls: bool) -> Setup {
        Setup {
            hba,
            client_tls,
            upstream_tls,
            source: Source::Query,
            extra_yaml: String::new(),
        }
    }

    fn source(mut self, s: Source) -> Setup {
        self.source = s;
        self
    }

    fn auth_yaml(mut self, extra: &str) -> Setup {
        self.extra_yaml = extra.to_string();
        self
    }

    fn start(self) -> Env {
        let certs_dir = tempfile::tempdir().unwrap();
        let certs = make_certs(certs_dir.path());
        let pg = PgCluster::start_with(PgOptions {
            hba: self.hba,
            tls: self.upstream_tls.then(|| {
                (
                    certs.server_cert_path.clone(),
                    certs.server_key_path.clone(),
                )
            }),
            hostssl_only: self.upstream_tls,
            extra_conf: Vec::new(),
        });
        pg.create_role(USER, Some(PW));
        pg.create_role(AUTH_USER, Some(AUTH_PW));
        pg.create_database_owned(DB, USER);
        install_lookup(&pg, DB);

        let mut yaml = format!(
            "listen: 127.0.0.1:{}\nupstream:\n  host: 127.0.0.1\n  port: {}\n",
            free_port(),
            pg.port()
        );
        if self.upstream_tls {
            yaml += &format!(
                "  tls: verify-full\n  ca_file: {}\n",
                certs.ca_pem_path.display()
            );
        } else {
            yaml += "  tls: disable\n";
        }
        if self.client_tls {
            yaml += &format!(
                "client_tls:\n  mode: prefer\n  cert_file: {}\n  key_file: {}\n",
                certs.server_cert_path.display(),
                certs.server_key_path.display()
            );
        } else {
            yaml += "client_tls:\n  mode: disable\n";
        }
        let builder = Pgveil::builder()
            .env("PGVEIL_AUTH_PASSWORD", AUTH_PW)
            .env("RUST_LOG", "info,pgveil::auth=debug");
        match self.source {
            Source::Query => {
                yaml += "auth:\n  user: pgveil_auth\n  password: ${PGVEIL_AUTH_PASSWORD}\n  \
                         query: SELECT usename, passwd FROM pgveil_auth.lookup($1)\n";
            }
            Source::File => {
                yaml += "auth:\n  file: userlist.txt\n";
                write_userlist(builder.dir(), &[(USER, &rolpassword(&pg, USER))]);
            }
            Source::FileAndQuery => {
                yaml += "auth:\n  file: userlist.txt\n  user: pgveil_auth\n  password: ${PGVEIL_AUTH_PASSWORD}\n  \
                         query: SELECT usename, passwd FROM pgveil_auth.lookup($1)\n";
                write_userlist(builder.dir(), &[(USER, &rolpassword(&pg, USER))]);
            }
            Source::None => yaml += "auth: {}\n",
            Source::Custom => {}
        }
        yaml += &self.extra_yaml;
        let pv = builder.start(&yaml);
        Env {
            client_tls: self.client_tls,
            certs,
            pv,
            pg,
            _certs_dir: certs_dir,
        }
    }
}

struct Env {
    client_tls: bool,
    certs: Certs,
    pv: Pgveil,
    pg: PgCluster,
    _certs_dir: tempfile::TempDir,
}

impl Env {
    fn conninfo(&self, user: &str, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={DB} connect_timeout=20 {extra}",
            self.pv.port()
        )
    }

    /// psql through pgveil with libpq defaults (sslmode=prefer,
    /// channel_binding=prefer) plus `extra`.
    fn psql(&self, user: &str, password: &str, extra: &str, sql: &str) -> Output {
        psql_run(&self.pg, &self.conninfo(user, extra), password, &[sql])
    }

    async fn tokio_pg(
        &self,
        user: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut cfg = pg_config(self.pv.port(), user, Some(password), DB);
        if self.client_tls {
            cfg.ssl_mode(tokio_postgres::config::SslMode::Prefer);
            let (client, conn) = cfg
                .connect(RustlsConnector::with_ca(&self.certs.ca_pem_path))
                .await?;
            tokio::spawn(conn);
            Ok(client)
        } else {
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            Ok(client)
        }
    }
}

/// psql running each of `commands` (`-c`) in one session.
fn psql_run(pg: &PgCluster, conninfo: &str, password: &str, commands: &[&str]) -> Output {
    let mut cmd = Command::new(pg.bin("psql"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PGPASSWORD", password)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.stdin(Stdio::null()).output().expect("run psql")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn rolpassword(pg: &PgCluster, role: &str) -> String {
    pg.psql(
        "postgres",
        &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"),
    )
    .trim()
    .to_string()
}

/// PgBouncer userlist with `""` escaping.
fn userlist(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(u, p)| {
            format!(
                "\"{}\" \"{}\"\n",
                u.replace('"', "\"\""),
                p.replace('"', "\"\"")
            )
        })
        .collect()
}

fn write_userlist(dir: &Path, entries: &[(&str, &str)]) {
    // Write then rename, so pgveil never reads a half-written file.
    let tmp = dir.join("userlist.txt.tmp");
    std::fs::write(&tmp, userlist(entries)).unwrap();
    std::fs::rename(&tmp, dir.join("userlist.txt")).unwrap();
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| err_text(e))
}

/// The whole matrix cell: psql and tokio-postgres, right and wrong
/// password, through pgveil.
async fn logins_work(hba: Hba, client_tls: bool, upstream_tls: bool) {
    let env = Setup::new(hba, client_tls, upstream_tls).start();
    let what = format!("{hba:?} client_tls={client_tls} upstream_tls={upstream_tls}");

    // psql with libpq defaults. `\conninfo` in the same session shows the
    // client leg really is TLS (libpq's sslmode=prefer would silently retry
    // without TLS if the TLS attempt failed).
    let ok = psql_run(
        &env.pg,
        &env.conninfo(USER, ""),
        PW,
        &[
            "SELECT current_user || ' ' || (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
            "\\conninfo",
        ],
    );
    assert!(
        ok.status.success(),
        "{what}: psql: {}\n{}",
        stderr(&ok),
        env.pv.logs()
    );
    let out = stdout(&ok);
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some(format!("{USER} {upstream_tls}").as_str()),
        "{what}"
    );
    assert_eq!(
        lines.any(|l| l.contains("SSL connection")),
        client_tls,
        "{what}: {out}"
    );

    // Wrong password: PostgreSQL's own words, SQLSTATE 28P01.
    let bad = env.psql(USER, "wrong", "", "SELECT 1");
    assert!(!bad.status.success(), "{what}");
    assert!(
        stderr(&bad).contains(&format!(
            "password authentication failed for user \"{USER}\""
        )),
        "{what}: {}",
        stderr(&bad)
    );

    // tokio-postgres (channel binding offered by the TLS connector).
    let c = env
        .tokio_pg(USER, PW)
        .await
        .unwrap_or_else(|e| panic!("{what}: {}", err_text(&e)));
    let row = c.query_one("SELECT current_user::text", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), USER);
    let Err(e) = env.tokio_pg(USER, "wrong").await else {
        panic!("{what}: wrong password accepted");
    };
    assert_eq!(code(&e), "28P01", "{what}: {}", err_text(&e));

    if hba == Hba::Scram {
        // channel_binding=require: only possible when the client leg is TLS.
        let req = env.psql(USER, PW, "channel_binding=require", "SELECT 1");
        if client_tls {
            assert!(
                req.status.success(),
                "{what}: {}\n{}",
                stderr(&req),
                env.pv.logs()
            );
            let logs = env.pv.logs();
            assert!(
                logs.contains("client_mechanism=\"SCRAM-SHA-256-PLUS\""),
                "{what}: {logs}"
            );
            let upstream_plus = logs.contains("upstream_mechanism=\"SCRAM-SHA-256-PLUS\"");
            assert_eq!(upstream_plus, upstream_tls, "{what}: {logs}");
        } else {
            assert!(!req.status.success(), "{what}");
            assert!(
                stderr(&req).contains("channel binding required"),
                "{what}: {}",
                stderr(&req)
            );
        }
    }
    // Secrets never reach the log.
    let logs = env.pv.logs();
    for secret in [PW, AUTH_PW, "SCRAM-SHA-256$"] {
        assert!(!logs.contains(secret), "{what}: log holds {secret:?}");
    }
}

#[tokio::test]
async fn scram_plain_plain() {
    logins_work(Hba::Scram, false, false).await;
}

#[tokio::test]
async fn scram_tls_plain() {
    logins_work(Hba::Scram, true, false).await;
}

#[tokio::test]
async fn scram_plain_tls() {
    logins_work(Hba::Scram, false, true).await;
}

#[tokio::test]
async fn scram_tls_tls() {
    logins_work(Hba::Scram, true, true).await;
}

#[tokio::test]
async fn md5_plain_plain() {
    logins_work(Hba::Md5, false, false).await;
}

#[tokio::test]
async fn md5_tls_plain() {
    logins_work(Hba::Md5, true, false).await;
}

#[tokio::test]
async fn md5_plain_tls() {
    logins_work(Hba::Md5, false, true).await;
}

#[tokio::test]
async fn md5_tls_tls() {
    logins_work(Hba::Md5, true, true).await;
}

/// Without a verifier source SCRAM is relayed without -PLUS. That works on
/// a plain client leg; on a TLS client leg a client able to bind says so
/// (gs2 flag `y`), and a TLS PostgreSQL refuses that as a downgrade — the
/// reason to configure `auth.query` or `auth.file`.
#[tokio::test]
async fn relay_without_source_never_offers_plus() {
    let env = Setup::new(Hba::Scram, true, true)
        .source(Source::None)
        .start();
    let ok = env.psql(USER, PW, "sslmode=disable", "SELECT current_user");
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(stdout(&ok), USER);
    let e = try_connect_to(env.pv.port(), USER, Some("wrong"), DB)
        .await
        .err()
        .unwrap();
    assert_eq!(code(&e), "28P01");
    let tls = env.psql(USER, PW, "sslmode=require", "SELECT 1");
    assert!(!tls.status.success());
    assert!(
        stderr(&tls).contains("SCRAM channel binding negotiation error"),
        "{}",
        stderr(&tls)
    );
    let req = env.psql(USER, PW, "channel_binding=require", "SELECT 1");
    assert!(!req.status.success());
    assert!(stderr(&req).contains("channel binding"), "{}", stderr(&req));
}

/// psycopg 3 (libpq, channel_binding=require) and asyncpg with SCRAM over
/// TLS on both legs.
#[test]
fn python_drivers_scram_over_tls() {
    let env = Setup::new(Hba::Scram, true, true).start();
    let ca = env.certs.ca_pem_path.display().to_string();
    let port = env.pv.port();
    let psycopg = format!(
        r#"
import psycopg
dsn = "host=127.0.0.1 port={port} user={USER} password={PW} dbname={DB} sslmode=verify-full sslrootcert={ca} channel_binding=require"
with psycopg.connect(dsn) as c:
    print(c.execute("SELECT current_user, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())").fetchone())
try:
    psycopg.connect(dsn.replace("password={PW}", "password=wrong"))
    print("wrong password accepted")
except psycopg.OperationalError as e:
    print("refused", "password authentication failed" in str(e))
"#
    );
    let out = python(&psycopg);
    assert_eq!(
        out,
        "('app', True)\nrefused True",
        "psycopg\n{}",
        env.pv.logs()
    );

    let asyncpg = format!(
        r#"
import asyncio, ssl, asyncpg
async def main():
    ctx = ssl.create_default_context(cafile="{ca}")
    c = await asyncpg.connect(host="127.0.0.1", port={port}, user="{USER}", password="{PW}", database="{DB}", ssl=ctx)
    print(await c.fetchval("SELECT current_user"), await c.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
    await c.close()
    try:
        await asyncpg.connect(host="127.0.0.1", port={port}, user="{USER}", password="wrong", database="{DB}", ssl=ctx)
        print("wrong password accepted")
    except asyncpg.InvalidPasswordError as e:
        print("refused", e.sqlstate)
asyncio.run(main())
"#
    );
    let out = python(&asyncpg);
    assert_eq!(out, "app True\nrefused 28P01", "asyncpg\n{}", env.pv.logs());
}

fn python(script: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    stdout(&out)
}

/// auth.file: verifiers in PgBouncer format, re-read when the file changes;
/// a stale verifier gives a clear error; plaintext entries work.
#[tokio::test]
async fn auth_file_userlist() {
    let env = Setup::new(Hba::Scram, true, true)
        .source(Source::File)
        .start();
    let ok = env.psql(USER, PW, "channel_binding=require", "SELECT current_user");
    assert!(ok.status.success(), "{}\n{}", stderr(&ok), env.pv.logs());
    assert_eq!(stdout(&ok), USER);

    // A user the file does not list fails like a wrong password.
    env.pg.create_role("unlisted", Some("pw-unlisted"));
    let o = env.psql("unlisted", "pw-unlisted", "", "SELECT 1");
    assert!(
        stderr(&o).contains("password authentication failed for user \"unlisted\""),
        "{}",
        stderr(&o)
    );

    // Password changed in PostgreSQL, file not updated: the old password
    // proves itself against the stale verifier but PostgreSQL's salt differs.
    env.pg
        .psql("postgres", &format!("ALTER ROLE {USER} PASSWORD 'new-pw'"));
    let stale = env.psql(USER, PW, "", "SELECT 1");
    assert!(!stale.status.success());
    assert!(stderr(&stale).contains("out of date"), "{}", stderr(&stale));
    let new_pw = env.psql(USER, "new-pw", "", "SELECT 1");
    assert!(
        stderr(&new_pw).contains("password authentication failed"),
        "{}",
        stderr(&new_pw)
    );

    // Update the file: picked up without a restart. Plaintext entries (with
    // `""` escaping) work too.
    env.pg.create_role("plain\"user", Some("p\"w"));
    env.pg.psql(
        "postgres",
        &format!("GRANT CONNECT ON DATABASE {DB} TO PUBLIC"),
    );
    write_userlist(
        env.pv.dir(),
        &[(USER, &rolpassword(&env.pg, USER)), ("plain\"user", "p\"w")],
    );
    let ok = env.psql(
        USER,
        "new-pw",
        "channel_binding=require",
        "SELECT current_user",
    );
    assert!(ok.status.success(), "{}\n{}", stderr(&ok), env.pv.logs());
    let c = env
        .tokio_pg("plain\"user", "p\"w")
        .await
        .unwrap_or_else(|e| panic!("{}", err_text(&e)));
    let row = c.query_one("SELECT current_user::text", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "plain\"user");
}

/// auth.file in front of auth.query: a changed file takes effect whole or
/// not at all. A line cut short (the file read while it was being written)
/// or mistyped must not drop its user out of the file, to be looked up
/// with the query instead: that would accept a password set inside
/// PostgreSQL, which the file is there to keep out.
#[tokio::test]
async fn a_malformed_auth_file_never_hands_its_users_to_the_auth_query() {
    let env = Setup::new(Hba::Scram, false, false)
        .source(Source::FileAndQuery)
        .start();
    let verifier = rolpassword(&env.pg, USER);
    env.tokio_pg(USER, PW)
        .await
        .unwrap_or_else(|e| panic!("{}\n{}", err_text(&e), env.pv.logs()));
    // A superuser sets the role's password in PostgreSQL: the file's
    // verifier keeps that password out.
    env.pg.psql(
        "postgres",
        &format!("ALTER ROLE {USER} PASSWORD 'dba-chosen-pw'"),
    );
    let e = env.tokio_pg(USER, "dba-chosen-pw").await.err().unwrap();
    assert_eq!(code(&e), "28P01", "{}", err_text(&e));

    // The file is rewritten in place and read half-way.
    let full = userlist(&[(USER, &verifier)]);
    let path = env.pv.dir().join("userlist.txt");
    std::fs::write(&path, &full[..full.len() / 2]).unwrap();
    let Err(e) = env.tokio_pg(USER, "dba-chosen-pw").await else {
        panic!(
            "a half-written auth.file handed its user to auth.query, which accepted the password set in PostgreSQL"
        );
    };
    assert_eq!(code(&e), "28P01", "{}", err_text(&e));
    let logs = env.pv.logs();
    assert!(logs.contains("userlist.txt:1:"), "{logs}");
    assert!(logs.contains("previous version stays in force"), "{logs}");

    // A reload checks the file the same way: refused, nothing changes.
    env.pv.send_signal("HUP");
    wait_for(
        Duration::from_secs(30),
        "the reload to be refused",
        || async { env.pv.logs().contains("reload refused") },
    )
    .await;
    let e = env.tokio_pg(USER, "dba-chosen-pw").await.err().unwrap();
    assert_eq!(code(&e), "28P01", "{}", err_text(&e));

    // Fixed (the new verifier on purpose): in force at once.
    write_userlist(env.pv.dir(), &[(USER, &rolpassword(&env.pg, USER))]);
    env.tokio_pg(USER, "dba-chosen-pw")
        .await
        .unwrap_or_else(|e| panic!("{}\n{}", err_text(&e), env.pv.logs()));
}

/// auth.query: the cache is refreshed when PostgreSQL's salt no longer
/// matches (password changed), and auth.database picks where it runs.
#[tokio::test]
async fn auth_query_refreshes_on_password_change() {
    let env = Setup::new(Hba::Scram, false, false)
        .auth_yaml("  cache_ttl: 1h\n")
        .start();
    env.tokio_pg(USER, PW).await.unwrap();
    env.pg.psql(
        "postgres",
        &format!("ALTER ROLE {USER} PASSWORD 'changed-pw'"),
    );
    // The cached verifier is stale; pgveil notices the salt and looks again.
    env.tokio_pg(USER, "changed-pw")
        .await
        .unwrap_or_else(|e| panic!("{}\n{}", err_text(&e), env.pv.logs()));
    let e = env.tokio_pg(USER, PW).await.err().unwrap();
    assert_eq!(code(&e), "28P01");
}

#[tokio::test]
async fn auth_query_in_fixed_database() {
    let env = Setup::new(Hba::Scram, false, true)
        .source(Source::Custom)
        .auth_yaml(
            "auth:\n  user: pgveil_auth\n  password: ${PGVEIL_AUTH_PASSWORD}\n  database: postgres\n  \
             query: SELECT usename, passwd FROM pgveil_auth.lookup($1)\n",
        )
        .start();
    install_lookup(&env.pg, "postgres");
    env.pg.psql(DB, "DROP SCHEMA pgveil_auth CASCADE");
    let ok = env.psql(USER, PW, "", "SELECT current_user");
    assert!(ok.status.success(), "{}\n{}", stderr(&ok), env.pv.logs());
    assert_eq!(stdout(&ok), USER);
}

/// Unknown users and md5-stored secrets get a full fake exchange (stable
/// fake salt per name) and exactly PostgreSQL's 28P01 message.
#[tokio::test]
async fn unknown_user_looks_like_wrong_password() {
    let env = Setup::new(Hba::Scram, false, false).start();
    let unknown = env.tokio_pg("nosuchuser", "whatever").await.err().unwrap();
    let wrong = env.tokio_pg(USER, "wrong").await.err().unwrap();
    let direct_unknown = try_connect_to(env.pg.port(), "nosuchuser", Some("whatever"), DB)
        .await
        .err()
        .unwrap();
    for e in [&unknown, &wrong, &direct_unknown] {
        assert_eq!(code(e), "28P01", "{}", err_text(e));
    }
    assert_eq!(
        unknown.as_db_error().unwrap().message(),
        direct_unknown.as_db_error().unwrap().message()
    );
    assert_eq!(
        unknown.as_db_error().unwrap().severity(),
        wrong.as_db_error().unwrap().severity()
    );

    // A role whose stored password is md5 while pg_hba says scram-sha-256.
    env.pg.psql(
        "postgres",
        "SET password_encryption = 'md5'; CREATE ROLE oldmd5 LOGIN PASSWORD 'md5pw'",
    );
    let e = env.tokio_pg("oldmd5", "md5pw").await.err().unwrap();
    assert_eq!(
        e.as_db_error().unwrap().message(),
        "password authentication failed for user \"oldmd5\""
    );

    // The fake salt is deterministic per user name, differs between names,
    // and looks like a real one.
    let (s1, i1) = server_first_salt(env.pv.port(), "nosuchuser").await;
    let (s2, _) = server_first_salt(env.pv.port(), "nosuchuser").await;
    let (s3, _) = server_first_salt(env.pv.port(), "another").await;
    let (real, ireal) = server_first_salt(env.pv.port(), USER).await;
    assert_eq!(s1, s2);
    assert_ne!(s1, s3);
    assert_eq!(s1.len(), real.len());
    assert_eq!(i1, ireal);
    assert!(rolpassword(&env.pg, USER).contains(&format!(":{real}$")));
}

/// Start a SCRAM exchange by hand and return (salt, iterations) of the
/// server-first message pgveil sends.
async fn server_first_salt(port: u16, user: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut startup = Vec::new();
    startup.extend_from_slice(&196608u32.to_be_bytes());
    for (k, v) in [("user", user), ("database", DB)] {
        startup.extend_from_slice(k.as_bytes());
        startup.push(0);
        startup.extend_from_slice(v.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let mut msg = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&startup);
    s.write_all(&msg).await.unwrap();
    let (tag, body) = read_tls_msg(&mut s).await;
    assert_eq!(tag, b'R');
    assert_eq!(&body[..4], &10u32.to_be_bytes());
    let first = b"n,,n=,r=abcdefghijklmnop";
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
    body.extend_from_slice(first);
    let mut msg = vec![b'p'];
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&body);
    s.write_all(&msg).await.unwrap();
    let (tag, body) = read_tls_msg(&mut s).await;
    assert_eq!(tag, b'R', "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..4], &11u32.to_be_bytes());
    let text = String::from_utf8(body[4..].to_vec()).unwrap();
    let mut salt = String::new();
    let mut iter = String::new();
    for part in text.split(',') {
        if let Some(v) = part.strip_prefix("s=") {
            salt = v.to_string();
        }
        if let Some(v) = part.strip_prefix("i=") {
            iter = v.to_string();
        }
    }
    (salt, iter)
}

/// After `max_failures` failed logins from one address, logins from it are
/// refused with 53300 until the bucket refills.
#[tokio::test]
async fn failed_logins_are_rate_limited() {
    let env = Setup::new(Hba::Scram, false, false)
        .auth_yaml("  max_failures: 3\n  failure_window: 12s\n")
        .start();
    // Unknown users count like wrong passwords.
    for user in [USER, "nosuchuser", USER] {
        let e = env.tokio_pg(user, "wrong").await.err().unwrap();
        assert_eq!(code(&e), "28P01");
    }
    // Even the right password is refused now, before any exchange.
    let e = env.tokio_pg(USER, PW).await.err().unwrap();
    assert_eq!(code(&e), "53300", "{}", err_text(&e));
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("too many failed authentication attempts"),
        "{}",
        err_text(&e)
    );
    // One more attempt is allowed once a token has refilled (12 s / 3).
    // The deadline only guards against a hang; the time is printed.
    let started = std::time::Instant::now();
    loop {
        match env.tokio_pg(USER, PW).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(code(&e), "53300", "{}", err_text(&e));
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "never refilled"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    eprintln!("login allowed again after {:?}", started.elapsed());

    // md5 failures (relayed from PostgreSQL) count as well.
    let env = Setup::new(Hba::Md5, false, false)
        .auth_yaml("  max_failures: 2\n  failure_window: 60s\n")
        .start();
    for _ in 0..2 {
        assert_eq!(
            code(&env.tokio_pg(USER, "wrong").await.err().unwrap()),
            "28P01"
        );
    }
    assert_eq!(code(&env.tokio_pg(USER, PW).await.err().unwrap()), "53300");
}

/// A TLS client that claims the server does not support channel binding
/// (gs2 flag `y`) although pgveil offered SCRAM-SHA-256-PLUS is refused, as
/// PostgreSQL refuses it.
#[tokio::test]
async fn downgrade_to_y_over_tls_is_refused() {
    let env = Setup::new(Hba::Scram, true, false).start();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", env.pv.port()))
        .await
        .unwrap();
    let mut tcp = tcp;
    let mut ssl = 8u32.to_be_bytes().to_vec();
    ssl.extend_from_slice(&80877103u32.to_be_bytes());
    tcp.write_all(&ssl).await.unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&env.certs.ca_pem_path).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();

    let mut startup = 196608u32.to_be_bytes().to_vec();
    startup.extend_from_slice(format!("user\0{USER}\0database\0{DB}\0\0").as_bytes());
    let mut msg = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&startup);
    s.write_all(&msg).await.unwrap();
    let (tag, body) = read_tls_msg(&mut s).await;
    assert_eq!(tag, b'R');
    let mechs = String::from_utf8_lossy(&body[4..]).to_string();
    assert!(
        mechs.starts_with("SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0"),
        "{mechs:?}"
    );
    let first = b"y,,n=,r=abcdefghijklmnop";
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
    body.extend_from_slice(first);
    let mut msg = vec![b'p'];
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&body);
    s.write_all(&msg).await.unwrap();
    let (tag, body) = read_tls_msg(&mut s).await;
    assert_eq!(tag, b'E');
    let text = String::from_utf8_lossy(&body);
    // PostgreSQL's SQLSTATE for this refusal is 28000.
    assert!(text.contains("C28000\0"), "{text}");
    assert!(
        text.contains("SCRAM channel binding negotiation error"),
        "{text}"
    );
}

async fn read_tls_msg<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut head))
        .await
        .expect("timeout")
        .unwrap();
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await.unwrap();
    (head[0], body)
}
