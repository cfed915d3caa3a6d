//! shunt as a TLS client of its servers (`server NAME ADDR tls ...`): the rustls client config
//! of each such server, built when the configuration is loaded (so a reload re-reads the CA
//! files), and the verifier of `verify none`.

use super::{provider, read_certs};
use crate::config::{Config, ConfigError, Server, Verify};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::Path;
use std::sync::Arc;

/// Where the system's CA bundle is on the common distributions (Debian/Ubuntu, Fedora/RHEL,
/// Alpine/others); `SSL_CERT_FILE`, as OpenSSL reads it, comes first.
const SYSTEM_BUNDLES: &[&str] =
    &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// What a session needs to open TLS to one server.
#[derive(Debug)]
pub struct BackendTls {
    pub config: Arc<ClientConfig>,
    /// The name sent as SNI and verified (or the server's address when it has none).
    pub name: ServerName<'static>,
}

/// Each server's client config (`None`: plain TCP), as `[service][server]` in file order.
pub type BackendConfigs = Vec<Vec<Option<Arc<BackendTls>>>>;

/// Every server's client config, or every error found, each on its `server` line.
pub fn backend_configs(config: &Config) -> Result<BackendConfigs, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let configs = config
        .services
        .iter()
        .map(|s| {
            s.servers
                .iter()
                .map(|v| match backend(v) {
                    Ok(b) => b.map(Arc::new),
                    Err(message) => {
                        errors.push(ConfigError { file: config.path.clone(), line: v.line, message });
                        None
                    }
                })
                .collect()
        })
        .collect();
    match errors.is_empty() {
        true => Ok(configs),
        false => Err(errors),
    }
}

fn backend(v: &Server) -> Result<Option<BackendTls>, String> {
    let Some(tls) = &v.tls else {
        return Ok(None);
    };
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("server {}: tls: {e}", v.name))?;
    let config = match &tls.verify {
        Verify::Nothing => {
            log::warn!("server {}: tls verify none: its certificate is not checked (no authentication)", v.name);
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth()
        }
        Verify::Ca(file) => builder.with_root_certificates(roots(file, v)?).with_no_client_auth(),
        Verify::SystemRoots => {
            let bundle = system_bundle().ok_or_else(|| {
                format!(
                    "server {}: tls: no system CA bundle found (SSL_CERT_FILE, {}): give \"ca FILE\"",
                    v.name,
                    SYSTEM_BUNDLES.join(", ")
                )
            })?;
            builder.with_root_certificates(roots(Path::new(&bundle), v)?).with_no_client_auth()
        }
    };
    let name = match &tls.name {
        Some(n) => ServerName::try_from(n.clone()).map_err(|e| format!("server {}: sni {n}: {e}", v.name))?,
        None => ServerName::IpAddress(v.addr.ip().into()),
    };
    Ok(Some(BackendTls { config: Arc::new(config), name }))
}

fn roots(file: &Path, v: &Server) -> Result<RootCertStore, String> {
    let certs = read_certs(file).map_err(|e| e.replace("tls cert:", &format!("server {}: ca", v.name)))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("server {}: ca {}: no usable CA certificate in it", v.name, file.display()));
    }
    Ok(roots)
}

fn system_bundle() -> Option<String> {
    let from_env = std::env::var("SSL_CERT_FILE").ok();
    from_env.into_iter().chain(SYSTEM_BUNDLES.iter().map(|s| s.to_string())).find(|p| Path::new(p).is_file())
}

/// `verify none`: any certificate is taken; the handshake's signatures are still checked (so
/// the session keys are at least bound to the certificate shown).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
