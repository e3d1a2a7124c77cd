//! Pass-through authentication: relay the server's challenges and the
//! client's answers unchanged (trust, password, md5, SCRAM-SHA-256).
//!
//! Used for every method when no verifier source is configured, and for
//! everything but SCRAM when one is. SCRAM-SHA-256-PLUS is never advertised
//! here: channel binding ties the proof to the TLS connection the client
//! sees, which ends at pgveil, so a bound proof relayed unchanged could never
//! verify at PostgreSQL. (With a verifier source pgveil terminates SCRAM
//! instead and binds each leg to its own TLS connection: see `terminate`.)

use super::{AuthContext, AuthError, AuthOutcome, send};
use crate::net::stream::Stream;
use crate::wire::auth::{
    AUTH_CLEARTEXT, AUTH_MD5, AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL, auth_code,
    auth_sasl, sasl_mechanisms,
};
use crate::wire::codec::{Frame, FrameReader};
use crate::wire::error::{error_code, error_response};
use crate::wire::startup::Startup;
use crate::wire::tag::{be, fe};

/// Send the StartupMessage upstream and relay the whole exchange.
pub async fn relay_auth(
    client: &mut FrameReader<Stream>,
    upstream: &mut FrameReader<Stream>,
    startup_raw: &[u8],
    startup: &Startup,
    _ctx: &AuthContext<'_>,
) -> Result<AuthOutcome, AuthError> {
    send(upstream, startup_raw)
        .await
        .map_err(AuthError::Upstream)?;
    let first = upstream.next().await.map_err(AuthError::Upstream)?;
    relay_from(client, upstream, startup, first).await
}

/// Relay the exchange from the server's message `first` on.
pub(super) async fn relay_from(
    client: &mut FrameReader<Stream>,
    upstream: &mut FrameReader<Stream>,
    startup: &Startup,
    first: Frame,
) -> Result<AuthOutcome, AuthError> {
    let login_role = startup.user().unwrap_or_default().to_string();
    let mut next = Some(first);
    loop {
        let f = match next.take() {
            Some(f) => f,
            None => upstream.next().await.map_err(AuthError::Upstream)?,
        };
        match f.tag {
            be::AUTHENTICATION => {
                let code = auth_code(f.body()).unwrap_or(u32::MAX);
                match code {
                    AUTH_OK => {
                        send(client, &f.raw).await.map_err(AuthError::Client)?;
                        return Ok(AuthOutcome { login_role });
                    }
                    AUTH_CLEARTEXT | AUTH_MD5 | AUTH_SASL_CONTINUE => {
                        send(client, &f.raw).await.map_err(AuthError::Client)?;
                        relay_client_answer(client, upstream).await?;
                    }
                    AUTH_SASL => {
                        let mechs = sasl_mechanisms(f.body());
                        let offered: Vec<&str> = mechs
                            .iter()
                            .map(String::as_str)
                            .filter(|m| *m != "SCRAM-SHA-256-PLUS")
                            .collect();
                        if offered.is_empty() {
                            return Err(unsupported(
                                client,
                                "the server offers only SASL mechanisms pgveil cannot relay",
                            )
                            .await);
                        }
                        send(client, &auth_sasl(&offered))
                            .await
                            .map_err(AuthError::Client)?;
                        relay_client_answer(client, upstream).await?;
                    }
                    AUTH_SASL_FINAL => {
                        send(client, &f.raw).await.map_err(AuthError::Client)?;
                    }
                    other => {
                        // 2 KerberosV5, 7/8 GSSAPI, 9 SSPI; anything else is
                        // not a request PostgreSQL sends.
                        let what = match other {
                            2 | 7 | 8 | 9 => "GSSAPI/SSPI/Kerberos",
                            _ => "unknown authentication request",
                        };
                        return Err(unsupported(
                            client,
                            &format!(
                                "authentication method {other} ({what}) is not supported through pgveil: use scram-sha-256, md5, password or trust in pg_hba.conf"
                            ),
                        )
                        .await);
                    }
                }
            }
            be::ERROR_RESPONSE => {
                // Wrong password, unknown database, …: PostgreSQL's own words.
                let _ = send(client, &f.raw).await;
                if error_code(f.body()).as_deref() == Some("28P01") {
                    return Err(AuthError::PasswordFailed);
                }
                return Err(AuthError::Rejected);
            }
            be::NEGOTIATE_PROTOCOL_VERSION | be::NOTICE => {
                // NegotiateProtocolVersion, NoticeResponse.
                send(client, &f.raw).await.map_err(AuthError::Client)?;
            }
            other => {
                return Err(unsupported(
                    client,
                    &format!(
                        "unexpected message {:?} from the server during authentication",
                        other as char
                    ),
                )
                .await);
            }
        }
    }
}

/// Forward one PasswordMessage-family message from the client.
async fn relay_client_answer(
    client: &mut FrameReader<Stream>,
    upstream: &mut FrameReader<Stream>,
) -> Result<(), AuthError> {
    let answer = client.next().await.map_err(AuthError::Client)?;
    if answer.tag != fe::PASSWORD {
        return Err(unsupported(client, "expected a password message during authentication").await);
    }
    send(upstream, &answer.raw)
        .await
        .map_err(AuthError::Upstream)
}

async fn unsupported(client: &mut FrameReader<Stream>, message: &str) -> AuthError {
    let _ = send(client, &error_response("FATAL", "08P01", message)).await;
    AuthError::Unsupported(message.to_string())
}
