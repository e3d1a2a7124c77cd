//! Prometheus metrics, served at `GET /metrics` on `metrics.listen` (see
//! [`crate::admin`]). Every name is prefixed `pgveil_`; labels never carry
//! values or statement text. [`METRICS`] is the one list of what pgveil
//! exports: each entry is described (HELP) and registered at zero when the
//! recorder is installed, so every series exists from the first scrape, and
//! `tests/metrics.rs` checks docs/operations.md against a live scrape.

use std::cell::Cell;
use std::sync::LazyLock;
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The Prometheus type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// The name in the exposition format's `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One exported metric.
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// A label and every value pgveil gives it (registered at zero).
    pub label: Option<(&'static str, &'static [&'static str])>,
    pub unit: Option<Unit>,
}

const fn m(name: &'static str, kind: Kind, help: &'static str) -> Metric {
    Metric {
        name,
        kind,
        help,
        label: None,
        unit: None,
    }
}

const fn labelled(
    name: &'static str,
    kind: Kind,
    help: &'static str,
    label: &'static str,
    values: &'static [&'static str],
) -> Metric {
    Metric {
        name,
        kind,
        help,
        label: Some((label, values)),
        unit: None,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Buckets of `pgveil_kms_seconds` (seconds): a local unwrap takes
/// microseconds, a KMS call over the network milliseconds, a throttled or
/// retried one seconds.
pub const KMS_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of `pgveil_crypto_seconds` (seconds): one value's encryption or
/// decryption takes a few microseconds; a row of a wide table, or a value
/// whose data key had to be fetched first, longer.
pub const CRYPTO_BUCKETS: &[f64] = &[
    0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005,
    0.025, 0.1, 1.0,
];

/// Everything pgveil exports.
pub const METRICS: &[Metric] = &[
    m(
        "pgveil_connections_total",
        Counter,
        "Client connections accepted",
    ),
    m(
        "pgveil_connections_active",
        Gauge,
        "Client connections open now",
    ),
    m(
        "pgveil_logins_pending",
        Gauge,
        "Client connections that have not completed authentication",
    ),
    m(
        "pgveil_login_timeouts_total",
        Counter,
        "Connections closed by limits.login_timeout before authentication completed",
    ),
    labelled(
        "pgveil_connections_refused_total",
        Counter,
        "Connections refused by a limit",
        "limit",
        &["connections", "pending_logins", "pending_logins_per_ip"],
    ),
    Metric {
        unit: Some(Unit::Bytes),
        ..m(
            "pgveil_buffered_bytes",
            Gauge,
            "Bytes charged against limits.max_buffered_bytes now",
        )
    },
    m(
        "pgveil_buffer_waits_total",
        Counter,
        "Large messages that waited for room in limits.max_buffered_bytes",
    ),
    labelled(
        "pgveil_buffer_refusals_total",
        Counter,
        "Messages refused with 53200 by limits.max_buffered_bytes",
        "reason",
        &["too_large", "busy"],
    ),
    labelled(
        "pgveil_statements_total",
        Counter,
        "Statements by outcome",
        "outcome",
        &["passthrough", "rewritten", "rejected"],
    ),
    m(
        "pgveil_pass_through_runs_total",
        Counter,
        "Runs of extended-protocol messages touching no protected table that went upstream as one, without per-message handling",
    ),
    m("pgveil_values_encrypted_total", Counter, "Values encrypted"),
    m("pgveil_values_decrypted_total", Counter, "Values decrypted"),
    m(
        "pgveil_decrypt_errors_total",
        Counter,
        "Values that failed to decrypt",
    ),
    m(
        "pgveil_upstream_errors_total",
        Counter,
        "Upstream connection failures and losses",
    ),
    m(
        "pgveil_protocol_desync_total",
        Counter,
        "Sessions closed because PostgreSQL's answers went out of step with the requests",
    ),
    m(
        "pgveil_plan_cache_hits_total",
        Counter,
        "Statement plans served from cache",
    ),
    m(
        "pgveil_plan_cache_misses_total",
        Counter,
        "Statements planned",
    ),
    m(
        "pgveil_key_cache_hits_total",
        Counter,
        "Data-key cache hits",
    ),
    m(
        "pgveil_key_cache_misses_total",
        Counter,
        "Data-key cache misses (keystore read and unwrap)",
    ),
    m(
        "pgveil_kms_errors_total",
        Counter,
        "Key provider (local or KMS) failures",
    ),
    Metric {
        unit: Some(Unit::Seconds),
        ..labelled(
            "pgveil_kms_seconds",
            Histogram,
            "Latency of key provider calls (generate a data key, unwrap one)",
            "op",
            &["generate", "unwrap"],
        )
    },
    Metric {
        unit: Some(Unit::Seconds),
        ..labelled(
            "pgveil_crypto_seconds",
            Histogram,
            "Latency of one value's encryption or decryption, sampled: one value in 64 (decrypt_row: one row in 256)",
            "op",
            &["encrypt", "decrypt", "decrypt_row"],
        )
    },
    m(
        "pgveil_auth_failures_total",
        Counter,
        "Failed password logins",
    ),
    m(
        "pgveil_auth_rate_limited_total",
        Counter,
        "Logins refused by the per-address failure limit (auth.max_failures)",
    ),
    m(
        "pgveil_audit_errors_total",
        Counter,
        "Audit records that could not be written (write error or full queue)",
    ),
    m(
        "pgveil_reloads_total",
        Counter,
        "Configuration reloads applied (SIGHUP, POST /reload)",
    ),
    m(
        "pgveil_reload_failures_total",
        Counter,
        "Configuration reloads refused because the new configuration was invalid",
    ),
    m(
        "pgveil_reload_sessions_closed_total",
        Counter,
        "Sessions closed at a transaction boundary because a reload changed what their prepared statements do",
    ),
];

/// Handles of the metrics updated per statement or per value. A
/// `counter!` or `histogram!` call looks its series up in the registry
/// (hashing the name and labels) each time; these are looked up once, so
/// the hot path only adds to an atomic. Taken after [`install`] (which
/// forces them): handles taken before a recorder exists count nowhere.
pub struct Hot {
    pub statements_passthrough: metrics::Counter,
    pub statements_rewritten: metrics::Counter,
    pub statements_rejected: metrics::Counter,
    pub pass_through_runs: metrics::Counter,
    pub plan_cache_hits: metrics::Counter,
    pub plan_cache_misses: metrics::Counter,
    pub values_encrypted: metrics::Counter,
    pub values_decrypted: metrics::Counter,
    pub encrypt_seconds: metrics::Histogram,
    pub decrypt_seconds: metrics::Histogram,
    pub decrypt_row_seconds: metrics::Histogram,
}

static HOT: LazyLock<Hot> = LazyLock::new(|| Hot {
    statements_passthrough: metrics::counter!("pgveil_statements_total", "outcome" => "passthrough"),
    statements_rewritten: metrics::counter!("pgveil_statements_total", "outcome" => "rewritten"),
    statements_rejected: metrics::counter!("pgveil_statements_total", "outcome" => "rejected"),
    pass_through_runs: metrics::counter!("pgveil_pass_through_runs_total"),
    plan_cache_hits: metrics::counter!("pgveil_plan_cache_hits_total"),
    plan_cache_misses: metrics::counter!("pgveil_plan_cache_misses_total"),
    values_encrypted: metrics::counter!("pgveil_values_encrypted_total"),
    values_decrypted: metrics::counter!("pgveil_values_decrypted_total"),
    encrypt_seconds: metrics::histogram!("pgveil_crypto_seconds", "op" => "encrypt"),
    decrypt_seconds: metrics::histogram!("pgveil_crypto_seconds", "op" => "decrypt"),
    decrypt_row_seconds: metrics::histogram!("pgveil_crypto_seconds", "op" => "decrypt_row"),
});

/// The hot-path handles (see [`Hot`]).
pub fn hot() -> &'static Hot {
    &HOT
}

/// Whether this value's crypto latency is timed: one in 64 per thread (a
/// clock read and a histogram sample cost about as much as encrypting a
/// short value). `pgveil_crypto_seconds` is a sample of them.
pub fn sample_value() -> bool {
    thread_local! {
        static TICK: Cell<u32> = const { Cell::new(0) };
    }
    TICK.with(|t| {
        let n = t.get().wrapping_add(1);
        t.set(n);
        n % 64 == 1
    })
}

/// Install the global recorder (histogram buckets as documented) and keep
/// it up to date. Call inside the tokio runtime.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("pgveil_kms_seconds".into()), KMS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("pgveil_crypto_seconds".into()),
                CRYPTO_BUCKETS,
            )
        })
        .map_err(|e| format!("metrics: {e}"))?
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    describe_and_register();
    LazyLock::force(&HOT);
    Ok(handle)
}

