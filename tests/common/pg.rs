//! Throwaway PostgreSQL clusters for tests.
//!
//! A cluster lives in its own temporary directory (data directory, socket
//! directory, server log), listens on a free port on 127.0.0.1 and is stopped
//! (`pg_ctl stop -m immediate`) and removed on `Drop`.
//!
//! `initdb` runs once per PostgreSQL version and machine: the result is kept
//! as a template under the system temp dir and copied for every cluster
//! (`cp -a` takes a fraction of initdb's time), so tests can afford one
//! cluster each. When the tests run as root (sessions and CI do), every
//! server-side command runs as the `postgres` OS user through `runuser`,
//! because PostgreSQL refuses to run as root.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The pg_hba method for ordinary users over TCP. The superuser `postgres`
/// is always `trust` over TCP from loopback so tests can set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hba {
    Trust,
    /// Clear-text password (`password`).
    Password,
    /// `md5`, with `password_encryption = md5` so stored verifiers are md5.
    Md5,
    /// `scram-sha-256`, with `password_encryption = 'scram-sha-256'`.
    Scram,
}

impl Hba {
    fn method(self) -> &'static str {
        match self {
            Hba::Trust => "trust",
            Hba::Password => "password",
            Hba::Md5 => "md5",
            Hba::Scram => "scram-sha-256",
        }
    }
}

/// Options for [`PgCluster::start_with`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub hba: Hba,
    /// Serve TLS with this (certificate PEM, private key PEM). The files are
    /// copied into the cluster directory with the ownership and mode
    /// PostgreSQL requires, so any readable path works.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Ordinary users may only connect over TLS (`hostssl` lines). The
    /// superuser stays `host ... trust`.
    pub hostssl_only: bool,
    /// Extra `postgresql.conf` lines, e.g. `"max_connections = 300"`.
    pub extra_conf: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            hba: Hba::Trust,
            tls: None,
            hostssl_only: false,
            extra_conf: Vec::new(),
        }
    }
}

/// A running throwaway PostgreSQL cluster.
pub struct PgCluster {
    // Declared first: removed last (after `Drop::drop` stopped the server).
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

/// Directory holding `initdb`, `pg_ctl`, `psql`, ...:
/// `/usr/lib/postgresql/15/bin`, else the newest `/usr/lib/postgresql/*/bin`,
/// else wherever `initdb` is on `PATH`.
pub fn pg_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let preferred = PathBuf::from("/usr/lib/postgresql/15/bin");
        if preferred.join("initdb").exists() {
            return preferred;
        }
        let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((v, bin))
            })
            .collect();
        found.sort();
        if let Some((_, bin)) = found.pop() {
            return bin;
        }
        if let Some(path) = std::env::var_os("PATH") {
            for d in std::env::split_paths(&path) {
                if d.join("initdb").exists() {
                    return d;
                }
            }
        }
        panic!(
            "PostgreSQL server binaries not found: install postgresql \
             (initdb in /usr/lib/postgresql/*/bin or on PATH)"
        );
    })
    .clone()
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// (uid, gid) of the `postgres` OS user.
fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3 && f[0] == "postgres" {
                return (f[2].parse().unwrap(), f[3].parse().unwrap());
            }
        }
        panic!("running as root but there is no `postgres` OS user to run PostgreSQL as");
    })
}

/// Give `path` to the postgres user when running as root (no-op otherwise).
pub(crate) fn chown_postgres(path: &Path) {
    if running_as_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// A command for a server-side binary, run as `postgres` when we are root.
fn server_cmd(bin: &Path, as_postgres: bool, cwd: &Path) -> Command {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    scrub_pg_env(&mut cmd);
    cmd.current_dir(cwd);
    cmd
}

/// Remove libpq environment variables inherited from the caller so tests are
/// deterministic.
pub(crate) fn scrub_pg_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && k.starts_with("PG")
        {
            cmd.env_remove(k);
        }
    }
}

fn run_ok(mut cmd: Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// The initdb'd template data directory (created once per machine and
/// PostgreSQL version, atomically).
fn template_dir() -> PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let bin = pg_bin_dir();
            let as_postgres = running_as_root();
            let version = Command::new(bin.join("initdb"))
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            let tag: String = version
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let uid = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0);
            let final_dir = std::env::temp_dir().join(format!("pgveil-pg-template-v1-{uid}-{tag}"));
            if final_dir.join("pgveil-template-ok").exists() {
                return final_dir;
            }
            let work = tempfile::Builder::new()
                .prefix("pgveil-pg-template-build")
                .tempdir()
                .expect("temp dir");
            chown_postgres(work.path());
            let data = work.path().join("data");
            let mut cmd = server_cmd(&bin.join("initdb"), as_postgres, work.path());
            cmd.arg("-D").arg(&data).args([
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ]);
            run_ok(cmd, "initdb");
            fs::write(work.path().join("pgveil-template-ok"), version).unwrap();
            let work = work.keep();
            match fs::rename(&work, &final_dir) {
                Ok(()) => final_dir,
                Err(_) if final_dir.join("pgveil-template-ok").exists() => {
                    // Another process won the race: use its template.
                    let _ = fs::remove_dir_all(&work);
                    final_dir
                }
                Err(e) => panic!("install template {}: {e}", final_dir.display()),
            }
        })
        .clone()
}

