//! The control plane's HTTPS: the fingerprint a client pins (`SHA256:…` of the
//! certificate's public key, so a renewed certificate with the same key keeps it), and
//! the TLS settings each side uses.
//!
//! A client with a pinned fingerprint accepts exactly the certificate whose key matches —
//! no authority, name or date is consulted, as with an SSH host key. A client without one
//! checks the certificate against this machine's trusted authorities and the host name, as
//! a browser does.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use sha2::Digest as _;

pub use rustls;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0:?} is not a certificate fingerprint: expected SHA256: and 43 base64 characters")]
    BadFingerprint(String),
    #[error("cannot read the certificate: {0}")]
    BadCertificate(String),
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("{0}")]
    Config(String),
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo, shown as `SHA256:` and unpadded
/// base64 (as OpenSSH shows key fingerprints).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of `cert`'s public key.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Result<Fingerprint, TlsError> {
        let parsed = webpki::EndEntityCert::try_from(cert).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
        Ok(Fingerprint(sha2::Sha256::digest(parsed.subject_public_key_info().as_ref()).into()))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Fingerprint, TlsError> {
        let bad = || TlsError::BadFingerprint(s.to_owned());
        let b64 = s.strip_prefix("SHA256:").ok_or_else(bad)?.trim_end_matches('=');
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64).map_err(|_| bad())?;
        Ok(Fingerprint(bytes.try_into().map_err(|_| bad())?))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Fingerprint, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The one set of algorithms both sides use.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

const HTTP1: &[u8] = b"http/1.1";

/// What a client checks a server against: the pinned fingerprint, else this machine's
/// trusted authorities (loaded once per process).
pub fn client_config(pin: Option<Fingerprint>) -> Result<Arc<ClientConfig>, TlsError> {
    let Some(pin) = pin else {
        static ROOTS: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
        return ROOTS.get_or_init(with_trusted_roots).clone().map_err(TlsError::Config);
    };
    let verifier = Arc::new(Pinned { pin, provider: provider() });
    Ok(http1(client_builder()?.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()))
}

/// This machine's authorities (`SSL_CERT_FILE`/`SSL_CERT_DIR` too).
fn with_trusted_roots() -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added == 0 {
        return Err("this machine trusts no certificate authority (no system certificates found); pin the control plane's certificate with --fingerprint".into());
    }
    let builder = client_builder().map_err(|e| e.to_string())?;
    Ok(http1(builder.with_root_certificates(roots).with_no_client_auth()))
}

fn client_builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// The settings, speaking HTTP/1.1.
fn http1(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![HTTP1.to_vec()];
    Arc::new(config)
}

/// A server's settings from its certificate chain (leaf first) and key.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("the certificate and key do not make a TLS server: {e}")))?;
    config.alpn_protocols = vec![HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// A certificate chain (leaf first) and its private key, from PEM files.
pub fn read_pem(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let file_error = |path: &Path, why: String| TlsError::File { path: path.display().to_string(), why };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no PEM certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e.to_string()))?;
    Ok((chain, key))
}

/// The pinned-key check: the server's certificate must carry exactly the pinned key, and
/// the handshake must be signed by it.
#[derive(Debug)]
struct Pinned {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                Mismatch { got, pinned: self.pin },
            )))))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A server whose key is not the pinned one.
#[derive(Debug, thiserror::Error)]
#[error("its certificate's key is {got}, not the pinned {pinned}")]
pub struct Mismatch {
    pub got: Fingerprint,
    pub pinned: Fingerprint,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_reads_back_as_it_is_shown_and_odd_text_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        let fp = Fingerprint::of_certificate(cert.der()).unwrap();
        let shown = fp.to_string();
        assert!(shown.starts_with("SHA256:") && shown.len() == 7 + 43, "{shown}");
        assert_eq!(shown.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(format!("{shown}=").parse::<Fingerprint>().unwrap(), fp, "padding is accepted");
        // The fingerprint is of the key: a new certificate for the same key keeps it.
        let renewed = rcgen::CertificateParams::new(vec!["other".into()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(Fingerprint::of_certificate(renewed.der()).unwrap(), fp);
        for bad in ["", "SHA256:", "sha256:abc", &shown[7..], &shown[..40], "MD5:aa:bb"] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?} was taken");
        }
        assert!(Fingerprint::of_certificate(&CertificateDer::from(vec![0x30, 3, 1, 2, 3])).is_err());
    }
}
