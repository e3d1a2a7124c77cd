//! Prometheus metrics at `metrics.listen` (`GET /metrics`). Every name is
//! prefixed `pgveil_`; labels never carry values or statement text.

use std::net::SocketAddr;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::PrometheusBuilder;

/// Start the exporter's HTTP listener (inside the current tokio runtime).
pub fn install(listen: &str) -> Result<(), String> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("metrics.listen: {listen:?} is not host:port"))?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("metrics.listen {addr}: {e}"))?;
    describe();
    Ok(())
}

fn describe() {
    describe_counter!("pgveil_connections_total", "Client connections accepted");
    describe_gauge!("pgveil_connections_active", "Client connections open now");
    describe_gauge!(
        "pgveil_logins_pending",
        "Client connections that have not completed authentication"
    );
    describe_counter!(
        "pgveil_login_timeouts_total",
        "Connections closed by limits.login_timeout before authentication completed"
    );
    describe_counter!(
        "pgveil_connections_refused_total",
        "Connections refused by a limit (label limit: connections, pending_logins, pending_logins_per_ip)"
    );
    describe_gauge!(
        "pgveil_buffered_bytes",
        Unit::Bytes,
        "Bytes charged against limits.max_buffered_bytes now"
    );
    describe_counter!(
        "pgveil_buffer_waits_total",
        "Large messages that waited for room in limits.max_buffered_bytes"
    );
    describe_counter!(
        "pgveil_buffer_refusals_total",
        "Messages refused with 53200 by limits.max_buffered_bytes (label reason: too_large, busy)"
    );
    describe_counter!(
        "pgveil_statements_total",
        "Statements by outcome: passthrough, rewritten, rejected"
    );
    describe_counter!("pgveil_values_encrypted_total", "Values encrypted");
    describe_counter!("pgveil_values_decrypted_total", "Values decrypted");
    describe_counter!(
        "pgveil_decrypt_errors_total",
        "Values that failed to decrypt"
    );
    describe_counter!(
        "pgveil_upstream_errors_total",
        "Upstream connection failures and losses"
    );
    describe_counter!(
        "pgveil_plan_cache_hits_total",
        "Statement plans served from cache"
    );
    describe_counter!("pgveil_plan_cache_misses_total", "Statements planned");
    describe_counter!("pgveil_key_cache_hits_total", "Data-key cache hits");
    describe_counter!("pgveil_key_cache_misses_total", "Data-key cache misses");
    describe_counter!("pgveil_kms_errors_total", "Key provider (KMS) failures");
    describe_histogram!(
        "pgveil_kms_seconds",
        Unit::Seconds,
        "Latency of key provider (KMS) calls"
    );
    describe_counter!("pgveil_audit_errors_total", "Audit log write failures");
    describe_histogram!(
        "pgveil_crypto_seconds",
        Unit::Seconds,
        "Latency of one value's encryption or decryption"
    );
}
