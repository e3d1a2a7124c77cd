//! SCRAM termination: pgveil is the SCRAM server for the client and a SCRAM
//! client for PostgreSQL, with the user's verifier in between.
//!
//! Order of events, once PostgreSQL asked for SASL:
//! 1. look the user's secret up (`auth.file`, then `auth.query`);
//! 2. start the upstream exchange (client-first → server-first) to learn
//!    PostgreSQL's salt and iteration count;
//! 3. run the whole client exchange with the verifier: offer
//!    SCRAM-SHA-256-PLUS (tls-server-end-point of pgveil's certificate) and
//!    SCRAM-SHA-256 on a TLS client leg, verify the ClientProof against
//!    StoredKey and recover ClientKey;
//! 4. finish the upstream exchange with that ClientKey (channel-bound to the
//!    upstream certificate when PostgreSQL offers PLUS) and check
//!    PostgreSQL's ServerSignature;
//! 5. only then send the client its server-final message and
//!    AuthenticationOk.
//!
//! Unknown users, users with an md5 secret and wrong passwords all end the
//! same way, after a complete (fake when needed) exchange: FATAL 28P01
//! `password authentication failed for user "…"`.

use std::borrow::Cow;

use tracing::{debug, warn};

use super::scram::{
    self, ClientFinal, ClientFirst, ClientKey, DEFAULT_ITERATIONS, DEFAULT_SALT_LEN, Gs2Flag,
    INVALID_AUTHORIZATION, PROTOCOL_VIOLATION, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramError,
    Secret, TLS_SERVER_END_POINT, Verifier,
};
use super::source::{LookupCtx, Origin};
use super::{AuthContext, AuthError, AuthOutcome, cbind, send, state};
use crate::net::stream::Stream;
use crate::wire::auth::{
    AUTH_OK, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL, auth_code, auth_sasl, authentication,
    parse_sasl_initial_response, password_message, sasl_initial_response,
};
use crate::wire::codec::{Frame, FrameReader};
use crate::wire::error::{error_code, error_response, error_response_fields};
use crate::wire::startup::Startup;
use crate::wire::tag::{be, fe, field};

/// Terminate SCRAM for `startup`'s user on both legs (see the steps
/// above); `server_mechanisms` are the ones PostgreSQL offered.
pub(super) async fn terminate(
    client: &mut FrameReader<Stream>,
    upstream: &mut FrameReader<Stream>,
    startup: &Startup,
    ctx: &AuthContext<'_>,
    server_mechanisms: &[String],
) -> Result<AuthOutcome, AuthError> {
    let st = state();
    let user = startup.user().unwrap_or_default().to_string();
    // PostgreSQL's default database is the user name.
    let database = startup.database().unwrap_or(&user).to_string();
    let lc = LookupCtx {
        auth: ctx.config,
        connector: ctx.upstream,
        base_dir: ctx.base_dir,
        database: &database,
    };
    let client_cb = ctx.client_tls_leaf.and_then(cbind::tls_server_end_point);

    let found = match st.sources.lookup(&lc, &user, false).await {
        Ok(f) => f,
        Err(e) => {
            warn!(user = %user, error = %e, "SCRAM verifier lookup failed");
            let _ = send(
                client,
                &error_response(
                    "FATAL",
                    "08006",
                    "pgveil could not look up the password verifier (see the pgveil log)",
                ),
            )
            .await;
            return Err(AuthError::Unsupported(format!("verifier lookup: {e}")));
        }
    };
    let (secret, origin) = match found {
        Some((s @ (Secret::Scram(_) | Secret::Plain(_)), origin)) => (s, origin),
        Some((Secret::Md5, _)) => {
            debug!(user = %user, "stored verifier is md5 but PostgreSQL asks for SCRAM");
            mock_upstream_start(upstream, server_mechanisms).await;
            return fake_exchange(client, &user, client_cb.as_deref()).await;
        }
        None => {
            debug!(user = %user, "no SCRAM verifier for this user");
            mock_upstream_start(upstream, server_mechanisms).await;
            return fake_exchange(client, &user, client_cb.as_deref()).await;
        }
    };

    // 2. Upstream: client-first, server-first.
    let upstream_cb = upstream_binding(upstream, ctx.upstream_tls);
    let up = UpstreamScram::start(client, upstream, server_mechanisms, upstream_cb).await?;

    // The verifier must match PostgreSQL's salt and iteration count.
    let (verifier, out_of_date) = verifier_for(&up, &secret, origin, &lc, &user).await;

    // 3. Client leg.
    let done = client_exchange(client, &verifier, client_cb.as_deref(), false, &user).await?;
    let Some((client_key, auth_message, client_mechanism)) = done else {
        return fail_password(client, &user).await;
    };
    if out_of_date {
        return Err(verifier_out_of_date(client, &lc, &user, origin).await);
    }

    // 4. Upstream: client-final, server-final, AuthenticationOk.
    let upstream_mechanism = up.mechanism;
    let ok_raw = up.finish(client, upstream, &verifier, &client_key).await?;

    // 5. Client: server-final, then AuthenticationOk.
    let server_final = format!(
        "v={}",
        scram::b64(&verifier.server_signature(auth_message.as_bytes()))
    );
    send(
        client,
        &authentication(AUTH_SASL_FINAL, server_final.as_bytes()),
    )
    .await
    .map_err(AuthError::Client)?;
    send(client, &ok_raw).await.map_err(AuthError::Client)?;
    debug!(
        user = %user,
        client_mechanism,
        upstream_mechanism,
        "SCRAM terminated on both legs"
    );
    Ok(AuthOutcome { login_role: user })
}

