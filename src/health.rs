//! Readiness (`GET /readyz`): whether this instance can serve a protected
//! statement now. Three checks, run concurrently, each bounded by
//! [`CHECK_TIMEOUT`]: PostgreSQL accepts connections (TCP and, per
//! `upstream.tls`, the TLS handshake; no login, so nothing is logged
//! there), the keystore answers a query, and the master keys wrap and
//! unwrap a throwaway data key. Without a policy only the first applies.
//! Liveness (`/healthz`) is the admin listener answering at all. Also `pgveil
//! healthcheck`, the probe for images without curl.
//!
//! Direction: `health` sits below `proxy` and above `admin`. It is handed
//! the upstream connector and key manager in force (by `proxy::server`,
//! which answers `/readyz` through `admin::Control`) and reaches a running
//! instance only through `admin`'s client side.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::keys::{KeyManager, WrapContext};
use crate::net::upstream::UpstreamConnector;

/// Longest time one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a successful master-key round trip is trusted (with AWS KMS
/// each check is two billed API calls).
const MASTER_KEY_TTL: Duration = Duration::from_secs(60);

/// The outcome of one check: `Ok(None)` passed, `Ok(Some(why))` skipped,
/// `Err(reason)` failed.
pub struct Check {
    /// `upstream`, `keystore` or `master_keys`.
    pub name: &'static str,
    /// Passed, skipped (why) or failed (the reason).
    pub result: Result<Option<&'static str>, String>,
}

/// What `/readyz` answers.
pub struct Report {
    /// Every check passed and the instance is not draining.
    pub ready: bool,
    /// The instance is shutting down.
    pub draining: bool,
    /// The checks, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// The answer's body: the status, each check, and which failed.
    pub fn to_json(&self) -> Value {
        let mut checks = serde_json::Map::new();
        for c in &self.checks {
            let v = match &c.result {
                Ok(None) => json!({ "ok": true }),
                Ok(Some(why)) => json!({ "ok": true, "skipped": why }),
                Err(e) => json!({ "ok": false, "error": e }),
            };
            checks.insert(c.name.to_string(), v);
        }
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| c.result.is_err())
            .map(|c| c.name)
            .collect();
        let mut out = json!({
            "status": if self.ready { "ready" } else { "not ready" },
            "checks": checks,
        });
        if self.draining {
            out["draining"] = json!(true);
        }
        if !failed.is_empty() {
            out["failed"] = json!(failed);
        }
        out
    }
}

/// Run the checks against the configuration in force: its upstream
/// connector and, with a policy, its key manager; `draining`: the instance
/// is shutting down (then it is not ready, whatever the checks say).
pub async fn readiness(
    connector: &UpstreamConnector,
    keys: Option<&KeyManager>,
    draining: bool,
) -> Report {
    let upstream = bounded(async {
        connector.connect().await.map(drop)?;
        Ok(None)
    });
    let keystore = bounded(async {
        match keys {
            None => Ok(Some("no policy")),
            Some(k) => k
                .keystore()
                .ping()
                .await
                .map(|()| None)
                .map_err(|e| e.to_string()),
        }
    });
    let master = bounded(async {
        match keys {
            None => Ok(Some("no policy")),
            Some(k) => master_keys(k).await.map(|()| None),
        }
    });
    let (upstream, keystore, master) = tokio::join!(upstream, keystore, master);
    let checks = vec![
        Check {
            name: "upstream",
            result: upstream,
        },
        Check {
            name: "keystore",
            result: keystore,
        },
        Check {
            name: "master_keys",
            result: master,
        },
    ];
    Report {
        ready: !draining && checks.iter().all(|c| c.result.is_ok()),
        draining,
        checks,
    }
}

async fn bounded(
    f: impl Future<Output = Result<Option<&'static str>, String>>,
) -> Result<Option<&'static str>, String> {
    tokio::time::timeout(CHECK_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")))
}

/// Wrap a fresh random data key under the current master key and unwrap
/// it again; a success is remembered for [`MASTER_KEY_TTL`].
async fn master_keys(keys: &KeyManager) -> Result<(), String> {
    static LAST_OK: Mutex<Option<(usize, Instant)>> = Mutex::new(None);
    let provider = keys.provider();
    let id = std::sync::Arc::as_ptr(provider) as *const () as usize;
    if let Some((p, at)) = *LAST_OK.lock().expect("readiness cache")
        && p == id
        && at.elapsed() < MASTER_KEY_TTL
    {
        return Ok(());
    }
    let ctx = WrapContext {
        key_id: 0,
        version: 0,
        table: "pgveil.readiness_probe".into(),
        tenant: None,
    };
    let dek = crate::crypto::DataKey::generate();
    let wrapped = provider
        .wrap(&dek, &ctx)
        .await
        .map_err(|e| format!("{} master key cannot wrap: {e}", provider.kind()))?;
    provider
        .unwrap(&wrapped, &ctx)
        .await
        .map_err(|e| format!("{} master key cannot unwrap: {e}", provider.kind()))?;
    *LAST_OK.lock().expect("readiness cache") = Some((id, Instant::now()));
    Ok(())
}

/// `pgveil healthcheck`: ask the running instance's admin listener for
/// `/healthz` (or `/readyz`); exit code 0 when it answers 200.
pub fn command(listen: &str, ready: bool) -> i32 {
    let path = if ready { "/readyz" } else { "/healthz" };
    let (addr, rt) = match crate::admin::client(listen) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    match rt.block_on(crate::admin::request(addr, "GET", path, CHECK_TIMEOUT * 2)) {
        Ok((200, body)) => {
            print!("{body}");
            0
        }
        Ok((code, body)) => {
            eprint!("{path}: HTTP {code}: {body}");
            1
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
