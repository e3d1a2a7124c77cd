//! The steady state of a session: frames flow both ways, each direction in
//! its own future so neither side's backpressure can deadlock the other.
//!
//! Frames are forwarded as the original bytes. Every complete frame that
//! one read brought in goes out in one write, so pipelined traffic keeps its
//! batching. Without a policy, large frames pass through in pieces and are
//! never held whole. With one, a large client frame pgveil need not read
//! (a Bind that transforms no parameter, CopyData of a COPY that is not
//! encrypted: `Frontend::stream_large`) passes in pieces too; any other
//! large frame is held (charged against `limits.max_buffered_bytes` by its
//! reader) until what was built from it has been written.

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::warn;

use super::swap::{Follow, Step};
use crate::net::stream::Stream;
use crate::session::Pending;
use crate::session::backend::Backend;
use crate::session::frontend::{Flow, Frontend, Pass};
use crate::wire::budget::{Budget, Charge, Refusal};
use crate::wire::codec::{FrameError, FrameReader};
use crate::wire::error;
use crate::wire::query::TERMINATE_MESSAGE;
use crate::wire::tag::{be, fe};
use bytes::BytesMut;

/// Bytes charged per byte of a large client frame with a policy: the frame
/// itself, and the statement pgveil sends for it until it is written (none
/// when the frame is forwarded unchanged; the rewrite, whose ciphertext
/// literals are larger than the plaintext, otherwise). Planning a rewrite
/// is charged apart, by the frontend (`frontend::REWRITE_FACTOR`).
/// Measured in docs/benchmarks.md.
pub const CLIENT_HOLD_FACTOR: usize = 2;
/// Bytes charged per byte of a large server frame with a policy: the frame
/// (decrypted in place) and its copy on the way out.
pub const SERVER_HOLD_FACTOR: usize = 2;

/// How long a session's next requests wait, after a reload, for the
/// answers to what it has in flight, so that it moves to the new policy
/// before they are handled (see the c2s loop of [`relay`]).
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `out` buffers larger than this are dropped after a write, not kept for
/// the next frames.
const KEEP_OUT: usize = 1 << 20;

/// Per-session facts the relay needs.
pub struct Setup {
    pub login_role: String,
    pub database: String,
    pub max_message: usize,
    /// With a policy: the two halves of the session layer.
    pub transform: Option<(Frontend, Backend)>,
    /// `limits.max_buffered_bytes`, shared by all sessions.
    pub budget: Budget,
    /// With a policy: reloads to follow at transaction boundaries.
    pub follow: Option<Follow>,
}

