//! The reference-policy fixture shared by the encryption, operations, driver,
//! property and fault tests: a cluster with `policies/calmony.sql` in
//! database `app`, the keystore in its own database `pgveil_keys`, the
//! policy's roles, and pgveil in front with `policies/calmony.yaml` (or a
//! variant) and local master keys.
//!
//! ```ignore
//! let fx = Calmony::start();                       // reference policy
//! let fx = Calmony::builder().cache_ttl("1s").start();
//! let c = fx.app("calmony_app").await;             // through pgveil
//! let d = fx.direct().await;                       // straight to PostgreSQL
//! fx.assert_no_plaintext(&["sentinel"]).await;
//! ```

use std::process::{Command, Output, Stdio};

use super::pg::{Hba, PgCluster};
use super::pgveil::{Pgveil, pgveil_cmd};

pub const POLICY: &str = include_str!("../../policies/calmony.yaml");
pub const SCHEMA: &str = include_str!("../../policies/calmony.sql");
pub const MASTER_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
pub const BIDX_KEY: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// Every role the reference policy names, plus `dba` (listed nowhere).
pub const ROLES: &[&str] = &[
    "calmony_app",
    "calmony_worker",
    "support_agent",
    "signup",
    "clinician",
    "intake",
    "dba",
];

/// The tables of the reference schema (all hold protected columns).
pub const TABLES: &[&str] = &[
    "public.users",
    "public.pay_customers",
    "public.pay_payment_methods",
    "public.pay_webhook_endpoints",
    "phi.member_profile",
];

pub struct Calmony {
    pub pg: PgCluster,
    pub pv: Pgveil,
}

pub struct CalmonyBuilder {
    policy: String,
    extra_sql: String,
    extra_yaml: String,
    audit_yaml: String,
    cache_ttl: String,
    rust_log: String,
    env: Vec<(String, String)>,
}

impl CalmonyBuilder {
    /// Use this policy text instead of the reference policy.
    pub fn policy(mut self, policy: &str) -> Self {
        self.policy = policy.to_string();
        self
    }

    /// SQL run in `app` after the reference schema.
    pub fn extra_sql(mut self, sql: &str) -> Self {
        self.extra_sql = sql.to_string();
        self
    }

    /// Top-level YAML appended to the generated config.
    pub fn extra_yaml(mut self, yaml: &str) -> Self {
        self.extra_yaml = yaml.to_string();
        self
    }

    /// More keys of the `audit:` section, e.g. `"  on_failure: block\n"`
    /// (indented two spaces).
    pub fn audit_yaml(mut self, yaml: &str) -> Self {
        self.audit_yaml = yaml.to_string();
        self
    }

    /// `keys.cache_ttl` (default 300s).
    pub fn cache_ttl(mut self, ttl: &str) -> Self {
        self.cache_ttl = ttl.to_string();
        self
    }

    /// RUST_LOG for the pgveil process (default `trace`, so that no-leak
    /// checks see everything pgveil could log).
    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_string();
        self
    }

    /// An extra environment variable for the pgveil process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn start(self) -> Calmony {
        let pg = PgCluster::start(Hba::Trust);
        pg.create_database("app");
        pg.create_database("pgveil_keys");
        pg.psql("app", SCHEMA);
        if !self.extra_sql.is_empty() {
            pg.psql("app", &self.extra_sql);
        }
        for r in ROLES {
            pg.create_role(r, None);
        }
        pg.psql(
            "app",
            "GRANT USAGE ON SCHEMA phi TO PUBLIC;
             GRANT ALL ON ALL TABLES IN SCHEMA public, phi TO PUBLIC;
             GRANT ALL ON ALL SEQUENCES IN SCHEMA public, phi TO PUBLIC;",
        );
        let mut b = Pgveil::builder()
            .env("PGVEIL_TEST_MASTER_KEY", MASTER_KEY)
            .env("PGVEIL_TEST_BIDX_KEY", BIDX_KEY)
            .env("RUST_LOG", &self.rust_log);
        for (k, v) in &self.env {
            b = b.env(k, v);
        }
        std::fs::write(b.dir().join("policy.yaml"), &self.policy).unwrap();
        // The generated config ends with the audit section.
        let config = format!(
            "{}{}{}",
            Calmony::config(&pg, &self.cache_ttl),
            self.audit_yaml,
            self.extra_yaml
        );
        let pv = b.start(&config);
        Calmony { pg, pv }
    }
}

