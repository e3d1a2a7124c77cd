//! pgveil as a child process of the built binary (`pgveil serve`).

use std::fs::{self, File, OpenOptions};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::pg::PgCluster;

/// How long `start` waits for the listen port to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The pgveil binary under test: the one cargo built for this test run,
/// or `$PGVEIL_TEST_BIN` (e.g. a release build, for figures).
pub fn pgveil_bin() -> PathBuf {
    std::env::var_os("PGVEIL_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pgveil")))
}

/// A `Command` for the pgveil binary (any subcommand: `policy check`,
/// `encrypt`, ...), with inherited libpq variables removed.
pub fn pgveil_cmd() -> Command {
    let mut cmd = Command::new(pgveil_bin());
    super::pg::scrub_pg_env(&mut cmd);
    cmd
}

/// Prepares a pgveil instance: a temporary directory (write policies, certs,
/// key files there before starting, and refer to them by relative path in the
/// YAML: pgveil resolves paths against the config file's directory) and
/// environment variables.
pub struct PgveilBuilder {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Default for PgveilBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PgveilBuilder {
    pub fn new() -> Self {
        PgveilBuilder {
            dir: tempfile::Builder::new()
                .prefix("pgveil-proxy-")
                .tempdir()
                .expect("temp dir"),
            env: Vec::new(),
        }
    }

    /// The directory that will hold `pgveil.yaml`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Set an environment variable for the child (e.g. a master key, or
    /// `RUST_LOG`, whose default is `info`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Write `config_yaml` as `pgveil.yaml`, run `pgveil serve --config`,
    /// and wait until the `listen:` address accepts TCP connections.
    pub fn start(self, config_yaml: &str) -> Pgveil {
        let mut pv = Pgveil {
            dir: self.dir,
            env: self.env,
            yaml: config_yaml.to_string(),
            child: None,
            addr: listen_addr(config_yaml),
            log: PathBuf::new(),
        };
        pv.log = pv.dir.path().join("pgveil.log");
        pv.launch();
        pv
    }
}

/// A running `pgveil serve`. Killed on `Drop` (use [`stop`](Self::stop) for a
/// graceful SIGTERM shutdown).
pub struct Pgveil {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
    yaml: String,
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
}

impl Pgveil {
    /// Start pgveil with this config (`RUST_LOG=info`).
    pub fn start(config_yaml: &str) -> Pgveil {
        PgveilBuilder::new().start(config_yaml)
    }

    /// Start pgveil with extra environment variables (`RUST_LOG` among them
    /// overrides the default `info`).
    pub fn start_with_env(config_yaml: &str, env: &[(&str, &str)]) -> Pgveil {
        let mut b = PgveilBuilder::new();
        for (k, v) in env {
            b = b.env(k, v);
        }
        b.start(config_yaml)
    }

    /// A builder, to write files next to the config before starting.
    pub fn builder() -> PgveilBuilder {
        PgveilBuilder::new()
    }

    /// Minimal config: `listen` on a free loopback port, `upstream` to the
    /// cluster without TLS. Append more top-level sections as needed.
    pub fn config_for(pg: &PgCluster) -> String {
        Self::config_for_port(pg.port())
    }

    /// [`config_for`](Self::config_for) for any upstream port (e.g. a
    /// PgBouncer in front of the cluster).
    pub fn config_for_port(upstream_port: u16) -> String {
        format!(
            "listen: 127.0.0.1:{}\n\
             upstream:\n  host: 127.0.0.1\n  port: {upstream_port}\n  tls: disable\n",
            super::free_port()
        )
    }

