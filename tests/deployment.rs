//! Deployment: several pgveil instances sharing one keystore, least
//! privilege (no superuser, no extensions), and the checks that keep
//! `docs/cli.md`, `docs/configuration.md` and `docker/` in step with the code.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ::pgveil::crypto::envelope;
use common::*;

const POLICY: &str = include_str!("../policies/calmony.yaml");
const SCHEMA: &str = include_str!("../policies/calmony.sql");
const MASTER_KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const BIDX_KEY: &str = "a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read_repo(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// A pgveil config with the reference policy, local master key and
/// blind-index key read from files next to the config, and the given
/// keystore URL and key cache TTL.
fn config(upstream_port: u16, keystore_url: &str, cache_ttl: &str) -> String {
    format!(
        "{}policy: policy.yaml\n\
         keys:\n  provider: local\n  local:\n    master_keys:\n      - {{ id: k1, file: master.key }}\n  \
         blind_index_key: {{ file: bidx.key }}\n  \
         keystore:\n    database: {keystore_url}\n  cache_ttl: {cache_ttl}\n",
        Pgveil::config_for_port(upstream_port)
    )
}

fn start_pgveil(yaml: &str) -> Pgveil {
    let b = Pgveil::builder();
    write_file(b.dir(), "policy.yaml", POLICY);
    write_file(b.dir(), "master.key", MASTER_KEY);
    write_file(b.dir(), "bidx.key", BIDX_KEY);
    b.start(yaml)
}

/// (key version, row id) of every stored `users.email`, read directly.
async fn email_versions(direct: &tokio_postgres::Client) -> BTreeMap<i64, u32> {
    direct
        .query(
            "SELECT id, email FROM users WHERE email IS NOT NULL ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let env: Vec<u8> = r.get(1);
            let key = envelope::peek_key(&env).expect("stored value is an envelope");
            (r.get::<_, i64>(0), key.version)
        })
        .collect()
}

async fn insert_user(c: &tokio_postgres::Client, email: &str, name: &str) -> i64 {
    c.query_one(
        "INSERT INTO users (email, name) VALUES ($1, $2) RETURNING id",
        &[&email, &name],
    )
    .await
    .unwrap_or_else(|e| panic!("insert {email}: {}", err_text(&e)))
    .get(0)
}

async fn lookup_name(c: &tokio_postgres::Client, email: &str) -> Option<String> {
    c.query_opt("SELECT name FROM users WHERE email = $1", &[&email])
        .await
        .unwrap_or_else(|e| panic!("lookup {email}: {}", err_text(&e)))
        .map(|r| r.get(0))
}

