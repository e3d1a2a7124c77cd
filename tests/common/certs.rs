//! Test certificates made with rcgen: a CA and a server certificate for
//! `localhost` and `127.0.0.1`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// Paths of the PEM files written by [`make_certs`].
#[derive(Debug, Clone)]
pub struct Certs {
    /// The CA certificate (use as `sslrootcert` / `ca_file`).
    pub ca_pem_path: PathBuf,
    /// Server certificate for `localhost` and `127.0.0.1`, signed by the CA.
    pub server_cert_path: PathBuf,
    /// Server private key (PKCS#8 PEM, mode 0600).
    pub server_key_path: PathBuf,
}

/// Write `ca.pem`, `server.crt` and `server.key` (mode 0600) into `dir`.
/// For PostgreSQL pass the server pair in [`PgOptions::tls`]
/// (the harness copies it with the ownership PostgreSQL requires).
///
/// [`PgOptions::tls`]: super::PgOptions
pub fn make_certs(dir: &Path) -> Certs {
    fs::create_dir_all(dir).unwrap();

    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, unique_ca_name());
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");

    let server_key = KeyPair::generate().expect("server key");
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = params.signed_by(&server_key, &ca).expect("server cert");

    let certs = Certs {
        ca_pem_path: dir.join("ca.pem"),
        server_cert_path: dir.join("server.crt"),
        server_key_path: dir.join("server.key"),
    };
    fs::write(&certs.ca_pem_path, ca.pem()).unwrap();
    fs::write(&certs.server_cert_path, server.pem()).unwrap();
    fs::write(&certs.server_key_path, server_key.serialize_pem()).unwrap();
    fs::set_permissions(&certs.server_key_path, fs::Permissions::from_mode(0o600)).unwrap();
    certs
}

/// A CA name unique to this call, so certificates from two `make_certs` calls
/// never look like the same issuer (clients then report a plain "unknown
/// CA" instead of a signature failure).
fn unique_ca_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "pgveil test CA {}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
