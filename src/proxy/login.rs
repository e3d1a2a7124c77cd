//! One client connection: TLS/GSS negotiation, cancel routing, startup,
//! authentication, then the relay. Everything before the relay runs under
//! `limits.login_timeout` and in a pending-login slot; the session takes
//! one of `limits.max_connections` when PostgreSQL reports it ready.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use super::cancel::BackendKey;
use super::relay;
use super::shared::{Live, PendingLogin, Shared};
use super::swap::Follow;
use crate::auth::{self, AuthContext, AuthError, AuthOutcome};
use crate::config::ClientTlsMode;
use crate::net::stream::Stream;
use crate::net::tls::ServerTls;
use crate::session::backend::Backend;
use crate::session::frontend::{Frontend, LexState};
use crate::session::{CatalogEntry, Engine, Identity};
use crate::wire::codec::{FrameError, FrameReader, read_startup};
use crate::wire::error::error_response;
use crate::wire::query::{TERMINATE_MESSAGE, encode_query};
use crate::wire::result::data_row_values;
use crate::wire::startup::{FirstPacket, Startup, cancel_request, parse_first_packet};
use crate::wire::status::{
    backend_key_data, decode_backend_key_data, decode_parameter_status, parameter_status,
};
use crate::wire::tag::{self, be};

/// PostgreSQL's message when `authentication_timeout` expires.
const LOGIN_TIMEOUT_MESSAGE: &str = "canceling authentication due to timeout";

/// Serve one client connection to the end.
pub async fn handle(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, pending: PendingLogin) {
    let _ = tcp.set_nodelay(true);
    shared.live().config.tcp_keepalive.apply(&tcp);
    metrics::counter!("pgveil_connections_total").increment(1);
    metrics::gauge!("pgveil_connections_active").increment(1.0);
    match run(&shared, tcp, peer, pending).await {
        Ok(()) => debug!("session ended"),
        Err(e) => info!(error = %e, "session ended"),
    }
    metrics::gauge!("pgveil_connections_active").decrement(1.0);
}

/// The login deadline passed: count it, tell the client as PostgreSQL
/// words it (57014), and end the connection.
async fn login_timed_out(client: Option<&mut Stream>, phase: &str) -> String {
    metrics::counter!("pgveil_login_timeouts_total").increment(1);
    if let Some(c) = client {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            c.write_all(&error_response("FATAL", "57014", LOGIN_TIMEOUT_MESSAGE)),
        )
        .await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), c.shutdown()).await;
    }
    format!("limits.login_timeout expired {phase}")
}

/// Tell the client why its connection ends (FATAL `code`). A failed write
/// is ignored: the connection ends either way.
async fn send_fatal(client: &mut Stream, code: &str, message: &str) {
    let _ = client
        .write_all(&error_response("FATAL", code, message))
        .await;
}

/// What the login reads, from negotiation to ReadyForQuery.
struct Login<'a> {
    shared: &'a Arc<Shared>,
    /// The configuration this session logs in with.
    live: &'a Live,
    peer: SocketAddr,
    startup: &'a Startup,
    /// `limits.max_message_bytes`.
    max: usize,
}

/// What the startup phase (after authentication, up to ReadyForQuery)
/// leaves for the relay and for the session's end.
struct Ready {
    /// The key the client was given: unregistered when the session ends.
    visible_key: Option<BackendKey>,
    /// The pending-login slot, given up when the session slot is taken.
    pending: Option<PendingLogin>,
    /// One of `limits.max_connections`, taken at ReadyForQuery.
    session_slot: Option<OwnedSemaphorePermit>,
    /// With a policy: the two halves of the session layer.
    transform: Option<(Frontend, Backend)>,
}