impl PgCluster {
    /// Start a cluster whose ordinary users authenticate with `hba` over TCP.
    pub fn start(hba: Hba) -> PgCluster {
        Self::start_with(PgOptions {
            hba,
            ..PgOptions::default()
        })
    }

    /// Start a cluster with TLS, custom hba or extra settings.
    pub fn start_with(opts: PgOptions) -> PgCluster {
        let bin_dir = pg_bin_dir();
        let as_postgres = running_as_root();
        let template = template_dir();
        let dir = tempfile::Builder::new()
            .prefix("pgveil-pg-")
            .tempdir()
            .expect("temp dir");
        chown_postgres(dir.path());
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        let log = dir.path().join("postgresql.log");

        // Copy the template (cp -a keeps the postgres ownership and 0700).
        run_ok(
            {
                let mut c = Command::new("cp");
                c.arg("-a").arg(template.join("data")).arg(&data);
                c
            },
            "copy template data directory",
        );
        fs::create_dir(&sock).unwrap();
        chown_postgres(&sock);

        // pg_hba.conf
        let m = opts.hba.method();
        let host = if opts.hostssl_only { "hostssl" } else { "host" };
        let hba = format!(
            "# written by the pgveil test harness\n\
             local all all trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host all postgres ::1/128 trust\n\
             {host} all all 127.0.0.1/32 {m}\n\
             {host} all all ::1/128 {m}\n"
        );
        write_owned(&data.join("pg_hba.conf"), &hba, 0o600);

        // postgresql.conf additions (the port is passed with -o so a clash
        // can be retried without rewriting the file).
        let mut conf = String::from("\n# pgveil test harness\n");
        conf += "listen_addresses = '127.0.0.1'\n";
        conf += &format!("unix_socket_directories = '{}'\n", sock.display());
        conf += "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n";
        conf += "log_statement = none\nmax_connections = 150\nshared_buffers = 64MB\n";
        conf += "max_wal_size = 1GB\n";
        conf += "logging_collector = off\nlog_line_prefix = '%m [%p] %q%u@%d '\n";
        match opts.hba {
            Hba::Md5 => conf += "password_encryption = md5\n",
            Hba::Scram => conf += "password_encryption = 'scram-sha-256'\n",
            _ => {}
        }
        if let Some((cert, key)) = &opts.tls {
            let cert_dst = dir.path().join("server.crt");
            let key_dst = dir.path().join("server.key");
            let cert_pem = fs::read_to_string(cert)
                .unwrap_or_else(|e| panic!("read TLS cert {}: {e}", cert.display()));
            let key_pem = fs::read_to_string(key)
                .unwrap_or_else(|e| panic!("read TLS key {}: {e}", key.display()));
            write_owned(&cert_dst, &cert_pem, 0o644);
            write_owned(&key_dst, &key_pem, 0o600);
            conf += "ssl = on\n";
            conf += &format!("ssl_cert_file = '{}'\n", cert_dst.display());
            conf += &format!("ssl_key_file = '{}'\n", key_dst.display());
        }
        for line in &opts.extra_conf {
            conf += line;
            conf += "\n";
        }
        let conf_path = data.join("postgresql.conf");
        let mut all = fs::read_to_string(&conf_path).expect("read postgresql.conf");
        all += &conf;
        write_owned(&conf_path, &all, 0o600);

        let mut cluster = PgCluster {
            dir,
            bin_dir,
            data,
            sock,
            log,
            port: 0,
            as_postgres,
            running: false,
        };
        let mut last_err = String::new();
        for _attempt in 0..5 {
            cluster.port = super::free_port();
            match cluster.try_pg_ctl_start() {
                Ok(()) => {
                    cluster.running = true;
                    return cluster;
                }
                Err(e) => {
                    let log = super::tail(&cluster.log, 4000);
                    if log.contains("could not bind") || log.contains("already in use") {
                        last_err = e;
                        continue;
                    }
                    panic!("pg_ctl start failed: {e}\n--- server log ---\n{log}");
                }
            }
        }
        panic!("pg_ctl start: no free port after 5 attempts: {last_err}");
    }

