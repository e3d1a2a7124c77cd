//! Where SCRAM verifiers come from: a PgBouncer-style userlist file
//! (`auth.file`, re-read when it changes) and/or an auth query
//! (`auth.query`, run as `auth.user` over a dedicated connection to the
//! upstream server, results cached for `auth.cache_ttl`).
//!
//! The file is consulted first; users it does not list are looked up with
//! the query, as PgBouncer does with `auth_file` and `auth_query`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, warn};

use super::scram::Secret;
use crate::config::Auth;
use crate::net::upstream::UpstreamConnector;

/// Default for `auth.cache_ttl`.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Time allowed for one lookup on top of the connect timeout.
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);

/// What a lookup needs from the session.
pub struct LookupCtx<'a> {
    /// The `auth` section: which sources exist and how to reach them.
    pub auth: &'a Auth,
    /// How to connect to PostgreSQL for the auth query.
    pub connector: &'a UpstreamConnector,
    /// Directory `auth.file` resolves against (the config file's).
    pub base_dir: &'a Path,
    /// The client's database (where the query runs without `auth.database`).
    pub database: &'a str,
}

impl LookupCtx<'_> {
    fn query_database(&self) -> &str {
        self.auth
            .database
            .as_ref()
            .map(|d| d.as_str())
            .unwrap_or(self.database)
    }
}

/// Whether `auth` names any verifier source.
pub fn configured(auth: &Auth) -> bool {
    auth.query.is_some() || auth.file.is_some()
}

/// An `auth.file` every line of which parsed: the version in force.
pub struct Userlist {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
    entries: HashMap<String, String>,
}

/// Names the file and counts its users, never shows a verifier.
impl std::fmt::Debug for Userlist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Userlist")
            .field("path", &self.path)
            .field("users", &self.entries.len())
            .finish()
    }
}

impl Userlist {
    /// Number of users listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file lists no user.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

struct LoadedFile {
    list: Userlist,
    /// The stamp of a later version of the file that had malformed lines
    /// (not read again until the file changes once more).
    rejected: Option<(SystemTime, u64)>,
}

struct Cached {
    at: Instant,
    secret: Secret,
}

/// The verifier sources' state: the userlist in force, the query results cached per (database, user) and the auth-query connections per database.
#[derive(Default)]
pub struct Sources {
    file: Mutex<Option<LoadedFile>>,
    cache: Mutex<HashMap<(String, String), Cached>>,
    conns: tokio::sync::Mutex<HashMap<String, Arc<tokio_postgres::Client>>>,
}

/// Where a found secret came from (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The `auth.file` userlist.
    File,
    /// The `auth.query` lookup.
    Query,
}

impl Sources {
    /// Sources with nothing loaded, cached or connected yet.
    pub fn new() -> Sources {
        Sources::default()
    }