impl Calmony {
    /// The reference policy, trace logging, cache_ttl 300s.
    pub fn start() -> Calmony {
        Calmony::builder().start()
    }

    pub fn builder() -> CalmonyBuilder {
        CalmonyBuilder {
            policy: POLICY.to_string(),
            extra_sql: String::new(),
            extra_yaml: String::new(),
            audit_yaml: String::new(),
            cache_ttl: "300s".into(),
            rust_log: "trace".into(),
            env: Vec::new(),
        }
    }

    /// The pgveil config for a cluster: listener, upstream, `policy.yaml`
    /// next to the config, local master key and blind-index key from the
    /// environment, keystore in `pgveil_keys`, audit log `audit.jsonl`.
    pub fn config(pg: &PgCluster, cache_ttl: &str) -> String {
        format!(
            "{}policy: policy.yaml\n\
             keys:\n  provider: local\n  local:\n    master_keys:\n      - {{ id: k1, env: PGVEIL_TEST_MASTER_KEY }}\n  \
             blind_index_key: {{ env: PGVEIL_TEST_BIDX_KEY }}\n  \
             keystore:\n    database: postgres://postgres@127.0.0.1:{}/pgveil_keys\n  cache_ttl: {cache_ttl}\n\
             audit:\n  path: audit.jsonl\n",
            Pgveil::config_for(pg),
            pg.port()
        )
    }

    /// A tokio-postgres client through pgveil as `role` (trust auth).
    pub async fn app(&self, role: &str) -> tokio_postgres::Client {
        self.pv.connect(role, None, "app").await
    }

    /// A superuser client straight to PostgreSQL.
    /// Users with these emails and names, written through pgveil by the
    /// read role `calmony_app` (equal emails get equal blind indexes).
    pub async fn seed_users(&self, emails: &[&str], names: &[&str]) {
        let app = self.app("calmony_app").await;
        for (e, n) in emails.iter().zip(names) {
            app.execute("INSERT INTO users (email, name) VALUES ($1, $2)", &[e, n])
                .await
                .unwrap();
        }
    }

    /// `users.email_bidx` as stored (`\\x…` text, by id), straight from
    /// PostgreSQL.
    pub async fn stored_bidx(&self) -> Vec<String> {
        self.direct()
            .await
            .query("SELECT email_bidx::text FROM users ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    }

    pub async fn direct(&self) -> tokio_postgres::Client {
        self.pg.connect("postgres", None, "app").await
    }

    /// Connection URL through pgveil for `role` on `app`.
    pub fn url(&self, role: &str) -> String {
        self.pv.url(role, "app")
    }

    /// `pgveil <args> --config <pgveil.yaml>` with the key variables set.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = pgveil_cmd();
        c.args(args)
            .arg("--config")
            .arg(self.pv.config_path())
            .env("PGVEIL_TEST_MASTER_KEY", MASTER_KEY)
            .env("PGVEIL_TEST_BIDX_KEY", BIDX_KEY)
            .env_remove("PGVEIL_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run pgveil")
    }

    /// No sentinel may appear anywhere an attacker could look: every
    /// relation of every database (raw bytes of bytea included), `pg_dump`,
    /// PostgreSQL's log, pgveil's log and the audit log (see
    /// [`super::scan`]).
    pub async fn assert_no_plaintext(&self, sentinels: &[&str]) {
        self.assert_no_plaintext_with(sentinels, &[]).await;
    }

    /// [`assert_no_plaintext`](Self::assert_no_plaintext) over more places
    /// too (the metrics page, a client's output, ...).
    pub async fn assert_no_plaintext_with(&self, sentinels: &[&str], extra: &[(&str, &[u8])]) {
        let logs = self.pv.logs();
        let audit = std::fs::read(self.pv.dir().join("audit.jsonl")).unwrap_or_default();
        let mut places: Vec<(&str, &[u8])> =
            vec![("pgveil's log", logs.as_bytes()), ("the audit log", &audit)];
        places.extend_from_slice(extra);
        super::scan::assert_absent(&self.pg, sentinels, &places).await;
    }
}