async fn run(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    pending: PendingLogin,
) -> Result<(), String> {
    // The configuration this session logs in with (a reload while it runs
    // reaches its engine at a transaction boundary: `swap`).
    let generation = shared.generation();
    let live = shared.live();
    let max = live.config.limits.max_message_bytes;
    let deadline = Instant::now() + live.config.limits.login_timeout.0;
    let mut slot = Some(Stream::Tcp(tcp));
    let negotiated = tokio::time::timeout_at(deadline, negotiate(shared, &live, &mut slot)).await;
    let (startup_raw, startup) = match negotiated {
        Ok(r) => match r? {
            Some(s) => s,
            None => return Ok(()),
        },
        // Mid-handshake (`slot` empty) there is nobody to tell.
        Err(_) => return Err(login_timed_out(slot.as_mut(), "before the startup message").await),
    };
    let mut client = slot.expect("negotiate leaves the stream in place");

    if live.config.client_tls.mode == ClientTlsMode::Require && !client.is_tls() {
        send_fatal(
            &mut client,
            "28000",
            "pgveil requires TLS for client connections: connect with sslmode=require",
        )
        .await;
        return Err("client refused: TLS required".into());
    }

    let upstream = connect_upstream(&live, &mut client, deadline).await?;
    let client_tls = client.is_tls();
    let upstream_tls = upstream.is_tls();
    let mut client = FrameReader::new(client, max);
    let mut upstream = FrameReader::new(upstream, max);
    let cx = Login {
        shared,
        live: &live,
        peer,
        startup: &startup,
        max,
    };
    let tls = (client_tls, upstream_tls);
    let outcome = login(&cx, &mut client, &mut upstream, tls, &startup_raw, deadline).await?;
    let span = tracing::info_span!(
        "session",
        role = %outcome.login_role,
        db = startup.database().unwrap_or_default(),
    );
    // Everything from here runs inside the session span (instrumented,
    // not entered: a guard held across awaits would leak the span into
    // whatever else runs on the thread).
    span.in_scope(|| debug!(client_tls, upstream_tls, "authenticated"));

    // Up to ReadyForQuery: ParameterStatus, BackendKeyData (replaced), notices.
    let mut ready = Ready {
        visible_key: None,
        pending: Some(pending),
        session_slot: None,
        transform: None,
    };
    let startup_done = tokio::time::timeout_at(
        deadline,
        until_ready(
            &cx,
            &outcome.login_role,
            &mut client,
            &mut upstream,
            &mut ready,
        )
        .instrument(span.clone()),
    )
    .await;
    let result = match startup_done {
        Err(_) => Err(login_timed_out(Some(client.get_mut()), "during startup").await),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => {
            let transform = ready.transform.take();
            let follow = transform.as_ref().map(|_| {
                Follow::new(
                    shared.clone(),
                    generation,
                    (live.upstream.host.clone(), live.upstream.port),
                )
            });
            let setup = relay::Setup {
                login_role: outcome.login_role.clone(),
                database: startup.database().unwrap_or_default().to_string(),
                max_message: max,
                transform,
                budget: shared.budget.clone(),
                follow,
            };
            relay::relay(setup, client, upstream)
                .instrument(span.clone())
                .await
        }
    };
    drop(ready.session_slot);
    if let Some(v) = ready.visible_key {
        shared.cancel.unregister(v);
    }
    result
}

/// Open the PostgreSQL connection before the login deadline; a failure is
/// counted and told to the client (08006).
async fn connect_upstream(
    live: &Live,
    client: &mut Stream,
    deadline: Instant,
) -> Result<Stream, String> {
    let connected = tokio::time::timeout_at(deadline, live.upstream.connect()).await;
    let Ok(connected) = connected else {
        return Err(login_timed_out(Some(client), "connecting to PostgreSQL").await);
    };
    match connected {
        Ok(s) => Ok(s),
        Err(e) => {
            warn!(error = %e, "upstream connection failed");
            metrics::counter!("pgveil_upstream_errors_total").increment(1);
            send_fatal(client, "08006", &format!("pgveil: {e}")).await;
            Err(e)
        }
    }
}

/// Authenticate before the login deadline (`tls`: whether the client and
/// the upstream legs are TLS); the login role on success.
async fn login(
    cx: &Login<'_>,
    client: &mut FrameReader<Stream>,
    upstream: &mut FrameReader<Stream>,
    (client_tls, upstream_tls): (bool, bool),
    startup_raw: &[u8],
    deadline: Instant,
) -> Result<AuthOutcome, String> {
    let live = cx.live;
    let ctx = AuthContext {
        peer: cx.peer,
        client_tls_leaf: if client_tls {
            live.server_tls.as_ref().map(|t| t.leaf_der.as_slice())
        } else {
            None
        },
        upstream_tls,
        config: &live.config.auth,
        upstream: &live.upstream,
        base_dir: &live.config.base_dir,
    };
    let authenticated = tokio::time::timeout_at(
        deadline,
        auth::authenticate(client, upstream, startup_raw, cx.startup, &ctx),
    )
    .await;
    let Ok(authenticated) = authenticated else {
        return Err(login_timed_out(Some(client.get_mut()), "during authentication").await);
    };
    match authenticated {
        Ok(o) => Ok(o),
        Err(AuthError::Rejected) => Err("login refused by PostgreSQL".into()),
        Err(AuthError::Upstream(e)) => {
            Err(upstream_failed(client, "during authentication", e).await)
        }
        Err(e) => Err(format!("authentication: {e}")),
    }
}

