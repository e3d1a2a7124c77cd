//! Database connections for the operations commands (`encrypt`, `rotate`,
//! `policy check --database`): where the password comes from, how a
//! connection string is printed (never with its password), and the refusal
//! to run through a pgveil.
//!
//! Passwords, in libpq's order: the connection string itself, then
//! `--password-file` (the file's first line), then `PGPASSWORD`, then the
//! password file (`PGPASSFILE`, else `~/.pgpass`) entry for the host, port,
//! database and user, with libpq's `*` wildcards and `\` escapes.

use std::path::{Path, PathBuf};

/// Where an ops command takes a password from when its connection string
/// has none (set once by the CLI from `--password-file`).
static PASSWORD_FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Use the first line of `path` as the password of connection strings that
/// carry none.
pub fn set_password_file(path: PathBuf) {
    let _ = PASSWORD_FILE.set(path);
}

/// Connect with a libpq-style connection string (URL or key=value); the
/// connection task runs in the background. Errors name the host, never the
/// password. A server that reports itself as pgveil is refused: the
/// operations read and write stored ciphertext and must reach PostgreSQL
/// directly.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    connect_to(url, false).await
}

/// As [`connect`], but a pgveil is fine (the demo's application client).
pub async fn connect_through_pgveil(url: &str) -> Result<tokio_postgres::Client, String> {
    connect_to(url, true).await
}

async fn connect_to(url: &str, pgveil_ok: bool) -> Result<tokio_postgres::Client, String> {
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("invalid connection string {}: {e}", redact(url)))?;
    if cfg.get_password().is_none()
        && let Some(pw) = password_for(&cfg)?
    {
        cfg.password(pw);
    }
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to {}: {}", redact(url), describe(&e)))?;
    if let Some(v) = conn.parameter(crate::proxy::session::PGVEIL_PARAMETER)
        && !pgveil_ok
    {
        return Err(format!(
            "{} is a pgveil ({v}), not PostgreSQL: operations commands read and write stored ciphertext themselves; give --database the address of the PostgreSQL server pgveil connects to (its `upstream:`)",
            redact(url)
        ));
    }
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// The password for `cfg` from `--password-file`, `PGPASSWORD` or the
/// password file, in that order.
fn password_for(cfg: &tokio_postgres::Config) -> Result<Option<String>, String> {
    if let Some(path) = PASSWORD_FILE.get() {
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
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(_)) | None => "localhost".to_string(),
        #[cfg(not(unix))]
        None => "localhost".to_string(),
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

/// A connection string with its password removed, for messages: the
/// userinfo password and a `password` query parameter of a URL, and the
/// `password` keyword of the key=value form (quoted or not).
pub fn redact(url: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
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
    redact_keywords(url)
}

/// The key=value form: `password = 'it''s'` and friends.
fn redact_keywords(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        // A keyword: letters and underscores, then optional spaces and `=`.
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let key = &s[start..i];
        let mut j = i;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if key.is_empty() || j >= b.len() || b[j] != b'=' {
            // Not a keyword: copy one character.
            let ch = s[start..].chars().next().expect("char");
            if key.is_empty() {
                out.push(ch);
                i = start + ch.len_utf8();
            } else {
                out.push_str(key);
            }
            continue;
        }
        j += 1;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        // The value: quoted (with \' and \\) or up to the next space.
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
            while j < b.len() && b[j] != b' ' {
                j += 1;
            }
        }
        out.push_str(&s[start..vstart]);
        if key.eq_ignore_ascii_case("password") {
            out.push_str("<redacted>");
        } else {
            out.push_str(&s[vstart..j]);
        }
        i = j;
    }
    out
}

/// A tokio-postgres error as the server worded it (its Display says only
/// "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {} ({})", d.severity(), d.message(), d.code().code()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{pgpass_lookup, redact};

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
                "host=h password = <redacted> user=u",
            ),
            ("password=secret", "password=<redacted>"),
            (
                "host=h PassWord='x' dbname=é",
                "host=h PassWord=<redacted> dbname=é",
            ),
            ("host=h", "host=h"),
        ] {
            let got = redact(given);
            assert_eq!(got, want, "{given}");
            assert!(
                !got.contains("secret") && !got.contains("cr\\'et") && !got.contains("c?ret"),
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
}