enum End {
    /// The client sent Terminate or closed its socket.
    ClientDone,
    /// A malformed or oversized message from the client.
    ClientProtocol(FrameError),
    /// A client message that does not fit in the memory budget, discarded.
    ClientOverBudget {
        tag: u8,
        len: usize,
        why: Refusal,
    },
    /// A server message that does not fit in the memory budget: the
    /// session cannot go on without it.
    UpstreamOverBudget {
        len: usize,
        why: Refusal,
    },
    ClientIo(String),
    /// PostgreSQL closed the connection.
    UpstreamClosed,
    UpstreamProtocol(FrameError),
    UpstreamIo(String),
    /// A reload changed what this session's prepared statements do, or
    /// moved the upstream server (`swap`).
    Reloaded(&'static str),
}

/// Run a logged-in session until either side ends it: client → server and server → client, each its own future.
pub async fn relay(
    setup: Setup,
    client: FrameReader<Stream>,
    upstream: FrameReader<Stream>,
) -> Result<(), String> {
    let max = setup.max_message;
    let (cs, cbuf) = client.into_parts();
    let (us, ubuf) = upstream.into_parts();
    let (cr, mut cw) = cs.split();
    let (ur, mut uw) = us.split();
    let mut cr = FrameReader::with_buffer(cr, max, cbuf);
    let mut ur = FrameReader::with_buffer(ur, max, ubuf);
    if setup.transform.is_some() {
        cr.set_budget(setup.budget.clone(), CLIENT_HOLD_FACTOR);
        ur.set_budget(setup.budget.clone(), SERVER_HOLD_FACTOR);
    }
    // PostgreSQL sent a FATAL (or PANIC) error: closing is what comes next.
    let mut upstream_fatal = false;

    let mut follow = setup.follow;
    let inbox = follow.as_ref().map(Follow::inbox);
    let end = if let Some((mut fe, mut be)) = setup.transform {
        let database = setup.database.clone();
        // ParameterStatus tells the frontend how PostgreSQL reads SQL now.
        let lex = fe.lex_state();
        let c2s = async {
            // Kept across reads (emptied after each write): no allocation
            // per read.
            let mut out = BytesMut::new();
            loop {
                // A large message pgveil need not read passes in pieces.
                match stream_client(&mut cr, &mut fe, &mut uw, follow.as_ref()).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(end) => return end,
                }
                match fill_client(&mut cr, &mut uw).await {
                    Ok(()) => {}
                    Err(End::ClientOverBudget { tag, len, why }) => {
                        // Discarded unread: answered in protocol step.
                        let message = crate::wire::budget::refusal_message(len, why);
                        warn!(len, "client message refused: limits.max_buffered_bytes");
                        let mut out = BytesMut::new();
                        if !fe.refuse_over_budget(tag, &message, &mut out) {
                            return End::ClientOverBudget { tag, len, why };
                        }
                        if let Err(e) = uw.write_all(&out).await {
                            return End::UpstreamIo(e.to_string());
                        }
                        continue;
                    }
                    Err(end) => return end,
                }
                // A reload is due and the session is outside a transaction
                // block: a client that sends its next request before it has
                // read the answer to the last never leaves nothing in flight
                // between two reads, and would keep the old policy (a `read`
                // it lost included) for as long as it pipelines. Its new
                // requests wait for the answers to what it sent (PostgreSQL
                // runs them after those anyway), so that it moves first.
                if follow.as_ref().is_some_and(Follow::due)
                    && fe.exchange.tx_idle()
                    && fe.needs_no_client_data()
                {
                    let until = tokio::time::Instant::now() + RELOAD_WAIT;
                    while !fe.exchange.is_idle()
                        && fe.exchange.answers_will_come()
                        && !fe.exchange.is_broken()
                        && tokio::time::Instant::now() < until
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                }
                if fe.exchange.is_idle() && fe.exchange.tx_idle() && fe.between_statements() {
                    if let Some(f) = follow.as_mut()
                        && f.due()
                    {
                        match f.step(&fe.engine, &fe.id.login_role) {
                            Step::Stay => {}
                            Step::Close(why) => return End::Reloaded(why),
                            Step::Adopt(engine) => {
                                fe.engine = engine;
                                if !refresh_catalog(&fe, &database, &mut uw).await {
                                    // Nothing of the old policy may stay:
                                    // refuse protected statements until the
                                    // next refresh.
                                    fe.exchange.set_entry(fe.engine.failed_catalog());
                                }
                                tracing::debug!("session now serves the reloaded policy");
                            }
                        }
                    }
                    if fe.wants_catalog_refresh() {
                        refresh_catalog(&fe, &database, &mut uw).await;
                    }
                }
                // A run that touches nothing protected goes up as the
                // client's bytes, its answers expected as one entry
                // (`session::frontend::lane`).
                if let Some(run) = fe.lane_run(cr.buffered_frames()) {
                    if let Some(follow) = follow.as_mut() {
                        let mut at = 0;
                        for f in cr.buffered_frames() {
                            if at >= run.bytes {
                                break;
                            }
                            at += f.len();
                            follow.observe(f[0], &f[5..]);
                        }
                    }
                    fe.take_lane(run);
                    let bytes = cr.take_prefix(run.bytes);
                    if let Err(e) = uw.write_all(&bytes).await {
                        return End::UpstreamIo(e.to_string());
                    }
                }
                reset(&mut out);
                // Charges of the large frames whose output is in `out`.
                let mut held: Vec<Charge> = Vec::new();
                loop {
                    let f = match cr.try_frame() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => return End::ClientProtocol(e),
                    };
                    if let Some(follow) = follow.as_mut() {
                        follow.observe(f.tag, f.body());
                    }
                    // A statement that may wait for the answers to the
                    // requests before it goes after them.
                    if !out.is_empty() && fe.may_await_answers(&f) {
                        if let Err(e) = uw.write_all(&out).await {
                            return End::UpstreamIo(e.to_string());
                        }
                        reset(&mut out);
                        held.clear();
                    }
                    let flow = fe.on_frame(f, &mut out).await;
                    held.extend(cr.take_charge());
                    held.extend(fe.take_charge());
                    let unchanged = fe.take_forward();
                    if unchanged.is_some() || flow == Flow::Terminate || out.len() >= 64 * 1024 {
                        if let Err(e) = uw.write_all(&out).await {
                            return End::UpstreamIo(e.to_string());
                        }
                        if let Some(raw) = unchanged
                            && let Err(e) = uw.write_all(&raw).await
                        {
                            return End::UpstreamIo(e.to_string());
                        }
                        reset(&mut out);
                        held.clear();
                    }
                    if flow == Flow::Terminate {
                        let _ = uw.flush().await;
                        return End::ClientDone;
                    }
                }
                if !out.is_empty()
                    && let Err(e) = uw.write_all(&out).await
                {
                    return End::UpstreamIo(e.to_string());
                }
            }
        };
        let s2c = async {
            let mut out = BytesMut::new();
            loop {
                if let Err(end) = fill_upstream(&mut ur).await {
                    return end;
                }
                // The client side left a reloaded engine before it sent
                // anything this read can answer.
                if let Some(engine) = inbox.as_ref().and_then(|i| i.take()) {
                    be.adopt_engine(engine);
                }
                // The answers to a pass-through run go out as PostgreSQL's
                // bytes, with what each one does to the session applied
                // (`session::backend::lane`); the rest frame by frame.
                if be.in_lane() {
                    let run = ur.take_run(|tag, frame| {
                        if tag == be::PARAMETER_STATUS {
                            lex.observe(&frame[5..]);
                        }
                        be.lane_pass(tag, frame)
                    });
                    match run {
                        Ok(Some(run)) => {
                            let charge = ur.take_charge();
                            if let Err(e) = cw.write_all(&run).await {
                                return End::ClientIo(e.to_string());
                            }
                            drop(charge);
                        }
                        Ok(None) => {}
                        Err(e) => return End::UpstreamProtocol(e),
                    }
                }
                reset(&mut out);
                let mut held: Vec<Charge> = Vec::new();
                loop {
                    let f = match ur.try_frame() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => return End::UpstreamProtocol(e),
                    };
                    upstream_fatal |= f.tag == be::ERROR_RESPONSE && is_fatal(&f.raw);
                    if f.tag == be::PARAMETER_STATUS {
                        lex.observe(f.body());
                    }
                    be.on_frame(f, &mut out).await;
                    held.extend(ur.take_charge());
                    if out.len() >= 64 * 1024 {
                        if let Err(e) = cw.write_all(&out).await {
                            return End::ClientIo(e.to_string());
                        }
                        reset(&mut out);
                        held.clear();
                    }
                }
                if !out.is_empty()
                    && let Err(e) = cw.write_all(&out).await
                {
                    return End::ClientIo(e.to_string());
                }
            }
        };
        tokio::select! {
            e = c2s => e,
            e = s2c => e,
        }
    } else {
        // No policy: nothing past a frame's header is looked at, so large
        // frames pass through in pieces (`next_run`), never held whole.
        let c2s = async {
            loop {
                let mut saw_terminate = false;
                let run = match cr
                    .next_run(|tag, _| {
                        saw_terminate |= tag == fe::TERMINATE;
                        true
                    })
                    .await
                {
                    Ok(run) => run,
                    Err(FrameError::Closed) => {
                        let _ = uw.write_all(&TERMINATE_MESSAGE).await;
                        return End::ClientDone;
                    }
                    Err(e @ (FrameError::Io(_) | FrameError::Truncated)) => {
                        let _ = uw.write_all(&TERMINATE_MESSAGE).await;
                        return End::ClientIo(e.to_string());
                    }
                    Err(e) => return End::ClientProtocol(e),
                };
                if let Err(e) = uw.write_all(&run).await {
                    return End::UpstreamIo(e.to_string());
                }
                if saw_terminate {
                    let _ = uw.flush().await;
                    return End::ClientDone;
                }
            }
        };
        let s2c = async {
            loop {
                let run = match ur
                    .next_run(|tag, frame| {
                        upstream_fatal |= tag == be::ERROR_RESPONSE && is_fatal(frame);
                        true
                    })
                    .await
                {
                    Ok(run) => run,
                    Err(FrameError::Closed) => return End::UpstreamClosed,
                    Err(e @ (FrameError::Io(_) | FrameError::Truncated)) => {
                        return End::UpstreamIo(e.to_string());
                    }
                    Err(e) => return End::UpstreamProtocol(e),
                };
                if let Err(e) = cw.write_all(&run).await {
                    return End::ClientIo(e.to_string());
                }
            }
        };
        tokio::select! {
            e = c2s => e,
            e = s2c => e,
        }
    };

    match end {
        End::ClientDone => Ok(()),
        End::ClientOverBudget { len, why, .. } | End::UpstreamOverBudget { len, why } => {
            let side = if matches!(end, End::ClientOverBudget { .. }) {
                "client"
            } else {
                warn!(len, "server message refused: limits.max_buffered_bytes");
                "server"
            };
            let _ = send_fatal(
                &mut cw,
                "53200",
                &crate::wire::budget::refusal_message(len, why),
            )
            .await;
            let _ = uw.write_all(&TERMINATE_MESSAGE).await;
            Err(format!(
                "{side} message of {len} bytes refused: limits.max_buffered_bytes"
            ))
        }
        End::ClientIo(e) => Err(format!("client: {e}")),
        End::Reloaded(why) => {
            metrics::counter!("pgveil_reload_sessions_closed_total").increment(1);
            tracing::info!(
                reason = why,
                "session closed at a transaction boundary after a reload"
            );
            let _ = send_fatal(&mut cw, "57P01", why).await;
            let _ = uw.write_all(&TERMINATE_MESSAGE).await;
            Err("closed after a reload".into())
        }
        End::ClientProtocol(e) => {
            warn!(error = %e, "closing connection: protocol violation by the client");
            let _ = send_fatal(&mut cw, "08P01", &format!("pgveil: {e}")).await;
            let _ = uw.write_all(&TERMINATE_MESSAGE).await;
            Err(format!("client protocol error: {e}"))
        }
        End::UpstreamClosed if upstream_fatal => {
            // After a FATAL error PostgreSQL closes; the error was forwarded.
            let _ = cw.shutdown().await;
            Ok(())
        }
        End::UpstreamClosed => {
            // Closed without saying why (the backend was killed, or a
            // crash restart): tell the client, as for a lost connection.
            metrics::counter!("pgveil_upstream_errors_total").increment(1);
            warn!("PostgreSQL closed the connection without an error message");
            let _ = send_fatal(
                &mut cw,
                "08006",
                "pgveil: PostgreSQL closed the connection unexpectedly",
            )
            .await;
            Err("upstream: closed without an error message".into())
        }
        End::UpstreamIo(e) => {
            metrics::counter!("pgveil_upstream_errors_total").increment(1);
            let _ = send_fatal(
                &mut cw,
                "08006",
                "pgveil: lost the connection to PostgreSQL",
            )
            .await;
            Err(format!("upstream: {e}"))
        }
        End::UpstreamProtocol(e) => {
            metrics::counter!("pgveil_upstream_errors_total").increment(1);
            warn!(error = %e, "closing connection: protocol violation by the server");
            let _ = send_fatal(
                &mut cw,
                "08P01",
                &format!("pgveil: invalid message from PostgreSQL: {e}"),
            )
            .await;
            Err(format!("upstream protocol error: {e}"))
        }
    }
}