/// From AuthenticationOk to ReadyForQuery: BackendKeyData replaced by a
/// key pgveil made up, ParameterStatus read (how PostgreSQL reads SQL, the
/// session user) and passed on, and the session set up at ReadyForQuery.
async fn until_ready(
    cx: &Login<'_>,
    login_role: &str,
    client: &mut FrameReader<Stream>,
    upstream: &mut FrameReader<Stream>,
    ready: &mut Ready,
) -> Result<(), String> {
    // The settings that decide how PostgreSQL reads SQL, from the
    // ParameterStatus messages of the startup (role and database defaults,
    // startup options, plain startup keys): what PostgreSQL applied, not
    // what the client asked for. Unsafe until reported.
    let lex = Arc::new(LexState::unreported());
    // The session user PostgreSQL reports (`session_authorization`).
    let mut session_user: Option<String> = None;
    loop {
        let f = match upstream.next().await {
            Ok(f) => f,
            Err(e) => return Err(upstream_failed(client, "during startup", e).await),
        };
        match f.tag {
            be::BACKEND_KEY_DATA => {
                let Some((pid, secret)) = decode_backend_key_data(f.body()) else {
                    return Err(upstream_failed(
                        client,
                        "during startup",
                        FrameError::BadLength {
                            tag: be::BACKEND_KEY_DATA as char,
                            len: f.raw.len() as u32 - 1,
                        },
                    )
                    .await);
                };
                let v = cx.shared.cancel.register(BackendKey { pid, secret });
                ready.visible_key = Some(v);
                write_client(client, &backend_key_data(v.pid, v.secret)).await?;
            }
            be::READY_FOR_QUERY => {
                let user = session_user.as_deref();
                on_ready(cx, login_role, user, &lex, client, upstream, ready).await?;
                write_client(client, &f.raw).await?;
                return Ok(());
            }
            be::ERROR_RESPONSE => {
                write_client(client, &f.raw).await?;
                return Err("startup failed upstream".to_string());
            }
            be::PARAMETER_STATUS => {
                lex.observe(f.body());
                if let Some(("session_authorization", v)) = decode_parameter_status(f.body()) {
                    session_user = Some(v.to_string());
                }
                write_client(client, &f.raw).await?;
            }
            _ => write_client(client, &f.raw).await?,
        }
    }
}

/// PostgreSQL is ready: take a session slot (or refuse the login), build
/// the session layer when there is a policy, and tell the client it talks
/// to pgveil. The ReadyForQuery itself is the caller's to pass on.
async fn on_ready(
    cx: &Login<'_>,
    login_role: &str,
    session_user: Option<&str>,
    lex: &Arc<LexState>,
    client: &mut FrameReader<Stream>,
    upstream: &mut FrameReader<Stream>,
    ready: &mut Ready,
) -> Result<(), String> {
    // Logged in: from a pending-login slot to a session slot.
    let Ok(permit) = cx.shared.sessions.clone().try_acquire_owned() else {
        warn!("connection refused: limits.max_connections reached");
        metrics::counter!("pgveil_connections_refused_total", "limit" => "connections")
            .increment(1);
        send_fatal(
            client.get_mut(),
            "53300",
            "sorry, too many clients already (pgveil: limits.max_connections reached)",
        )
        .await;
        let _ = upstream.get_mut().write_all(&TERMINATE_MESSAGE).await;
        return Err("limits.max_connections reached".to_string());
    };
    ready.session_slot = Some(permit);
    ready.pending.take();
    if let Some(engine) = &cx.live.engine {
        // The policy identity is the login role; it must be the session
        // user PostgreSQL reports. A startup `session_authorization` (plain
        // key or `options`) or a login PostgreSQL read differently ends
        // here, before any statement.
        if session_user != Some(login_role) {
            return Err(session_user_differs(client, session_user, login_role).await);
        }
        let db = cx.startup.database().unwrap_or_default().to_string();
        let entry = match engine.cached(&db) {
            Some(e) => e,
            None => match load_catalog(engine, &db, upstream).await {
                Ok(e) => e,
                Err(e) => {
                    return Err(upstream_failed(client, "while loading the catalog", e).await);
                }
            },
        };
        let id = Identity {
            login_role: login_role.to_string(),
            database: db,
            client_addr: cx.peer.to_string(),
        };
        let st = Arc::new(crate::session::Exchange::new(entry));
        let mut fe = Frontend::new(id.clone(), st.clone(), engine.clone());
        fe.set_max_message(cx.max);
        fe.set_budget(cx.shared.budget.clone());
        fe.set_lex_state(lex.clone());
        ready.transform = Some((fe, Backend::new(id, st, engine.clone())));
    }
    // Tell the client it is talking to pgveil (an unknown ParameterStatus:
    // drivers keep or ignore it). pgveil's own operations commands refuse
    // to run through one.
    write_client(
        client,
        &parameter_status(
            PGVEIL_PARAMETER,
            concat!("pgveil ", env!("CARGO_PKG_VERSION")),
        ),
    )
    .await?;
    Ok(())
}

