//! AwsKmsProvider against a real KMS-compatible endpoint: `moto_server`
//! (PyPI `moto[server]`) started on a free loopback port (another one if
//! that port was taken meanwhile). Credentials go to the SDK client
//! explicitly: no process-wide environment changes in a binary whose tests
//! run in parallel.

mod common;

use std::sync::Arc;
use std::time::Duration;

use pgveil::crypto::{ColumnContext, DataKey, PgType, envelope};
use pgveil::keys::{
    AwsKmsProvider, KeyError, KeyManager, KeyManagerOptions, Keystore, MasterKeyProvider,
    WrapContext,
};

use common::moto::Moto;

/// An SDK KMS client for moto with explicit credentials and region, and
/// the timeouts and retries `AwsKmsProvider::from_config` uses.
fn kms_client(moto: &Moto) -> aws_sdk_kms::Client {
    let conf = aws_sdk_kms::config::Builder::new()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kms::config::Credentials::new(
            "testing", "testing", None, None, "kms-test",
        ))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(15))
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
        .endpoint_url(moto.endpoint())
        .build();
    aws_sdk_kms::Client::from_conf(conf)
}

/// Create a KMS key through the SDK and build the provider on a client
/// with explicit credentials (pgveil's config path, which reads them from
/// the environment, is covered end to end by tests/faults.rs, where pgveil
/// is a child process with an environment of its own).
async fn provider(moto: &Moto) -> (AwsKmsProvider, String) {
    let client = kms_client(moto);
    let key = client.create_key().send().await.expect("CreateKey");
    let key_id = key.key_metadata().unwrap().key_id().to_string();
    (
        AwsKmsProvider::from_client(client, &key_id, &moto.endpoint()),
        key_id,
    )
}

fn wctx(tenant: Option<&str>) -> WrapContext {
    WrapContext {
        key_id: 1,
        version: 1,
        table: "phi.member_profile".into(),
        tenant: tenant.map(str::to_string),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrap_unwrap_and_context_binding() {
    let moto = Moto::start();
    let (p, key_id) = provider(&moto).await;
    let arn = p.current_master_key_id().await.unwrap();
    assert!(arn.contains(&key_id), "{arn}");

    // GenerateDataKey + Decrypt.
    let ctx = wctx(Some("acme"));
    let (dek, wrapped) = p.generate(&ctx).await.unwrap();
    assert!(wrapped.master_key_id.contains(&key_id));
    assert_ne!(&wrapped.blob[..], &dek.expose_secret()[..]);
    let back = p.unwrap(&wrapped, &ctx).await.unwrap();
    assert_eq!(back.expose_secret(), dek.expose_secret());

    // Encrypt (re-wrap) + Decrypt.
    let mine = DataKey::generate();
    let w = p.wrap(&mine, &ctx).await.unwrap();
    assert_eq!(
        p.unwrap(&w, &ctx).await.unwrap().expose_secret(),
        mine.expose_secret()
    );

    // Encryption context mismatch is rejected by KMS.
    for wrong in [
        wctx(Some("globex")),
        wctx(None),
        WrapContext {
            version: 2,
            ..wctx(Some("acme"))
        },
    ] {
        let e = p.unwrap(&wrapped, &wrong).await.unwrap_err();
        assert!(matches!(e, KeyError::UnwrapRejected { .. }), "{e}");
        let s = e.to_string();
        assert!(
            s.contains("encryption context") && s.contains("data key"),
            "{s}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_unreachable_cached_keys_keep_working() {
    let mut moto = Moto::start();
    let (p, _) = provider(&moto).await;
    let pg = common::PgCluster::start(common::Hba::Trust);
    let km = KeyManager::new(
        Arc::new(p),
        Keystore::new_no_tls(&pg.url("postgres", "postgres")).unwrap(),
        KeyManagerOptions::default(),
    );
    let ctx = ColumnContext::new("phi", "member_profile", "ssn", PgType::Text).with_tenant("acme");
    let (r, dek) = km.encryption_key(&ctx).await.unwrap();
    let env = envelope::encrypt(&dek, &r, &ctx, b"123-45-6789").unwrap();
    // A key that has to be unwrapped (not just generated) before the outage.
    let other = ColumnContext::new("public", "users", "email", PgType::Text);
    let (r2, d2) = km.encryption_key(&other).await.unwrap();
    let env2 = envelope::encrypt(&d2, &r2, &other, b"alice@example.com").unwrap();

    moto.kill();

    // Cached keys: encrypt and decrypt keep working without KMS.
    let dek = km
        .decryption_key(&envelope::peek_key(&env).unwrap())
        .await
        .unwrap();
    assert_eq!(
        &envelope::decrypt(&dek, &ctx, &env).unwrap()[..],
        b"123-45-6789"
    );
    for _ in 0..10 {
        km.encryption_key(&ctx).await.unwrap();
    }
    // A key not in the cache: a clear error (the timeout only guards
    // against a hang).
    let e = tokio::time::timeout(
        Duration::from_secs(120),
        km.encryption_key(&ctx.clone().with_tenant("globex")),
    )
    .await
    .expect("no answer from the key manager (hang)")
    .unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, KeyError::ProviderUnavailable { .. }), "{s}");
    assert!(
        s.contains("aws-kms is unreachable") && s.contains("127.0.0.1"),
        "{s}"
    );
    km.clear_cache();
    let e = km
        .decryption_key(&envelope::peek_key(&env2).unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unreachable"), "{e}");
}