/// Reload the catalog on this session's own connection, between
/// statements and outside transactions. On failure (`false`) the old one
/// is kept.
async fn refresh_catalog<W: AsyncWrite + Unpin>(fe: &Frontend, database: &str, uw: &mut W) -> bool {
    let (tx, rx) = tokio::sync::oneshot::channel();
    fe.exchange.push(Pending::Catalog { done: Some(tx) });
    let mut q = BytesMut::new();
    crate::wire::query::encode_query(
        &mut q,
        &crate::policy::catalog::Catalog::simple_query(&fe.engine.policy),
    );
    if uw.write_all(&q).await.is_err() {
        return false;
    }
    if let Ok(Some(rows)) = rx.await {
        let entry = fe.engine.install(database, rows);
        fe.exchange.set_entry(entry);
        tracing::debug!("catalog reloaded");
        return true;
    }
    false
}

/// Bytes of a large client message read before deciding whether it must
/// be held: enough for a Bind's portal and statement names.
const STREAM_HEAD: usize = 1024;

/// If the next client message is large and the frontend need not read it
/// ([`Frontend::stream_large`]), pass it upstream (or drop it) piece by
/// piece as it arrives and return `true`; `false` when it must be read
/// whole with [`fill_client`]. After a reload (`follow` says one is due,
/// once the message's head has arrived), a session
/// outside a transaction block holds it instead: it moves to the new
/// policy before the message is read, and the message is then judged by
/// that policy (a Bind of a statement on a table the reload protected must
/// not stream under the old one).
async fn stream_client<R, W>(
    cr: &mut FrameReader<R>,
    fe: &mut Frontend,
    uw: &mut W,
    follow: Option<&Follow>,
) -> Result<bool, End>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tag, total) = match cr.large_head(STREAM_HEAD).await {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(false),
        Err(FrameError::Closed) => {
            let _ = uw.write_all(&TERMINATE_MESSAGE).await;
            return Err(End::ClientDone);
        }
        Err(e @ (FrameError::Io(_) | FrameError::Truncated)) => {
            let _ = uw.write_all(&TERMINATE_MESSAGE).await;
            return Err(End::ClientIo(e.to_string()));
        }
        Err(e) => return Err(End::ClientProtocol(e)),
    };
    if follow.is_some_and(Follow::due) && fe.exchange.tx_idle() && fe.needs_no_client_data() {
        return Ok(false);
    }
    let Some(pass) = fe.stream_large(tag, cr.buffered()) else {
        return Ok(false);
    };
    metrics::counter!("pgveil_streamed_messages_total").increment(1);
    cr.pass_head(total);
    loop {
        match cr.next_piece().await {
            Ok(Some(piece)) => {
                if pass == Pass::Forward
                    && let Err(e) = uw.write_all(&piece).await
                {
                    return Err(End::UpstreamIo(e.to_string()));
                }
            }
            Ok(None) => return Ok(true),
            // Cut off inside the message: PostgreSQL has part of it, which
            // it never reads as a message; closing the connection ends it
            // (no Terminate: it would be read as the message's bytes).
            Err(e) => return Err(End::ClientIo(e.to_string())),
        }
    }
}

