//! TLS termination with rustls: building each TLS service's `ServerConfig` from its `tls` lines
//! (certificates and keys read from PEM files and checked, every problem as `FILE:LINE`), and a
//! session's TLS endpoint ([`TlsEnd`], in `end.rs`) that the relay reads plaintext from and
//! writes plaintext to, on the worker's loop, without blocking.
//!
//! Secure defaults: TLS 1.2 and 1.3 only (rustls has nothing older, and no renegotiation), the
//! provider's cipher suites, no 0-RTT, session resumption with tickets whose keys rotate (rustls'
//! ticketer: a new key every 6 hours, the previous one still accepted) and a session cache.
//!
//! Crypto provider: `ring` (builds with the C compiler alone, on any Debian); see the README.

mod client;
mod end;
pub mod hello;

pub use client::{backend_configs, BackendConfigs, BackendTls};
pub use end::{HandshakeError, TlsEnd, TlsInfo};

use crate::config::{CertKey, Config, ConfigError, Tls, TlsVersion};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;

/// Why handshakes fail, as metric labels; `HandshakeError::reason` gives one of these.
pub const FAILURE_REASONS: &[&str] = &[
    "timeout",
    "client_closed",
    "not_tls",
    "incompatible",
    "client_certificate",
    "alert_received",
    "misbehaved",
    "io",
    "other",
];

/// Resumption cache entries per service (each a few hundred bytes).
const SESSION_CACHE: usize = 4096;

/// The crypto provider every TLS config of the process uses, with AES-128-GCM first among the
/// cipher suites of each version.
///
/// Why: measured with `scripts/bench.sh` (TLS figures), a handshake with `TLS13_AES_256_GCM_SHA384`
/// (rustls' first choice, and OpenSSL clients' first offer) spends a tenth of shunt's CPU in
/// SHA-384 for the key schedule, which x86 has no instructions for, where SHA-256 has them;
/// AES-128-GCM also moves bulk data with fewer rounds. Both remain strong (AES-128-GCM is
/// TLS 1.3's mandatory suite); the order only decides between suites the client offers.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| {
        let name = format!("{:?}", s.suite());
        match (name.contains("AES_128"), name.contains("AES_256")) {
            (true, _) => 0,
            (_, true) => 1,
            _ => 2,
        }
    };
    provider.cipher_suites.sort_by_key(rank);
    Arc::new(provider)
}

/// Every service's `ServerConfig` (`None` for plain TCP services), in the configuration's order,
/// or every error found, each on its `tls` line.
pub fn server_configs(config: &Config) -> Result<Vec<Option<Arc<ServerConfig>>>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let configs: Vec<_> = config
        .services
        .iter()
        .map(|s| {
            let tls = s.tls.as_ref()?;
            match server_config(tls) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    errors.extend(e.into_iter().map(|(line, message)| ConfigError {
                        file: config.path.clone(),
                        line,
                        message,
                    }));
                    None
                }
            }
        })
        .collect();
    if errors.is_empty() {
        Ok(configs)
    } else {
        errors.sort_by_key(|e| e.line);
        Err(errors)
    }
}

/// (line, message) for each problem.
type Problems = Vec<(usize, String)>;

fn server_config(tls: &Tls) -> Result<ServerConfig, Problems> {
    let provider = provider();
    let mut problems = Vec::new();
    let mut keys = Vec::new();
    for ck in &tls.certs {
        match certified_key(ck, &provider) {
            Ok(k) => keys.push(k),
            Err(e) => problems.push((ck.line, e)),
        }
    }
    let verifier = match &tls.client_ca {
        None => None,
        Some((path, line)) => match client_verifier(path, &provider) {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push((*line, e));
                None
            }
        },
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = tls
        .versions
        .iter()
        .map(|v| match v {
            TlsVersion::V1_2 => &rustls::version::TLS12,
            TlsVersion::V1_3 => &rustls::version::TLS13,
        })
        .collect();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| vec![(tls.line, format!("tls: {e}"))])?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(BySni { keys }));
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| vec![(tls.line, format!("tls: session tickets: {e}"))])?;
    config.max_early_data_size = 0;
    // Our suite order, not the client's (see `provider`).
    config.ignore_client_order = true;
    Ok(config)
}

/// A certificate chain and its key, read and checked against each other.
fn certified_key(ck: &CertKey, provider: &CryptoProvider) -> Result<(Arc<CertifiedKey>, ServerNames), String> {
    let chain = read_certs(&ck.cert)?;
    let key = PrivateKeyDer::from_pem_file(&ck.key)
        .map_err(|e| format!("tls cert: key {}: {}", ck.key.display(), pem_error(e)))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!("tls cert: key {} does not go with certificate {}: {e}", ck.key.display(), ck.cert.display())
    })?;
    let names = ServerNames(certified.cert[0].clone());
    webpki::EndEntityCert::try_from(&names.0)
        .map_err(|e| format!("tls cert: {}: not a usable certificate: {e:?}", ck.cert.display()))?;
    Ok((Arc::new(certified), names))
}

/// Every certificate of a PEM file, in order (the end entity first); at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("tls cert: {}: {}", path.display(), pem_error(e)))?;
    let certs =
        iter.collect::<Result<Vec<_>, _>>().map_err(|e| format!("tls cert: {}: {}", path.display(), pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!("tls cert: {} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn pem_error(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM item of the right kind in it".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

fn client_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path).map_err(|e| e.replace("tls cert:", "tls client_ca:"))? {
        roots.add(cert).map_err(|e| format!("tls client_ca: {}: {e}", path.display()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| format!("tls client_ca: {}: {e}", path.display()))
}

/// The end-entity certificate of a key, kept to match SNI names against (wildcards included,
/// as a client would check them).
#[derive(Debug)]
struct ServerNames(CertificateDer<'static>);

impl ServerNames {
    fn covers(&self, sni: &str) -> bool {
        let (Ok(cert), Ok(name)) = (webpki::EndEntityCert::try_from(&self.0), ServerName::try_from(sni)) else {
            return false;
        };
        cert.verify_is_valid_for_subject_name(&name).is_ok()
    }
}

/// Picks the certificate for the client's SNI: the first whose names cover it, or the first
/// of all when none does (or the client sent no SNI).
#[derive(Debug)]
struct BySni {
    keys: Vec<(Arc<CertifiedKey>, ServerNames)>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|sni| self.keys.iter().find(|(_, names)| names.covers(sni)));
        chosen.or(self.keys.first()).map(|(k, _)| Arc::clone(k))
    }
}
