//! KeyManager + Keystore against a real throwaway PostgreSQL, with the local
//! master-key provider: first use, rotation, master-key re-wrap, shredding,
//! single-flight, encryption counting.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use pgveil::crypto::{ColumnContext, DataKey, PgType, envelope};
use pgveil::keys::{
    KeyError, KeyManager, KeyManagerOptions, KeyScope, Keystore, LocalProvider, MasterKeyProvider,
    WrapContext, WrappedKey,
};
use zeroize::Zeroizing;

fn local(keys: &[(&str, u8)]) -> Arc<LocalProvider> {
    Arc::new(
        LocalProvider::new(
            keys.iter()
                .map(|(id, b)| (id.to_string(), Zeroizing::new([*b; 32])))
                .collect(),
        )
        .unwrap(),
    )
}

fn manager(url: &str, p: Arc<dyn MasterKeyProvider>) -> KeyManager {
    KeyManager::new(
        p,
        Keystore::new_no_tls(url).unwrap(),
        KeyManagerOptions::default(),
    )
}

fn users() -> ColumnContext {
    ColumnContext::new("public", "users", "email", PgType::Text)
}

fn members(tenant: &str) -> ColumnContext {
    ColumnContext::new("phi", "member_profile", "ssn", PgType::Text).with_tenant(tenant)
}

async fn seal(km: &KeyManager, ctx: &ColumnContext, v: &[u8]) -> Vec<u8> {
    let (r, dek) = km.encryption_key(ctx).await.unwrap();
    envelope::encrypt(&dek, &r, ctx, v).unwrap()
}

async fn open(km: &KeyManager, ctx: &ColumnContext, env: &[u8]) -> Result<Vec<u8>, KeyError> {
    let r = envelope::peek_key(env)?;
    let dek = km.decryption_key(&r).await?;
    Ok(envelope::decrypt(&dek, ctx, env)?.to_vec())
}

/// Wraps a real provider and counts calls.
struct Counting {
    inner: Arc<dyn MasterKeyProvider>,
    unwraps: AtomicUsize,
    generates: AtomicUsize,
}

