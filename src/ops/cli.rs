//! Command line (clap). Exit codes: 0 success, 1 a problem the user must
//! fix (printed), 2 usage.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "pgveil",
    version,
    about = "Transparent encrypting PostgreSQL proxy",
    long_about = "pgveil sits between applications and PostgreSQL, encrypts the columns a policy protects, \
                  keeps blind indexes for equality lookups, and decrypts results only for roles the policy lets read."
)]
/// The command line: one subcommand.
pub struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `pgveil`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy.
    ///
    /// SIGHUP reloads the configuration (and reopens the audit log);
    /// SIGTERM/SIGINT stop accepting and let sessions finish for
    /// shutdown_timeout.
    Serve {
        /// Configuration file (default ./pgveil.yaml, or $PGVEIL_CONFIG).
        #[arg(long, env = "PGVEIL_CONFIG", default_value = "pgveil.yaml")]
        config: PathBuf,
        /// Log line format on stderr (overrides log.format).
        #[arg(long, value_enum)]
        log_format: Option<crate::config::LogFormat>,
    },
    /// Make the pgveil running with this config reload it (policy, TLS
    /// certificates, auth file, audit log): through the metrics listener
    /// when configured (prints the outcome), else SIGHUP to the process in
    /// pid_file.
    Reload {
        #[arg(long, env = "PGVEIL_CONFIG", default_value = "pgveil.yaml")]
        config: PathBuf,
    },
    /// Probe the pgveil running with this config (its metrics listener):
    /// exit 0 when /healthz (with --ready: /readyz) answers 200. For
    /// container health checks in images without curl.
    Healthcheck {
        #[arg(long, env = "PGVEIL_CONFIG", default_value = "pgveil.yaml")]
        config: PathBuf,
        /// Check readiness (PostgreSQL, keystore, master keys) instead of
        /// liveness.
        #[arg(long)]
        ready: bool,
    },
    /// Start a throwaway PostgreSQL with the reference schema and policy,
    /// run pgveil in front of it, write a few rows, show what the
    /// application and PostgreSQL each see, and serve until Ctrl-C.
    Demo {
        /// Exit after printing instead of serving until Ctrl-C.
        #[arg(long)]
        no_wait: bool,
    },
    /// Validate the policy; with --database, check the live schema against it.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Backfill: encrypt plaintext values of protected columns in place and
    /// fill their blind indexes, in primary-key order, one short
    /// transaction per batch. Idempotent and resumable: values that are
    /// already envelopes are skipped, so after an interruption run it again.
    Encrypt {
        #[arg(long, env = "PGVEIL_CONFIG", default_value = "pgveil.yaml")]
        config: PathBuf,
        /// PostgreSQL URL of the data database (connect directly, not
        /// through pgveil), e.g. postgres://owner@host/db
        #[arg(long)]
        database: String,
        #[command(flatten)]
        pass: RowPass,
    },
    /// Re-encrypt every value whose data-key version is not the current one
    /// for its table and tenant (after `pgveil keys rotate`), fill missing
    /// blind indexes and `blind_index.next` columns, and re-wrap data keys
    /// not under the current master key. Batched and resumable like `encrypt`.
    Rotate {
        #[arg(long, env = "PGVEIL_CONFIG", default_value = "pgveil.yaml")]
        config: PathBuf,
        /// PostgreSQL URL of the data database (direct, not through pgveil).
        #[arg(long)]
        database: String,
        #[command(flatten)]
        pass: RowPass,
        /// First create a new data-key version for every (table, tenant) of
        /// the selected tables (as `pgveil keys rotate`). Running pgveil
        /// instances may keep writing under the old version for up to
        /// keys.cache_ttl: prefer `keys rotate`, wait, then `rotate`.
        #[arg(long)]
        new_version: bool,
    },
    /// Crypto-shredding: destroy every data key of a tenant in the keystore.
    /// Its values become unreadable everywhere (live table, replicas, dumps
    /// and backups of the data database), provided the keystore is not
    /// restored from a backup taken before (see docs/operations.md).
    Shred {
        #[arg(long, env = "PGVEIL_CONFIG", default_value = "pgveil.yaml")]
        config: PathBuf,
        /// The tenant id, as the tenant column's value in text form.
        #[arg(long)]
        tenant: String,
        /// Show what would become unreadable and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation (scripts; there is no undo).
        #[arg(long)]
        yes: bool,
    },
    /// Key utilities.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

/// The options `encrypt` and `rotate` share: where the password comes
/// from, which table, and how the row pass is batched.
#[derive(clap::Args, Debug)]
pub struct RowPass {
    /// Password for --database when its connection string has none: this
    /// file's first line (else PGPASSWORD, else ~/.pgpass, as libpq).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Only this table (schema.table, or a table name the policy has once).
    #[arg(long)]
    pub table: Option<String>,
    /// Rows per transaction.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch: u32,
    /// Batches processed in parallel, each on its own connection.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
}

