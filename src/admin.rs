//! The admin listener at `metrics.listen`: a minimal HTTP/1.1 server (one
//! request per connection) for `GET /metrics` (Prometheus text), `GET
//! /healthz` (the process is serving), `GET /readyz` (`health`'s checks)
//! and `POST /reload` (same as SIGHUP, answered with the outcome; only from
//! the same host: loopback or the listener's own address). At most
//! [`MAX_CONNECTIONS`] at once, each bounded in time both ways. Also the client
//! side of those requests, for `pgveil reload` and `pgveil healthcheck`.
//!
//! Direction: `admin` sits below `proxy` and `health` and names neither.
//! The instance it serves is handed to it as a [`Control`] (implemented by
//! `proxy::server`, which starts the listener); `health::command` and
//! `proxy::reload::command` use its client side ([`client`], [`request`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest request head accepted (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Longest request body read (and ignored).
const MAX_BODY: usize = 64 * 1024;
/// Time a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed as soon as they are
/// accepted. The listener takes no credentials and is often reachable by
/// the whole network: without a bound, idle connections would take the
/// process's file descriptors from the proxy's own listener.
pub const MAX_CONNECTIONS: usize = 32;

/// Bind the admin listener (at start, so a taken port stops pgveil).
pub async fn bind(listen: &str) -> Result<TcpListener, String> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("metrics.listen: {listen:?} is not host:port"))?;
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("metrics.listen {addr}: {e}"))
}

/// What the admin listener asks of the instance it serves (`/readyz`,
/// `POST /reload`), so that it needs nothing of `proxy`.
pub trait Control: Send + Sync + 'static {
    /// `/readyz`: whether the instance is ready, and the report to answer.
    fn readiness(&self) -> impl Future<Output = (bool, Value)> + Send;
    /// `POST /reload`: reload now; what changed as JSON, or the errors.
    fn reload(&self) -> impl Future<Output = Result<Value, Vec<String>>> + Send;
}

/// What the handlers need.
pub struct Admin<C> {
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Answers `/readyz` and `POST /reload`.
    pub control: C,
}

/// Serve requests on `listener` until the process ends.
pub fn spawn<C: Control>(listener: TcpListener, admin: Admin<C>) {
    let admin = Arc::new(admin);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "admin listener: too many connections; closed");
                drop(tcp);
                continue;
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(e) = serve(&admin, tcp, peer).await {
                    tracing::debug!(%peer, error = %e, "admin request failed");
                }
            });
        }
    });
}

/// A parsed request line.
struct Request {
    method: String,
    path: String,
}

async fn serve<C: Control>(
    admin: &Admin<C>,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> std::io::Result<()> {
    let local = tcp.local_addr()?;
    let req = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut tcp)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => {
            return respond(&mut tcp, 400, "text/plain", b"bad request\n").await;
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    let path = req.path.split('?').next().unwrap_or("");
    match (req.method.as_str(), path) {
        ("GET", "/metrics") => {
            let body = admin.metrics.render();
            respond(
                &mut tcp,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                body.as_bytes(),
            )
            .await
        }
        ("GET", "/healthz") => json_response(&mut tcp, 200, &json!({ "status": "ok" })).await,
        ("GET", "/readyz") => {
            let (ready, report) = admin.control.readiness().await;
            let code = if ready { 200 } else { 503 };
            json_response(&mut tcp, code, &report).await
        }
        ("POST", "/reload") => {
            if !same_host(peer, local) {
                return json_response(
                    &mut tcp,
                    403,
                    &json!({ "ok": false, "errors": ["POST /reload is accepted from this host only (loopback or the listener's own address): run `pgveil reload` there, or send SIGHUP"] }),
                )
                .await;
            }
            tracing::info!(%peer, "reload requested over HTTP");
            match admin.control.reload().await {
                Ok(r) => json_response(&mut tcp, 200, &r).await,
                Err(errors) => {
                    json_response(&mut tcp, 422, &json!({ "ok": false, "errors": errors })).await
                }
            }
        }
        (_, "/metrics" | "/healthz" | "/readyz" | "/reload") => {
            respond(&mut tcp, 405, "text/plain", b"method not allowed\n").await
        }
        _ => {
            respond(
                &mut tcp,
                404,
                "text/plain",
                b"not found: try /metrics, /healthz, /readyz\n",
            )
            .await
        }
    }
}

/// Whether the client is on this host: a loopback address, or the address
/// the listener itself answered on.
fn same_host(peer: SocketAddr, local: SocketAddr) -> bool {
    let canon = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    let p = canon(peer.ip());
    p.is_loopback() || p == canon(local.ip())
}

/// Read the request head (and any body up to [`MAX_BODY`]). `None`: not
/// HTTP.
async fn read_request(tcp: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let mut chunk = [0u8; 2048];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
        return Ok(None);
    };
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(path), Some(version)) = (first.next(), first.next(), first.next())
    else {
        return Ok(None);
    };
    if !version.starts_with("HTTP/1.") {
        return Ok(None);
    }
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    // Read the body (ignored) so that closing does not reset the
    // connection before the client has read the answer.
    let mut have = buf.len() - head_end;
    let mut chunk = [0u8; 2048];
    while have < length {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        have += n;
    }
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
    }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn json_response(
    tcp: &mut TcpStream,
    code: u16,
    body: &serde_json::Value,
) -> std::io::Result<()> {
    let mut text = body.to_string();
    text.push('\n');
    respond(tcp, code, "application/json", text.as_bytes()).await
}

async fn respond(
    tcp: &mut TcpStream,
    code: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(body).await?;
        tcp.shutdown().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// The address to reach a listener on `listen` from this host: an
/// unspecified address (`0.0.0.0`, `::`) becomes loopback.
pub fn local_target(listen: &str) -> Result<SocketAddr, String> {
    let mut addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("metrics.listen: {listen:?} is not host:port"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(addr)
}

/// For a one-off request from the command line (`pgveil reload`, `pgveil
/// healthcheck`): the address to reach the listener at `listen` on
/// ([`local_target`]) and a current-thread runtime to run [`request`] on.
pub fn client(listen: &str) -> Result<(SocketAddr, tokio::runtime::Runtime), String> {
    let addr = local_target(listen)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    Ok((addr, rt))
}

/// One request to an admin listener: (status code, body).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let mut resp = Vec::new();
        tcp.read_to_end(&mut resp)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let text = String::from_utf8_lossy(&resp).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
        Ok((code, body.to_string()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{addr}: no answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_host_is_loopback_or_the_listener_address() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(same_host(a("127.0.0.1:5"), a("0.0.0.0:9187")));
        assert!(same_host(a("[::1]:5"), a("[::]:9187")));
        assert!(same_host(a("10.0.0.5:5"), a("10.0.0.5:9187")));
        assert!(same_host(a("[::ffff:10.0.0.5]:5"), a("10.0.0.5:9187")));
        assert!(!same_host(a("10.0.0.6:5"), a("10.0.0.5:9187")));
    }

    #[test]
    fn unspecified_listen_addresses_are_reached_on_loopback() {
        assert_eq!(
            local_target("0.0.0.0:9187").unwrap(),
            "127.0.0.1:9187".parse().unwrap()
        );
        assert_eq!(
            local_target("10.0.0.5:9187").unwrap(),
            "10.0.0.5:9187".parse().unwrap()
        );
    }
}