/// The verifier pgveil has does not match PostgreSQL's salt or iteration
/// count even after a fresh lookup: forget it, say so in the log and to
/// the client (28P01), and end the login.
async fn verifier_out_of_date(
    client: &mut FrameReader<Stream>,
    lc: &LookupCtx<'_>,
    user: &str,
    origin: Origin,
) -> AuthError {
    state().sources.invalidate(lc, user);
    warn!(
        user = %user,
        source = ?origin,
        "the SCRAM verifier pgveil has for this user does not match PostgreSQL's (salt or iteration count differ): update auth.file or check auth.query"
    );
    let _ = send(
        client,
        &error_response(
            "FATAL",
            "28P01",
            &format!(
                "pgveil's password verifier for user \"{user}\" is out of date: PostgreSQL uses a different salt or iteration count (update auth.file, or retry after auth.cache_ttl)"
            ),
        ),
    )
    .await;
    AuthError::Unsupported("password verifier out of date".into())
}

/// The verifier for the client leg: the user's, made to match PostgreSQL's
/// salt and iteration count (`up`). A stored verifier that does not match
/// is looked up again (auth.query); still no match: it is returned with
/// `true` (out of date).
async fn verifier_for(
    up: &UpstreamScram,
    secret: &Secret,
    origin: Origin,
    lc: &LookupCtx<'_>,
    user: &str,
) -> (Verifier, bool) {
    match secret {
        Secret::Plain(p) => (
            Verifier::from_password(p, &up.first.salt, up.first.iterations),
            false,
        ),
        Secret::Scram(v) if up.matches(v) => (v.clone(), false),
        Secret::Scram(v) => {
            // A cached verifier may predate a password change: look again.
            let again = match origin {
                Origin::Query => state().sources.lookup(lc, user, true).await,
                Origin::File => Ok(None),
            };
            let fresh = match &again {
                Ok(Some((Secret::Scram(f), _))) => Some(f.clone()),
                _ => None,
            };
            match fresh {
                Some(f) if up.matches(&f) => (f, false),
                _ => (v.clone(), true),
            }
        }
        Secret::Md5 => unreachable!("md5 secrets took the fake path"),
    }
}

/// Channel binding data of the upstream server's certificate, when the
/// upstream leg is TLS and the certificate's hash is known.
fn upstream_binding(upstream: &mut FrameReader<Stream>, tls: bool) -> Option<Vec<u8>> {
    if !tls {
        return None;
    }
    match upstream.get_mut() {
        Stream::ClientTls(s) => s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| cbind::tls_server_end_point(c.as_ref())),
        _ => None,
    }
}

/// The upstream round trip a known user costs (client-first, server-first;
/// PostgreSQL runs its own mock exchange for unknown users), so the time to
/// the client's AuthenticationSASL does not tell whether the user exists.
/// Nothing from it reaches the client.
async fn mock_upstream_start(upstream: &mut FrameReader<Stream>, server_mechanisms: &[String]) {
    if !server_mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
        return;
    }
    let data = format!("n,,n=,r={}", scram::nonce());
    let first = sasl_initial_response(SCRAM_SHA_256, data.as_bytes());
    if send(upstream, &first).await.is_ok() {
        let _ = upstream.next().await;
    }
}