/// HELP text for every metric, and every series registered at zero.
fn describe_and_register() {
    for d in METRICS {
        let help = d.help;
        match (d.kind, d.unit) {
            (Counter, Some(u)) => metrics::describe_counter!(d.name, u, help),
            (Counter, None) => metrics::describe_counter!(d.name, help),
            (Gauge, Some(u)) => metrics::describe_gauge!(d.name, u, help),
            (Gauge, None) => metrics::describe_gauge!(d.name, help),
            (Histogram, Some(u)) => metrics::describe_histogram!(d.name, u, help),
            (Histogram, None) => metrics::describe_histogram!(d.name, help),
        }
        let labels: Vec<Vec<(&'static str, &'static str)>> = match d.label {
            None => vec![vec![]],
            Some((k, values)) => values.iter().map(|v| vec![(k, *v)]).collect(),
        };
        for l in labels {
            let l: Vec<metrics::Label> = l
                .into_iter()
                .map(|(k, v)| metrics::Label::new(k, v))
                .collect();
            match d.kind {
                Counter => metrics::counter!(d.name, l).increment(0),
                Gauge => metrics::gauge!(d.name, l).increment(0.0),
                Histogram => {
                    let _ = metrics::histogram!(d.name, l);
                }
            }
        }
    }
}