/// The session user PostgreSQL reports is not the login role (the policy
/// identity): tell the client and return the reason for the log.
async fn session_user_differs(
    client: &mut FrameReader<Stream>,
    session_user: Option<&str>,
    login_role: &str,
) -> String {
    warn!(
        reported = session_user.unwrap_or("(none)"),
        "session user differs from the login role: connection closed"
    );
    send_fatal(
        client.get_mut(),
        "28000",
        &format!(
            "pgveil: PostgreSQL reports session user {} for login role \"{}\": the policy identity must be the login role; do not set session_authorization at startup",
            session_user
                .map(|u| format!("\"{u}\""))
                .unwrap_or_else(|| "(none)".into()),
            login_role
        ),
    )
    .await;
    "session user differs from the login role".into()
}

/// The ParameterStatus pgveil reports to every client at login (value:
/// `pgveil <version>`): how pgveil's operations commands recognise a
/// pgveil given where PostgreSQL was meant.
pub const PGVEIL_PARAMETER: &str = "pgveil_version";

/// The server connection failed before the session started: tell the
/// client (08006 for a lost connection, 08P01 for an invalid message), count
/// it, and return the reason for the log.
async fn upstream_failed(client: &mut FrameReader<Stream>, when: &str, e: FrameError) -> String {
    metrics::counter!("pgveil_upstream_errors_total").increment(1);
    let code = match e {
        FrameError::Closed | FrameError::Truncated | FrameError::Io(_) => "08006",
        FrameError::BadLength { .. }
        | FrameError::TooLarge { .. }
        | FrameError::OverBudget { .. } => "08P01",
    };
    let what = match code {
        "08006" => "lost the connection to PostgreSQL",
        _ => "invalid message from PostgreSQL",
    };
    send_fatal(
        client.get_mut(),
        code,
        &format!("pgveil: {what} {when}: {e}"),
    )
    .await;
    format!("upstream {when}: {e}")
}

async fn write_client(client: &mut FrameReader<Stream>, bytes: &[u8]) -> Result<(), String> {
    client
        .get_mut()
        .write_all(bytes)
        .await
        .map_err(|e| format!("client: {e}"))
}

/// The TLS handshake with the client, as the server with pgveil's
/// certificate.
async fn accept_tls(tls: &ServerTls, tcp: TcpStream) -> Result<Stream, String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let conn = acceptor
        .accept(tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    Ok(Stream::ServerTls(Box::new(conn)))
}