/// Two instances against one cluster and one keystore: what one writes the
/// other reads and finds by blind index, and a data-key rotation made
/// elsewhere (as `pgveil rotate` or an operator would) reaches both within
/// `keys.cache_ttl`.
#[tokio::test]
async fn two_instances_share_the_keystore() {
    const TTL: Duration = Duration::from_secs(2);
    let pg = PgCluster::start(Hba::Trust);
    pg.create_database("app");
    pg.create_database("pgveil_keys");
    pg.psql("app", SCHEMA);
    pg.create_role("calmony_app", None);
    pg.psql(
        "app",
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO calmony_app;
         GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO calmony_app;",
    );
    let keystore = format!("postgres://postgres@127.0.0.1:{}/pgveil_keys", pg.port());
    let a = start_pgveil(&config(pg.port(), &keystore, "2s"));
    let b = start_pgveil(&config(pg.port(), &keystore, "2s"));
    assert_ne!(a.port(), b.port());
    let ca = a.connect("calmony_app", None, "app").await;
    let cb = b.connect("calmony_app", None, "app").await;
    let direct = pg.connect("postgres", None, "app").await;

    // Written through one, read back and found through the other.
    insert_user(&ca, "ann@example.com", "Ann via A").await;
    insert_user(&cb, "bob@example.com", "Bob via B").await;
    assert_eq!(
        lookup_name(&cb, " ANN@example.com").await.as_deref(),
        Some("Ann via A")
    );
    assert_eq!(
        lookup_name(&ca, "bob@example.com").await.as_deref(),
        Some("Bob via B")
    );
    for c in [&ca, &cb] {
        let rows = c
            .query("SELECT email, name FROM users ORDER BY id", &[])
            .await
            .unwrap();
        let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            got,
            vec![
                ("ann@example.com".into(), "Ann via A".into()),
                ("bob@example.com".into(), "Bob via B".into())
            ]
        );
    }
    // Both instances used the one data key the keystore holds for the table.
    let before = email_versions(&direct).await;
    let v1: BTreeSet<u32> = before.values().copied().collect();
    assert_eq!(
        v1.len(),
        1,
        "one data-key version before rotation: {before:?}"
    );
    let v1 = *v1.iter().next().unwrap();

    // Rotate the data key of public.users from a third process sharing the
    // keystore: the operator's `pgveil keys rotate`.
    let rotated_at = Instant::now();
    let out = pgveil_cmd()
        .args(["keys", "rotate", "--table", "public.users", "--config"])
        .arg(a.config_path())
        .current_dir(a.dir())
        .env_remove("PGVEIL_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgveil keys rotate: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_version: u32 = stdout
        .split_once("new writes now use data key ")
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no new version in: {stdout}"));
    assert_eq!(new_version, v1 + 1, "{stdout}");
    let current = pg.psql(
        "pgveil_keys",
        "SELECT max(version) FROM pgveil_data_keys JOIN pgveil_key_families USING (key_id) \
         WHERE scope = 'public.users' AND retired_at IS NULL",
    );
    assert_eq!(current.trim(), new_version.to_string());

    // Each instance writes under the new version once its cache entry
    // expires (cache_ttl). How long that took is printed, not asserted: the
    // deadline only keeps a pgveil that never notices from hanging the test.
    let deadline = Instant::now() + TTL + Duration::from_secs(60);
    let mut seen: [Option<Duration>; 2] = [None, None];
    let mut n = 0;
    while seen.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "rotation never seen (cache_ttl {TTL:?}): seen {seen:?}\n{}",
            pg.psql("pgveil_keys", "SELECT * FROM pgveil_data_keys")
        );
        for (i, c) in [&ca, &cb].into_iter().enumerate() {
            if seen[i].is_some() {
                continue;
            }
            n += 1;
            let id = insert_user(c, &format!("poll{n}@example.com"), &format!("Poll {n}")).await;
            let v = email_versions(&direct).await[&id];
            assert!(v == v1 || v == new_version, "unexpected version {v}");
            if v == new_version {
                seen[i] = Some(rotated_at.elapsed());
            }
        }
        if seen.iter().any(Option::is_none) {
            // Poll interval while waiting for the condition.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "rotation v{v1} -> v{} first used by A after {:?}, by B after {:?} (cache_ttl {TTL:?})",
        new_version,
        seen[0].unwrap(),
        seen[1].unwrap()
    );

    // Old and new versions decrypt through both instances, and lookups of
    // both find their rows.
    let versions: BTreeSet<u32> = email_versions(&direct).await.values().copied().collect();
    assert_eq!(versions, BTreeSet::from([v1, new_version]));
    let after_a = insert_user(&ca, "cy@example.com", "Cy after").await;
    assert_eq!(email_versions(&direct).await[&after_a], new_version);
    for c in [&ca, &cb] {
        assert_eq!(
            lookup_name(c, "ann@example.com").await.as_deref(),
            Some("Ann via A")
        );
        assert_eq!(
            lookup_name(c, "cy@example.com").await.as_deref(),
            Some("Cy after")
        );
        let rows = c.query("SELECT email, name FROM users", &[]).await.unwrap();
        assert_eq!(rows.len(), 3 + n);
        for r in &rows {
            let email: String = r.get(0);
            assert!(email.ends_with("@example.com"), "{email:?}");
        }
    }
    // Nothing of what was written (and read back above) is stored or logged
    // in plaintext anywhere in the cluster or in either instance's log.
    let (la, lb) = (a.logs(), b.logs());
    let mut sentinels = vec![
        "ann@example.com".to_string(),
        "bob@example.com".into(),
        "Ann via A".into(),
        "Bob via B".into(),
        "cy@example.com".into(),
        "Cy after".into(),
    ];
    sentinels.extend((1..=n).map(|i| format!("poll{i}@example.com")));
    let refs: Vec<&str> = sentinels.iter().map(String::as_str).collect();
    scan::assert_absent(
        &pg,
        &refs,
        &[
            ("pgveil A's log", la.as_bytes()),
            ("pgveil B's log", lb.as_bytes()),
        ],
    )
    .await;
}

