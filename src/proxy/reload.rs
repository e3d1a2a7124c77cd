//! Reloading a running instance (SIGHUP, `POST /reload`, `pgveil reload`):
//! read `pgveil.yaml` again, validate it and everything it names exactly as
//! startup does (the config, the policy, keys when `keys:` changed, the TLS
//! files of both legs, the `auth.file`, the audit path), and check the
//! policy against the catalogs pgveil has loaded; only when all of that
//! succeeds is the new configuration put in force (`Shared::install`), for
//! new sessions at once and for open ones at their next transaction
//! boundary (`super::swap`). On any error nothing changes: each problem is
//! logged as `file:line: what (and the fix)` and counted in
//! `pgveil_reload_failures_total`.
//!
//! A SIGHUP also reopens the audit log first (logrotate), whether or not
//! the configuration then reloads.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use tracing::{error, info, warn};

use super::shared::{Live, Shared};
use crate::audit::AuditLog;
use crate::config::Config;
use crate::policy::{Catalog, Policy};
use crate::session::Engine;

/// Serializes reloads and applies them to the process's [`Shared`].
pub struct Reloader {
    shared: Arc<Shared>,
    lock: tokio::sync::Mutex<()>,
}

/// What a successful reload changed.
#[derive(Debug, Clone)]
pub struct Applied {
    pub generation: u64,
    /// Sections of pgveil.yaml (and `policy` for the policy file) that
    /// differ from the configuration before.
    pub changed: Vec<&'static str>,
    /// Keys that changed but keep their old value until a restart.
    pub restart_needed: Vec<&'static str>,
}

impl Applied {
    /// The answer `POST /reload` and `pgveil reload` print.
    pub fn to_json(&self) -> Value {
        json!({
            "ok": true,
            "generation": self.generation,
            "changed": self.changed,
            "restart_needed": self.restart_needed,
        })
    }
}