    fn launch(&mut self) {
        let mut last_log = String::new();
        for _attempt in 0..4 {
            let cfg = self.config_path();
            fs::write(&cfg, &self.yaml).expect("write pgveil.yaml");
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("open pgveil log");
            let log2 = log.try_clone().unwrap();
            let mut cmd = pgveil_cmd();
            cmd.arg("serve")
                .arg("--config")
                .arg(&cfg)
                .current_dir(self.dir.path())
                .env("RUST_LOG", "info")
                .env_remove("PGVEIL_CONFIG")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log2));
            for (k, v) in &self.env {
                cmd.env(k, v);
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", pgveil_bin().display()));
            self.child = Some(child);
            match self.wait_listening() {
                Ok(()) => return,
                Err(why) => {
                    let logs = self.logs();
                    let clash = logs.contains("in use") || logs.contains("AddrInUse");
                    if let Some(mut c) = self.child.take() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    if clash && why.contains("exited") {
                        // Someone else took the port: move to another one
                        // (the metrics listener's when that one clashed).
                        let new_port = super::free_port();
                        if logs.contains("metrics.listen") && metrics_addr(&self.yaml).is_some() {
                            self.yaml = replace_metrics_port(&self.yaml, new_port);
                        } else {
                            self.yaml = replace_listen_port(&self.yaml, self.addr, new_port);
                            self.addr.set_port(new_port);
                        }
                        // Start the next attempt's log afresh, so an old
                        // clash is not mistaken for a new one.
                        let _ = fs::remove_file(&self.log);
                        last_log = logs;
                        continue;
                    }
                    panic!(
                        "pgveil did not start: {why}\n--- config ---\n{}\n--- pgveil log ({}) ---\n{logs}",
                        self.yaml,
                        self.log.display()
                    );
                }
            }
        }
        panic!("pgveil: listen port clashed 4 times\n--- log ---\n{last_log}");
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!("pgveil exited early with {status}"));
            }
            // With a metrics listener, both ports: pgveil binds the metrics
            // port right after `listen:` and exits if that fails.
            let up =
                |a: &SocketAddr| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok();
            if up(&self.addr) && metrics_addr(&self.yaml).is_none_or(|m| up(&m)) {
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    return Err(format!("pgveil exited early with {status}"));
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not accept connections within {START_TIMEOUT:?}",
                    self.addr
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port of the metrics listener (`metrics:` / `listen:` in the
    /// config; moved by the harness if it clashed at start).
    pub fn metrics_port(&self) -> u16 {
        metrics_addr(&self.yaml)
            .expect("the config has a `metrics:` section with `listen:`")
            .port()
    }

    /// The port pgveil listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The `listen` address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `postgres://user@HOST:PORT/db`
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@{}/{db}", self.addr)
    }

    /// `postgres://user:password@HOST:PORT/db`
    pub fn url_pw(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@{}/{db}", self.addr)
    }

    /// Connect through pgveil (no TLS) with tokio-postgres; spawns the
    /// connection task.
    pub async fn connect(
        &self,
        user: &str,
        password: Option<&str>,
        db: &str,
    ) -> tokio_postgres::Client {
        super::connect_to(self.port(), user, password, db).await
    }

    /// The directory holding `pgveil.yaml` (and whatever else the test
    /// wrote there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("pgveil.yaml")
    }

    /// The file that captures pgveil's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything pgveil has logged so far.
    pub fn logs(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Process id of the running pgveil.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Send a signal by name (`"TERM"`, `"INT"`, `"HUP"`, `"KILL"`, also
    /// accepted with a `SIG` prefix or as a number).
    pub fn send_signal(&self, sig: &str) {
        let pid = self.pid().expect("pgveil is not running");
        let sig = sig.strip_prefix("SIG").unwrap_or(sig);
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {pid} failed");
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Wait for the process to exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful stop: SIGTERM, then wait (up to 60 s, then SIGKILL and
    /// panic). Returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        if self.child.is_none() {
            panic!("pgveil is not running");
        }
        self.send_signal("TERM");
        match self.wait_exit(Duration::from_secs(60)) {
            Some(st) => st,
            None => {
                let mut c = self.child.take().unwrap();
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "pgveil did not exit within 60 s of SIGTERM\n--- log ---\n{}",
                    super::tail(&self.log, 4000)
                );
            }
        }
    }

    /// Kill the process immediately (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop (SIGTERM) if running and start again with the same config,
    /// directory and port.
    pub fn restart(&mut self) {
        if self.is_running() {
            self.stop();
        }
        self.child = None;
        self.launch();
    }

    /// Replace the config (written on the next [`restart`](Self::restart)).
    pub fn set_config(&mut self, yaml: &str) {
        self.yaml = yaml.to_string();
        self.addr = listen_addr(yaml);
    }
}

impl Drop for Pgveil {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- pgveil log ({}), last 4000 bytes ---\n{}",
                self.log.display(),
                super::tail(&self.log, 4000)
            );
        }
        self.kill();
    }
}

/// The `listen:` address of a pgveil YAML config.
fn listen_addr(yaml: &str) -> SocketAddr {
    for line in yaml.lines() {
        if let Some(rest) = line.strip_prefix("listen:") {
            let v = rest
                .split('#')
                .next()
                .unwrap()
                .trim()
                .trim_matches(['"', '\'']);
            return v.parse().unwrap_or_else(|e| {
                panic!("test harness: listen: {v:?} is not host:port ({e}); write it literally")
            });
        }
    }
    panic!("test harness: config has no top-level `listen:` line:\n{yaml}");
}

/// `listen:` inside the top-level `metrics:` section, if any.
fn metrics_addr(yaml: &str) -> Option<SocketAddr> {
    let mut in_metrics = false;
    for line in yaml.lines() {
        if !line.starts_with([' ', '\t']) {
            in_metrics = line.trim_end() == "metrics:";
            continue;
        }
        if in_metrics && let Some(rest) = line.trim_start().strip_prefix("listen:") {
            let v = rest
                .split('#')
                .next()
                .unwrap()
                .trim()
                .trim_matches(['"', '\'']);
            return v.parse().ok();
        }
    }
    None
}

fn replace_metrics_port(yaml: &str, new_port: u16) -> String {
    let mut new = metrics_addr(yaml).expect("a metrics listener");
    new.set_port(new_port);
    let mut in_metrics = false;
    yaml.lines()
        .map(|l| {
            if !l.starts_with([' ', '\t']) {
                in_metrics = l.trim_end() == "metrics:";
                l.to_string()
            } else if in_metrics && l.trim_start().starts_with("listen:") {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}listen: {new}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn replace_listen_port(yaml: &str, old: SocketAddr, new_port: u16) -> String {
    let mut new = old;
    new.set_port(new_port);
    yaml.lines()
        .map(|l| {
            if l.starts_with("listen:") {
                format!("listen: {new}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Create `dir/name` with `contents` (for policies, key files, ...).
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    let mut f = File::create(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    std::io::Write::write_all(&mut f, contents.as_bytes()).unwrap();
    p
}
