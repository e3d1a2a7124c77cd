//! The keystore: wrapped data keys in two tables of the database named by
//! `keys.keystore.database`, created on first use.
//!
//! ```sql
//! pgveil_key_families (key_id serial PK, scope text, tenant text NULL, created_at)
//!     -- one row per (schema.table, tenant): the key_id envelopes name
//! pgveil_data_keys (key_id, version, master_key_id, wrapped bytea NULL,
//!                   created_at, retired_at, destroyed_at, encryptions bigint)
//!     -- one row per version; wrapped is NULL once destroyed (shredded)
//! ```

use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use super::{KeyError, KeyScope, MasterKeyProvider, WrapContext, WrappedKey};
use crate::crypto::{DataKey, KeyRef};

/// Opens a connection to the keystore database.
pub type ConnectFn = Arc<dyn Fn() -> BoxFuture<'static, Result<Client, KeyError>> + Send + Sync>;

const SCHEMA_LOCK: i64 = 0x7067_7665_696c_0001;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS pgveil_key_families (
    key_id     serial PRIMARY KEY,
    scope      text NOT NULL,
    tenant     text CHECK (tenant <> ''),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS pgveil_key_families_scope_tenant
    ON pgveil_key_families (scope, coalesce(tenant, ''));
CREATE TABLE IF NOT EXISTS pgveil_data_keys (
    key_id        integer NOT NULL REFERENCES pgveil_key_families,
    version       integer NOT NULL CHECK (version > 0),
    master_key_id text NOT NULL,
    wrapped       bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    retired_at    timestamptz,
    destroyed_at  timestamptz,
    encryptions   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, version),
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
);
COMMENT ON COLUMN pgveil_data_keys.encryptions IS
    'encryptions reserved (in batches) under this data key; a new version is created before 2^32';
"#;

const SELECT: &str = "SELECT d.key_id, d.version, f.scope, f.tenant, d.master_key_id, d.wrapped, \
     d.created_at, d.retired_at IS NOT NULL, d.destroyed_at IS NOT NULL, d.encryptions \
     FROM pgveil_data_keys d JOIN pgveil_key_families f USING (key_id)";

/// One data-key version as stored (the wrapped key never leaves this crate
/// except to a provider).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Data-key id (one per table, or table and tenant).
    pub key_id: u32,
    /// Version of that data key; rotation adds a new one.
    pub version: u32,
    /// `schema.table`.
    pub table: String,
    /// Tenant the key belongs to (`None`: a table without tenants).
    pub tenant: Option<String>,
    /// Master key that wrapped it (local id, or KMS key ARN).
    pub master_key_id: String,
    pub(crate) wrapped: Option<Vec<u8>>,
    /// When the version was created.
    pub created_at: SystemTime,
    /// A newer version took over: this one only decrypts.
    pub retired: bool,
    /// Shredded: the wrapped key is gone and its values cannot be decrypted.
    pub destroyed: bool,
    /// Encryptions reserved (in batches) under this version; a new one is created before 2^32.
    pub encryptions: i64,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("key_id", &self.key_id)
            .field("version", &self.version)
            .field("table", &self.table)
            .field("tenant", &self.tenant)
            .field("master_key_id", &self.master_key_id)
            .field("created_at", &self.created_at)
            .field("retired", &self.retired)
            .field("destroyed", &self.destroyed)
            .field("encryptions", &self.encryptions)
            .finish()
    }
}

impl KeyRecord {
    fn from_row(r: &tokio_postgres::Row) -> KeyRecord {
        KeyRecord {
            key_id: r.get::<_, i32>(0) as u32,
            version: r.get::<_, i32>(1) as u32,
            table: r.get(2),
            tenant: r.get(3),
            master_key_id: r.get(4),
            wrapped: r.get(5),
            created_at: r.get(6),
            retired: r.get(7),
            destroyed: r.get(8),
            encryptions: r.get(9),
        }
    }

    /// The [`KeyRef`] envelopes encrypted under this version carry.
    pub fn key_ref(&self) -> KeyRef {
        KeyRef {
            key_id: self.key_id,
            version: self.version,
            tenant: self.tenant.clone(),
        }
    }