impl MasterKeyProvider for Counting {
    fn kind(&self) -> &'static str {
        "counting"
    }
    fn current_master_key_id(&self) -> BoxFuture<'_, Result<String, KeyError>> {
        self.inner.current_master_key_id()
    }
    fn generate<'a>(
        &'a self,
        ctx: &'a WrapContext,
    ) -> BoxFuture<'a, Result<(DataKey, WrappedKey), KeyError>> {
        self.generates.fetch_add(1, Ordering::SeqCst);
        self.inner.generate(ctx)
    }
    fn wrap<'a>(
        &'a self,
        dek: &'a DataKey,
        ctx: &'a WrapContext,
    ) -> BoxFuture<'a, Result<WrappedKey, KeyError>> {
        self.inner.wrap(dek, ctx)
    }
    fn unwrap<'a>(
        &'a self,
        w: &'a WrappedKey,
        ctx: &'a WrapContext,
    ) -> BoxFuture<'a, Result<DataKey, KeyError>> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            // Slow enough that concurrent misses overlap.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            self.inner.unwrap(w, ctx).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystore_lifecycle() {
    let pg = common::PgCluster::start(common::Hba::Trust);
    pg.create_database("pgveil_keys");
    let url = pg.url("postgres", "pgveil_keys");

    // First use creates the tables and one key per table (and tenant).
    let km = manager(&url, local(&[("k1", 1)]));
    let a = seal(&km, &users(), b"alice@example.com").await;
    let b = seal(&km, &users(), b"bob@example.com").await;
    let ka = envelope::peek_key(&a).unwrap();
    assert_eq!(ka, envelope::peek_key(&b).unwrap());
    assert_eq!(ka.version, 1);
    let acme = seal(&km, &members("acme"), b"123-45-6789").await;
    let globex = seal(&km, &members("globex"), b"987-65-4321").await;
    let (kacme, kglobex) = (
        envelope::peek_key(&acme).unwrap(),
        envelope::peek_key(&globex).unwrap(),
    );
    assert_eq!(kacme.tenant(), Some("acme"));
    assert!(kacme.key_id != kglobex.key_id && kacme.key_id != ka.key_id);

    // A second instance sharing the keystore sees the same keys.
    let km2 = manager(&url, local(&[("k1", 1)]));
    assert_eq!(
        open(&km2, &users(), &a).await.unwrap(),
        b"alice@example.com"
    );
    assert_eq!(km2.encryption_key(&users()).await.unwrap().0, ka);

    // Data-key rotation: new writes use v2, v1 still decrypts.
    let v2 = km.rotate_data_key(&KeyScope::of(&users())).await.unwrap();
    assert_eq!((v2.key_id, v2.version), (ka.key_id, 2));
    let c = seal(&km, &users(), b"carol@example.com").await;
    assert_eq!(envelope::peek_key(&c).unwrap(), v2);
    let km3 = manager(&url, local(&[("k1", 1)]));
    assert_eq!(
        open(&km3, &users(), &a).await.unwrap(),
        b"alice@example.com"
    );
    assert_eq!(
        open(&km3, &users(), &c).await.unwrap(),
        b"carol@example.com"
    );

    // Wrong master key material: the error names the key id, never the key.
    let bad = manager(&url, local(&[("k1", 9)]));
    let e = open(&bad, &users(), &a).await.unwrap_err().to_string();
    assert!(
        e.contains("\"k1\"") && e.contains(&format!("data key {} v1", ka.key_id)),
        "{e}"
    );
    assert!(!e.contains("0909"), "{e}");

    // Master-key rotation: re-wrap under k2 without touching values.
    let rot = manager(&url, local(&[("k2", 2), ("k1", 1)]));
    let n = rot.rewrap_all().await.unwrap();
    assert_eq!(n, 4, "users v1+v2, acme, globex");
    assert!(
        rot.list_keys(None)
            .await
            .unwrap()
            .iter()
            .all(|r| r.master_key_id == "k2")
    );
    assert_eq!(rot.rewrap_all().await.unwrap(), 0);
    let only_k2 = manager(&url, local(&[("k2", 2)]));
    assert_eq!(
        open(&only_k2, &members("acme"), &acme).await.unwrap(),
        b"123-45-6789"
    );
    let only_k1 = manager(&url, local(&[("k1", 1)]));
    let e = open(&only_k1, &users(), &a).await.unwrap_err().to_string();
    assert!(e.contains("\"k2\"") && e.contains("not configured"), "{e}");

    // Shredding one tenant: its values fail with "key destroyed", in this
    // instance and any other; other tenants are untouched.
    let listed = only_k2.list_keys(Some("acme")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(only_k2.shred_tenant("acme").await.unwrap(), 1);
    for km in [&only_k2, &manager(&url, local(&[("k2", 2)]))] {
        let e = open(km, &members("acme"), &acme)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("key destroyed"), "{e}");
        assert!(!e.contains("123-45"), "{e}");
        assert_eq!(
            open(km, &members("globex"), &globex).await.unwrap(),
            b"987-65-4321"
        );
    }
    let listed = only_k2.list_keys(Some("acme")).await.unwrap();
    assert!(listed[0].destroyed && listed[0].retired);
    let raw = pg.psql(
        "pgveil_keys",
        "SELECT count(*) FROM pgveil_data_keys WHERE wrapped IS NULL",
    );
    assert_eq!(raw.trim(), "1");

    // Moving a ciphertext to another tenant's row fails.
    let e = open(&only_k2, &members("acme"), &globex).await.unwrap_err();
    assert!(matches!(e, KeyError::Crypto(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_provider_call() {
    let pg = common::PgCluster::start(common::Hba::Trust);
    let url = pg.url("postgres", "postgres");
    let counting = Arc::new(Counting {
        inner: local(&[("k1", 1)]),
        unwraps: AtomicUsize::new(0),
        generates: AtomicUsize::new(0),
    });
    let km = manager(&url, counting.clone());

    // 16 concurrent first writes to a new table: one data key generated.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let km = km.clone();
        tasks.push(tokio::spawn(async move {
            km.encryption_key(&users()).await.unwrap().0
        }));
    }
    let mut refs = Vec::new();
    for t in tasks {
        refs.push(t.await.unwrap());
    }
    assert!(refs.iter().all(|r| *r == refs[0]));
    assert_eq!(counting.generates.load(Ordering::SeqCst), 1);
    assert_eq!(counting.unwraps.load(Ordering::SeqCst), 0);

    // 32 concurrent decryption misses of one key: one unwrap.
    km.clear_cache();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (km, r) = (km.clone(), refs[0].clone());
        tasks.push(tokio::spawn(async move {
            km.decryption_key(&r).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(counting.unwraps.load(Ordering::SeqCst), 1);
    // Cached afterwards: no further calls.
    for _ in 0..100 {
        km.decryption_key(&refs[0]).await.unwrap();
        km.encryption_key(&users()).await.unwrap();
    }
    assert_eq!(counting.unwraps.load(Ordering::SeqCst), 1);
    assert_eq!(counting.generates.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encryption_counts_persist_and_retire_keys() {
    let pg = common::PgCluster::start(common::Hba::Trust);
    let url = pg.url("postgres", "postgres");
    let opts = KeyManagerOptions {
        reserve_batch: 10,
        max_encryptions: 25,
        ..KeyManagerOptions::default()
    };
    let km = KeyManager::new(
        local(&[("k1", 1)]),
        Keystore::new_no_tls(&url).unwrap(),
        opts.clone(),
    );
    let mut versions = std::collections::BTreeMap::new();
    for _ in 0..60 {
        let (r, _) = km.encryption_key(&users()).await.unwrap();
        *versions.entry(r.version).or_insert(0) += 1;
    }
    // 25 per version at most (batches of 10 fit twice, then a new version).
    assert!(versions.values().all(|n| *n <= 25), "{versions:?}");
    assert!(versions.len() >= 3, "{versions:?}");
    let recs = km.list_keys(None).await.unwrap();
    assert!(recs.iter().all(|r| r.encryptions <= 25));
    assert!(recs.iter().filter(|r| !r.retired).count() == 1);
    // A restart does not reset the count: reservations continue.
    let before: i64 = recs.iter().map(|r| r.encryptions).sum();
    let km2 = KeyManager::new(
        local(&[("k1", 1)]),
        Keystore::new_no_tls(&url).unwrap(),
        opts,
    );
    km2.encryption_key(&users()).await.unwrap();
    let after: i64 = km2
        .list_keys(None)
        .await
        .unwrap()
        .iter()
        .map(|r| r.encryptions)
        .sum();
    assert_eq!(after, before + 10);
}

/// The keystore and the operations commands' connections speak TLS with
/// libpq's `sslmode` (here against a cluster that accepts ordinary users
/// over TLS only): `verify-full` with the CA as `sslrootcert` works in the
/// URL and key=value forms, the password comes from PGPASSWORD-free
/// sources too, a wrong CA fails the handshake, and `disable` is refused by
/// the server. Messages never show the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystore_and_ops_connections_use_tls_up_to_verify_full() {
    use common::{Hba, PgCluster, PgOptions, make_certs};
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = make_certs(certs_dir.path());
    let pg = PgCluster::start_with(PgOptions {
        hba: Hba::Scram,
        tls: Some((
            certs.server_cert_path.clone(),
            certs.server_key_path.clone(),
        )),
        hostssl_only: true,
        extra_conf: vec![],
    });
    pg.create_role("keys", Some("k-secret-pw"));
    pg.psql("postgres", "ALTER ROLE keys CREATEDB");
    pg.create_database_owned("pgveil_keys", "keys");
    let ca = certs.ca_pem_path.display().to_string();
    let port = pg.port();
    for url in [
        format!(
            "postgres://keys:k-secret-pw@localhost:{port}/pgveil_keys?sslmode=verify-full&sslrootcert={ca}"
        ),
        format!(
            "host=localhost port={port} user=keys password='k-secret-pw' dbname=pgveil_keys sslmode=verify-full sslrootcert='{ca}'"
        ),
        format!("postgres://keys:k-secret-pw@127.0.0.1:{port}/pgveil_keys?sslmode=require"),
    ] {
        let ks = Keystore::new(&url).unwrap();
        ks.check().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let km = KeyManager::new(local(&[("k1", 1)]), ks, KeyManagerOptions::default());
        let env = seal(&km, &users(), b"over tls").await;
        assert_eq!(open(&km, &users(), &env).await.unwrap(), b"over tls");
    }
    // The server refuses a plain connection; a CA that did not sign the
    // server's certificate fails verify-full. Neither message shows the
    // password.
    let other = tempfile::tempdir().unwrap();
    let other_ca = make_certs(other.path()).ca_pem_path.display().to_string();
    for url in [
        format!("postgres://keys:k-secret-pw@localhost:{port}/pgveil_keys?sslmode=disable"),
        format!(
            "postgres://keys:k-secret-pw@localhost:{port}/pgveil_keys?sslmode=verify-full&sslrootcert={other_ca}"
        ),
    ] {
        let e = Keystore::new(&url)
            .unwrap()
            .check()
            .await
            .unwrap_err()
            .to_string();
        assert!(!e.contains("k-secret-pw"), "{e}");
        assert!(
            e.contains("cannot connect to postgres://keys@localhost"),
            "{e}"
        );
    }
    // An operations connection with the same knobs (here: policy check
    // --database, which reads the catalog only).
    let c = pgveil::ops::db::connect(&format!(
        "host=localhost port={port} user=keys password=k-secret-pw dbname=pgveil_keys sslmode=verify-full sslrootcert={ca}"
    ))
    .await
    .unwrap();
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the ops connection is encrypted");
}