    /// Look `user` up. `fresh` bypasses the query cache. `Ok(None)`: no
    /// source knows the user (or its password is NULL). `Err`: a source
    /// could not be read (the reason is for the log, not for the client).
    pub async fn lookup(
        &self,
        lc: &LookupCtx<'_>,
        user: &str,
        fresh: bool,
    ) -> Result<Option<(Secret, Origin)>, String> {
        if let Some(file) = &lc.auth.file {
            let path = resolve(lc.base_dir, file.as_str());
            if let Some(secret) = self.read_file(&path, user)? {
                return Ok(Some((Secret::classify(&secret), Origin::File)));
            }
        }
        let Some(query) = &lc.auth.query else {
            return Ok(None);
        };
        let key = (lc.query_database().to_string(), user.to_string());
        let ttl = lc.auth.cache_ttl.map(|d| d.0).unwrap_or(DEFAULT_CACHE_TTL);
        if !fresh {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.get(&key)
                && c.at.elapsed() < ttl
            {
                return Ok(Some((c.secret.clone(), Origin::Query)));
            }
        }
        let budget = lc.connector.connect_timeout + QUERY_TIMEOUT;
        let found = tokio::time::timeout(budget, self.run_query(lc, query.as_str(), user))
            .await
            .map_err(|_| format!("auth query timed out after {budget:?}"))??;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, c| c.at.elapsed() < ttl);
        match found {
            Some(text) => {
                let secret = Secret::classify(&text);
                if !ttl.is_zero() {
                    cache.insert(
                        key,
                        Cached {
                            at: Instant::now(),
                            secret: secret.clone(),
                        },
                    );
                }
                Ok(Some((secret, Origin::Query)))
            }
            None => {
                cache.remove(&key);
                Ok(None)
            }
        }
    }

    /// Forget a cached verifier (it turned out to be out of date).
    pub fn invalidate(&self, lc: &LookupCtx<'_>, user: &str) {
        let key = (lc.query_database().to_string(), user.to_string());
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    /// Start or reload: put `list` (checked whole by [`check_file`]) in
    /// force, or no file, and forget every cached verifier, so the next
    /// login repeats its auth query.
    pub fn install(&self, list: Option<Userlist>) {
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = list.map(|list| LoadedFile {
            list,
            rejected: None,
        });
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The verifier `user` has in `auth.file`. A file that changed is
    /// read again, and takes effect only whole: when a line of it is
    /// malformed (a typo, or a file read while it was being written), the
    /// version in force stays (each bad line is logged as `file:line`), so
    /// no user drops out of it to be looked up elsewhere. With no earlier
    /// version to keep, the lookup fails.
    fn read_file(&self, path: &Path, user: &str) -> Result<Option<String>, String> {
        let meta =
            std::fs::metadata(path).map_err(|e| format!("auth.file {}: {e}", path.display()))?;
        let stamp = meta.modified().ok().map(|m| (m, meta.len()));
        let mut slot = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let stale = match &*slot {
            Some(f) => {
                f.list.path != path
                    || f.list.stamp.is_none()
                    || (f.list.stamp != stamp && (stamp.is_none() || f.rejected != stamp))
            }
            None => true,
        };
        if stale {
            match read_userlist(path, stamp) {
                Ok(list) => {
                    debug!(file = %path.display(), users = list.entries.len(), "auth.file loaded");
                    *slot = Some(LoadedFile {
                        list,
                        rejected: None,
                    });
                }
                Err(problems) => {
                    for p in &problems {
                        warn!(problem = %p, "auth.file not loaded");
                    }
                    match slot.as_mut().filter(|f| f.list.path == path) {
                        Some(f) => {
                            warn!(
                                file = %path.display(),
                                "auth.file changed but does not parse: the previous version stays in force until the file is fixed"
                            );
                            f.rejected = stamp;
                        }
                        None => {
                            return Err(format!(
                                "auth.file {} does not parse ({} problem(s), logged) and no earlier version is loaded: fix it",
                                path.display(),
                                problems.len()
                            ));
                        }
                    }
                }
            }
        }
        Ok(slot
            .as_ref()
            .and_then(|f| f.list.entries.get(user))
            .filter(|s| !s.is_empty())
            .cloned())
    }

    async fn run_query(
        &self,
        lc: &LookupCtx<'_>,
        query: &str,
        user: &str,
    ) -> Result<Option<String>, String> {
        let db = lc.query_database().to_string();
        for attempt in 0..2 {
            let client = self.client(lc, &db, attempt > 0).await?;
            match client.query(query, &[&user]).await {
                Ok(rows) => {
                    let Some(row) = rows.first() else {
                        return Ok(None);
                    };
                    let idx = row
                        .columns()
                        .iter()
                        .position(|c| c.name() == "passwd")
                        .unwrap_or(if row.len() > 1 { 1 } else { 0 });
                    return row
                        .try_get::<_, Option<String>>(idx)
                        .map_err(|e| format!("auth query: the password column is not text: {e}"));
                }
                Err(e) if client.is_closed() && attempt == 0 => {
                    debug!(error = %pg_error_text(&e), "auth query connection was closed; reconnecting");
                }
                Err(e) => return Err(format!("auth query failed: {}", pg_error_text(&e))),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// The auth-query connection for `db`, opened on first use and reused.
    async fn client(
        &self,
        lc: &LookupCtx<'_>,
        db: &str,
        reconnect: bool,
    ) -> Result<Arc<tokio_postgres::Client>, String> {
        let mut conns = self.conns.lock().await;
        if !reconnect
            && let Some(c) = conns.get(db)
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        conns.remove(db);
        let user = lc
            .auth
            .user
            .as_ref()
            .ok_or("auth.query needs auth.user")?
            .as_str();
        let stream = lc.connector.connect().await?;
        let mut cfg = tokio_postgres::Config::new();
        cfg.user(user)
            .dbname(db)
            .application_name("pgveil auth_query")
            .ssl_mode(tokio_postgres::config::SslMode::Disable);
        if let Some(pw) = &lc.auth.password {
            cfg.password(pw.as_str());
        }
        // The stream already speaks TLS when the upstream leg does: the
        // connector negotiated it, so tokio-postgres sees a plain stream.
        let (client, conn) = cfg
            .connect_raw(stream, tokio_postgres::NoTls)
            .await
            .map_err(|e| {
                format!(
                    "auth query: cannot log in as {user:?} to database {db:?}: {}",
                    pg_error_text(&e)
                )
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %pg_error_text(&e), "auth query connection ended");
            }
        });
        let client = Arc::new(client);
        conns.insert(db.to_string(), client.clone());
        Ok(client)
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// A tokio-postgres error for the log: the server's message and SQLSTATE,
/// else the client-side error and its causes.
fn pg_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => crate::pgclient::error_chain(e),
    }
}

/// Read and check an `auth.file` before startup or a reload puts it in
/// force: it must be readable and every line well-formed. Returns the
/// parsed file (for [`Sources::install`]), or one `file:line: problem` per
/// problem.
pub fn check_file(path: &Path) -> Result<Userlist, Vec<String>> {
    let stamp = std::fs::metadata(path)
        .ok()
        .and_then(|m| m.modified().ok().map(|t| (t, m.len())));
    read_userlist(path, stamp)
}

/// `path` parsed whole, stamped with `stamp` (taken before it was read: a
/// change after that makes the next lookup read it again).
fn read_userlist(path: &Path, stamp: Option<(SystemTime, u64)>) -> Result<Userlist, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read auth.file: {e}", path.display())])?;
    let (entries, errors) = parse_userlist(&text);
    if errors.is_empty() {
        return Ok(Userlist {
            path: path.to_path_buf(),
            stamp,
            entries,
        });
    }
    Err(errors
        .into_iter()
        .map(|line| {
            format!(
                "{}:{line}: expected \"user\" \"password\" (both double-quoted, \"\" for a quote inside)",
                path.display()
            )
        })
        .collect())
}

/// Parse PgBouncer's userlist format: one `"user" "password"` pair per
/// line, `""` inside quotes for a literal `"`, anything after the second
/// field ignored, lines starting with `;` or `#` (and blank lines) skipped.
/// Returns the entries and the numbers of malformed lines.
pub fn parse_userlist(text: &str) -> (HashMap<String, String>, Vec<usize>) {
    let mut entries = HashMap::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let parsed = (|| {
            let (user, rest) = quoted(line)?;
            let (password, _) = quoted(rest.trim_start())?;
            Some((user, password))
        })();
        match parsed {
            Some((user, password)) if !user.is_empty() => {
                entries.insert(user, password);
            }
            _ => errors.push(i + 1),
        }
    }
    (entries, errors)
}

