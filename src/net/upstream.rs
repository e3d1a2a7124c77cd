//! Opening a connection to PostgreSQL, with TLS per `upstream.tls`.

use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stream::Stream;
use crate::config::{Upstream, UpstreamTlsMode};
use crate::wire::startup;

/// Everything needed to open a connection to PostgreSQL, resolved from `upstream:` once.
pub struct UpstreamConnector {
    /// Host name or IP address of PostgreSQL.
    pub host: String,
    /// Its TCP port.
    pub port: u16,
    /// `upstream.tls`: whether to ask for TLS and whether plain is acceptable.
    pub mode: UpstreamTlsMode,
    /// Name checked against the server certificate (`upstream.server_name`, else `host`).
    pub server_name: String,
    /// TLS client configuration (`None` with `tls: disable`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Timeout for the TCP connect.
    pub connect_timeout: std::time::Duration,
    /// TCP keepalive on the PostgreSQL leg (`tcp_keepalive`).
    pub keepalive: crate::config::TcpKeepalive,
}

impl UpstreamConnector {
    /// Resolve `upstream:` (relative `ca_file` paths through `resolve`) and build the TLS configuration.
    pub fn from_config(
        u: &Upstream,
        resolve: impl Fn(&str) -> std::path::PathBuf,
    ) -> Result<Self, String> {
        let tls = match u.tls {
            UpstreamTlsMode::Disable => None,
            mode => Some(super::tls::client_config(
                mode,
                u.ca_file.as_ref().map(|p| resolve(p.as_str())).as_deref(),
            )?),
        };
        let server_name = u
            .server_name
            .as_ref()
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|| u.host.as_str().to_string());
        ServerName::try_from(server_name.clone())
            .map_err(|e| format!("upstream.server_name {server_name:?}: {e}"))?;
        Ok(UpstreamConnector {
            host: u.host.as_str().to_string(),
            port: u.port,
            mode: u.tls,
            server_name,
            tls,
            connect_timeout: u.connect_timeout.0,
            keepalive: crate::config::TcpKeepalive::default(),
        })
    }

    /// Connect and negotiate TLS. Errors are phrased for the client.
    pub async fn connect(&self) -> Result<Stream, String> {
        let addr = (self.host.as_str(), self.port);
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                format!(
                    "timed out connecting to PostgreSQL at {}:{}",
                    self.host, self.port
                )
            })?
            .map_err(|e| {
                format!(
                    "cannot connect to PostgreSQL at {}:{}: {e}",
                    self.host, self.port
                )
            })?;
        let _ = tcp.set_nodelay(true);
        self.keepalive.apply(&tcp);
        let Some(tls) = &self.tls else {
            return Ok(Stream::Tcp(tcp));
        };
        let mut tcp = tcp;
        let io = |e: std::io::Error| format!("PostgreSQL at {}:{}: {e}", self.host, self.port);
        tcp.write_all(&startup::ssl_request()).await.map_err(io)?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.map_err(io)?;
        match answer[0] {
            b'S' => {
                let name =
                    ServerName::try_from(self.server_name.clone()).map_err(|e| e.to_string())?;
                let conn = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        format!(
                            "TLS handshake with PostgreSQL at {}:{} failed: {e}",
                            self.host, self.port
                        )
                    })?;
                Ok(Stream::ClientTls(Box::new(conn)))
            }
            b'N' if self.mode == UpstreamTlsMode::Prefer => Ok(Stream::Tcp(tcp)),
            b'N' => Err(format!(
                "PostgreSQL at {}:{} does not accept TLS but upstream.tls is {:?}: enable ssl on the server or set upstream.tls: prefer",
                self.host, self.port, self.mode
            )),
            other => Err(format!(
                "PostgreSQL at {}:{} answered {:?} to SSLRequest",
                self.host, self.port, other as char
            )),
        }
    }
}
