//! pgveil's own PostgreSQL client connections (the keystore, and the
//! operations commands' `--database`): a libpq-style connection string
//! (URL or key=value) read as libpq reads it, TLS with libpq's `sslmode`
//! values up to `verify-full`, the password from the places libpq looks,
//! and connection strings printed without their password.
//!
//! tokio-postgres parses the connection string but knows only `disable`,
//! `prefer` and `require`, and connects through a TLS connector of the
//! caller's: `sslmode` and `sslrootcert` are taken out of the string here
//! and served by rustls with the same verification as the upstream leg
//! (`upstream.tls`): `prefer` and `require` encrypt without authenticating
//! the server, as in libpq; `verify-full` checks the chain against
//! `sslrootcert` (else the system roots) and the host name. The default is
//! libpq's, `prefer`.
//!
//! Passwords, in libpq's order: the connection string itself, then a
//! password file given by the caller (the first line), then `PGPASSWORD`,
//! then the password file (`PGPASSFILE`, else `~/.pgpass`) entry for the
//! host, port, database and user, with `*` wildcards and `\` escapes.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::config::UpstreamTlsMode;

/// A parsed connection string.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: UpstreamTlsMode,
    pub root_cert: Option<PathBuf>,
    /// The string as given, password removed (for messages).
    pub shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Read `conn` (`what` names it in errors, e.g. `--database`). The
/// password is completed from `password_file`, `PGPASSWORD` or the
/// password file when the string has none.
pub fn parse(conn: &str, what: &str, password_file: Option<&Path>) -> Result<Target, String> {
    // Until the string parses, messages never quote it (a password could
    // be anywhere in a string pgveil and the driver read differently).
    let shown = what.to_string();
    let (rest, sslmode, root) = take_tls_options(conn);
    let tls = match sslmode.as_deref() {
        None | Some("prefer") | Some("allow") => UpstreamTlsMode::Prefer,
        Some("disable") => UpstreamTlsMode::Disable,
        Some("require") => UpstreamTlsMode::Require,
        Some("verify-full") => UpstreamTlsMode::VerifyFull,
        Some("verify-ca") => {
            return Err(format!(
                "{shown}: sslmode=verify-ca is not supported (it checks the chain but not the host name): use sslmode=verify-full"
            ));
        }
        Some(other) => {
            return Err(format!(
                "{shown}: sslmode={other:?} is not one of disable, allow, prefer, require, verify-full"
            ));
        }
    };
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| format!("{what} is not a valid connection string: {e}"))?;
    let shown = shown_form(&config);
    config.ssl_mode(match tls {
        UpstreamTlsMode::Disable => SslMode::Disable,
        UpstreamTlsMode::Prefer => SslMode::Prefer,
        _ => SslMode::Require,
    });
    if config.get_password().is_none()
        && let Some(pw) = password_for(&config, password_file)?
    {
        config.password(pw);
    }
    Ok(Target {
        config,
        tls,
        root_cert: root.map(PathBuf::from),
        shown,
    })
}

/// The client's connection to PostgreSQL (drive it, e.g. `tokio::spawn`).
pub type Connection =
    tokio_postgres::Connection<tokio_postgres::Socket, RustlsStream<tokio_postgres::Socket>>;

/// Connect to `t`; the caller drives (or spawns) the connection. Errors
/// name the server as `t.shown` does (no password) and say what failed.
pub async fn connect(t: &Target) -> Result<(tokio_postgres::Client, Connection), String> {
    let tls =
        Rustls::new(t.tls, t.root_cert.as_deref()).map_err(|e| format!("{}: {e}", t.shown))?;
    t.config
        .connect(tls)
        .await
        .map_err(|e| format!("cannot connect to {}: {}", t.shown, describe(&e)))
}

/// A tokio-postgres error as the server worded it (its Display says only
/// "db error"), with the cause of a connection error.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {} ({})", d.severity(), d.message(), d.code().code()),
        None => error_chain(e),
    }
}

