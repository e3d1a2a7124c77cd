//! `pgveil demo`: a throwaway PostgreSQL, the reference schema and policy,
//! pgveil in front of it, a few rows written through it, and what the
//! application sees next to what PostgreSQL holds. Serves until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::config::Config;

const POLICY: &str = include_str!("../../policies/calmony.yaml");
const SCHEMA: &str = include_str!("../../policies/calmony.sql");

/// A PostgreSQL cluster in a temporary directory, stopped on drop.
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

fn pg_bin_dir() -> Result<PathBuf, String> {
    let preferred = PathBuf::from("/usr/lib/postgresql/15/bin");
    if preferred.join("initdb").exists() {
        return Ok(preferred);
    }
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut dirs: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .collect();
        dirs.sort();
        if let Some(d) = dirs.pop() {
            return Ok(d);
        }
    }
    which("initdb")
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .ok_or_else(|| "PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql (e.g. apt-get install postgresql-15)".into())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.exists())
    })
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

impl Cluster {
    fn start() -> Result<Cluster, String> {
        let bin = pg_bin_dir()?;
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc_geteuid() } == 0;
        let dir = std::env::temp_dir().join(format!("pgveil-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .map_err(|e| e.to_string())?;
            if !ok.success() {
                return Err("cannot hand the demo directory to the postgres user (running as root needs a `postgres` OS user)".into());
            }
        }
        let port = free_port()?;
        let c = Cluster {
            dir,
            bin,
            port,
            as_postgres,
        };
        let data = c.dir.join("data");
        c.run(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            c.dir.display()
        );
        let log = c.dir.join("postgres.log");
        c.run(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        )?;
        Ok(c)
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .output()
            .map_err(|e| format!("{tool}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{tool} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self.run("pg_ctl", &["-D", path(&data), "-m", "fast", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

async fn admin(url: &str) -> Result<tokio_postgres::Client, String> {
    super::db::connect(url).await
}

/// Run the demo. `serve_forever`: keep serving until Ctrl-C (false in tests).
pub async fn run(serve_forever: bool) -> Result<(), String> {
    println!("pgveil demo: starting a throwaway PostgreSQL …");
    let cluster = Cluster::start()?;
    let su = admin(&cluster.url("postgres", "postgres")).await?;
    for db in ["app", "pgveil_keys"] {
        su.batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .map_err(|e| super::db::describe(&e))?;
    }
    for r in ["calmony_app", "clinician", "analyst"] {
        su.batch_execute(&format!("CREATE ROLE {r} LOGIN"))
            .await
            .map_err(|e| super::db::describe(&e))?;
    }
    let app_db = admin(&cluster.url("postgres", "app")).await?;
    app_db
        .batch_execute(SCHEMA)
        .await
        .map_err(|e| super::db::describe(&e))?;
    app_db
        .batch_execute(
            "GRANT USAGE ON SCHEMA phi TO PUBLIC;
             GRANT ALL ON ALL TABLES IN SCHEMA public, phi TO PUBLIC;
             GRANT ALL ON ALL SEQUENCES IN SCHEMA public, phi TO PUBLIC;",
        )
        .await
        .map_err(|e| super::db::describe(&e))?;

    // Keys for this run only, in files next to the config.
    let dir = cluster.dir.join("pgveil");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut mk = [0u8; 32];
    let mut bk = [0u8; 32];
    aws_lc_rs::rand::fill(&mut mk).map_err(|_| "random source failed")?;
    aws_lc_rs::rand::fill(&mut bk).map_err(|_| "random source failed")?;
    write_secret(&dir.join("master.key"), &hex::encode(mk))?;
    write_secret(&dir.join("bidx.key"), &hex::encode(bk))?;
    std::fs::write(dir.join("policy.yaml"), POLICY).map_err(|e| e.to_string())?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let yaml = format!(
        "listen: {listen}\n\
         upstream: {{ host: 127.0.0.1, port: {}, tls: disable }}\n\
         policy: policy.yaml\n\
         keys:\n  provider: local\n  local:\n    master_keys:\n      - {{ id: demo, file: master.key }}\n  \
         blind_index_key: {{ file: bidx.key }}\n  keystore:\n    database: {}\n",
        cluster.port,
        cluster.url("postgres", "pgveil_keys")
    );
    let cfg_path = dir.join("pgveil.yaml");
    std::fs::write(&cfg_path, &yaml).map_err(|e| e.to_string())?;
    let config = Config::load(&cfg_path).map_err(|e| e.to_string())?;

    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("{listen}: {e}"))?;
    let engine = crate::engine::build(&config).await?;
    let shared = crate::proxy::Shared::new(config)?.with_engine(engine);
    let server = tokio::spawn(crate::proxy::run(
        listener,
        std::sync::Arc::new(shared),
        shutdown.clone(),
    ));
    let port = listen.rsplit(':').next().unwrap_or_default();
    let via = |user: &str| format!("postgres://{user}@127.0.0.1:{port}/app");

    // The application writes plaintext through pgveil…
    let app = super::db::connect_through_pgveil(&via("calmony_app")).await?;
    for (email, name) in [
        ("Ada@Example.com", "Ada Lovelace"),
        ("grace@example.com", "Grace Hopper"),
        ("alan@example.com", "Alan Turing"),
    ] {
        app.execute(
            "INSERT INTO users (email, name) VALUES ($1, $2)",
            &[&email, &name],
        )
        .await
        .map_err(|e| super::db::describe(&e))?;
    }
    let seen = app
        .query("SELECT id, email, name FROM users ORDER BY id", &[])
        .await
        .map_err(|e| super::db::describe(&e))?;
    let found = app
        .query(
            "SELECT name FROM users WHERE email = $1",
            &[&"ada@example.com"],
        )
        .await
        .map_err(|e| super::db::describe(&e))?;
    // …and an analyst connected through pgveil, like everyone without
    // `read`, gets what PostgreSQL holds: ciphertext and blind indexes.
    let analyst = super::db::connect_through_pgveil(&via("analyst")).await?;
    let raw = app_db
        .query(
            "SELECT id, encode(email, 'hex'), encode(email_bidx, 'hex'), name FROM users ORDER BY id",
            &[],
        )
        .await
        .map_err(|e| super::db::describe(&e))?;
    let analyst_rows = analyst
        .simple_query("SELECT id, email, name FROM users ORDER BY id")
        .await
        .map_err(|e| super::db::describe(&e))?;
    let analyst_rows: Vec<_> = analyst_rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    let tail = |s: &str, n: usize| s[s.len().saturating_sub(n)..].to_string();
    println!(
        "\n  the application (calmony_app, read)      | the analyst (no access): ciphertext through pgveil"
    );
    println!(
        "  id email                 name             | email           email_bidx (stored)  name"
    );
    println!(
        "  ----------------------------------------- + -------------------------------------------------"
    );
    for ((a, r), an) in seen.iter().zip(raw.iter()).zip(analyst_rows.iter()) {
        let id: i64 = a.get(0);
        let email: String = a.get(1);
        let name: String = a.get(2);
        let raw_bidx: String = r.get(2);
        let an_email = an.get(1).unwrap_or("");
        let an_name = an.get(2).unwrap_or("");
        println!(
            "  {id:<2} {email:<20} {name:<16} | \\x…{} \\x{}…  pgv1:…{}",
            tail(an_email, 10),
            &raw_bidx[..raw_bidx.len().min(12)],
            tail(an_name, 10)
        );
    }
    let found: Option<String> = found.first().map(|r| r.get(0));
    println!(
        "\n  the application looks up WHERE email = 'ada@example.com' (rewritten to the blind index): {}",
        found.as_deref().unwrap_or("no row")
    );
    // The analyst may not use the blind index as an equality oracle.
    let refused = analyst
        .simple_query("SELECT id FROM users WHERE email = 'ada@example.com'")
        .await;
    match refused {
        Err(e) => println!(
            "  the analyst tries the same lookup and is refused before PostgreSQL sees it:\n    {}",
            super::db::describe(&e)
        ),
        Ok(_) => return Err("the analyst's lookup was not refused".into()),
    }
    println!("\nConnection strings:");
    println!(
        "  application (reads plaintext):  psql {}",
        via("calmony_app")
    );
    println!("  analyst (ciphertext only):      psql {}", via("analyst"));
    println!(
        "  PostgreSQL directly:            psql {}",
        cluster.url("postgres", "app")
    );
    println!("  config used:                    {}", cfg_path.display());

    if serve_forever {
        println!("\npgveil is serving on {listen}. Press Ctrl-C to stop and remove everything.");
        let _ = tokio::signal::ctrl_c().await;
    }
    drop(app);
    drop(analyst);
    drop(app_db);
    drop(su);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    drop(cluster);
    Ok(())
}

fn write_secret(p: &Path, s: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    std::io::Write::write_all(&mut f, s.as_bytes()).map_err(|e| e.to_string())
}