    fn try_pg_ctl_start(&self) -> Result<(), String> {
        let mut cmd = server_cmd(&self.bin("pg_ctl"), self.as_postgres, self.dir.path());
        cmd.arg("start")
            .arg("-w")
            .args(["-t", "60"])
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .arg("-o")
            .arg(format!("-p {}", self.port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://user@127.0.0.1:PORT/db`
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// `postgres://user:password@127.0.0.1:PORT/db`
    pub fn url_pw(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// Path of a PostgreSQL client or server binary (`psql`, `pgbench`,
    /// `pg_dump`, ...) of the same version as the server.
    pub fn bin(&self, name: &str) -> PathBuf {
        let p = self.bin_dir.join(name);
        if p.exists() { p } else { PathBuf::from(name) }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log (`pg_ctl -l`).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Unix socket directory of the server.
    pub fn socket_dir(&self) -> &Path {
        &self.sock
    }

    /// The cluster's temporary directory (owned by `postgres` under root).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `CREATE DATABASE name`.
    pub fn create_database(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        );
    }

    /// `CREATE DATABASE name OWNER owner` (the owner may create tables in its
    /// `public` schema, which PostgreSQL 15 no longer grants to everybody).
    pub fn create_database_owned(&self, name: &str, owner: &str) {
        self.psql(
            "postgres",
            &format!(
                "CREATE DATABASE {} OWNER {}",
                quote_ident(name),
                quote_ident(owner)
            ),
        );
    }

    /// `CREATE ROLE name LOGIN [PASSWORD 'password']`. The password is
    /// stored with the cluster's `password_encryption` (md5 for `Hba::Md5`).
    pub fn create_role(&self, name: &str, password: Option<&str>) {
        let mut sql = format!("CREATE ROLE {} LOGIN", quote_ident(name));
        if let Some(pw) = password {
            sql += &format!(" PASSWORD {}", quote_literal(pw));
        }
        self.psql("postgres", &sql);
    }

    /// Run SQL (psql syntax, may hold several statements and meta-commands)
    /// as the superuser in `db` with `ON_ERROR_STOP`; returns stdout in
    /// unaligned tuples-only form (`-At`: one row per line, `|` between
    /// columns). Panics with stderr on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        match self.try_psql(db, sql) {
            Ok(out) => out,
            Err(e) => panic!("psql in {db} failed:\n{e}\n--- SQL ---\n{sql}"),
        }
    }

    /// Like [`psql`](Self::psql) but returns stderr as the error.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        use std::io::Write;
        let mut cmd = Command::new(self.bin("psql"));
        scrub_pg_env(&mut cmd);
        cmd.args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .args(["-U", "postgres", "-d", db, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("cannot run psql: {e}"))?;
        let mut stdin = child.stdin.take().unwrap();
        let sql_owned = sql.to_string();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(sql_owned.as_bytes());
        });
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let _ = writer.join();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Connect directly (no TLS) with tokio-postgres; spawns the connection
    /// task. Needs a tokio runtime.
    pub async fn connect(
        &self,
        user: &str,
        password: Option<&str>,
        db: &str,
    ) -> tokio_postgres::Client {
        super::connect_to(self.port, user, password, db).await
    }

    /// Number of client backends connected to `db` (excluding the caller's
    /// own psql session).
    pub fn backend_count(&self, db: &str) -> i64 {
        self.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
                 AND datname = {} AND pid <> pg_backend_pid()",
                quote_literal(db)
            ),
        )
        .trim()
        .parse()
        .unwrap()
    }

    /// Stop the server now (`pg_ctl stop -m immediate`), e.g. to inject a
    /// fault. [`start_server`](Self::start_server) brings it back on the same port.
    pub fn stop_server(&mut self) {
        if self.running {
            self.pg_ctl_stop("immediate");
            self.running = false;
        }
    }

    /// Start a stopped server again on the same port.
    pub fn start_server(&mut self) {
        if !self.running {
            self.try_pg_ctl_start().unwrap_or_else(|e| {
                panic!(
                    "pg_ctl start failed: {e}\n--- server log ---\n{}",
                    super::tail(&self.log, 4000)
                )
            });
            self.running = true;
        }
    }

    /// Stop (immediate) and start again on the same port.
    pub fn restart(&mut self) {
        self.stop_server();
        self.start_server();
    }

    /// Reload the configuration (after editing pg_hba.conf or
    /// postgresql.conf in [`data_dir`](Self::data_dir)).
    pub fn reload(&self) {
        let mut cmd = server_cmd(&self.bin("pg_ctl"), self.as_postgres, self.dir.path());
        cmd.arg("reload").arg("-D").arg(&self.data);
        run_ok(cmd, "pg_ctl reload");
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let mut cmd = server_cmd(&self.bin("pg_ctl"), self.as_postgres, self.dir.path());
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "30"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = cmd.status();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- PostgreSQL log ({}), last 3000 bytes ---\n{}",
                self.log.display(),
                super::tail(&self.log, 3000)
            );
        }
        if self.running {
            self.pg_ctl_stop("immediate");
        }
    }
}

/// Write a file and give it to the postgres user with `mode`.
pub(crate) fn write_owned(path: &Path, contents: &str, mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    chown_postgres(path);
}

/// SQL identifier quoting.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// SQL literal quoting.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Wait until `cond` holds, polling every 50 ms; false on timeout.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
