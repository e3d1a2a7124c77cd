//! `pgveil.yaml`: the proxy's configuration (see `pgveil.example.yaml` and
//! `docs/configuration.md`). Every string may be written `${ENV_VAR}` or
//! `${ENV_VAR:-default}`. Secrets are never read from the YAML itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::yaml::{self, EnvString, HumanDuration, YamlError, YamlErrors};

/// Default cap on one protocol message (64 MiB): a message pgveil rewrites
/// is held with its rewrite, so the default lets a few of them fit in the
/// default [`DEFAULT_MAX_BUFFERED_BYTES`] at once. PostgreSQL's own limit
/// (`PQ_LARGE_MESSAGE_LIMIT`) is 1 GiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Default global budget for message bodies held whole (256 MiB).
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 << 20;

/// The whole `pgveil.yaml`, loaded and validated by [`Config::load`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to: a literal `host:port` (checked at load).
    pub listen: EnvString,
    /// The PostgreSQL server (or PgBouncer) pgveil connects to.
    pub upstream: Upstream,
    /// TLS offered to clients.
    #[serde(default)]
    pub client_tls: ClientTls,
    /// Where SCRAM verifiers come from when pgveil terminates SCRAM.
    #[serde(default)]
    pub auth: Auth,
    /// Policy file; absent, pgveil is a pass-through proxy.
    pub policy: Option<EnvString>,
    /// Master keys, blind-index key, keystore and key cache (required with `policy`).
    pub keys: Option<Keys>,
    /// Admin listener (metrics, health, reload); absent, none is opened.
    pub metrics: Option<Metrics>,
    /// Audit log; absent, no records are written.
    pub audit: Option<Audit>,
    /// Resource limits on messages, memory, sessions and logins.
    #[serde(default)]
    pub limits: Limits,
    /// TCP keepalive on the client and the PostgreSQL leg.
    #[serde(default)]
    pub tcp_keepalive: TcpKeepalive,
    /// How long sessions may keep running after SIGINT/SIGTERM.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: HumanDuration,
    /// File pgveil writes its process id to while it runs (for `pgveil
    /// reload` and init scripts).
    pub pid_file: Option<EnvString>,
    /// Log output on stderr.
    #[serde(default)]
    pub log: Log,

    /// Directory of the config file: relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Path of the config file, for error messages.
    #[serde(skip)]
    pub path: PathBuf,
}

fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// The `upstream:` section: the PostgreSQL server and how to reach it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Host name or IP address of PostgreSQL.
    pub host: EnvString,
    /// Its TCP port.
    pub port: u16,
    /// TLS to PostgreSQL, with libpq's `sslmode` meaning.
    #[serde(default)]
    pub tls: UpstreamTlsMode,
    /// PEM CA bundle for `verify-full` (absent: the system root store).
    pub ca_file: Option<EnvString>,
    /// Name checked against the server certificate in `verify-full`
    /// (defaults to `host`).
    pub server_name: Option<EnvString>,
    /// Timeout for the TCP connect to PostgreSQL.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// `upstream.tls`: whether pgveil uses TLS to PostgreSQL and what it checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    /// Plain TCP only.
    Disable,
    /// Try TLS, fall back to plain if the server declines.
    #[default]
    Prefer,
    /// Insist on TLS but, like libpq, do not check the certificate.
    Require,
    /// Insist on TLS and check the chain and the host name.
    VerifyFull,
}

/// TLS offered to clients. With mode `prefer` or `disable`, a certificate
/// or key file named by an unset `${VAR}` means no certificate (TLS is not
/// offered), so the shipped example loads without TLS files; with
/// `require`, the unset variable is an error.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "RawClientTls")]
pub struct ClientTls {
    /// Whether TLS is refused, offered or required.
    pub mode: ClientTlsMode,
    /// PEM certificate chain pgveil presents (`None`: TLS is not offered).
    pub cert_file: Option<EnvString>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<EnvString>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientTls {
    #[serde(default)]
    mode: ClientTlsMode,
    cert_file: Option<crate::yaml::MaybeEnvString>,
    key_file: Option<crate::yaml::MaybeEnvString>,
}

impl TryFrom<RawClientTls> for ClientTls {
    type Error = String;