/// One `"..."` field with `""` escapes → (value, rest of the line).
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut rest = s.strip_prefix('"')?;
    let mut out = String::new();
    loop {
        let i = rest.find('"')?;
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('"') {
            out.push('"');
            rest = r;
        } else {
            return Some((out, rest));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userlist_format() {
        let text = "; a comment\n\
                    # another\n\
                    \n\
                    \"alice\" \"SCRAM-SHA-256$4096:c2FsdA==$a:b\"\n\
                    \"bob\"   \"md5c4ca4238a0b923820dcc509a6f75849b\" \"ignored\"\n\
                    \"we\"\"ird\" \"pa\"\"ss word\"\n\
                    broken line\n\
                    \"unterminated \"x\n\
                    \"\" \"nobody\"\n";
        let (e, errors) = parse_userlist(text);
        assert_eq!(e["alice"], "SCRAM-SHA-256$4096:c2FsdA==$a:b");
        assert_eq!(e["bob"], "md5c4ca4238a0b923820dcc509a6f75849b");
        assert_eq!(e["we\"ird"], "pa\"ss word");
        assert_eq!(e.len(), 3);
        assert_eq!(errors, vec![7, 8, 9]);
    }

    #[test]
    fn file_is_reread_when_modified() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("userlist.txt");
        std::fs::write(&path, "\"a\" \"one\"\n").unwrap();
        let s = Sources::new();
        assert_eq!(s.read_file(&path, "a").unwrap().as_deref(), Some("one"));
        assert_eq!(s.read_file(&path, "b").unwrap(), None);
        // Different length: picked up even within the mtime granularity.
        std::fs::write(&path, "\"a\" \"three\"\n\"b\" \"\"\n").unwrap();
        assert_eq!(s.read_file(&path, "a").unwrap().as_deref(), Some("three"));
        // An empty password is no password.
        assert_eq!(s.read_file(&path, "b").unwrap(), None);
        std::fs::remove_file(&path).unwrap();
        assert!(s.read_file(&path, "a").is_err());
    }

    #[test]
    fn a_changed_file_applies_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("userlist.txt");
        std::fs::write(&path, "\"a\" \"one\"\n\"b\" \"two\"\n").unwrap();
        let s = Sources::new();
        s.install(Some(check_file(&path).unwrap()));
        // Half written: b's line is cut, a's entry changed.
        std::fs::write(&path, "\"a\" \"uno\"\n\"b\" \"tw").unwrap();
        assert!(check_file(&path).unwrap_err()[0].contains("userlist.txt:2:"));
        assert_eq!(s.read_file(&path, "a").unwrap().as_deref(), Some("one"));
        assert_eq!(s.read_file(&path, "b").unwrap().as_deref(), Some("two"));
        // Fixed: in force at once.
        std::fs::write(&path, "\"a\" \"uno\"\n").unwrap();
        assert_eq!(s.read_file(&path, "a").unwrap().as_deref(), Some("uno"));
        assert_eq!(s.read_file(&path, "b").unwrap(), None);
        // Nothing earlier to keep: the lookup fails.
        std::fs::write(&path, "broken\n").unwrap();
        let fresh = Sources::new();
        assert!(fresh.read_file(&path, "a").is_err());
    }
}
