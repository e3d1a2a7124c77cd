//! Authentication phase of a session: from the StartupMessage to
//! AuthenticationOk. PostgreSQL authenticates the real user; pgveil records
//! the login role as the identity for the policy.

mod relay;

use std::net::SocketAddr;

use crate::proxy::stream::Stream;
use crate::wire::codec::{FrameError, FrameReader};
use crate::wire::msg::Startup;

pub use relay::relay_auth;

/// What the authentication phase needs to know about the connection.
pub struct AuthContext<'a> {
    pub peer: SocketAddr,
    /// DER of pgveil's certificate when the client leg is TLS.
    pub client_tls_leaf: Option<&'a [u8]>,
    /// Whether the upstream leg is TLS.
    pub upstream_tls: bool,
    pub config: &'a crate::config::Auth,
}

/// The identity established by authentication.
#[derive(Debug, Clone)]
pub struct AuthOutcome {
    /// The login role PostgreSQL authenticated: the policy's identity for the
    /// whole session (`SET ROLE` does not change it).
    pub login_role: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("client: {0}")]
    Client(FrameError),
    #[error("upstream: {0}")]
    Upstream(FrameError),
    /// PostgreSQL refused the login; its ErrorResponse was forwarded.
    #[error("login refused by PostgreSQL")]
    Rejected,
    /// Something pgveil cannot relay; an ErrorResponse was sent to the client.
    #[error("{0}")]
    Unsupported(String),
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
    relay_auth(client, upstream, startup_raw, startup, ctx).await
}