    fn try_from(r: RawClientTls) -> Result<ClientTls, String> {
        use crate::yaml::MaybeEnvString as M;
        let unset = [&r.cert_file, &r.key_file]
            .into_iter()
            .flatten()
            .find_map(|f| match f {
                M::Unset(why) => Some(why.clone()),
                M::Set(_) => None,
            });
        let (cert_file, key_file) = match (unset, r.mode) {
            (Some(why), ClientTlsMode::Require) => {
                return Err(format!("client_tls (mode require): {why}"));
            }
            (Some(_), _) => (None, None),
            (None, _) => {
                let set = |f: Option<M>| match f {
                    Some(M::Set(v)) => Some(v),
                    _ => None,
                };
                (set(r.cert_file), set(r.key_file))
            }
        };
        Ok(ClientTls {
            mode: r.mode,
            cert_file,
            key_file,
        })
    }
}

/// `client_tls.mode`: how pgveil answers a client's SSLRequest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTlsMode {
    /// Answer `N`: clients stay on plain TCP.
    Disable,
    /// TLS for clients that ask, when both files are set.
    #[default]
    Prefer,
    /// Refuse plain connections with 28000; both files are mandatory.
    Require,
}

/// The `auth:` section: where SCRAM verifiers are looked up, and the failed-login limit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Login used only to look SCRAM verifiers up with `query`.
    pub user: Option<EnvString>,
    /// Password of `user`, if its pg_hba method needs one.
    pub password: Option<EnvString>,
    /// Query returning (usename, passwd) for `$1`.
    pub query: Option<EnvString>,
    /// Database the auth query runs in (defaults to the client's database).
    pub database: Option<EnvString>,
    /// PgBouncer-style userlist file: `"user" "verifier"` per line.
    pub file: Option<EnvString>,
    /// How long a looked-up verifier is reused.
    pub cache_ttl: Option<HumanDuration>,
    /// Failed logins allowed per client IP address in a burst before new
    /// logins from it are refused (token bucket; default 10, 0 disables).
    pub max_failures: Option<u32>,
    /// Time in which a client IP's failure allowance refills completely
    /// (default 60s).
    pub failure_window: Option<HumanDuration>,
}

/// The `keys:` section: master-key provider, blind-index key, keystore and key cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    /// Which master-key provider wraps data keys.
    pub provider: KeyProvider,
    /// Settings of the `local` provider (required with it).
    pub local: Option<LocalKeys>,
    /// Settings of the `aws-kms` provider (required with it).
    pub aws_kms: Option<AwsKms>,
    /// Root of all blind-index keys (HKDF per column); required when the policy has a `blind_index`.
    pub blind_index_key: Option<SecretRef>,
    /// Database holding the wrapped data keys.
    pub keystore: Option<Keystore>,
    /// How long unwrapped data keys stay in memory (default 300s).
    pub cache_ttl: Option<HumanDuration>,
}

/// `keys.provider`: which master-key provider wraps data keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyProvider {
    /// Master keys given in the config, from environment variables or files.
    Local,
    /// An AWS KMS key (or a KMS-compatible endpoint).
    AwsKms,
}

/// The `keys.local:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalKeys {
    /// Key-encryption keys, newest first.
    pub master_keys: Vec<MasterKeyRef>,
}

/// One entry of `keys.local.master_keys`: a key's id and where its 64 hex digits are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterKeyRef {
    /// Name stored next to every data key it wraps (never reused for other key material).
    pub id: EnvString,
    /// Environment variable holding the key (exactly one of `env` and `file`).
    pub env: Option<EnvString>,
    /// File holding the key (exactly one of `env` and `file`).
    pub file: Option<EnvString>,
}

/// Where a secret comes from: an environment variable or a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Environment variable holding the secret (exactly one of `env` and `file`).
    pub env: Option<EnvString>,
    /// File holding the secret (exactly one of `env` and `file`).
    pub file: Option<EnvString>,
}

/// The `keys.aws_kms:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsKms {
    /// KMS key id, ARN or `alias/…` that generates and unwraps data keys.
    pub key_id: EnvString,
    /// AWS region (absent: the default credential chain's).
    pub region: Option<EnvString>,
    /// Endpoint URL of a KMS-compatible service (VPC endpoint, LocalStack, moto).
    pub endpoint: Option<EnvString>,
}

/// The `keys.keystore:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keystore {
    /// libpq-style URL of the database holding wrapped data keys.
    pub database: EnvString,
}

/// The `metrics:` section: the admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`, `/reload`).
    pub listen: EnvString,
}