/// SSLRequest / GSSENCRequest / CancelRequest handling up to the
/// StartupMessage. Returns `None` when the connection was a cancel request.
/// The connection stays in `slot` (empty only during a TLS handshake), so
/// that the caller can still answer it when the login deadline cuts this
/// short.
async fn negotiate(
    shared: &Shared,
    live: &Live,
    slot: &mut Option<Stream>,
) -> Result<Option<(bytes::Bytes, Startup)>, String> {
    let max = live.config.limits.max_message_bytes;
    // PostgreSQL 17 clients may start TLS directly (sslnegotiation=direct).
    if let Some(Stream::Tcp(tcp)) = slot.as_ref() {
        let mut first = [0u8; 1];
        if let Ok(1) = tcp.peek(&mut first).await
            && first[0] == 0x16
        {
            let Some(tls) = &live.server_tls else {
                return Err("client started TLS directly but client_tls is not configured".into());
            };
            let Some(Stream::Tcp(tcp)) = slot.take() else {
                unreachable!()
            };
            *slot = Some(accept_tls(tls, tcp).await?);
        }
    }
    loop {
        let stream = slot.as_mut().expect("a stream outside TLS handshakes");
        let raw = match read_startup(stream, max).await {
            Ok(r) => r,
            Err(FrameError::Closed) => return Ok(None),
            Err(e) => {
                warn!(error = %e, "malformed startup packet");
                send_fatal(stream, "08P01", &format!("invalid startup packet: {e}")).await;
                return Err(e.to_string());
            }
        };
        match parse_first_packet(&raw) {
            Ok(FirstPacket::SslRequest) => {
                let offer = live.config.client_tls.mode != ClientTlsMode::Disable
                    && live.server_tls.is_some()
                    && !stream.is_tls();
                if !offer {
                    stream
                        .write_all(&[tag::negotiate::REFUSE])
                        .await
                        .map_err(|e| e.to_string())?;
                    continue;
                }
                stream
                    .write_all(&[tag::negotiate::SSL_ACCEPT])
                    .await
                    .map_err(|e| e.to_string())?;
                let Some(Stream::Tcp(tcp)) = slot.take() else {
                    unreachable!()
                };
                let tls = live.server_tls.as_ref().expect("checked above");
                *slot = Some(accept_tls(tls, tcp).await?);
            }
            Ok(FirstPacket::GssEncRequest) => {
                stream
                    .write_all(&[tag::negotiate::REFUSE])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(FirstPacket::Cancel { pid, secret }) => {
                forward_cancel(shared, live, pid, secret).await;
                return Ok(None);
            }
            Ok(FirstPacket::Startup(s)) => {
                check_startup(stream, &s).await?;
                return Ok(Some((raw, s)));
            }
            Err(e) => {
                send_fatal(stream, "08P01", &e).await;
                return Err(e);
            }
        }
    }
}

/// Refuse a StartupMessage without a user, or one that repeats a key
/// (telling the client), before anything goes upstream.
async fn check_startup(stream: &mut Stream, s: &Startup) -> Result<(), String> {
    if s.user().is_none() {
        send_fatal(
            stream,
            "28000",
            "no PostgreSQL user name specified in startup packet",
        )
        .await;
        return Err("startup without user".into());
    }
    if let Some(key) = s.repeated_key() {
        // PostgreSQL takes the last value, and pgveil must read the login
        // exactly as it does: refused before anything goes upstream. The
        // message names the key, not a value.
        warn!(key, "startup packet repeats a parameter");
        send_fatal(
            stream,
            "08P01",
            &format!(
                "pgveil: startup parameter \"{key}\" is given more than once: send each parameter once"
            ),
        )
        .await;
        return Err(format!("startup repeats parameter {key}"));
    }
    Ok(())
}

async fn forward_cancel(shared: &Shared, live: &Live, pid: u32, secret: u32) {
    let Some(real) = shared.cancel.lookup(pid, secret) else {
        debug!("cancel request for an unknown key ignored");
        return;
    };
    match live.upstream.connect().await {
        Ok(mut s) => {
            let _ = s.write_all(&cancel_request(real.pid, real.secret)).await;
            let _ = s.flush().await;
            // PostgreSQL closes the connection after processing the request.
            let mut sink = BytesMut::with_capacity(16);
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                tokio::io::AsyncReadExt::read_buf(&mut s, &mut sink),
            )
            .await;
            debug!("cancel request forwarded");
        }
        Err(e) => warn!(error = %e, "cannot forward cancel request"),
    }
}

/// Run the catalog query on this session's upstream connection before the
/// client's first statement. If it fails, an empty catalog is installed:
/// statements on protected tables are then refused (fail closed).
async fn load_catalog(
    engine: &Engine,
    db: &str,
    upstream: &mut FrameReader<Stream>,
) -> Result<Arc<CatalogEntry>, FrameError> {
    let mut q = BytesMut::new();
    encode_query(
        &mut q,
        &crate::policy::catalog::Catalog::simple_query(&engine.policy),
    );
    upstream.get_mut().write_all(&q).await?;
    let mut rows = Vec::new();
    let mut failed = false;
    loop {
        let f = upstream.next().await?;
        match f.tag {
            be::DATA_ROW => {
                if let Some(cols) = data_row_values(f.body()) {
                    rows.push(
                        cols.into_iter()
                            .map(|c| c.map(|b| String::from_utf8_lossy(b).into_owned()))
                            .collect(),
                    );
                }
            }
            be::ERROR_RESPONSE => failed = true,
            be::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    if failed {
        warn!(
            database = db,
            "catalog query failed: protected statements will be refused"
        );
        return Ok(engine.failed_catalog());
    }
    Ok(engine.install(db, rows))
}