/// A full exchange with a made-up verifier that always ends in 28P01, so an
/// unknown user looks exactly like a wrong password. The salt is stable per
/// user name (HMAC with a per-process secret), as in PostgreSQL's mock
/// authentication.
async fn fake_exchange(
    client: &mut FrameReader<Stream>,
    user: &str,
    client_cb: Option<&[u8]>,
) -> Result<AuthOutcome, AuthError> {
    let secret = &state().mock_secret;
    let salt = scram::hmac(secret, &[b"salt\0", user.as_bytes()]);
    let verifier = Verifier {
        iterations: DEFAULT_ITERATIONS,
        salt: salt[..DEFAULT_SALT_LEN].to_vec(),
        stored_key: scram::hmac(secret, &[b"stored\0", user.as_bytes()]),
        server_key: scram::hmac(secret, &[b"server\0", user.as_bytes()]),
    };
    client_exchange(client, &verifier, client_cb, true, user).await?;
    fail_password(client, user).await
}

async fn fail_password(
    client: &mut FrameReader<Stream>,
    user: &str,
) -> Result<AuthOutcome, AuthError> {
    let _ = send(
        client,
        &error_response(
            "FATAL",
            "28P01",
            &format!("password authentication failed for user \"{user}\""),
        ),
    )
    .await;
    Err(AuthError::PasswordFailed)
}

async fn protocol_error(client: &mut FrameReader<Stream>, e: ScramError) -> AuthError {
    let _ = send(client, &error_with_detail("FATAL", e.code, &e)).await;
    AuthError::Unsupported(e.to_string())
}

fn error_with_detail(severity: &str, code: &str, e: &ScramError) -> bytes::Bytes {
    error_response_fields(&[
        (field::SEVERITY, Some(severity)),
        (field::SEVERITY_NONLOCALIZED, Some(severity)),
        (field::CODE, Some(code)),
        (field::MESSAGE, Some(e.message.as_str())),
        (field::DETAIL, e.detail.as_deref()),
    ])
}

/// Read the client's next SASL message body ('p').
async fn read_sasl(client: &mut FrameReader<Stream>) -> Result<bytes::Bytes, AuthError> {
    let f = client.next().await.map_err(AuthError::Client)?;
    if f.tag != fe::PASSWORD {
        return Err(protocol_error(
            client,
            ScramError::new(
                PROTOCOL_VIOLATION,
                format!("expected SASL response, got message type {}", f.tag),
            ),
        )
        .await);
    }
    Ok(f.raw.slice(5..))
}

/// The client leg. `Ok(None)`: the exchange was well-formed but the proof
/// is wrong (or `doomed`); the caller sends 28P01. Protocol violations are
/// answered with 08P01 as PostgreSQL does.
async fn client_exchange(
    client: &mut FrameReader<Stream>,
    verifier: &Verifier,
    cbind: Option<&[u8]>,
    doomed: bool,
    user: &str,
) -> Result<Option<(ClientKey, String, &'static str)>, AuthError> {
    let offered: &[&str] = if cbind.is_some() {
        &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    } else {
        &[SCRAM_SHA_256]
    };
    send(client, &auth_sasl(offered))
        .await
        .map_err(AuthError::Client)?;

    let body = read_sasl(client).await?;
    let Some((mechanism, data)) = parse_sasl_initial_response(&body) else {
        return Err(
            protocol_error(client, plain_err("malformed SASLInitialResponse message")).await,
        );
    };
    if !offered.contains(&mechanism.as_str()) {
        return Err(protocol_error(
            client,
            plain_err("client selected an invalid SASL authentication mechanism"),
        )
        .await);
    }
    let plus = mechanism == SCRAM_SHA_256_PLUS;
    let mechanism: &'static str = if plus {
        SCRAM_SHA_256_PLUS
    } else {
        SCRAM_SHA_256
    };
    let first = match scram::parse_client_first(&data, plus) {
        Ok(f) => f,
        Err(e) => return Err(protocol_error(client, e).await),
    };
    if let Err(e) = check_gs2_flag(&first.flag, cbind) {
        return Err(protocol_error(client, e).await);
    }

    let nonce = format!("{}{}", first.nonce, scram::nonce());
    let server_first = scram::server_first(&nonce, &verifier.salt, verifier.iterations);
    send(
        client,
        &authentication(AUTH_SASL_CONTINUE, server_first.as_bytes()),
    )
    .await
    .map_err(AuthError::Client)?;

    let body = read_sasl(client).await?;
    let fin = match scram::parse_client_final(&body) {
        Ok(f) => f,
        Err(e) => return Err(protocol_error(client, e).await),
    };
    if let Err(e) = check_client_final(&first, &fin, cbind, plus, &nonce) {
        return Err(protocol_error(client, e).await);
    }
    let auth_message = format!("{},{},{}", first.bare, server_first, fin.without_proof);
    let key = verifier.verify_client_proof(auth_message.as_bytes(), &fin.proof);
    match key {
        Some(k) if !doomed => Ok(Some((k, auth_message, mechanism))),
        _ => {
            debug!(user = %user, "SCRAM proof rejected");
            Ok(None)
        }
    }
}