/// The `audit:` section: the JSON-lines audit log and its rotation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// JSON-lines file records are appended to.
    pub path: EnvString,
    /// Rotate the file when it grows past this many bytes (default 100 MiB).
    pub max_bytes: Option<u64>,
    /// Rotated files kept (default 5).
    pub keep: Option<u32>,
    /// What happens to decryption while records cannot be written.
    #[serde(default)]
    pub on_failure: AuditOnFailure,
}

/// `audit.on_failure`: whether statements keep decrypting while the audit
/// log cannot be written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditOnFailure {
    /// Keep serving; lost records are counted and logged.
    #[default]
    Continue,
    /// Refuse decryption (SQLSTATE 58030) until records can be written.
    Block,
}

/// The `log:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `text` (default) or `json`: one JSON object per line.
    #[serde(default)]
    pub format: LogFormat,
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines (colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line, with the fields of the current spans.
    Json,
}

/// The `limits:` section: resource limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest protocol message accepted from either side.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Largest number of authenticated client sessions served at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has from connecting to completing authentication
    /// (PostgreSQL's `authentication_timeout`).
    #[serde(default = "default_login_timeout")]
    pub login_timeout: HumanDuration,
    /// Largest number of connections still logging in at once.
    #[serde(default = "default_max_pending_logins")]
    pub max_pending_logins: usize,
    /// Largest number of connections still logging in from one client IP
    /// address (0: no per-address cap).
    #[serde(default)]
    pub max_pending_logins_per_ip: usize,
    /// Memory budget for message bodies pgveil holds whole, across all
    /// sessions.
    #[serde(default = "default_max_buffered")]
    pub max_buffered_bytes: usize,
    /// How long a message waits for room in `max_buffered_bytes` before it
    /// is refused with 53200.
    #[serde(default = "default_buffer_wait")]
    pub buffer_wait: HumanDuration,
}

fn default_max_message() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}
fn default_max_connections() -> usize {
    10_000
}
fn default_login_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_max_pending_logins() -> usize {
    1_000
}
fn default_max_buffered() -> usize {
    DEFAULT_MAX_BUFFERED_BYTES
}
fn default_buffer_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_connections: default_max_connections(),
            login_timeout: default_login_timeout(),
            max_pending_logins: default_max_pending_logins(),
            max_pending_logins_per_ip: 0,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            buffer_wait: default_buffer_wait(),
        }
    }
}

/// TCP keepalive on the client and the PostgreSQL leg.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Idle time before the first probe (`0s` turns keepalive off).
    #[serde(default = "default_keepalive_idle")]
    pub idle: HumanDuration,
    /// Time between probes; the number of probes is the OS default
    /// (`net.ipv4.tcp_keepalive_probes`, 9 on Linux).
    #[serde(default = "default_keepalive_interval")]
    pub interval: HumanDuration,
}

fn default_keepalive_idle() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_keepalive_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

impl Default for TcpKeepalive {
    fn default() -> Self {
        TcpKeepalive {
            idle: default_keepalive_idle(),
            interval: default_keepalive_interval(),
        }
    }
}

impl TcpKeepalive {
    /// Turn keepalive on for `tcp` as configured (best effort: a socket
    /// that refuses the option keeps working without it).
    pub fn apply(&self, tcp: &tokio::net::TcpStream) {
        if self.idle.0.is_zero() {
            return;
        }
        let ka = socket2::TcpKeepalive::new()
            .with_time(self.idle.0)
            .with_interval(self.interval.0.max(Duration::from_secs(1)));
        if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
            tracing::debug!(error = %e, "cannot enable TCP keepalive");
        }
    }
}