/// Wait for a whole client frame; on EOF or error, end the backend cleanly
/// (a client gone without Terminate) and say how the session ends.
async fn fill_client<R, W>(cr: &mut FrameReader<R>, uw: &mut W) -> Result<(), End>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match cr.fill().await {
        Ok(()) => Ok(()),
        Err(FrameError::Closed) => {
            let _ = uw.write_all(&TERMINATE_MESSAGE).await;
            Err(End::ClientDone)
        }
        Err(e @ (FrameError::Io(_) | FrameError::Truncated)) => {
            let _ = uw.write_all(&TERMINATE_MESSAGE).await;
            Err(End::ClientIo(e.to_string()))
        }
        Err(FrameError::OverBudget { tag, len, why }) => {
            Err(End::ClientOverBudget { tag, len, why })
        }
        Err(e) => Err(End::ClientProtocol(e)),
    }
}

/// Wait for a whole server frame.
async fn fill_upstream<R: tokio::io::AsyncRead + Unpin>(
    ur: &mut FrameReader<R>,
) -> Result<(), End> {
    match ur.fill().await {
        Ok(()) => Ok(()),
        Err(FrameError::Closed) => Err(End::UpstreamClosed),
        Err(e @ (FrameError::Io(_) | FrameError::Truncated)) => Err(End::UpstreamIo(e.to_string())),
        Err(FrameError::OverBudget { len, why, .. }) => Err(End::UpstreamOverBudget { len, why }),
        Err(e) => Err(End::UpstreamProtocol(e)),
    }
}