impl Reloader {
    /// A reloader for the instance behind `shared` (reloads run one at a time).
    pub fn new(shared: Arc<Shared>) -> Arc<Reloader> {
        Arc::new(Reloader {
            shared,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Reload now; the errors are `file:line: …` lines.
    pub async fn reload(&self) -> Result<Applied, Vec<String>> {
        let _one_at_a_time = self.lock.lock().await;
        let old = self.shared.live();
        match prepare(&old).await {
            Ok(p) => {
                for key in &p.applied.restart_needed {
                    warn!(
                        key,
                        "changed in the configuration, but takes effect only at the next restart"
                    );
                }
                if let (Some(log), Some(a)) = (&p.audit, &p.live.config.audit) {
                    log.reconfigure(&p.live.config.resolve(a.path.as_str()), a);
                }
                crate::auth::state().sources.install(p.userlist);
                let generation = self.shared.install(p.live);
                metrics::counter!("pgveil_reloads_total").increment(1);
                let applied = Applied {
                    generation,
                    ..p.applied
                };
                info!(
                    generation,
                    changed = ?applied.changed,
                    "configuration reloaded: new sessions use it now, open sessions at their next transaction boundary"
                );
                Ok(applied)
            }
            Err(errors) => {
                metrics::counter!("pgveil_reload_failures_total").increment(1);
                for e in &errors {
                    error!(problem = %e, "reload refused");
                }
                error!(
                    problems = errors.len(),
                    "reload refused: the running configuration stays in force; fix the problems above and reload again"
                );
                Err(errors)
            }
        }
    }

    /// Reload on every SIGHUP, after reopening the audit log.
    pub async fn on_hangup(self: Arc<Self>, mut hangups: tokio::signal::unix::Signal) {
        while hangups.recv().await.is_some() {
            info!("SIGHUP: reopening the audit log and reloading the configuration");
            if let Some(log) = self
                .shared
                .live()
                .engine
                .as_ref()
                .and_then(|e| e.audit.as_ref())
            {
                log.reopen();
            }
            let _ = self.reload().await;
        }
    }
}

/// A validated configuration, ready to be put in force.
struct Prepared {
    live: Live,
    /// The audit log kept from before, to reconfigure.
    audit: Option<Arc<AuditLog>>,
    /// `auth.file` as checked: the version put in force.
    userlist: Option<crate::auth::source::Userlist>,
    applied: Applied,
}

/// `file:line: message` for a key of the config file.
struct At<'a> {
    path: &'a Path,
    text: String,
}

impl At<'_> {
    fn at(&self, key: &[&str], message: impl std::fmt::Display) -> String {
        match crate::yaml::locate(&self.text, key) {
            Some(l) => format!("{}:{l}: {message}", self.path.display()),
            None => format!("{}: {message}", self.path.display()),
        }
    }
}

async fn prepare(old: &Live) -> Result<Prepared, Vec<String>> {
    let path = old.config.path.clone();
    let new =
        Config::load(&path).map_err(|e| e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let at = At {
        path: &path,
        text: std::fs::read_to_string(&path).unwrap_or_default(),
    };
    let changed = changed_sections(&old.config, &new);
    let restart_needed = restart_only(&old.config, &new);
    let mut errors = Vec::new();

    if let Some(a) = &new.audit
        && let Err(e) = AuditLog::check_path(&new.resolve(a.path.as_str()))
    {
        errors.push(at.at(
            &["audit", "path"],
            format!("audit.path {}: {e}: make it a writable file path", a.path),
        ));
    }
    let mut userlist = None;
    if let Some(f) = &new.auth.file {
        match crate::auth::source::check_file(&new.resolve(f.as_str())) {
            Ok(list) => userlist = Some(list),
            Err(e) => errors.extend(e),
        }
    }
    let mut changed = changed;
    let (engine, audit) = match (&old.engine, new.policy_path()) {
        (None, None) => (None, None),
        (Some(_), None) | (None, Some(_)) => {
            errors.push(at.at(
                &["policy"],
                "adding or removing `policy:` needs a restart (pass-through sessions cannot start encrypting, nor protected ones stop): restart pgveil instance by instance",
            ));
            return Err(errors);
        }
        (Some(engine), Some(policy_path)) => {
            match next_engine(old, engine, &new, &policy_path, &at).await {
                Ok((e, policy_changed)) => {
                    if policy_changed {
                        changed.insert(0, "policy");
                    }
                    let audit = engine.audit.clone().filter(|_| new.audit.is_some());
                    (Some(e), audit)
                }
                Err(e) => {
                    errors.extend(e);
                    return Err(errors);
                }
            }
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let live = Live::new(new, engine).map_err(|e| vec![at.at(e.key, e.message)])?;
    Ok(Prepared {
        live,
        audit,
        userlist,
        applied: Applied {
            generation: 0,
            changed,
            restart_needed,
        },
    })
}

/// The engine the new configuration serves with: the running one when
/// nothing it is built from changed (sessions then keep their plans and
/// catalogs), else a new one (new analyzer, empty plan caches, catalogs
/// loaded again). The bool: the policy changed.
async fn next_engine(
    old: &Live,
    engine: &Arc<Engine>,
    new: &Config,
    policy_path: &Path,
    at: &At<'_>,
) -> Result<(Arc<Engine>, bool), Vec<String>> {
    let policy = Policy::load(policy_path)
        .map_err(|e| e.0.iter().map(|e| format!("{e}")).collect::<Vec<_>>())?;
    let policy_text = std::fs::read_to_string(policy_path).unwrap_or_default();
    let problems = schema_problems(engine, &policy, &policy_text);
    if !problems.is_empty() {
        return Err(problems);
    }
    let keys_changed = format!("{:?}", old.config.keys) != format!("{:?}", new.keys);
    let crypto = if keys_changed {
        crate::engine::crypto(new, &policy)
            .await
            .map_err(|e| vec![at.at(&["keys"], e)])?
    } else {
        crate::engine::check_blind_index_key(new, &policy)
            .map_err(|e| vec![at.at(&["keys"], e)])?;
        engine.crypto.clone()
    };
    let policy_changed = !same_policy(&engine.policy, &policy);
    let audit = match (&engine.audit, &new.audit) {
        (_, None) => None,
        (Some(log), Some(_)) => Some(log.clone()),
        (None, Some(_)) => crate::engine::audit(new).map_err(|e| vec![at.at(&["audit"], e)])?,
    };
    let audit_same = engine.audit.is_some() == audit.is_some();
    let upstream_same = old.config.upstream.host == new.upstream.host
        && old.config.upstream.port == new.upstream.port;
    if !policy_changed && !keys_changed && audit_same && upstream_same {
        return Ok((engine.clone(), false));
    }
    Ok((
        Arc::new(Engine::new(Arc::new(policy), crypto, audit)),
        policy_changed,
    ))
}

/// The new policy against every catalog pgveil has loaded (less than the
/// catalog TTL ago): problems the running policy does not already have.
/// Tables the running policy does not name are not in those catalogs and
/// are checked when a session first loads them (as at startup).
fn schema_problems(engine: &Engine, policy: &Policy, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (db, entry) in engine.fresh_catalogs() {
        let catalog = Catalog {
            relations: entry.catalog.relations.clone(),
            ..Default::default()
        };
        let before: HashSet<String> = crate::policy::check::problems(&engine.policy, "", &catalog)
            .into_iter()
            .map(|p| p.message)
            .collect();
        for p in crate::policy::check::problems(policy, text, &catalog) {
            let unknown_table = p.message.starts_with("table ")
                && p.message.contains("does not exist in the database");
            if unknown_table || before.contains(&p.message) {
                continue;
            }
            out.push(format!(
                "{} (in database {db:?}, whose catalog pgveil read less than {} s ago)",
                p.to_string().replace("\n    fix: ", "; fix: "),
                crate::session::database::CATALOG_TTL.as_secs()
            ));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn same_policy(a: &Policy, b: &Policy) -> bool {
    a.path == b.path && a.groups == b.groups && a.tables == b.tables
}

/// The sections of pgveil.yaml whose values differ.
fn changed_sections(a: &Config, b: &Config) -> Vec<&'static str> {
    let d = |x: &dyn std::fmt::Debug| format!("{x:?}");
    [
        ("listen", d(&a.listen) != d(&b.listen)),
        ("upstream", d(&a.upstream) != d(&b.upstream)),
        ("client_tls", d(&a.client_tls) != d(&b.client_tls)),
        ("auth", d(&a.auth) != d(&b.auth)),
        ("policy_path", a.policy_path() != b.policy_path()),
        ("keys", d(&a.keys) != d(&b.keys)),
        ("metrics", d(&a.metrics) != d(&b.metrics)),
        ("audit", d(&a.audit) != d(&b.audit)),
        ("limits", d(&a.limits) != d(&b.limits)),
        ("tcp_keepalive", d(&a.tcp_keepalive) != d(&b.tcp_keepalive)),
        ("shutdown_timeout", a.shutdown_timeout != b.shutdown_timeout),
        ("pid_file", a.pid_file != b.pid_file),
        ("log", d(&a.log) != d(&b.log)),
    ]
    .into_iter()
    .filter(|(_, c)| *c)
    .map(|(k, _)| k)
    .collect()
}

/// Keys read once at startup: a reload accepts a new value but keeps the
/// old one in force.
fn restart_only(a: &Config, b: &Config) -> Vec<&'static str> {
    let (la, lb) = (&a.limits, &b.limits);
    [
        ("listen", a.listen != b.listen),
        (
            "metrics.listen",
            a.metrics.as_ref().map(|m| &m.listen) != b.metrics.as_ref().map(|m| &m.listen),
        ),
        ("pid_file", a.pid_file != b.pid_file),
        ("log.format", a.log.format != b.log.format),
        (
            "limits.max_connections",
            la.max_connections != lb.max_connections,
        ),
        (
            "limits.max_pending_logins",
            la.max_pending_logins != lb.max_pending_logins,
        ),
        (
            "limits.max_pending_logins_per_ip",
            la.max_pending_logins_per_ip != lb.max_pending_logins_per_ip,
        ),
        (
            "limits.max_buffered_bytes",
            la.max_buffered_bytes != lb.max_buffered_bytes,
        ),
        ("limits.buffer_wait", la.buffer_wait != lb.buffer_wait),
    ]
    .into_iter()
    .filter(|(_, c)| *c)
    .map(|(k, _)| k)
    .collect()
}

/// `pgveil reload --config FILE`: ask the instance running with FILE to
/// reload. Through its admin listener when `metrics.listen` is set (the
/// answer says whether the reload was applied), else with SIGHUP to the
/// process in `pid_file` (the outcome is in its log).
pub fn command(config: &Config) -> i32 {
    if let Some(m) = &config.metrics {
        let (addr, rt) = match crate::admin::client(m.listen.as_str()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        };
        let answer = rt.block_on(crate::admin::request(
            addr,
            "POST",
            "/reload",
            std::time::Duration::from_secs(120),
        ));
        return match answer {
            Ok((200, body)) => {
                println!("reloaded: {}", body.trim());
                0
            }
            Ok((code, body)) => {
                eprintln!("reload refused (HTTP {code}):");
                match serde_json::from_str::<Value>(&body) {
                    Ok(v) => {
                        for e in v["errors"].as_array().into_iter().flatten() {
                            eprintln!("{}", e.as_str().unwrap_or_default());
                        }
                    }
                    Err(_) => eprintln!("{}", body.trim()),
                }
                1
            }
            Err(e) => {
                eprintln!("error: metrics.listen: {e} (is pgveil running with this config?)");
                1
            }
        };
    }
    let Some(pid_file) = config.pid_file_path() else {
        eprintln!(
            "{}: cannot find the running pgveil: set `pid_file:` or `metrics.listen:` (or send SIGHUP to it yourself)",
            config.path.display()
        );
        return 1;
    };
    match super::pidfile::read_trusted(&pid_file)
        .and_then(|pid| super::pidfile::hangup(pid).map(|()| pid))
    {
        Ok(pid) => {
            println!(
                "sent SIGHUP to pgveil (pid {pid}); the outcome is in its log (and pgveil_reload_failures_total)"
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