impl Config {
    /// Load and validate a config file. Every problem is reported with its
    /// `file:line` and the fix.
    pub fn load(path: &Path) -> Result<Config, YamlErrors> {
        let (mut cfg, text): (Config, String) = yaml::load_all(path)?;
        cfg.path = path.to_path_buf();
        cfg.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let errors = cfg.validate(&text);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(YamlErrors(errors))
        }
    }

    /// Parse config text (for tests and `demo`); `path` names it in errors and
    /// anchors relative paths.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, YamlErrors> {
        let mut cfg: Config = yaml::from_str_all(path, text)?;
        cfg.path = path.to_path_buf();
        cfg.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let errors = cfg.validate(text);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(YamlErrors(errors))
        }
    }

    fn err(&self, text: &str, at: &[&str], message: impl Into<String>) -> YamlError {
        YamlError {
            file: self.path.clone(),
            line: yaml::locate(text, at),
            message: message.into(),
        }
    }

    fn validate(&self, text: &str) -> Vec<YamlError> {
        let mut errs = Vec::new();
        if self.listen.as_str().parse::<SocketAddr>().is_err() {
            errs.push(self.err(
                text,
                &["listen"],
                format!(
                    "listen: {:?} is not an address: write host:port, e.g. 127.0.0.1:6432",
                    self.listen.as_str()
                ),
            ));
        }
        if self.client_tls.mode == ClientTlsMode::Require
            && (self.client_tls.cert_file.is_none() || self.client_tls.key_file.is_none())
        {
            errs.push(self.err(
                text,
                &["client_tls", "mode"],
                "client_tls.mode is require but cert_file/key_file are missing: add both PEM files",
            ));
        }
        if self.upstream.tls == UpstreamTlsMode::VerifyFull && self.upstream.ca_file.is_none() {
            // Allowed: falls back to the system roots. Nothing to report.
        }
        if self.auth.query.is_some() && self.auth.user.is_none() {
            errs.push(self.err(
                text,
                &["auth", "query"],
                "auth.query needs auth.user: the login that runs the lookup",
            ));
        }
        if self.limits.max_message_bytes < 1024 {
            errs.push(self.err(
                text,
                &["limits", "max_message_bytes"],
                "limits.max_message_bytes is below 1024: PostgreSQL needs at least a few KiB",
            ));
        }
        if self.limits.max_pending_logins == 0 {
            errs.push(self.err(
                text,
                &["limits", "max_pending_logins"],
                "limits.max_pending_logins is 0: no client could log in; give at least 1",
            ));
        }
        if self.limits.login_timeout.0.is_zero() {
            errs.push(self.err(
                text,
                &["limits", "login_timeout"],
                "limits.login_timeout is 0: no client could log in; give e.g. 60s",
            ));
        }
        if self.limits.max_buffered_bytes < self.limits.max_message_bytes.min(1 << 20) {
            errs.push(self.err(
                text,
                &["limits", "max_buffered_bytes"],
                "limits.max_buffered_bytes is below 1 MiB: give at least 1048576 (default 268435456)",
            ));
        }
        if let Some(keys) = &self.keys {
            match keys.provider {
                KeyProvider::Local => match &keys.local {
                    None => errs.push(self.err(
                        text,
                        &["keys", "provider"],
                        "keys.provider is local but keys.local.master_keys is missing: add it",
                    )),
                    Some(l) if l.master_keys.is_empty() => errs.push(self.err(
                        text,
                        &["keys", "local", "master_keys"],
                        "keys.local.master_keys is empty: list at least one key (newest first)",
                    )),
                    Some(l) => {
                        for k in &l.master_keys {
                            if k.env.is_some() == k.file.is_some() {
                                errs.push(self.err(
                                    text,
                                    &["keys", "local", "master_keys"],
                                    format!(
                                        "master key {}: give exactly one of env: or file:",
                                        k.id
                                    ),
                                ));
                            }
                        }
                    }
                },
                KeyProvider::AwsKms => {
                    if keys.aws_kms.is_none() {
                        errs.push(self.err(
                            text,
                            &["keys", "provider"],
                            "keys.provider is aws-kms but keys.aws_kms is missing: add key_id and region",
                        ));
                    }
                }
            }
            if let Some(b) = &keys.blind_index_key
                && b.env.is_some() == b.file.is_some()
            {
                errs.push(self.err(
                    text,
                    &["keys", "blind_index_key"],
                    "keys.blind_index_key: give exactly one of env: or file:",
                ));
            }
        }
        errs
    }

    /// Resolve a path from the config against the config file's directory.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// `listen` as a socket address (validated at load, so this cannot fail).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.as_str().parse().expect("validated in load")
    }

    /// The policy file's path, resolved against the config's directory.
    pub fn policy_path(&self) -> Option<PathBuf> {
        self.policy.as_ref().map(|p| self.resolve(p.as_str()))
    }

    /// The pid file's path, resolved against the config's directory.
    pub fn pid_file_path(&self) -> Option<PathBuf> {
        self.pid_file.as_ref().map(|p| self.resolve(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = include_str!("../pgveil.example.yaml");

    #[test]
    fn reference_config_loads_unchanged() {
        // SAFETY: only this test sets these variables.
        unsafe {
            std::env::set_var("PGVEIL_TLS_CERT", "/tmp/cert.pem");
            std::env::set_var("PGVEIL_TLS_KEY", "/tmp/key.pem");
        }
        let cfg = Config::from_text(Path::new("/etc/pgveil/pgveil.yaml"), REFERENCE).unwrap();
        assert_eq!(cfg.listen_addr().port(), 6432);
        assert_eq!(cfg.upstream.tls, UpstreamTlsMode::Prefer);
        assert_eq!(
            cfg.policy_path().unwrap(),
            PathBuf::from("/etc/pgveil/policies/calmony.yaml")
        );
        let keys = cfg.keys.unwrap();
        assert_eq!(keys.provider, KeyProvider::Local);
        assert_eq!(keys.local.unwrap().master_keys[0].id.as_str(), "k2");
        assert_eq!(keys.cache_ttl.unwrap().0, Duration::from_secs(300));
    }

    #[test]
    fn limit_defaults_and_validation() {
        let base = "listen: 127.0.0.1:1\nupstream:\n  host: h\n  port: 5\n";
        let cfg = Config::from_text(Path::new("p.yaml"), base).unwrap();
        assert_eq!(cfg.limits.login_timeout.0, Duration::from_secs(60));
        assert_eq!(cfg.limits.max_pending_logins, 1000);
        assert_eq!(cfg.limits.max_pending_logins_per_ip, 0);
        assert_eq!(cfg.limits.max_buffered_bytes, 256 << 20);
        assert_eq!(cfg.limits.max_message_bytes, 64 << 20);
        assert_eq!(cfg.tcp_keepalive.idle.0, Duration::from_secs(60));
        for (bad, line) in [
            ("limits:\n  max_pending_logins: 0\n", "p.yaml:6:"),
            ("limits:\n  login_timeout: 0s\n", "p.yaml:6:"),
            ("limits:\n  max_buffered_bytes: 1000\n", "p.yaml:6:"),
        ] {
            let e = Config::from_text(Path::new("p.yaml"), &format!("{base}{bad}")).unwrap_err();
            assert!(e.to_string().starts_with(line), "{e}");
        }
        let off = format!("{base}tcp_keepalive: {{ idle: 0s }}\n");
        let cfg = Config::from_text(Path::new("p.yaml"), &off).unwrap();
        assert!(cfg.tcp_keepalive.idle.0.is_zero());
    }

    #[test]
    fn unknown_key_reports_line_and_fix() {
        let text = "listen: 127.0.0.1:1\nupstream:\n  host: h\n  prot: 1\n";
        let e = Config::from_text(Path::new("p.yaml"), text).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("p.yaml:4:"), "{s}");
        assert!(s.contains("prot"), "{s}");
        assert!(s.contains("spelling"), "{s}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "lisen: 127.0.0.1:1\nupstream:\n  host: h\n  port: many\n  tls: sometimes\nlimits:\n  max_pending_logins: lots\n  max_conections: 5\n";
        let e = Config::from_text(Path::new("p.yaml"), text).unwrap_err();
        let lines: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
        let at = |n: usize, word: &str| {
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("p.yaml:{n}:")) && l.contains(word)),
                "line {n} ({word}) missing from {lines:#?}"
            )
        };
        at(1, "did you mean `listen`");
        at(4, "port");
        at(5, "sometimes");
        at(7, "max_pending_logins");
        at(8, "did you mean `max_connections`");
        assert_eq!(lines.len(), 5, "{lines:#?}");
        // Not YAML at all: its one syntax error.
        let e = Config::from_text(Path::new("p.yaml"), "upstream: [\n  host: h\n").unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
    }

    #[test]
    fn bad_listen_reports_line() {
        let text = "upstream:\n  host: h\n  port: 5\nlisten: nowhere\n";
        let e = Config::from_text(Path::new("p.yaml"), text).unwrap_err();
        assert!(e.to_string().starts_with("p.yaml:4:"), "{e}");
    }

    #[test]
    fn unset_env_names_variable_and_line() {
        let text = "listen: ${PGVEIL_SURELY_UNSET_LISTEN}\nupstream:\n  host: h\n  port: 5\n";
        let e = Config::from_text(Path::new("p.yaml"), text).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("p.yaml:1:"), "{s}");
        assert!(s.contains("PGVEIL_SURELY_UNSET_LISTEN"), "{s}");
    }
}