/// The subcommands of `pgveil policy`.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Pre-flight everything `serve` needs, reporting every problem at once:
    /// the config and policy (file:line), the secrets (master keys,
    /// blind-index key), the keystore and master key provider (unless
    /// --offline); with --database, that protected, blind-index and tenant
    /// columns exist with the right types (printing the ALTER TABLE that
    /// fixes each problem).
    Check {
        #[arg(long, env = "PGVEIL_CONFIG", default_value = "pgveil.yaml")]
        config: PathBuf,
        /// Skip the checks that need the network (keystore, KMS).
        #[arg(long)]
        offline: bool,
        /// One JSON object on stdout: {"ok", "passed": [...], "problems": [...]}.
        #[arg(long)]
        json: bool,
        /// PostgreSQL URL of the database to check, e.g. postgres://user@host/db
        #[arg(long)]
        database: Option<String>,
        /// Password for --database when its connection string has none: this
        /// file's first line (else PGPASSWORD, else ~/.pgpass, as libpq).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}

/// The subcommands of `pgveil keys`.
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Print a new random 256-bit key (hex) for the local provider.
    Generate,
    /// List data-key versions (key id, version, table, tenant, master key,
    /// created, state, encryptions) without unwrapping anything.
    List {
        #[arg(long, env = "PGVEIL_CONFIG", default_value = "pgveil.yaml")]
        config: PathBuf,
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
        /// One JSON array on stdout, an object per key version.
        #[arg(long)]
        json: bool,
    },
    /// Create a new data-key version for new writes (older versions still
    /// decrypt); then run `pgveil rotate` to re-encrypt existing rows.
    Rotate {
        #[arg(long, env = "PGVEIL_CONFIG", default_value = "pgveil.yaml")]
        config: PathBuf,
        /// Only this table (schema.table or table name); all tables otherwise.
        #[arg(long)]
        table: Option<String>,
        /// Only this tenant's key.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Master-key rotation: re-wrap every data key under the provider's
    /// current master key (the first of keys.local.master_keys, or
    /// keys.aws_kms.key_id). No rows are touched.
    Rewrap {
        #[arg(long, env = "PGVEIL_CONFIG", default_value = "pgveil.yaml")]
        config: PathBuf,
    },
}

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    if let Some(f) = password_file(&cli.command) {
        crate::ops::db::set_password_file(f.clone());
    }
    match cli.command {
        Command::Serve { config, log_format } => serve(config, log_format),
        Command::Reload { config } => match load_config(&config) {
            Ok(cfg) => crate::proxy::reload::command(&cfg),
            Err(code) => code,
        },
        Command::Healthcheck { config, ready } => match load_config(&config) {
            Ok(cfg) => match &cfg.metrics {
                Some(m) => crate::health::command(m.listen.as_str(), ready),
                None => {
                    eprintln!(
                        "{}: no metrics.listen configured: the health endpoints live there",
                        config.display()
                    );
                    1
                }
            },
            Err(code) => code,
        },
        Command::Demo { no_wait } => {
            init_logging_default("warn");
            match runtime().block_on(crate::ops::demo::run(!no_wait)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
        Command::Policy {
            command:
                PolicyCommand::Check {
                    config,
                    database,
                    offline,
                    json,
                    ..
                },
        } => policy_check(config, database, offline, json),
        Command::Encrypt {
            config,
            database,
            pass: RowPass {
                table, batch, jobs, ..
            },
        } => backfill(
            config,
            database,
            table,
            (batch, jobs),
            crate::ops::backfill::Mode::Encrypt,
            false,
        ),
        Command::Rotate {
            config,
            database,
            pass: RowPass {
                table, batch, jobs, ..
            },
            new_version,
        } => backfill(
            config,
            database,
            table,
            (batch, jobs),
            crate::ops::backfill::Mode::Rotate,
            new_version,
        ),
        Command::Shred {
            config,
            tenant,
            dry_run,
            yes,
        } => {
            let confirm = match (dry_run, yes) {
                (true, _) => crate::ops::shred::Confirm::DryRun,
                (false, true) => crate::ops::shred::Confirm::Yes,
                (false, false) => crate::ops::shred::Confirm::Ask,
            };
            with_keys(&config, move |k| {
                Box::pin(async move { crate::ops::shred::shred(&k, &tenant, confirm).await })
            })
        }
        Command::Keys { command } => keys(command),
    }
}

/// The `--password-file` of a command that connects to `--database`.
fn password_file(command: &Command) -> Option<&PathBuf> {
    match command {
        Command::Encrypt {
            pass: RowPass {
                password_file: Some(f),
                ..
            },
            ..
        }
        | Command::Rotate {
            pass: RowPass {
                password_file: Some(f),
                ..
            },
            ..
        }
        | Command::Policy {
            command:
                PolicyCommand::Check {
                    password_file: Some(f),
                    ..
                },
        } => Some(f),
        _ => None,
    }
}

/// `pgveil keys …`: list, rotate, re-wrap or generate keys.
fn keys(command: KeysCommand) -> i32 {
    match command {
        KeysCommand::List {
            config,
            tenant,
            json,
        } => with_keys(&config, move |k| {
            Box::pin(async move { crate::ops::shred::list(&k, tenant.as_deref(), json).await })
        }),
        KeysCommand::Rotate {
            config,
            table,
            tenant,
        } => with_keys(&config, |k| {
            Box::pin(async move {
                crate::ops::rotate::keys_rotate(&k, table.as_deref(), tenant.as_deref()).await
            })
        }),
        KeysCommand::Rewrap { config } => with_keys(&config, |k| {
            Box::pin(async move { crate::ops::rotate::keys_rewrap(&k).await })
        }),
        KeysCommand::Generate => {
            let mut key = zeroize::Zeroizing::new([0u8; 32]);
            if aws_lc_rs::rand::fill(key.as_mut()).is_err() {
                eprintln!("error: the OS random source failed");
                return 1;
            }
            println!("{}", hex::encode(key.as_ref()));
            0
        }
    }
}

/// Logs go to stderr; `RUST_LOG` sets the level (default `info`).
pub fn init_logging() {
    init_logging_default("info")
}

fn init_logging_default(level: &str) {
    crate::logging::init(level, crate::config::LogFormat::Text);
}

fn load_config(path: &std::path::Path) -> Result<Config, i32> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        1
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Run `f` with the config's key manager (for the keystore commands).
fn with_keys(
    config: &std::path::Path,
    f: impl FnOnce(crate::keys::KeyManager) -> futures::future::BoxFuture<'static, i32>,
) -> i32 {
    init_logging_default("warn");
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    runtime().block_on(async move {
        match crate::ops::backfill::key_manager(&cfg).await {
            Ok(k) => f(k).await,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        }
    })
}

fn backfill(
    config: PathBuf,
    database: String,
    table: Option<String>,
    (batch, jobs): (u32, u32),
    mode: crate::ops::backfill::Mode,
    new_version: bool,
) -> i32 {
    use crate::ops::backfill;
    init_logging_default("warn");
    let opts = backfill::Options {
        mode,
        table,
        batch: batch as usize,
        jobs: jobs as usize,
        progress_bar: backfill::stderr_is_terminal(),
    };
    runtime().block_on(async move {
        if new_version {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let code = async {
                let setup = backfill::setup(&cfg).await?;
                let tables: Vec<String> =
                    backfill::select_tables(&setup.policy, opts.table.as_deref())?
                        .iter()
                        .map(|t| t.qualified())
                        .collect();
                let v = crate::ops::rotate::new_versions(&setup.crypto.keys, &tables, None).await?;
                for (scope, k) in &v {
                    println!(
                        "{scope}: new writes now use data key {} v{}",
                        k.key_id, k.version
                    );
                }
                Ok::<_, String>(())
            }
            .await;
            if let Err(e) = code {
                eprintln!("error: {e}");
                return 1;
            }
        }
        backfill::command(&config, &database, opts).await
    })
}

fn serve(config: PathBuf, log_format: Option<crate::config::LogFormat>) -> i32 {
    let cfg = match load_config(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::logging::init("info", log_format.unwrap_or(cfg.log.format));
    match runtime().block_on(crate::proxy::serve(cfg)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn policy_check(config: PathBuf, database: Option<String>, offline: bool, json: bool) -> i32 {
    init_logging_default("error");
    let fail = |problem: String| {
        if json {
            let r = crate::ops::preflight::Report {
                passed: vec![],
                problems: vec![problem],
            };
            println!("{}", report_json(&r));
        } else {
            eprintln!("{problem}");
        }
        1
    };
    let cfg = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let Some(path) = cfg.policy_path() else {
        return fail(format!(
            "{}: no `policy:` configured: add `policy: <file>`",
            config.display()
        ));
    };
    let policy = match crate::policy::Policy::load(&path) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let report = runtime().block_on(crate::ops::preflight::run(
        &cfg,
        &policy,
        &text,
        database.as_deref(),
        offline,
    ));
    let ok = report.problems.is_empty();
    if json {
        println!("{}", report_json(&report));
    } else if ok {
        println!(
            "{}: policy is valid ({} tables); checked: {}",
            path.display(),
            policy.tables.len(),
            report.passed.join(", ")
        );
    } else {
        for problem in &report.problems {
            eprintln!("{problem}");
        }
        eprintln!("{} problem(s)", report.problems.len());
    }
    if ok { 0 } else { 1 }
}

fn report_json(r: &crate::ops::preflight::Report) -> String {
    serde_json::json!({
        "ok": r.problems.is_empty(),
        "passed": r.passed,
        "problems": r.problems,
    })
    .to_string()
}
