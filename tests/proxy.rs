//! Proxy core (issue 2): pgveil without a policy must be invisible. Every
//! test runs the same operations through pgveil and directly against the
//! same cluster and compares.

mod common;

use common::*;

// ---------------------------------------------------------------------------
// Harness self-checks: direct connections, no pgveil involved.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_cluster_auth_methods() {
    for hba in [Hba::Trust, Hba::Password, Hba::Md5, Hba::Scram] {
        let pg = PgCluster::start(hba);
        pg.create_role("app", Some("s3cret"));
        let c = pg.connect("app", Some("s3cret"), "postgres").await;
        let row = c
            .query_one("SELECT current_user::text, 40 + 2", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "app");
        assert_eq!(row.get::<_, i32>(1), 42);
        if hba != Hba::Trust {
            let err = try_connect_to(pg.port(), "app", Some("wrong"), "postgres")
                .await
                .err()
                .unwrap_or_else(|| panic!("{hba:?}: a wrong password was accepted"));
            assert_eq!(
                err.code(),
                Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
                "{hba:?}: {err}"
            );
        }
        let stored = pg.psql(
            "postgres",
            "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'app'",
        );
        match hba {
            Hba::Md5 => assert_eq!(stored.trim(), "md5"),
            Hba::Scram => assert_eq!(stored.trim(), "SCR"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_cluster_tls_hostssl_only() {
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = make_certs(certs_dir.path());
    let pg = PgCluster::start_with(PgOptions {
        hba: Hba::Scram,
        tls: Some((
            certs.server_cert_path.clone(),
            certs.server_key_path.clone(),
        )),
        hostssl_only: true,
        extra_conf: vec!["max_connections = 50".into()],
    });
    pg.create_role("app", Some("pw"));
    // Plain TCP is refused for ordinary users...
    let err = try_connect_to(pg.port(), "app", Some("pw"), "postgres")
        .await
        .expect_err("non-TLS login must be refused by hostssl");
    let text = err_text(&err);
    assert!(text.contains("no encryption"), "{text}");
    // ... TLS works (and verifies the certificate chain and host name) ...
    let c = connect_tls_to(pg.port(), "app", Some("pw"), "postgres", &certs.ca_pem_path)
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
    assert!(ssl);
    // ... and the superuser can always set up over plain TCP.
    assert_eq!(pg.psql("postgres", "SHOW max_connections").trim(), "50");
}
