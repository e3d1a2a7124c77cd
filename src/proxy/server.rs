//! The listener: accepts clients, spawns sessions, shuts down gracefully on
//! SIGINT/SIGTERM (stop accepting, let sessions finish within
//! `shutdown_timeout`, then close). Admission: connections still logging in
//! are capped apart from authenticated sessions (`limits.max_pending_logins`,
//! optionally per client IP), so slow or silent logins cannot take the
//! slots of working clients.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, warn};

use super::login;
use super::shared::{Refused, Shared};
use crate::config::Config;

/// Bind `listen` and serve until SIGINT/SIGTERM; SIGHUP reloads.
pub async fn serve(config: Config) -> Result<(), String> {
    // From here on SIGHUP reloads instead of ending the process (its
    // default action); one that arrives during startup is served after.
    let hangups = hangup_signal()?;
    let addr = config.listen_addr();
    let listener = listen(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let admin = match &config.metrics {
        Some(m) => Some((
            crate::admin::bind(m.listen.as_str()).await?,
            crate::metrics::install()?,
        )),
        None => None,
    };
    let pid_file = config
        .pid_file_path()
        .map(|p| super::pidfile::PidFile::create(&p))
        .transpose()?;
    // `auth.file` whole or not at all, as a reload checks it.
    if let Some(f) = &config.auth.file {
        let list = crate::auth::source::check_file(&config.resolve(f.as_str()))
            .map_err(|e| e.join("\n"))?;
        crate::auth::state().sources.install(Some(list));
    }
    let engine = crate::engine::build(&config).await?;
    let shared = Arc::new(Shared::new(config)?.with_engine(engine));
    let reloader = super::reload::Reloader::new(shared.clone());
    if let Some((listener, metrics)) = admin {
        crate::admin::spawn(
            listener,
            crate::admin::Admin {
                metrics,
                control: Instance {
                    shared: shared.clone(),
                    reloader: reloader.clone(),
                },
            },
        );
    }
    tokio::spawn(reloader.on_hangup(hangups));
    let shutdown = CancellationToken::new();
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown requested: no new connections");
        signal_token.cancel();
    });
    info!(%addr, "pgveil listening");
    run(listener, shared.clone(), shutdown).await;
    if let Some(log) = shared.live().engine.as_ref().and_then(|e| e.audit.as_ref()) {
        log.close();
    }
    drop(pid_file);
    Ok(())
}

/// This instance as the admin listener sees it: readiness checked against
/// the configuration in force, reloads through the reloader. (`admin` and
/// `health` sit below `proxy`: the arrows run from here to them only.)
struct Instance {
    shared: Arc<Shared>,
    reloader: Arc<super::reload::Reloader>,
}

impl crate::admin::Control for Instance {
    async fn readiness(&self) -> (bool, serde_json::Value) {
        let live = self.shared.live();
        let draining = self.shared.draining.load(Ordering::Acquire);
        let keys = live.engine.as_ref().map(|e| &e.crypto.keys);
        let report = crate::health::readiness(&live.upstream, keys, draining).await;
        (report.ready, report.to_json())
    }

    async fn reload(&self) -> Result<serde_json::Value, Vec<String>> {
        self.reloader
            .reload()
            .await
            .map(|applied| applied.to_json())
    }
}

#[cfg(unix)]
fn hangup_signal() -> Result<tokio::signal::unix::Signal, String> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))
}

/// Bind `addr` with a listen backlog of 4096 (tokio's default is 1024): a
/// burst of connections waits in the kernel's queue instead of having its
/// handshakes dropped, which leaves clients with connections pgveil never
/// sees.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Accept on `listener` until `shutdown` fires, then drain sessions.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let mut next_id: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let pending = match shared.admission.admit(peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                let (key, label) = match why {
                    Refused::PendingLogins => ("limits.max_pending_logins", "pending_logins"),
                    Refused::PendingLoginsPerIp => {
                        ("limits.max_pending_logins_per_ip", "pending_logins_per_ip")
                    }
                };
                metrics::counter!("pgveil_connections_refused_total", "limit" => label)
                    .increment(1);
                warn!(%peer, limit = key, "connection refused: too many connections logging in");
                tracker.spawn(refuse_busy(
                    tcp,
                    format!("sorry, too many clients already (pgveil: {key} reached)"),
                ));
                continue;
            }
        };
        next_id += 1;
        let span = tracing::info_span!("conn", id = next_id, %peer);
        let shared = shared.clone();
        tracker.spawn(login::handle(shared, tcp, peer, pending).instrument(span));
    }
    drop(listener);
    tracker.close();
    shared.draining.store(true, Ordering::Release);
    let timeout = shared.live().config.shutdown_timeout.0;
    if !tracker.is_empty() {
        info!(
            sessions = tracker.len(),
            ?timeout,
            "waiting for sessions to finish"
        );
    }
    if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
        warn!(
            sessions = tracker.len(),
            "shutdown timeout: closing remaining sessions"
        );
    }
    info!("pgveil stopped");
}

/// Answer a connection pgveil will not serve with PostgreSQL's 53300 and
/// close it. The write goes into an empty socket buffer; it never waits
/// for the peer for long.
async fn refuse_busy(mut tcp: tokio::net::TcpStream, message: String) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tcp.write_all(&crate::wire::error::error_response(
            "FATAL", "53300", &message,
        )),
    )
    .await;
}