/// A tokio-postgres error that is not the server's (connection, TLS,
/// protocol): its message and every cause below it, `: `-separated.
pub fn error_chain(e: &tokio_postgres::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s += &format!(": {inner}");
        src = inner.source();
    }
    s
}

/// How a parsed connection string is named in messages: built from the
/// parsed settings (`postgres://user@host:port/db`), so no password, in
/// whatever form it was written, can be printed.
fn shown_form(c: &tokio_postgres::Config) -> String {
    let host = match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        c.get_user().unwrap_or(""),
        c.get_dbname().unwrap_or("")
    )
}

/// Take `sslmode` and `sslrootcert` out of a connection string (URL query
/// parameters or key=value keywords); returns the rest and their values.
fn take_tls_options(conn: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    if is_url(conn) {
        let Some(q) = conn.find('?') else {
            return (conn.to_string(), None, None);
        };
        let kept: Vec<&str> = conn[q + 1..]
            .split('&')
            .filter(|p| match p.split_once('=') {
                Some(("sslmode", v)) => {
                    mode = Some(v.to_string());
                    false
                }
                Some(("sslrootcert", v)) => {
                    root = Some(percent_decode(v));
                    false
                }
                _ => true,
            })
            .collect();
        let mut rest = conn[..q].to_string();
        if !kept.is_empty() {
            rest.push('?');
            rest.push_str(&kept.join("&"));
        }
        return (rest, mode, root);
    }
    let mut rest = String::with_capacity(conn.len());
    let mut last = 0;
    for kv in keywords(conn) {
        let key = &conn[kv.key.clone()];
        if key == "sslmode" || key == "sslrootcert" {
            let v = unquote(&conn[kv.value.clone()]);
            if key == "sslmode" {
                mode = Some(v);
            } else {
                root = Some(v);
            }
            rest.push_str(&conn[last..kv.key.start]);
            last = kv.value.end;
        }
    }
    rest.push_str(&conn[last..]);
    (rest, mode, root)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(Ok(v)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16))
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A keyword of the key=value form: where its name and its value (quotes
/// included) are.
struct Keyword {
    key: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
}

/// The `key = value` pairs of a key=value connection string, as libpq
/// splits them (values quoted with `'`, `\` escapes inside quotes).
fn keywords(s: &str) -> Vec<Keyword> {
    let b = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let key = start..i;
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if key.is_empty() || j >= b.len() || b[j] != b'=' {
            // Not a keyword: skip one character (the string is invalid;
            // tokio-postgres reports it).
            i = start + s[start..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        j += 1;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        let vstart = j;
        if j < b.len() && b[j] == b'\'' {
            j += 1;
            while j < b.len() && b[j] != b'\'' {
                if b[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            j = (j + 1).min(b.len());
        } else {
            while j < b.len() && !b[j].is_ascii_whitespace() {
                if b[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            j = j.min(b.len());
        }
        out.push(Keyword {
            key,
            value: vstart..j,
        });
        i = j;
    }
    out
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('\'') {
        Some(inner) => {
            let inner = inner.strip_suffix('\'').unwrap_or(inner);
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => v.to_string(),
    }
}

/// A connection string with its password removed, for messages: the
/// userinfo password and a `password` query parameter of a URL, and the
/// `password` keyword of the key=value form (quoted or not).
pub fn redact(url: &str) -> String {
    if !url.is_ascii() || url.contains('\\') || !is_url(url) && !url.contains('=') {
        // Anything pgveil might split differently from the driver (escapes,
        // non-ASCII) or that is no connection string at all: not shown.
        return "(connection string not shown)".into();
    }
    if is_url(url) {
        let s = url.find("://").map_or(0, |i| i + 3);
        // The last `@`: a password may hold unescaped `@`, `/` or `?`
        // (libpq wants them percent-encoded; users do not always), so
        // everything before it is treated as credentials. A query value
        // with `@` makes the message lose the host, never leak.
        let mut out = match url.rfind('@') {
            Some(at) if at > s => {
                let user = url[s..at].split(':').next().unwrap_or("");
                format!("{}{user}{}", &url[..s], &url[at..])
            }
            _ => url.to_string(),
        };
        if let Some(q) = out[s..].find('?').map(|q| s + q) {
            let params: Vec<String> = out[q + 1..]
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => {
                        format!("{k}=<redacted>")
                    }
                    _ => p.to_string(),
                })
                .collect();
            out = format!("{}{}", &out[..=q], params.join("&"));
        }
        return out;
    }
    let mut out = String::with_capacity(url.len());
    let mut last = 0;
    for kv in keywords(url) {
        if url[kv.key.clone()].eq_ignore_ascii_case("password") {
            out.push_str(&url[last..kv.value.start]);
            out.push_str("<redacted>");
            last = kv.value.end;
        }
    }
    out.push_str(&url[last..]);
    out
}

/// A URL-form connection string (any case, spaces around it).
fn is_url(s: &str) -> bool {
    let t = s.trim_start().to_ascii_lowercase();
    t.starts_with("postgres://") || t.starts_with("postgresql://")
}

/// The password for `cfg` from `password_file`, `PGPASSWORD` or the
/// password file, in that order.
fn password_for(
    cfg: &tokio_postgres::Config,
    password_file: Option<&Path>,
) -> Result<Option<String>, String> {
    if let Some(path) = password_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--password-file {}: {e}", path.display()))?;
        return Ok(Some(text.lines().next().unwrap_or("").to_string()));
    }
    if let Ok(pw) = std::env::var("PGPASSWORD") {
        return Ok(Some(pw));
    }
    let file = match std::env::var_os("PGPASSFILE") {
        Some(f) => PathBuf::from(f),
        None => match std::env::var_os("HOME") {
            Some(h) => Path::new(&h).join(".pgpass"),
            None => return Ok(None),
        },
    };
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(None);
    };
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = cfg
        .get_user()
        .map(str::to_string)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default();
    let db = cfg.get_dbname().unwrap_or(&user).to_string();
    Ok(pgpass_lookup(&text, [&host, &port, &db, &user]))
}

/// The password of the first line of a `.pgpass` text matching `want`
/// (host, port, database, user); `*` matches anything, `\:` and `\\` are
/// a literal colon and backslash, `#` starts a comment line.
fn pgpass_lookup(text: &str, want: [&str; 4]) -> Option<String> {
    'line: for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = vec![String::new()];
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        fields.last_mut().expect("field").push(n);
                    }
                }
                ':' if fields.len() < 5 => fields.push(String::new()),
                c => fields.last_mut().expect("field").push(c),
            }
        }
        if fields.len() != 5 {
            continue;
        }
        for (f, w) in fields.iter().zip(want) {
            if f != "*" && f != w {
                continue 'line;
            }
        }
        return Some(fields[4].clone());
    }
    None
}

