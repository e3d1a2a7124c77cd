//! Authentication phase of a session: from the StartupMessage to
//! AuthenticationOk. The login role that PostgreSQL accepts is the identity
//! for the policy.
//!
//! - trust, password, md5, and SCRAM without a verifier source: relayed
//!   unchanged between client and PostgreSQL ([`relay`]).
//! - SCRAM with a verifier source (`auth.query` / `auth.file`): terminated
//!   on each leg ([`terminate`]): pgveil verifies the client with the user's
//!   verifier, offering SCRAM-SHA-256-PLUS when the client leg is TLS, and
//!   logs in to PostgreSQL with the ClientKey recovered from the client's
//!   proof, with channel binding when the upstream leg is TLS.
//!
//! Failed logins are rate-limited per client IP address ([`limit`]).

pub mod cbind;
pub mod limit;
mod relay;
pub mod scram;
pub mod source;
mod terminate;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tracing::warn;

use crate::net::stream::Stream;
use crate::net::upstream::UpstreamConnector;
use crate::wire::codec::{FrameError, FrameReader};
use crate::wire::startup::Startup;
use crate::wire::{auth, error};

pub use relay::relay_auth;

/// Default for `auth.max_failures`.
pub const DEFAULT_MAX_FAILURES: u32 = 10;
/// Default for `auth.failure_window`.
pub const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// What the authentication phase needs to know about the connection.
pub struct AuthContext<'a> {
    pub peer: SocketAddr,
    /// DER of pgveil's certificate when the client leg is TLS.
    pub client_tls_leaf: Option<&'a [u8]>,
    /// Whether the upstream leg is TLS.
    pub upstream_tls: bool,
    pub config: &'a crate::config::Auth,
    /// Opens the auth-query connection (same host, port and TLS settings as
    /// the session's upstream connection).
    pub upstream: &'a UpstreamConnector,
    /// Directory of the config file (a relative `auth.file` resolves there).
    pub base_dir: &'a Path,
}

/// The identity established by authentication.
#[derive(Debug, Clone)]
pub struct AuthOutcome {
    /// The login role PostgreSQL authenticated: the policy's identity for the
    /// whole session (`SET ROLE` does not change it).
    pub login_role: String,
}

/// Why the authentication phase ended without a session.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading from or writing to the client failed.
    #[error("client: {0}")]
    Client(FrameError),
    /// Reading from or writing to PostgreSQL failed.
    #[error("upstream: {0}")]
    Upstream(FrameError),
    /// PostgreSQL refused the login; its ErrorResponse was forwarded.
    #[error("login refused by PostgreSQL")]
    Rejected,
    /// Wrong password (or unknown user): SQLSTATE 28P01 was sent.
    #[error("password authentication failed")]
    PasswordFailed,
    /// Too many failed logins from this address: SQLSTATE 53300 was sent.
    #[error("too many failed logins from this address")]
    RateLimited,
    /// Something pgveil cannot relay; an ErrorResponse was sent to the client.
    #[error("{0}")]
    Unsupported(String),
}

/// Process-wide authentication state: failure buckets, verifier cache and
/// auth-query connections, the secret behind fake salts.
pub(crate) struct AuthState {
    /// Failed-login buckets per client IP address.
    pub limiter: limit::FailureLimiter,
    /// Where verifiers come from: the userlist file, the auth query and their cache.
    pub sources: source::Sources,
    /// Keys the deterministic fake salt of unknown users.
    pub mock_secret: [u8; 32],
}

/// The process's authentication state, created on first use.
pub(crate) fn state() -> &'static AuthState {
    static STATE: OnceLock<AuthState> = OnceLock::new();
    STATE.get_or_init(|| {
        let mut mock_secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut mock_secret).expect("AWS-LC CSPRNG");
        AuthState {
            limiter: limit::FailureLimiter::new(),
            sources: source::Sources::new(),
            mock_secret,
        }
    })
}

/// The failed-login limit `auth` configures, with the defaults filled in.
pub(crate) fn limit_config(auth: &crate::config::Auth) -> limit::LimitConfig {
    limit::LimitConfig {
        max_failures: auth.max_failures.unwrap_or(DEFAULT_MAX_FAILURES),
        window: auth
            .failure_window
            .map(|d| d.0)
            .unwrap_or(DEFAULT_FAILURE_WINDOW),
    }
}

/// Run the authentication phase. `startup_raw` is the client's StartupMessage
/// as received; it is forwarded upstream unchanged.
pub async fn authenticate(
    client: &mut FrameReader<Stream>,
    upstream: &mut FrameReader<Stream>,
    startup_raw: &[u8],
    startup: &Startup,
    ctx: &AuthContext<'_>,
) -> Result<AuthOutcome, AuthError> {
    let st = state();
    let limits = limit_config(ctx.config);
    let ip = ctx.peer.ip();
    if let Err(wait) = st.limiter.check(ip, Instant::now(), limits) {
        warn!(client = %ip, "login refused: too many failed authentication attempts");
        metrics::counter!("pgveil_auth_rate_limited_total").increment(1);
        let _ = send(
            client,
            &error::error_response(
                "FATAL",
                "53300",
                &format!(
                    "too many failed authentication attempts from {ip}: try again in {} s",
                    wait.as_secs().max(1)
                ),
            ),
        )
        .await;
        return Err(AuthError::RateLimited);
    }
    let result = run(client, upstream, startup_raw, startup, ctx).await;
    if matches!(result, Err(AuthError::PasswordFailed)) {
        metrics::counter!("pgveil_auth_failures_total").increment(1);
        st.limiter.record_failure(ip, Instant::now(), limits);
    }
    result
}

async fn run(
    client: &mut FrameReader<Stream>,
    upstream: &mut FrameReader<Stream>,
    startup_raw: &[u8],
    startup: &Startup,
    ctx: &AuthContext<'_>,
) -> Result<AuthOutcome, AuthError> {
    send(upstream, startup_raw)
        .await
        .map_err(AuthError::Upstream)?;
    loop {
        let f = upstream.next().await.map_err(AuthError::Upstream)?;
        match f.tag {
            // NegotiateProtocolVersion, NoticeResponse before the request.
            b'v' | b'N' => send(client, &f.raw).await.map_err(AuthError::Client)?,
            b'R' if auth::auth_code(f.body()) == Some(auth::AUTH_SASL)
                && source::configured(ctx.config) =>
            {
                let mechanisms = auth::sasl_mechanisms(f.body());
                return terminate::terminate(client, upstream, startup, ctx, &mechanisms).await;
            }
            _ => return relay::relay_from(client, upstream, startup, f).await,
        }
    }
}

/// Write `bytes` to the stream under `w` and flush it.
pub(crate) async fn send(w: &mut FrameReader<Stream>, bytes: &[u8]) -> Result<(), FrameError> {
    let s = w.get_mut();
    s.write_all(bytes).await?;
    s.flush().await?;
    Ok(())
}