fn extensions(pg: &PgCluster) -> String {
    ["postgres", "app", "pgveil_keys", "template1"]
        .iter()
        .map(|db| {
            format!(
                "{db}: {}",
                pg.psql(
                    db,
                    "SELECT string_agg(extname || ' ' || extversion, ',' ORDER BY extname) FROM pg_extension"
                )
                .trim()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// pgveil needs nothing beyond the application's own role and a keystore
/// role: both are ordinary NOSUPERUSER logins that own one database each
/// (and may connect to nothing else), authentication is SCRAM relayed to
/// PostgreSQL, and no extension is created anywhere.
#[tokio::test]
async fn least_privilege_no_superuser_no_extensions() {
    let pg = PgCluster::start(Hba::Scram);
    pg.create_role("calmony_app", Some("app-secret"));
    pg.create_role("pgveil_keys", Some("keys-secret"));
    pg.create_database_owned("app", "calmony_app");
    pg.create_database_owned("pgveil_keys", "pgveil_keys");
    pg.psql(
        "postgres",
        "REVOKE CONNECT ON DATABASE app, pgveil_keys, postgres FROM PUBLIC;",
    );
    let attrs = "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls \
                 FROM pg_roles WHERE rolname IN ('calmony_app', 'pgveil_keys') ORDER BY rolname";
    let roles_before = pg.psql("postgres", attrs);
    assert_eq!(
        roles_before, "calmony_app|f|f|f|f|f\npgveil_keys|f|f|f|f|f\n",
        "both roles are plain logins"
    );
    let memberships = "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member \
                       WHERE r.rolname IN ('calmony_app', 'pgveil_keys')";
    assert_eq!(pg.psql("postgres", memberships).trim(), "0");
    let ext_before = extensions(&pg);

    // The application owner creates its own schema; nobody else touches it.
    let owner = pg.connect("calmony_app", Some("app-secret"), "app").await;
    owner.batch_execute(SCHEMA).await.unwrap();
    // The keystore role may not even connect to the data database.
    let Err(denied) = try_connect_to(pg.port(), "pgveil_keys", Some("keys-secret"), "app").await
    else {
        panic!("keystore role must not reach the app database");
    };
    assert!(err_text(&denied).contains("42501"), "{}", err_text(&denied));

    let keystore = format!(
        "postgres://pgveil_keys:keys-secret@127.0.0.1:{}/pgveil_keys",
        pg.port()
    );
    let pv = start_pgveil(&config(pg.port(), &keystore, "300s"));
    let app = pv.connect("calmony_app", Some("app-secret"), "app").await;

    // Inserts (params and literals, a tenant table), lookups, reads.
    insert_user(&app, "Dora@Example.com ", "Dora").await;
    app.simple_query("INSERT INTO users (email, name) VALUES ('eve@example.com', 'Eve')")
        .await
        .unwrap();
    app.execute(
        "INSERT INTO pay_customers (org_id, email, name, postal_code) VALUES ($1, $2, $3, $4)",
        &[&7i64, &"payer@example.com", &"Payer", &"sw1a 1aa"],
    )
    .await
    .unwrap();
    assert_eq!(
        lookup_name(&app, "dora@example.com").await.as_deref(),
        Some("Dora")
    );
    assert_eq!(
        lookup_name(&app, "eve@example.com").await.as_deref(),
        Some("Eve")
    );
    let r = app
        .query_one(
            "SELECT name, postal_code FROM pay_customers WHERE email = $1",
            &[&"PAYER@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "Payer");
    assert_eq!(r.get::<_, String>(1), "sw1a 1aa");
    app.execute(
        "UPDATE users SET name = $1 WHERE email = $2",
        &[&"Eve B", &"eve@example.com"],
    )
    .await
    .unwrap();
    assert_eq!(
        lookup_name(&app, "eve@example.com").await.as_deref(),
        Some("Eve B")
    );
    // A refused statement is raised by PostgreSQL for an unprivileged role too.
    let e = app
        .query("SELECT email FROM users ORDER BY email", &[])
        .await
        .unwrap_err();
    assert_eq!(
        e.code().map(|c| c.code()),
        Some("0A000"),
        "{}",
        err_text(&e)
    );

    // PostgreSQL holds ciphertext (every value above was read back through
    // pgveil); the keystore lives in its own database, owned by the keystore
    // role; the data database got nothing of pgveil's.
    let logs = pv.logs();
    scan::assert_absent(
        &pg,
        &[
            "dora@example.com",
            "eve@example.com",
            "payer@example.com",
            "sw1a 1aa",
        ],
        &[("pgveil's log", logs.as_bytes())],
    )
    .await;
    assert_eq!(
        pg.psql(
            "pgveil_keys",
            "SELECT tablename || ':' || tableowner FROM pg_tables \
             WHERE schemaname = 'public' ORDER BY 1"
        ),
        "pgveil_data_keys:pgveil_keys\npgveil_key_families:pgveil_keys\n"
    );
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner \
             WHERE c.relname LIKE 'pgveil%' OR r.rolname <> 'calmony_app' \
             AND c.relnamespace IN (SELECT oid FROM pg_namespace WHERE nspname IN ('public', 'phi'))"
        )
        .trim(),
        "0"
    );
    assert_eq!(
        pg.psql(
            "pgveil_keys",
            "SELECT count(*) FROM pgveil_data_keys WHERE wrapped IS NOT NULL"
        )
        .trim(),
        "2",
        "one data key for users, one for org 7 of pay_customers"
    );
    // No extension was needed, and no role gained anything.
    assert_eq!(extensions(&pg), ext_before);
    assert_eq!(pg.psql("postgres", attrs), roles_before);
    assert_eq!(pg.psql("postgres", memberships).trim(), "0");
}

// ---------------------------------------------------------------------------
// Documentation and packaging checks (no database).

fn help(args: &[&str]) -> String {
    let out = pgveil_cmd()
        .args(args)
        .arg("--help")
        .env_remove("PGVEIL_CONFIG")
        .env("COLUMNS", "100")
        .output()
        .expect("run pgveil --help");
    assert!(
        out.status.success(),
        "pgveil {} --help: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// Subcommands listed under `Commands:` (without clap's `help`).
fn subcommands(help: &str) -> Vec<String> {
    let mut in_cmds = false;
    let mut out = Vec::new();
    for line in help.lines() {
        if line == "Commands:" {
            in_cmds = true;
            continue;
        }
        if in_cmds {
            if !line.starts_with("  ") {
                break;
            }
            let name = line.split_whitespace().next().unwrap();
            if name != "help" {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Every `--long` flag under `Options:`.
fn flags(help: &str) -> Vec<String> {
    let mut in_opts = false;
    let mut out = Vec::new();
    for line in help.lines() {
        if line == "Options:" {
            in_opts = true;
            continue;
        }
        if in_opts && line.trim_start().starts_with('-') {
            for word in line.split(|c: char| c.is_whitespace() || c == ',') {
                if let Some(f) = word.strip_prefix("--")
                    && !f.is_empty()
                {
                    out.push(format!("--{f}"));
                }
            }
        }
    }
    out
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The text under the heading "## `pgveil …`" up to the next "## ".
fn doc_section<'a>(doc: &'a str, command: &str) -> Option<&'a str> {
    let heading = format!("## `{command}`\n");
    let start = doc.find(&heading)? + heading.len();
    let rest = &doc[start..];
    let end = rest.find("\n## ").map(|i| i + 1).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// `docs/cli.md` is the CLI reference generated from the `--help` texts:
/// every command (found by walking `pgveil --help`) has a section that holds
/// its about line, each of its flags, and its `--help` output verbatim.
#[test]
fn cli_reference_matches_help() {
    let doc = read_repo("docs/cli.md");
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    while let Some(path) = todo.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args);
        let command = std::iter::once("pgveil")
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        for sub in subcommands(&text) {
            let mut p = path.clone();
            p.push(sub);
            todo.push(p);
        }
        checked.push(command.clone());
        let block = format!("```text\n$ {command} --help\n{}```", text);
        let Some(section) = doc_section(&doc, &command) else {
            problems.push(format!(
                "docs/cli.md has no section \"## `{command}`\"; add it with:\n\n{block}\n"
            ));
            continue;
        };
        let about = text.split("\n\n").next().unwrap();
        if !squash(section).contains(&squash(about)) {
            problems.push(format!(
                "docs/cli.md `{command}`: about line missing: {about:?}"
            ));
        }
        // `--help` is on every command; it is documented once, at the top.
        for f in flags(&text)
            .into_iter()
            .filter(|f| f != "--help" || args.is_empty())
        {
            if !section.contains(&format!("`{f}")) {
                problems.push(format!(
                    "docs/cli.md `{command}`: flag {f} is not documented (write it as `{f}`)"
                ));
            }
        }
        if !section.contains(&block) {
            problems.push(format!(
                "docs/cli.md `{command}`: the --help output changed; replace the block with:\n\n{block}\n"
            ));
        }
    }
    // Every command section in the doc still exists in the binary.
    for line in doc.lines() {
        if let Some(cmd) = line.strip_prefix("## `").and_then(|l| l.strip_suffix('`'))
            && cmd.starts_with("pgveil")
            && !checked.iter().any(|c| c == cmd)
        {
            problems.push(format!(
                "docs/cli.md documents `{cmd}`, which pgveil --help does not list"
            ));
        }
    }
    assert!(checked.len() >= 6, "walked only {checked:?}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The fields of every `Deserialize` struct in src/config.rs, with their
/// types: struct name → [(field, type)].
fn config_structs(src: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    let mut derive = false;
    let mut current: Option<String> = None;
    let mut skip_next = false;
    for line in src.lines() {
        let t = line.trim();
        if t.starts_with("#[derive(") {
            derive = t.contains("Deserialize");
        } else if let Some(rest) = t.strip_prefix("pub struct ") {
            if derive {
                let name = rest.split([' ', '{']).next().unwrap().to_string();
                out.insert(name.clone(), Vec::new());
                current = Some(name);
            }
            derive = false;
        } else if t == "}" {
            current = None;
        } else if t.starts_with("#[serde(skip") {
            skip_next = true;
        } else if let (Some(cur), Some(rest)) = (&current, t.strip_prefix("pub "))
            && let Some((field, ty)) = rest.split_once(':')
            && !std::mem::take(&mut skip_next)
        {
            out.get_mut(cur).unwrap().push((
                field.trim().to_string(),
                ty.trim().trim_end_matches(',').to_string(),
            ));
        }
    }
    out
}

/// Dotted YAML paths of every leaf key reachable from `Config`.
fn config_paths(
    structs: &BTreeMap<String, Vec<(String, String)>>,
    name: &str,
    prefix: &str,
    out: &mut Vec<String>,
) {
    for (field, ty) in &structs[name] {
        let (inner, list) = match ty.strip_prefix("Vec<") {
            Some(t) => (t.trim_end_matches('>'), true),
            None => (
                ty.strip_prefix("Option<")
                    .map(|t| t.trim_end_matches('>'))
                    .unwrap_or(ty),
                false,
            ),
        };
        let path = format!("{prefix}{field}{}", if list { "[]" } else { "" });
        if structs.contains_key(inner) {
            config_paths(structs, inner, &format!("{path}."), out);
        } else {
            out.push(path);
        }
    }
}

/// `docs/configuration.md` names every key pgveil.yaml accepts, by its
/// dotted path (read from the structs of src/config.rs).
#[test]
fn configuration_reference_covers_every_key() {
    let structs = config_structs(&read_repo("src/config.rs"));
    let mut paths = Vec::new();
    config_paths(&structs, "Config", "", &mut paths);
    assert!(
        paths.contains(&"keys.keystore.database".to_string())
            && paths.contains(&"keys.local.master_keys[].env".to_string())
            && paths.contains(&"limits.max_message_bytes".to_string()),
        "config.rs parsing went wrong: {paths:?}"
    );
    let doc = read_repo("docs/configuration.md");
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !doc.contains(&format!("`{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not document {missing:?} (write each as `dotted.path`)"
    );
}

/// The Docker files agree with the README and the repository: the image
/// builds the way the README does, runs the configuration it ships, exposes
/// the ports that configuration listens on, and that configuration loads
/// with the reference policy.
#[test]
fn docker_files_match_readme_and_config() {
    let dockerfile = read_repo("docker/Dockerfile");
    let compose = read_repo("docker/compose.yaml");
    let readme = read_repo("README.md");
    let build = dockerfile
        .lines()
        .filter(|l| l.trim_start().starts_with("RUN "))
        .find_map(|l| l.split_once("cargo build"))
        .map(|(_, flags)| flags.split(['\\', '&']).next().unwrap().trim())
        .expect("Dockerfile runs cargo build");
    assert_eq!(build, "--release --locked");
    // The README builds/runs with --release and tests with --locked.
    assert!(
        readme.contains("cargo run --release"),
        "README lost its run command"
    );
    assert!(
        readme.contains("cargo test --locked"),
        "README lost its test command"
    );
    // Base images pinned: the Rust release (at least the crate's
    // rust-version) and Debian's.
    let rust_image = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_IMAGE=rust:"))
        .expect("Dockerfile pins the Rust image");
    let version: Vec<u32> = rust_image
        .split('-')
        .next()
        .unwrap()
        .split('.')
        .map(|p| p.parse().expect("an exact Rust release, e.g. 1.95.0"))
        .collect();
    assert_eq!(version.len(), 3, "{rust_image}: pin the exact release");
    let manifest = read_repo("Cargo.toml");
    let msrv: Vec<u32> = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"')
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(
        version[..2] >= msrv[..2],
        "{rust_image} is older than rust-version"
    );
    assert!(dockerfile.contains("ARG RUNTIME_IMAGE=debian:12-slim"));
    // Dependencies build in their own layer, before the sources are copied,
    // with a stub for every target Cargo.toml declares.
    let deps = dockerfile
        .find("COPY Cargo.toml Cargo.lock ./")
        .expect("deps layer");
    let all = dockerfile.find("COPY . .").expect("sources copied");
    assert!(deps < all, "the dependency layer comes first");
    for bench in manifest
        .split("[[bench]]")
        .skip(1)
        .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("name = ")))
    {
        let stub = format!("benches/{}.rs", bench.trim_matches('"'));
        assert!(
            dockerfile[deps..all].contains(&stub),
            "the dependency layer lacks a stub for {stub}"
        );
    }
    for needle in [
        "FROM ${RUST_IMAGE} AS build",
        "FROM ${RUNTIME_IMAGE}",
        "ca-certificates",
        "USER pgveil",
        "EXPOSE 6432 9187",
        r#"ENTRYPOINT ["pgveil"]"#,
        r#"CMD ["serve", "--config", "/etc/pgveil/pgveil.yaml"]"#,
        // The health check probes the config CMD serves (its metrics.listen).
        r#"CMD ["pgveil", "healthcheck", "--config", "/etc/pgveil/pgveil.yaml"]"#,
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle:?}");
    }
    assert!(
        dockerfile.contains("HEALTHCHECK "),
        "Dockerfile has no HEALTHCHECK"
    );
    // compose mounts the demo config where CMD looks and the policies beside it.
    for needle in [
        "./pgveil.yaml:/etc/pgveil/pgveil.yaml:ro",
        "../policies:/etc/pgveil/policies:ro",
        "./prometheus.yml:/etc/prometheus/prometheus.yml:ro",
        "postgres:15",
        "pgveil:9187",
    ] {
        assert!(
            compose.contains(needle) || read_repo("docker/prometheus.yml").contains(needle),
            "compose.yaml / prometheus.yml lack {needle:?}"
        );
    }
    for f in ["policies/calmony.yaml", "policies/calmony.sql"] {
        assert!(repo(f).exists(), "{f} (mounted by compose) is missing");
    }

    // The shipped config loads and its policy validates, laid out as in the
    // container (/etc/pgveil/pgveil.yaml + /etc/pgveil/policies/).
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo("docker/pgveil.yaml"), dir.path().join("pgveil.yaml")).unwrap();
    write_file(dir.path(), "policies/calmony.yaml", POLICY);
    let out = pgveil_cmd()
        .args(["policy", "check", "--offline", "--config"])
        .arg(dir.path().join("pgveil.yaml"))
        .env_remove("PGVEIL_CONFIG")
        .env("PGVEIL_MASTER_KEY", MASTER_KEY)
        .env("PGVEIL_BLIND_INDEX_KEY", BIDX_KEY)
        .env(
            "PGVEIL_KEYSTORE_URL",
            "postgres://pgveil_keys@db/pgveil_keys",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker/pgveil.yaml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = ::pgveil::config::Config::load(&dir.path().join("pgveil.yaml"));
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => panic!("docker/pgveil.yaml: {e}"),
    };
    assert_eq!(cfg.listen_addr().port(), 6432);
    let metrics = cfg.metrics.as_ref().expect("metrics enabled in the image");
    assert!(metrics.listen.as_str().ends_with(":9187"));
}

/// PgBouncer (session mode) between pgveil and PostgreSQL: pgveil needs
/// nothing a pooler hides (its catalog query and statements run on the
/// client's own server connection).
#[tokio::test]
async fn works_in_front_of_pgbouncer_session_mode() {
    let pgbouncer = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("pgbouncer is installed (.ci/run installs it)");
    let pg = PgCluster::start(Hba::Trust);
    pg.create_database("app");
    pg.create_database("pgveil_keys");
    pg.create_role("calmony_app", None);
    pg.psql("app", SCHEMA);
    pg.psql(
        "app",
        "GRANT USAGE ON SCHEMA phi TO PUBLIC; GRANT ALL ON ALL TABLES IN SCHEMA public, phi TO PUBLIC; \
         GRANT ALL ON ALL SEQUENCES IN SCHEMA public, phi TO PUBLIC;",
    );
    // PgBouncer refuses to run as root: give it a directory the postgres
    // user owns when the tests run as root.
    let dir = tempfile::Builder::new()
        .prefix("pgveil-pgb-")
        .tempdir()
        .unwrap();
    std::fs::write(
        dir.path().join("userlist.txt"),
        "\"calmony_app\" \"\"\n\"postgres\" \"\"\n",
    )
    .unwrap();
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    /// Stops PgBouncer: by its pidfile (runuser does not forward signals),
    /// then the child itself.
    struct Kill(std::process::Child, PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(&self.1) {
                let _ = std::process::Command::new("kill").arg(pid.trim()).status();
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // The port was free a moment ago; another process may take it before
    // PgBouncer binds it, so a PgBouncer that exits at start is retried on a
    // new port.
    let mut started = None;
    for _attempt in 0..5 {
        let port = free_port();
        std::fs::write(
            dir.path().join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port={}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}/userlist.txt\npool_mode = session\n\
                 logfile = {}/pgbouncer.log\npidfile = {}/pgbouncer.pid\n\
                 ignore_startup_parameters = extra_float_digits,options\n",
                pg.port(),
                dir.path().display(),
                dir.path().display(),
                dir.path().display()
            ),
        )
        .unwrap();
        let mut cmd = if is_root {
            std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", pgbouncer]);
            c
        } else {
            std::process::Command::new(pgbouncer)
        };
        let mut guard = Kill(
            cmd.arg(dir.path().join("pgbouncer.ini"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
            dir.path().join("pgbouncer.pid"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut exited = None;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pgbouncer did not start");
            if let Ok(Some(s)) = guard.0.try_wait() {
                exited = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        match exited {
            None => {
                started = Some((port, guard));
                break;
            }
            Some(s) => eprintln!(
                "pgbouncer exited with {s} on port {port}, retrying: {}",
                std::fs::read_to_string(dir.path().join("pgbouncer.log")).unwrap_or_default()
            ),
        }
    }
    let (port, _guard) = started.expect("pgbouncer did not start on any of 5 ports");
    let keystore = format!("postgres://postgres@127.0.0.1:{}/pgveil_keys", pg.port());
    let pv = start_pgveil(&config(port, &keystore, "300s"));
    let app = pv.connect("calmony_app", None, "app").await;
    insert_user(&app, "pat@example.com", "Pat Pooled").await;
    assert_eq!(
        lookup_name(&app, "PAT@example.com ").await.as_deref(),
        Some("Pat Pooled")
    );
    let direct = pg.connect("postgres", None, "app").await;
    let raw: Vec<u8> = direct
        .query_one("SELECT email FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert!(envelope::is_envelope(&raw), "stored as an envelope");
    let logs = pv.logs();
    let bouncer_log = std::fs::read(dir.path().join("pgbouncer.log")).unwrap_or_default();
    scan::assert_absent(
        &pg,
        &["pat@example.com", "Pat Pooled"],
        &[
            ("pgveil's log", logs.as_bytes()),
            ("pgbouncer's log", &bouncer_log),
        ],
    )
    .await;
}

/// The shipped example config loads as it is: its client TLS files come
/// from variables that may be unset while the mode is `prefer` (no TLS is
/// offered then); what `policy check` still asks for is only the secrets
/// themselves, each named with its line.
#[test]
fn shipped_example_config_checks_without_tls_variables() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo("pgveil.example.yaml"), dir.path().join("pgveil.yaml")).unwrap();
    write_file(dir.path(), "policies/calmony.yaml", POLICY);
    let out = pgveil_cmd()
        .args(["policy", "check", "--offline", "--json", "--config"])
        .arg(dir.path().join("pgveil.yaml"))
        .env_remove("PGVEIL_CONFIG")
        .env_remove("PGVEIL_TLS_CERT")
        .env_remove("PGVEIL_TLS_KEY")
        .env("PGVEIL_MASTER_KEY_K2", MASTER_KEY)
        .env("PGVEIL_BLIND_INDEX_KEY", BIDX_KEY)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let problems = v["problems"].as_array().unwrap();
    // The one file-based master key (/run/secrets/pgveil_k1) is the only
    // thing missing here.
    assert_eq!(problems.len(), 1, "{v}");
    assert!(
        problems[0]
            .as_str()
            .unwrap()
            .contains("master key k1: cannot read /run/secrets/pgveil_k1"),
        "{v}"
    );
    // With mode require, an unset TLS variable is an error with its line.
    let text = read_repo("pgveil.example.yaml").replace("mode: prefer", "mode: require");
    std::fs::write(dir.path().join("pgveil.yaml"), text).unwrap();
    let out = pgveil_cmd()
        .args(["policy", "check", "--offline", "--config"])
        .arg(dir.path().join("pgveil.yaml"))
        .env_remove("PGVEIL_CONFIG")
        .env_remove("PGVEIL_TLS_CERT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("client_tls (mode require)") && err.contains("PGVEIL_TLS_CERT"),
        "{err}"
    );
}
