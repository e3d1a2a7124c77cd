//! Pass-through authentication: relay the server's challenges and the
//! client's answers unchanged (trust, password, md5, SCRAM-SHA-256).
//!
//! SCRAM-SHA-256-PLUS is never advertised: channel binding ties the proof
//! to the TLS connection the client sees, which ends at pgveil, so a bound
//! proof can never verify at PostgreSQL.

use tokio::io::AsyncWriteExt;

use super::{AuthContext, AuthError, AuthOutcome};
use crate::proxy::stream::Stream;
use crate::wire::codec::{FrameError, FrameReader};
use crate::wire::msg::{self, Startup};

async fn send(w: &mut FrameReader<Stream>, bytes: &[u8]) -> Result<(), FrameError> {
    let s = w.get_mut();
    s.write_all(bytes).await?;
    s.flush().await?;
    Ok(())
}

pub async fn relay_auth(
    client: &mut FrameReader<Stream>,
    upstream: &mut FrameReader<Stream>,
    startup_raw: &[u8],
    startup: &Startup,
    _ctx: &AuthContext<'_>,
) -> Result<AuthOutcome, AuthError> {
    let login_role = startup.user().unwrap_or_default().to_string();
    send(upstream, startup_raw)
        .await
        .map_err(AuthError::Upstream)?;
    loop {
        let f = upstream.next().await.map_err(AuthError::Upstream)?;
        match f.tag {
            b'R' => {
                let code = msg::auth_code(f.body()).unwrap_or(u32::MAX);
                match code {
                    msg::AUTH_OK => {
                        send(client, &f.raw).await.map_err(AuthError::Client)?;
                        return Ok(AuthOutcome { login_role });
                    }
                    msg::AUTH_CLEARTEXT | msg::AUTH_MD5 | msg::AUTH_SASL_CONTINUE => {
                        send(client, &f.raw).await.map_err(AuthError::Client)?;
                        relay_client_answer(client, upstream).await?;
                    }
                    msg::AUTH_SASL => {
                        let mechs = msg::sasl_mechanisms(f.body());
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
                        send(client, &msg::auth_sasl(&offered))
                            .await
                            .map_err(AuthError::Client)?;
                        relay_client_answer(client, upstream).await?;
                    }
                    msg::AUTH_SASL_FINAL => {
                        send(client, &f.raw).await.map_err(AuthError::Client)?;
                    }
                    other => {
                        return Err(unsupported(
                            client,
                            &format!(
                                "authentication method {other} (GSSAPI/SSPI/Kerberos) is not supported through pgveil: use scram-sha-256, md5, password or trust in pg_hba.conf"
                            ),
                        )
                        .await);
                    }
                }
            }
            b'E' => {
                // Wrong password, unknown database, …: PostgreSQL's own words.
                let _ = send(client, &f.raw).await;
                return Err(AuthError::Rejected);
            }
            b'v' | b'N' => {
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
    if answer.tag != b'p' {
        return Err(unsupported(client, "expected a password message during authentication").await);
    }
    send(upstream, &answer.raw)
        .await
        .map_err(AuthError::Upstream)
}

async fn unsupported(client: &mut FrameReader<Stream>, message: &str) -> AuthError {
    let _ = send(client, &msg::error_response("FATAL", "08P01", message)).await;
    AuthError::Unsupported(message.to_string())
}
