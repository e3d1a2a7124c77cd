//! A client speaking raw protocol frames (v3.0, trust authentication), for
//! inputs drivers do not send: message builders, a connection that reads
//! every server message, and readers for errors, rows and COPY data.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Append `s` as a C string.
pub fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

/// A message: tag, length, body.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A protocol-3.0 StartupMessage with these parameters, in order
/// (repeats included).
pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in params {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.push(0);
    let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0u16.to_be_bytes());
    frame(b'P', &b)
}

/// Bind with text parameters and text results.
pub fn bind(portal: &str, stmt: &str, params: &[&str]) -> Vec<u8> {
    let params: Vec<(i32, &[u8])> = params
        .iter()
        .map(|p| (p.len() as i32, p.as_bytes()))
        .collect();
    bind_lengths(portal, stmt, &params)
}

/// A Bind whose parameters carry the given length words, each followed by
/// its bytes (a driver always writes -1 or the true length; an attack
/// need not).
pub fn bind_lengths(portal: &str, stmt: &str, params: &[(i32, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, stmt);
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for (len, bytes) in params {
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(bytes);
    }
    b.extend_from_slice(&0u16.to_be_bytes());
    frame(b'B', &b)
}

pub fn execute(portal: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&0i32.to_be_bytes());
    frame(b'E', &b)
}

pub fn describe_portal(name: &str) -> Vec<u8> {
    let mut b = vec![b'P'];
    cstr(&mut b, name);
    frame(b'D', &b)
}

pub fn describe_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    cstr(&mut b, name);
    frame(b'D', &b)
}

pub fn close_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    cstr(&mut b, name);
    frame(b'C', &b)
}

pub fn sync() -> Vec<u8> {
    frame(b'S', &[])
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    frame(b'Q', &b)
}

pub fn flush() -> Vec<u8> {
    frame(b'H', &[])
}

pub fn copy_data(data: &[u8]) -> Vec<u8> {
    frame(b'd', data)
}

pub fn copy_done() -> Vec<u8> {
    frame(b'c', &[])
}

pub fn copy_fail(why: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, why);
    frame(b'f', &b)
}

/// FunctionCall of `oid` with text arguments and a text result.
pub fn function_call(oid: u32, args: &[&str]) -> Vec<u8> {
    let mut b = oid.to_be_bytes().to_vec();
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&(args.len() as u16).to_be_bytes());
    for a in args {
        b.extend_from_slice(&(a.len() as i32).to_be_bytes());
        b.extend_from_slice(a.as_bytes());
    }
    b.extend_from_slice(&0u16.to_be_bytes());
    frame(b'F', &b)
}

/// One server message: tag and body.
pub type Msg = (u8, Vec<u8>);

pub struct Raw {
    pub s: TcpStream,
}

impl Raw {
    /// Send a StartupMessage; the connection is not read.
    pub async fn open(addr: std::net::SocketAddr, params: &[(&str, &str)]) -> Raw {
        let mut s = TcpStream::connect(addr).await.expect("connect to pgveil");
        s.write_all(&startup(params)).await.unwrap();
        Raw { s }
    }

    /// Log in (trust) as `user` on `app` and read up to ReadyForQuery.
    pub async fn login(addr: std::net::SocketAddr, user: &str) -> Raw {
        let mut r = Raw::open(addr, &[("user", user), ("database", "app")]).await;
        let msgs = r.until_ready().await;
        assert!(
            errors(&msgs).is_empty(),
            "login as {user} failed: {:?}",
            errors(&msgs)
        );
        r
    }

    pub async fn send(&mut self, parts: &[Vec<u8>]) {
        self.s.write_all(&parts.concat()).await.unwrap();
    }

    /// The next message, or `None` when the connection closed.
    pub async fn next(&mut self) -> Option<Msg> {
        let read = async {
            let tag = self.s.read_u8().await.ok()?;
            let len = self.s.read_u32().await.ok()?;
            let mut body = vec![0; len.checked_sub(4)? as usize];
            self.s.read_exact(&mut body).await.ok()?;
            Some((tag, body))
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("no answer from pgveil within 30 s")
    }

    /// Send `parts`, then read up to the next ReadyForQuery.
    pub async fn send_ready(&mut self, parts: &[Vec<u8>]) -> Vec<Msg> {
        self.send(parts).await;
        self.until_ready().await
    }

    /// Everything up to and including the next ReadyForQuery (or up to
    /// the connection's end).
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut v = Vec::new();
        while let Some(m) = self.next().await {
            let done = m.0 == b'Z';
            v.push(m);
            if done {
                break;
            }
        }
        v
    }

    /// Everything until the connection closes.
    pub async fn until_closed(&mut self) -> Vec<Msg> {
        let mut v = Vec::new();
        while let Some(m) = self.next().await {
            v.push(m);
        }
        v
    }
}

/// One field of an ErrorResponse body.
fn field(body: &[u8], code: u8) -> String {
    body.split(|&b| b == 0)
        .find(|f| f.first() == Some(&code))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

/// (SQLSTATE, message) of one ErrorResponse body.
pub fn error_fields(body: &[u8]) -> (String, String) {
    (field(body, b'C'), field(body, b'M'))
}

/// (severity, SQLSTATE, message) of every ErrorResponse.
pub fn errors(msgs: &[Msg]) -> Vec<(String, String, String)> {
    msgs.iter()
        .filter(|m| m.0 == b'E')
        .map(|(_, b)| (field(b, b'V'), field(b, b'C'), field(b, b'M')))
        .collect()
}

/// The tags of the messages, as characters (for assertions).
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.0 as char).collect()
}

/// The text fields of every DataRow.
pub fn rows(msgs: &[Msg]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter(|m| m.0 == b'D')
        .map(|(_, b)| {
            let n = u16::from_be_bytes([b[0], b[1]]) as usize;
            let mut i = 2;
            let mut row = Vec::with_capacity(n);
            for _ in 0..n {
                let len = i32::from_be_bytes(b[i..i + 4].try_into().unwrap());
                i += 4;
                if len < 0 {
                    row.push(None);
                } else {
                    let l = len as usize;
                    row.push(Some(String::from_utf8_lossy(&b[i..i + l]).into_owned()));
                    i += l;
                }
            }
            row
        })
        .collect()
}

impl Raw {
    /// Log in as `user` on `app` at `127.0.0.1:port` (pgveil or PostgreSQL
    /// itself) and read up to ReadyForQuery.
    pub async fn login_at(port: u16, user: &str) -> Raw {
        Raw::login(std::net::SocketAddr::from(([127, 0, 0, 1], port)), user).await
    }

    /// A simple Query with its CopyData and CopyDone pipelined behind it
    /// (as an attacker would send them), read up to ReadyForQuery.
    pub async fn copy_in(&mut self, sql: &str, data: &[&[u8]]) -> Vec<Msg> {
        let mut parts = vec![query(sql)];
        parts.extend(data.iter().map(|d| copy_data(d)));
        parts.push(copy_done());
        self.send(&parts).await;
        self.until_ready().await
    }
}

/// (SQLSTATE, message) of the first ErrorResponse.
pub fn first_error(msgs: &[Msg]) -> Option<(String, String)> {
    errors(msgs).into_iter().next().map(|(_, c, m)| (c, m))
}

/// The payloads of every CopyData.
pub fn copy_data_of(msgs: &[Msg]) -> Vec<Vec<u8>> {
    msgs.iter()
        .filter(|m| m.0 == b'd')
        .map(|m| m.1.clone())
        .collect()
}
