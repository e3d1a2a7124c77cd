//! rustls configuration for both legs: pgveil as TLS server to clients
//! (`client_tls`) and as TLS client to PostgreSQL (`upstream.tls`).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::UpstreamTlsMode;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// The TLS identity pgveil presents to clients.
pub struct ServerTls {
    /// The rustls server configuration for accepting client TLS.
    pub config: Arc<ServerConfig>,
    /// DER of the leaf certificate, for SCRAM `tls-server-end-point` binding.
    pub leaf_der: Vec<u8>,
}

/// Load `client_tls`'s PEM certificate chain and private key (errors name the file and setting).
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<ServerTls, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("client_tls.cert_file {}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("client_tls.cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "client_tls.cert_file {}: no certificate found (expected PEM)",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("client_tls.key_file {}: {e}", key_file.display()))?;
    let leaf_der = certs[0].to_vec();
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("client_tls: certificate and key do not match: {e}"))?;
    Ok(ServerTls {
        config: Arc::new(config),
        leaf_der,
    })
}

/// TLS client configuration for the upstream leg.
pub fn client_config(
    mode: UpstreamTlsMode,
    ca_file: Option<&Path>,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match mode {
        UpstreamTlsMode::VerifyFull => {
            let mut roots = RootCertStore::empty();
            match ca_file {
                Some(path) => {
                    for cert in CertificateDer::pem_file_iter(path)
                        .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?
                    {
                        let cert =
                            cert.map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
                        roots
                            .add(cert)
                            .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
                    }
                }
                None => {
                    for cert in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(cert);
                    }
                }
            }
            if roots.is_empty() {
                return Err("upstream.tls is verify-full but no CA certificate was found: set upstream.ca_file".into());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        // `require` and `prefer` encrypt without authenticating the server,
        // exactly like libpq's sslmode of the same names.
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Accepts any server certificate but still checks the handshake signature
/// (libpq `sslmode=require` semantics).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
