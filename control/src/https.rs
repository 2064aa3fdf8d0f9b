//! HTTPS for the control plane: a certificate the admin gives (`--tls-cert/--tls-key`), or
//! its own, made at first start and kept beside the CA key. Clients pin its key's
//! fingerprint, which the control plane prints with every login and agent command.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tls::Fingerprint;
use tls::rustls::ServerConfig;
use tls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// What the control plane serves HTTPS with.
pub struct Https {
    pub config: Arc<ServerConfig>,
    /// Of the certificate's key: what clients pin.
    pub fingerprint: Fingerprint,
}

impl Https {
    fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> anyhow::Result<Https> {
        let fingerprint = Fingerprint::of_certificate(&chain[0])?;
        Ok(Https { config: tls::server_config(chain, key)?, fingerprint })
    }

    /// The certificate (chain, leaf first) and key in these PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> anyhow::Result<Https> {
        let (chain, key) = tls::read_pem(cert, key)?;
        Https::new(chain, key)
    }

    /// The control plane's own certificate in `cert` and `key`, made on first use. A key
    /// without its certificate (a start cut short) gets a new certificate, so the
    /// fingerprint stays the same.
    pub fn own(cert: &Path, key: &Path, names: &[String]) -> anyhow::Result<Https> {
        if cert.exists() && key.exists() {
            return Https::from_files(cert, key);
        }
        let pair = match std::fs::read_to_string(key) {
            Ok(pem) => rcgen::KeyPair::from_pem(&pem).with_context(|| format!("{} is damaged", key.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pair = rcgen::KeyPair::generate().context("making the TLS key")?;
                paths::write_private(key, pair.serialize_pem().as_bytes())
                    .with_context(|| format!("writing {}", key.display()))?;
                pair
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", key.display())),
        };
        let made = self_signed(&pair, names)?;
        paths::write_private(cert, made.pem().as_bytes()).with_context(|| format!("writing {}", cert.display()))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pair.serialize_der()));
        Https::new(vec![made.der().clone()], key)
    }
}

/// A certificate for `names` (host names and addresses) signed by its own key, valid for
/// ten years: clients pin the key, so no authority is needed.
fn self_signed(pair: &rcgen::KeyPair, names: &[String]) -> anyhow::Result<rcgen::Certificate> {
    let mut params = rcgen::CertificateParams::new(names.to_vec()).context("the certificate's names")?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "openbox control plane");
    let year = 1970 + (proto::time::now() / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    params.self_signed(pair).context("making the TLS certificate")
}