/// The client-first's GS2 flag against what pgveil offered: a binding
/// type other than tls-server-end-point is refused, and so is a client
/// that says pgveil does not bind when PLUS was offered (a downgrade).
fn check_gs2_flag(flag: &Gs2Flag, cbind: Option<&[u8]>) -> Result<(), ScramError> {
    match flag {
        Gs2Flag::Bound(t) if t != TLS_SERVER_END_POINT => Err(plain_err(format!(
            "unsupported SCRAM channel-binding type \"{}\"",
            t.escape_default()
        ))),
        // We offered PLUS: a client claiming we did not is being
        // downgraded by someone in the middle.
        Gs2Flag::Yes if cbind.is_some() => Err(ScramError::new(
            INVALID_AUTHORIZATION,
            "SCRAM channel binding negotiation error",
        )
        .with_detail(
            "The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding.",
        )),
        _ => Ok(()),
    }
}

/// The client-final's channel binding (the GS2 header, plus the binding
/// data when `plus`) and nonce against the client-first's.
fn check_client_final(
    first: &ClientFirst,
    fin: &ClientFinal,
    cbind: Option<&[u8]>,
    plus: bool,
    nonce: &str,
) -> Result<(), ScramError> {
    let binding_ok = if plus {
        let mut expected = first.gs2_header.as_bytes().to_vec();
        expected.extend_from_slice(cbind.unwrap_or_default());
        fin.channel_binding == expected
    } else {
        fin.channel_binding == b"n,," || fin.channel_binding == b"y,,"
    };
    if !binding_ok {
        return Err(if plus {
            ScramError::new(INVALID_AUTHORIZATION, "SCRAM channel binding check failed")
        } else {
            plain_err("unexpected SCRAM channel-binding attribute in client-final-message")
        });
    }
    if fin.nonce != nonce {
        return Err(
            ScramError::new(PROTOCOL_VIOLATION, "malformed SCRAM message")
                .with_detail("Nonce does not match."),
        );
    }
    Ok(())
}

fn plain_err(message: impl Into<String>) -> ScramError {
    ScramError::new(PROTOCOL_VIOLATION, message)
}

/// pgveil's SCRAM exchange with PostgreSQL, between server-first and
/// server-final.
struct UpstreamScram {
    mechanism: &'static str,
    gs2_header: &'static str,
    binding: Vec<u8>,
    client_first_bare: String,
    server_first_raw: String,
    first: scram::ServerFirst,
}

impl UpstreamScram {
    /// Choose the mechanism, send client-first, read server-first.
    async fn start(
        client: &mut FrameReader<Stream>,
        upstream: &mut FrameReader<Stream>,
        server_mechanisms: &[String],
        binding: Option<Vec<u8>>,
    ) -> Result<UpstreamScram, AuthError> {
        let offers = |m: &str| server_mechanisms.iter().any(|s| s == m);
        let (mechanism, gs2_header, binding) = match binding {
            Some(b) if offers(SCRAM_SHA_256_PLUS) => {
                (SCRAM_SHA_256_PLUS, "p=tls-server-end-point,,", b)
            }
            // We could bind but the server did not offer it.
            Some(_) if offers(SCRAM_SHA_256) => (SCRAM_SHA_256, "y,,", Vec::new()),
            None if offers(SCRAM_SHA_256) => (SCRAM_SHA_256, "n,,", Vec::new()),
            _ => {
                return Err(upstream_error(
                    client,
                    format!(
                        "PostgreSQL offers no SASL mechanism pgveil supports ({})",
                        server_mechanisms.join(", ")
                    ),
                )
                .await);
            }
        };
        let nonce = scram::nonce();
        let client_first_bare = format!("n=,r={nonce}");
        let data = format!("{gs2_header}{client_first_bare}");
        send(upstream, &sasl_initial_response(mechanism, data.as_bytes()))
            .await
            .map_err(AuthError::Upstream)?;
        let body = expect_auth(client, upstream, AUTH_SASL_CONTINUE).await?;
        let server_first_raw = match String::from_utf8(body[4..].to_vec()) {
            Ok(s) => s,
            Err(_) => {
                return Err(
                    upstream_error(client, "PostgreSQL sent a non-UTF-8 SCRAM message").await,
                );
            }
        };
        let first = match scram::parse_server_first(server_first_raw.as_bytes(), &nonce) {
            Ok(f) => f,
            Err(e) => {
                return Err(
                    upstream_error(client, format!("PostgreSQL's SCRAM message: {e}")).await,
                );
            }
        };
        Ok(UpstreamScram {
            mechanism,
            gs2_header,
            binding,
            client_first_bare,
            server_first_raw,
            first,
        })
    }

