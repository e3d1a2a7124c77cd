//! The listener: accepts clients, spawns sessions, shuts down gracefully on
//! SIGINT/SIGTERM (stop accepting, let sessions finish within
//! `shutdown_timeout`, then close).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, warn};

use super::cancel::CancelRegistry;
use super::session;
use super::tls::{self, ServerTls};
use super::upstream::UpstreamConnector;
use crate::config::{ClientTlsMode, Config};
use crate::session::Engine;

/// State shared by every session of one pgveil process.
pub struct Shared {
    pub config: Config,
    pub server_tls: Option<ServerTls>,
    pub upstream: UpstreamConnector,
    pub cancel: CancelRegistry,
    /// The session layer, when a policy is configured.
    pub engine: Option<Arc<Engine>>,
}

impl Shared {
    pub fn new(config: Config) -> Result<Shared, String> {
        let server_tls = match (
            &config.client_tls.mode,
            &config.client_tls.cert_file,
            &config.client_tls.key_file,
        ) {
            (ClientTlsMode::Disable, _, _) => None,
            (_, Some(cert), Some(key)) => Some(tls::server_config(
                &config.resolve(cert.as_str()),
                &config.resolve(key.as_str()),
            )?),
            (ClientTlsMode::Prefer, None, None) => None,
            (ClientTlsMode::Prefer, _, _) => {
                return Err("client_tls: give both cert_file and key_file, or neither".into());
            }
            (ClientTlsMode::Require, _, _) => {
                return Err("client_tls.mode is require but cert_file/key_file are missing".into());
            }
        };
        let upstream = UpstreamConnector::from_config(&config.upstream, |p| config.resolve(p))?;
        Ok(Shared {
            config,
            server_tls,
            upstream,
            cancel: CancelRegistry::new(),
            engine: None,
        })
    }
}

/// Bind `listen` and serve until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> Result<(), String> {
    let addr = config.listen_addr();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    if let Some(m) = &config.metrics {
        crate::metrics::install(m.listen.as_str())?;
    }
    let engine = crate::ops::engine::build(&config).await?;
    let mut shared = Shared::new(config)?;
    shared.engine = engine;
    let shared = Arc::new(shared);
    let shutdown = CancellationToken::new();
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown requested: no new connections");
        signal_token.cancel();
    });
    info!(%addr, "pgveil listening");
    run(listener, shared, shutdown).await;
    Ok(())
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
    let slots = Arc::new(Semaphore::new(shared.config.limits.max_connections));
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(%peer, "connection refused: limits.max_connections reached");
            tracker.spawn(refuse_busy(tcp));
            continue;
        };
        next_id += 1;
        let span = tracing::info_span!("conn", id = next_id, %peer);
        let shared = shared.clone();
        tracker.spawn(
            async move {
                session::handle(shared, tcp, peer).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    drop(listener);
    tracker.close();
    let timeout = shared.config.shutdown_timeout.0;
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

async fn refuse_busy(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tcp
        .write_all(&crate::wire::msg::error_response(
            "FATAL",
            "53300",
            "pgveil: too many connections (limits.max_connections)",
        ))
        .await;
}