/// rustls as tokio-postgres's TLS connector, configured as the upstream
/// leg is for the same mode.
#[derive(Clone)]
pub struct Rustls {
    config: Option<Arc<rustls::ClientConfig>>,
}

impl Rustls {
    fn new(mode: UpstreamTlsMode, root_cert: Option<&Path>) -> Result<Rustls, String> {
        if mode == UpstreamTlsMode::Disable {
            return Ok(Rustls { config: None });
        }
        let config = crate::net::tls::client_config(mode, root_cert)
            .map_err(|e| e.replace("upstream.ca_file", "sslrootcert"))?;
        Ok(Rustls {
            config: Some(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for Rustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// tokio-postgres's TLS connector for pgveil's own connections: rustls, verified as `sslmode` asks (`None`: no TLS).
pub struct RustlsConnect {
    config: Option<Arc<rustls::ClientConfig>>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let Some(config) = self.config else {
                return Err(io::Error::other("TLS is not available for this connection"));
            };
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS stream to PostgreSQL. No channel binding is offered (SCRAM
/// without `-PLUS`), as libpq does by default (`channel_binding=prefer`
/// binds when the server offers it; pgveil's own connections do not need
/// it: `verify-full` authenticates the server).
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, pgpass_lookup, redact, take_tls_options};
    use crate::config::UpstreamTlsMode;

    #[test]
    fn redacts_the_password_in_every_form() {
        for (given, want) in [
            ("postgres://u:secret@h:5/db", "postgres://u@h:5/db"),
            (
                "postgresql://u:s%40cret@h/db?sslmode=disable",
                "postgresql://u@h/db?sslmode=disable",
            ),
            (
                "postgres://u@h/db?password=secret&x=1",
                "postgres://u@h/db?password=<redacted>&x=1",
            ),
            (
                "postgres://h/db?PASSWORD=secret",
                "postgres://h/db?PASSWORD=<redacted>",
            ),
            ("postgres://u:secret@h/db?a=b@c", "postgres://u@c"),
            ("postgres://u:se/c?ret@h/db", "postgres://u@h/db"),
            (
                "host=h password=secret user=u",
                "host=h password=<redacted> user=u",
            ),
            (
                "host=h password = 'se cr\\'et' user=u",
                "(connection string not shown)",
            ),
            (
                "host=h password = 'se cret' user=u",
                "host=h password = <redacted> user=u",
            ),
            ("password=secret", "password=<redacted>"),
            (
                "host=h PassWord='x' dbname=é",
                "(connection string not shown)",
            ),
            ("host=h", "host=h"),
            (
                "host=h password=head\\ tail7741",
                "(connection string not shown)",
            ),
            (
                "jdbc:postgresql://h/app?password=jdbc7742",
                "jdbc:postgresql://h/app?password=<redacted>",
            ),
            ("POSTGRESQL://x:upper7743@h/db", "POSTGRESQL://x@h/db"),
            (" postgres://x:space7744@h/db", " postgres://x@h/db"),
        ] {
            let got = redact(given);
            assert_eq!(got, want, "{given}");
            assert!(
                !got.contains("secret")
                    && !got.contains("cr\\'et")
                    && !got.contains("c?ret")
                    && !got.contains("774"),
                "{got}"
            );
        }
    }

    #[test]
    fn pgpass_matches_as_libpq_does() {
        let text =
            "# comment\nother:5432:*:u:nope\nh:5432:db:u:pw\\:with\\\\colon\n*:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(text, ["h", "5432", "db", "u"]).as_deref(),
            Some("pw:with\\colon")
        );
        assert_eq!(
            pgpass_lookup(text, ["x", "1", "y", "z"]).as_deref(),
            Some("fallback")
        );
        assert_eq!(pgpass_lookup("h:5432:db:u", ["h", "5432", "db", "u"]), None);
    }

    #[test]
    fn sslmode_and_sslrootcert_are_read_in_both_forms() {
        let (rest, m, r) =
            take_tls_options("postgres://u@h/db?sslmode=verify-full&x=1&sslrootcert=%2Fca.pem");
        assert_eq!(
            (rest.as_str(), m.as_deref(), r.as_deref()),
            (
                "postgres://u@h/db?x=1",
                Some("verify-full"),
                Some("/ca.pem")
            )
        );
        let (rest, m, r) =
            take_tls_options("host=h sslmode = verify-full sslrootcert='/a b.pem' user=u");
        assert_eq!(m.as_deref(), Some("verify-full"));
        assert_eq!(r.as_deref(), Some("/a b.pem"));
        assert!(!rest.contains("ssl"), "{rest}");
        let t = parse("host=h user=u password=x", "--database", None).unwrap();
        assert_eq!(t.tls, UpstreamTlsMode::Prefer);
        let t = parse("postgres://u:x@h/db?sslmode=require", "--database", None).unwrap();
        assert_eq!(t.tls, UpstreamTlsMode::Require);
        let e = parse("host=h sslmode=verify-ca password=x", "--database", None).unwrap_err();
        assert!(
            e.contains("verify-full") && !e.contains("password=x"),
            "{e}"
        );
        let e = parse("host=h sslmode=bogus password=x", "--database", None).unwrap_err();
        assert!(e.contains("bogus") && !e.contains("password=x"), "{e}");
    }
}