    fn matches(&self, v: &Verifier) -> bool {
        v.salt == self.first.salt && v.iterations == self.first.iterations
    }

    /// Send client-final with the proof made from `client_key`, check the
    /// server signature, and return the raw AuthenticationOk message.
    async fn finish(
        self,
        client: &mut FrameReader<Stream>,
        upstream: &mut FrameReader<Stream>,
        verifier: &Verifier,
        client_key: &ClientKey,
    ) -> Result<bytes::Bytes, AuthError> {
        let mut cb = self.gs2_header.as_bytes().to_vec();
        cb.extend_from_slice(&self.binding);
        let without_proof = format!("c={},r={}", scram::b64(&cb), self.first.nonce);
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first_raw, without_proof
        );
        let proof = client_key.proof(&verifier.stored_key, auth_message.as_bytes());
        let final_message = format!("{without_proof},p={}", scram::b64(&proof));
        send(upstream, &password_message(final_message.as_bytes()))
            .await
            .map_err(AuthError::Upstream)?;
        let body = expect_auth(client, upstream, AUTH_SASL_FINAL).await?;
        let signature = match scram::parse_server_final(&body[4..]) {
            Ok(s) => s,
            Err(e) => {
                return Err(
                    upstream_error(client, format!("PostgreSQL's SCRAM message: {e}")).await,
                );
            }
        };
        if !verifier.check_server_signature(auth_message.as_bytes(), &signature) {
            return Err(upstream_error(
                client,
                "PostgreSQL's SCRAM server signature does not match the user's verifier",
            )
            .await);
        }
        let ok = next_auth(
            client,
            upstream,
            AUTH_OK,
            "unexpected message from PostgreSQL after SCRAM",
        )
        .await?;
        Ok(ok.raw)
    }
}

/// Read an Authentication message with `code` from PostgreSQL; return its
/// body. An ErrorResponse is forwarded to the client.
async fn expect_auth(
    client: &mut FrameReader<Stream>,
    upstream: &mut FrameReader<Stream>,
    code: u32,
) -> Result<bytes::Bytes, AuthError> {
    let f = next_auth(
        client,
        upstream,
        code,
        "unexpected message from PostgreSQL during SCRAM",
    )
    .await?;
    Ok(f.raw.slice(5..))
}

/// Read PostgreSQL's next Authentication message, which must have `code`;
/// notices on the way go to the client, an ErrorResponse is forwarded to
/// it, anything else ends the login with `unexpected`.
async fn next_auth(
    client: &mut FrameReader<Stream>,
    upstream: &mut FrameReader<Stream>,
    code: u32,
    unexpected: &'static str,
) -> Result<Frame, AuthError> {
    loop {
        let f = upstream.next().await.map_err(AuthError::Upstream)?;
        match f.tag {
            be::AUTHENTICATION if auth_code(f.body()) == Some(code) => return Ok(f),
            be::NOTICE => send(client, &f.raw).await.map_err(AuthError::Client)?,
            be::ERROR_RESPONSE => {
                return Err(forward_rejection(client, &f.raw, f.body()).await);
            }
            _ => return Err(upstream_error(client, unexpected).await),
        }
    }
}

async fn forward_rejection(client: &mut FrameReader<Stream>, raw: &[u8], body: &[u8]) -> AuthError {
    let _ = send(client, raw).await;
    if error_code(body).as_deref() == Some("28P01") {
        AuthError::PasswordFailed
    } else {
        AuthError::Rejected
    }
}

async fn upstream_error(
    client: &mut FrameReader<Stream>,
    message: impl Into<Cow<'static, str>>,
) -> AuthError {
    let message = message.into();
    warn!(error = %message, "SCRAM login to PostgreSQL failed");
    let _ = send(
        client,
        &error_response("FATAL", "08P01", &format!("pgveil: {message}")),
    )
    .await;
    AuthError::Unsupported(message.into_owned())
}