    /// The context its wrapped key is bound to.
    pub fn wrap_context(&self) -> WrapContext {
        WrapContext {
            key_id: self.key_id,
            version: self.version,
            table: self.table.clone(),
            tenant: self.tenant.clone(),
        }
    }

    /// The wrapped key, or `None` once the version is destroyed.
    pub(crate) fn wrapped_key(&self) -> Option<WrappedKey> {
        self.wrapped.as_ref().map(|b| WrappedKey {
            master_key_id: self.master_key_id.clone(),
            blob: b.clone(),
        })
    }
}

/// Access to the keystore tables. One connection, opened on first use and
/// re-opened after an error.
#[derive(Clone)]
pub struct Keystore {
    connect: ConnectFn,
    client: Arc<Mutex<Option<Client>>>,
    what: String,
}

impl std::fmt::Debug for Keystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keystore")
            .field("database", &self.what)
            .finish()
    }
}

impl Keystore {
    /// A keystore at a libpq-style connection string, with TLS as its
    /// `sslmode` says (`prefer` by default, up to `verify-full` with
    /// `sslrootcert`; see [`crate::pgclient`]) and the password from the
    /// string, `PGPASSWORD` or `~/.pgpass`.
    pub fn new(url: &str) -> Result<Keystore, KeyError> {
        let target = crate::pgclient::parse(url, "keys.keystore.database", None)
            .map_err(KeyError::Config)?;
        let c = &target.config;
        let what = format!(
            "{}@{}/{}",
            c.get_user().unwrap_or("?"),
            match c.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                _ => "localhost".into(),
            },
            c.get_dbname().unwrap_or("?")
        );
        let connect: ConnectFn = Arc::new(move || {
            let target = target.clone();
            Box::pin(async move {
                let (client, conn) = crate::pgclient::connect(&target)
                    .await
                    .map_err(KeyError::Keystore)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!(error = %e, "keystore connection closed");
                    }
                });
                Ok(client)
            })
        });
        Ok(Keystore::with_connector(connect, what))
    }

    /// A keystore at a libpq-style URL, connected without TLS.
    pub fn new_no_tls(url: &str) -> Result<Keystore, KeyError> {
        let cfg: tokio_postgres::Config = url.parse().map_err(|e| {
            KeyError::Config(format!(
                "keys.keystore.database is not a valid connection string: {e}"
            ))
        })?;
        let what = format!(
            "{}@{:?}/{}",
            cfg.get_user().unwrap_or("?"),
            cfg.get_hosts().first(),
            cfg.get_dbname().unwrap_or("?")
        );
        let connect: ConnectFn = Arc::new(move || {
            let cfg = cfg.clone();
            Box::pin(async move {
                let (client, conn) = cfg.connect(NoTls).await?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::warn!(error = %e, "keystore connection closed");
                    }
                });
                Ok(client)
            })
        });
        Ok(Keystore::with_connector(connect, what))
    }

    /// A keystore reached through any connector (TLS, pools, ...). `what`
    /// names it in logs.
    pub fn with_connector(connect: ConnectFn, what: String) -> Keystore {
        Keystore {
            connect,
            client: Arc::new(Mutex::new(None)),
            what,
        }
    }

    /// Run `f` with a live client (connecting and creating the tables if
    /// needed). A connection error drops the client so the next call
    /// reconnects.
    async fn with<T>(
        &self,
        f: impl for<'c> FnOnce(&'c mut Client) -> BoxFuture<'c, Result<T, KeyError>>,
    ) -> Result<T, KeyError> {
        let mut guard = self.conn().await?;
        let c = guard.as_mut().expect("connected");
        f(c).await
    }

    /// The live client, connecting (and creating the tables) if there is
    /// none or the last one was closed by an error.
    async fn conn(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, KeyError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let mut c = (self.connect)().await?;
            // A data key must be durable before any value is encrypted with
            // it: with `synchronous_commit = off` (a common tuning) a crash
            // right after the commit could lose the key's row, and the
            // keystore would hand its id to another table while values
            // written under the lost key are unreadable forever.
            c.batch_execute("SET synchronous_commit = on").await?;
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            tx.batch_execute(SCHEMA).await?;
            tx.commit().await?;
            tracing::debug!(keystore = %self.what, "keystore connected");
            *guard = Some(c);
        }
        Ok(guard)
    }

    /// Connect and create the tables now (instead of on first use).
    pub async fn check(&self) -> Result<(), KeyError> {
        self.with(|_| Box::pin(async { Ok(()) })).await
    }

    /// Whether the keystore answers now: a round trip on its connection
    /// (connecting first if needed). For readiness checks.
    pub async fn ping(&self) -> Result<(), KeyError> {
        self.with(|c| {
            Box::pin(async move {
                c.simple_query("SELECT 1").await?;
                Ok(())
            })
        })
        .await
    }

    /// One version of one data key.
    pub async fn get(&self, key_id: u32, version: u32) -> Result<Option<KeyRecord>, KeyError> {
        self.with(|c| {
            Box::pin(async move {
                let q = format!("{SELECT} WHERE d.key_id = $1 AND d.version = $2");
                let row = c
                    .query_opt(&q, &[&(key_id as i32), &(version as i32)])
                    .await?;
                Ok(row.as_ref().map(KeyRecord::from_row))
            })
        })
        .await
    }

    /// The current version for `scope`, creating the key family and a first
    /// (or, with `rotate`, a next) version when needed. A new version
    /// retires the previous ones for encryption (they still decrypt).
    /// Returns the record and, if it was just generated, the data key.
    /// `limit`: a version with this many encryptions reserved is not current.
    pub async fn current_or_create(
        &self,
        scope: &KeyScope,
        provider: &dyn MasterKeyProvider,
        rotate: bool,
        limit: u64,
    ) -> Result<(KeyRecord, Option<DataKey>), KeyError> {
        let mut guard = self.conn().await?;
        let c = guard.as_mut().expect("connected");
        {
            {
                let tx = c.transaction().await?;
                tx.execute(
                    "INSERT INTO pgveil_key_families (scope, tenant) VALUES ($1, $2) \
                     ON CONFLICT DO NOTHING",
                    &[&scope.table, &scope.tenant],
                )
                .await?;
                let fam = tx
                    .query_one(
                        "SELECT key_id FROM pgveil_key_families \
                         WHERE scope = $1 AND coalesce(tenant, '') = coalesce($2, '') FOR UPDATE",
                        &[&scope.table, &scope.tenant],
                    )
                    .await?;
                let key_id: i32 = fam.get(0);
                if !rotate {
                    let q = format!(
                        "{SELECT} WHERE d.key_id = $1 AND d.retired_at IS NULL \
                         AND d.destroyed_at IS NULL AND d.encryptions < $2 \
                         ORDER BY d.version DESC LIMIT 1"
                    );
                    if let Some(r) = tx.query_opt(&q, &[&key_id, &(limit as i64)]).await? {
                        tx.commit().await?;
                        return Ok((KeyRecord::from_row(&r), None));
                    }
                }
                tx.execute(
                    "UPDATE pgveil_data_keys SET retired_at = now() \
                     WHERE key_id = $1 AND retired_at IS NULL",
                    &[&key_id],
                )
                .await?;
                let next: i32 = tx
                    .query_one(
                        "SELECT coalesce(max(version), 0) + 1 FROM pgveil_data_keys WHERE key_id = $1",
                        &[&key_id],
                    )
                    .await?
                    .get(0);
                let wctx = WrapContext {
                    key_id: key_id as u32,
                    version: next as u32,
                    table: scope.table.clone(),
                    tenant: scope.tenant.clone(),
                };
                // The provider call happens under the family's row lock, so
                // concurrent instances create exactly one version.
                let started = std::time::Instant::now();
                let generated = provider.generate(&wctx).await;
                metrics::histogram!("pgveil_kms_seconds", "op" => "generate")
                    .record(started.elapsed().as_secs_f64());
                let (dek, wrapped) = generated
                    .inspect_err(|_| metrics::counter!("pgveil_kms_errors_total").increment(1))?;
                tx.execute(
                    "INSERT INTO pgveil_data_keys (key_id, version, master_key_id, wrapped) \
                     VALUES ($1, $2, $3, $4)",
                    &[&key_id, &next, &wrapped.master_key_id, &wrapped.blob],
                )
                .await?;
                let q = format!("{SELECT} WHERE d.key_id = $1 AND d.version = $2");
                let rec = KeyRecord::from_row(&tx.query_one(&q, &[&key_id, &next]).await?);
                tx.commit().await?;
                tracing::info!(key_id, version = next, table = %scope.table, "data key created");
                Ok((rec, Some(dek)))
            }
        }
    }

    /// Reserve `n` encryptions under a version. `None` if that would pass
    /// `limit` or the version is retired or destroyed.
    pub async fn reserve(
        &self,
        key_id: u32,
        version: u32,
        n: u64,
        limit: u64,
    ) -> Result<Option<u64>, KeyError> {
        self.with(move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "UPDATE pgveil_data_keys SET encryptions = encryptions + $3 \
                         WHERE key_id = $1 AND version = $2 AND retired_at IS NULL \
                         AND destroyed_at IS NULL AND encryptions + $3 <= $4 \
                         RETURNING encryptions",
                        &[
                            &(key_id as i32),
                            &(version as i32),
                            &(n as i64),
                            &(limit as i64),
                        ],
                    )
                    .await?;
                Ok(row.map(|r| r.get::<_, i64>(0) as u64))
            })
        })
        .await
    }

    /// Every version (optionally of one tenant), ordered by key and version.
    pub async fn list(&self, tenant: Option<&str>) -> Result<Vec<KeyRecord>, KeyError> {
        let tenant = tenant.map(str::to_string);
        self.with(move |c| {
            Box::pin(async move {
                let rows = match &tenant {
                    Some(t) => {
                        let q = format!("{SELECT} WHERE f.tenant = $1 ORDER BY 1, 2");
                        c.query(&q, &[t]).await?
                    }
                    None => c.query(&format!("{SELECT} ORDER BY 1, 2"), &[]).await?,
                };
                Ok(rows.iter().map(KeyRecord::from_row).collect())
            })
        })
        .await
    }

    /// Replace a wrapping (master-key rotation); only if it is still `old`.
    pub async fn replace_wrapping(
        &self,
        rec: &KeyRecord,
        old: &WrappedKey,
        new: &WrappedKey,
    ) -> Result<bool, KeyError> {
        let (k, v) = (rec.key_id as i32, rec.version as i32);
        let (old, new) = (old.clone(), new.clone());
        self.with(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        "UPDATE pgveil_data_keys SET master_key_id = $3, wrapped = $4 \
                         WHERE key_id = $1 AND version = $2 AND master_key_id = $5 AND wrapped = $6",
                        &[&k, &v, &new.master_key_id, &new.blob, &old.master_key_id, &old.blob],
                    )
                    .await?;
                Ok(n == 1)
            })
        })
        .await
    }

    /// Destroy every wrapped data key of `tenant` (all tables, all
    /// versions), then VACUUM the table so the old row versions holding the
    /// wrapped keys are removed from the live heap. Returns the number of
    /// versions destroyed.
    pub async fn destroy_tenant(&self, tenant: &str) -> Result<u64, KeyError> {
        let tenant = tenant.to_string();
        self.with(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        "UPDATE pgveil_data_keys SET wrapped = NULL, destroyed_at = now(), \
                         retired_at = coalesce(retired_at, now()) \
                         WHERE destroyed_at IS NULL AND key_id IN \
                         (SELECT key_id FROM pgveil_key_families WHERE tenant = $1)",
                        &[&tenant],
                    )
                    .await?;
                if let Err(e) = c.batch_execute("VACUUM pgveil_data_keys").await {
                    tracing::warn!(error = %e, "VACUUM pgveil_data_keys after shredding failed: run it as the table owner");
                }
                Ok(n)
            })
        })
        .await
    }
}