/// Whether a whole ErrorResponse frame has severity FATAL or PANIC (the
/// non-localized `V` field, or `S` from servers older than 9.6).
fn is_fatal(frame: &[u8]) -> bool {
    frame
        .get(5..)
        .unwrap_or_default()
        .split(|&b| b == 0)
        .any(|f| matches!(f, b"VFATAL" | b"VPANIC" | b"SFATAL" | b"SPANIC"))
}

/// Empty `out` after a write; a large one is given back, not kept.
fn reset(out: &mut BytesMut) {
    if out.capacity() > KEEP_OUT {
        *out = BytesMut::new();
    } else {
        out.clear();
    }
}

async fn send_fatal<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: &str,
    message: &str,
) -> std::io::Result<()> {
    w.write_all(&error::error_response("FATAL", code, message))
        .await?;
    w.flush().await?;
    w.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::is_fatal;
    use crate::wire::error;

    #[test]
    fn fatal_errors_are_told_apart() {
        assert!(is_fatal(&error::error_response(
            "FATAL",
            "57P01",
            "terminating"
        )));
        assert!(is_fatal(&error::error_response("PANIC", "XX000", "boom")));
        assert!(!is_fatal(&error::error_response(
            "ERROR", "42601", "syntax"
        )));
        // A message text that merely contains the word.
        assert!(!is_fatal(&error::error_response("ERROR", "P0001", "FATAL")));
        assert!(!is_fatal(b"E\0\0\0"));
    }
}
