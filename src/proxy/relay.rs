//! The steady state of a session: frames flow both ways, each direction in
//! its own future so neither side's backpressure can deadlock the other.
//!
//! Frames are forwarded as the original bytes. Every complete frame that
//! one read brought in goes out in one write, so pipelined traffic keeps its
//! batching.

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::warn;

use super::stream::Stream;
use crate::wire::codec::{FrameError, FrameReader};
use crate::wire::msg;

/// Per-session facts the relay needs.
pub struct Session {
    pub login_role: String,
    pub max_message: usize,
}

enum End {
    /// The client sent Terminate or closed its socket.
    ClientDone,
    /// A malformed or oversized message from the client.
    ClientProtocol(FrameError),
    ClientIo(String),
    /// PostgreSQL closed the connection.
    UpstreamClosed,
    UpstreamProtocol(FrameError),
    UpstreamIo(String),
}

pub async fn relay(
    session: Session,
    client: FrameReader<Stream>,
    upstream: FrameReader<Stream>,
) -> Result<(), String> {
    let max = session.max_message;
    let (cs, cbuf) = client.into_parts();
    let (us, ubuf) = upstream.into_parts();
    let (cr, mut cw) = tokio::io::split(cs);
    let (ur, mut uw) = tokio::io::split(us);
    let mut cr = FrameReader::with_buffer(cr, max, cbuf);
    let mut ur = FrameReader::with_buffer(ur, max, ubuf);

    let end = {
        let c2s = async {
            loop {
                match cr.fill().await {
                    Ok(()) => {}
                    Err(FrameError::Closed) => {
                        // Gone without Terminate: end the backend cleanly.
                        let _ = uw.write_all(&terminate()).await;
                        return End::ClientDone;
                    }
                    Err(e @ (FrameError::Io(_) | FrameError::Truncated)) => {
                        let _ = uw.write_all(&terminate()).await;
                        return End::ClientIo(e.to_string());
                    }
                    Err(e) => return End::ClientProtocol(e),
                }
                let mut saw_terminate = false;
                loop {
                    let run = match cr.take_run(|tag, _| {
                        saw_terminate |= tag == b'X';
                        true
                    }) {
                        Ok(Some(run)) => run,
                        Ok(None) => break,
                        Err(e) => return End::ClientProtocol(e),
                    };
                    if let Err(e) = uw.write_all(&run).await {
                        return End::UpstreamIo(e.to_string());
                    }
                }
                if saw_terminate {
                    let _ = uw.flush().await;
                    return End::ClientDone;
                }
            }
        };
        let s2c = async {
            loop {
                match ur.fill().await {
                    Ok(()) => {}
                    Err(FrameError::Closed) => return End::UpstreamClosed,
                    Err(e @ (FrameError::Io(_) | FrameError::Truncated)) => {
                        return End::UpstreamIo(e.to_string());
                    }
                    Err(e) => return End::UpstreamProtocol(e),
                }
                loop {
                    let run = match ur.take_run(|_, _| true) {
                        Ok(Some(run)) => run,
                        Ok(None) => break,
                        Err(e) => return End::UpstreamProtocol(e),
                    };
                    if let Err(e) = cw.write_all(&run).await {
                        return End::ClientIo(e.to_string());
                    }
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
        End::ClientIo(e) => Err(format!("client: {e}")),
        End::ClientProtocol(e) => {
            warn!(error = %e, "closing connection: protocol violation by the client");
            let _ = send_fatal(&mut cw, "08P01", &format!("pgveil: {e}")).await;
            let _ = uw.write_all(&terminate()).await;
            Err(format!("client protocol error: {e}"))
        }
        End::UpstreamClosed => {
            // After a FATAL error PostgreSQL closes; the error was forwarded.
            let _ = cw.shutdown().await;
            Ok(())
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

fn terminate() -> [u8; 5] {
    [b'X', 0, 0, 0, 4]
}

async fn send_fatal<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: &str,
    message: &str,
) -> std::io::Result<()> {
    w.write_all(&msg::error_response("FATAL", code, message))
        .await?;
    w.flush().await?;
    w.shutdown().await
}
