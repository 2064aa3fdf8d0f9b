use proto::Isolation;
use proto::cert::{
    EXT_ADMIN, EXT_ISOLATION, EXT_NODE, EXT_SESSION, EXT_USER, PERMIT_PORT_FORWARDING, STANDARD_EXTENSIONS,
};
use ssh_key::certificate::CertType;
use ssh_key::{Certificate, HashAlg, PublicKey};

use crate::TrustError;

/// What an accepted user certificate allows: the agent runs exactly this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserGrant {
    pub user: String,
    /// The user's incarnation, when the certificate names it (see [`EXT_USER`]).
    pub incarnation: Option<String>,
    pub key_id: String,
    pub isolation: Isolation,
    pub session: Option<String>,
    pub valid_before: u64,
    /// When the control plane issued it (its validity starts a clock-skew allowance before).
    pub issued_at: u64,
    /// Whether the user is an admin: the agent confines commands of everyone else.
    pub admin: bool,
    /// Whether it carries OpenSSH's `permit-port-forwarding`: the control plane grants it
    /// only for native commands outside a session, which the user's grants allow there.
    pub port_forwarding: bool,
}

fn type_name(t: CertType) -> &'static str {
    if t.is_host() { "host" } else { "user" }
}

/// Signed by `ca`, signature intact, and `now` inside the validity window.
fn check_signed_and_current(cert: &Certificate, ca: &PublicKey, now: u64) -> Result<(), TrustError> {
    if cert.signature_key() != ca.key_data() {
        return Err(TrustError::WrongCa);
    }
    if now < cert.valid_after() {
        return Err(TrustError::NotYetValid { valid_after: cert.valid_after(), now });
    }
    if now >= cert.valid_before() {
        return Err(TrustError::Expired { valid_before: cert.valid_before(), now });
    }
    let ca_fingerprint = ca.fingerprint(HashAlg::Sha256);
    cert.validate_at(now, [&ca_fingerprint]).map_err(|_| TrustError::BadSignature)
}

/// An explicit principal list that names `wanted` (an empty list, which OpenSSH reads as
/// "anyone", is refused).
fn check_principal(cert: &Certificate, wanted: &str) -> Result<(), TrustError> {
    if cert.valid_principals().iter().any(|p| p == wanted) {
        Ok(())
    } else {
        Err(TrustError::PrincipalMismatch { wanted: wanted.to_owned(), found: cert.valid_principals().to_vec() })
    }
}

/// The agent's check of a client: a user certificate from this fleet's CA, valid now, for
/// the SSH user `ssh_user`, issued for this node, with well-formed openbox extensions.
pub fn verify_user_cert(
    cert: &Certificate,
    ca: &PublicKey,
    ssh_user: &str,
    node_id: &str,
    now: u64,
) -> Result<UserGrant, TrustError> {
    if cert.cert_type() != CertType::User {
        return Err(TrustError::WrongType { wanted: "user", found: type_name(cert.cert_type()) });
    }
    check_signed_and_current(cert, ca, now)?;
    check_principal(cert, ssh_user)?;
    if let Some(name) = cert.critical_options().keys().next() {
        return Err(TrustError::UnknownCriticalOption(name.clone()));
    }
    let ext = cert.extensions();
    let bad = |name: &str, why: &str| TrustError::BadExtension { name: name.to_owned(), why: why.to_owned() };
    for name in ext.keys() {
        let ours = [EXT_NODE, EXT_ISOLATION, EXT_SESSION, EXT_USER, EXT_ADMIN].contains(&name.as_str());
        if !ours && !STANDARD_EXTENSIONS.contains(&name.as_str()) {
            return Err(bad(name, "unknown extension"));
        }
    }
    match ext.get(EXT_NODE) {
        Some(n) if n == node_id => {}
        Some(n) => {
            return Err(bad(EXT_NODE, &format!("issued for node {n}, this is node {node_id}")));
        }
        None => return Err(bad(EXT_NODE, "missing")),
    }
    let isolation = match ext.get(EXT_ISOLATION) {
        Some(s) => s.parse::<Isolation>().map_err(|why| bad(EXT_ISOLATION, &why.to_string()))?,
        None => return Err(bad(EXT_ISOLATION, "missing")),
    };
    let session = match ext.get(EXT_SESSION) {
        Some(s) => {
            proto::check_name("session id", s).map_err(|why| bad(EXT_SESSION, &why.to_string()))?;
            Some(s.clone())
        }
        None => None,
    };
    let incarnation = match ext.get(EXT_USER) {
        Some(s) if !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric()) => Some(s.clone()),
        Some(_) => return Err(bad(EXT_USER, "not a user incarnation")),
        None => None,
    };
    let admin = match ext.get(EXT_ADMIN) {
        Some(v) if v.is_empty() => true,
        Some(_) => return Err(bad(EXT_ADMIN, "takes no value")),
        None => false,
    };
    Ok(UserGrant {
        user: ssh_user.to_owned(),
        incarnation,
        key_id: cert.key_id().to_owned(),
        isolation,
        session,
        valid_before: cert.valid_before(),
        issued_at: cert.valid_after().saturating_add(proto::cert::CLOCK_SKEW_SECS),
        admin,
        port_forwarding: ext.contains_key(PERMIT_PORT_FORWARDING),
    })
}

/// The client's check of a node: a host certificate from this fleet's CA, valid now, whose
/// principal is the node id the client meant to reach.
pub fn verify_host_cert(cert: &Certificate, ca: &PublicKey, node_id: &str, now: u64) -> Result<(), TrustError> {
    if cert.cert_type() != CertType::Host {
        return Err(TrustError::WrongType { wanted: "host", found: type_name(cert.cert_type()) });
    }
    check_signed_and_current(cert, ca, now)?;
    check_principal(cert, node_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ca, UserCertSpec, generate_key};

    const NOW: u64 = 1_800_000_000;

    fn user_cert(
        ca: &Ca,
        key: &PublicKey,
        iso: &Isolation,
        session: Option<&str>,
        after: u64,
        before: u64,
    ) -> Certificate {
        ca.sign_user(&UserCertSpec {
            incarnation: "test",
            user: "alice",
            node_id: "n1",
            request_id: "r1",
            isolation: iso,
            session,
            admin: false,
            public_key: key,
            valid_after: after,
            valid_before: before,
        })
        .unwrap()
    }

    #[test]
    fn a_valid_user_certificate_grants_exactly_what_it_binds() {
        let ca = Ca::generate();
        let key = generate_key();
        let iso: Isolation = "docker:img".parse().unwrap();
        let cert = user_cert(&ca, key.public_key(), &iso, Some("build"), NOW - 30, NOW + 300);
        let grant = verify_user_cert(&cert, ca.public_key(), "alice", "n1", NOW).unwrap();
        assert_eq!(grant.isolation, iso);
        assert_eq!(grant.session.as_deref(), Some("build"));
        assert!(grant.key_id.contains("alice") && grant.key_id.contains("r1"));
    }

    #[test]
    fn only_a_native_certificate_outside_a_session_permits_port_forwarding() {
        let ca = Ca::generate();
        let key = generate_key();
        let docker: Isolation = "docker:img".parse().unwrap();
        let forwards = |iso: &Isolation, session: Option<&str>| {
            let cert = user_cert(&ca, key.public_key(), iso, session, NOW - 30, NOW + 300);
            verify_user_cert(&cert, ca.public_key(), "alice", "n1", NOW).unwrap().port_forwarding
        };
        assert!(forwards(&Isolation::Native, None));
        assert!(!forwards(&Isolation::Native, Some("build")));
        assert!(!forwards(&docker, None));
    }

    #[test]
    fn user_certificates_are_refused_for_every_broken_property() {
        let ca = Ca::generate();
        let other_ca = Ca::generate();
        let key = generate_key();
        let iso = Isolation::Native;
        let good = user_cert(&ca, key.public_key(), &iso, None, NOW - 30, NOW + 300);
        let check =
            |c: &Certificate, user: &str, node: &str, now: u64| verify_user_cert(c, ca.public_key(), user, node, now);

        assert!(matches!(check(&good, "alice", "n1", NOW + 300), Err(TrustError::Expired { .. })));
        assert!(matches!(check(&good, "alice", "n1", NOW - 31), Err(TrustError::NotYetValid { .. })));
        assert!(matches!(check(&good, "bob", "n1", NOW), Err(TrustError::PrincipalMismatch { .. })));
        assert!(matches!(check(&good, "alice", "n2", NOW), Err(TrustError::BadExtension { .. })));
        let foreign = user_cert(&other_ca, key.public_key(), &iso, None, NOW - 30, NOW + 300);
        assert!(matches!(check(&foreign, "alice", "n1", NOW), Err(TrustError::WrongCa)));
        let host = ca.sign_host(key.public_key(), "alice", NOW - 30, NOW + 300).unwrap();
        assert!(matches!(check(&host, "alice", "n1", NOW), Err(TrustError::WrongType { .. })));
    }

    #[test]
    fn user_certificates_without_openbox_extensions_are_refused() {
        use ssh_key::certificate::Builder;
        let ca_key = generate_key();
        let ca = Ca::from_openssh(ca_key.to_openssh(ssh_key::LineEnding::LF).unwrap().as_str()).unwrap();
        let key = generate_key();
        let mut b =
            Builder::new_with_random_nonce(&mut rand::rng(), key.public_key().key_data().clone(), NOW - 1, NOW + 60)
                .unwrap();
        b.cert_type(CertType::User).unwrap();
        b.valid_principal("alice").unwrap();
        b.extension(EXT_NODE, "n1").unwrap();
        let no_isolation = b.sign(&ca_key).unwrap();
        let err = verify_user_cert(&no_isolation, ca.public_key(), "alice", "n1", NOW).unwrap_err();
        assert!(err.to_string().contains(EXT_ISOLATION), "{err}");

        let mut b =
            Builder::new_with_random_nonce(&mut rand::rng(), key.public_key().key_data().clone(), NOW - 1, NOW + 60)
                .unwrap();
        b.cert_type(CertType::User).unwrap();
        b.valid_principal("alice").unwrap();
        b.extension(EXT_NODE, "n1").unwrap();
        b.extension(EXT_ISOLATION, "sandbox").unwrap();
        let bogus = b.sign(&ca_key).unwrap();
        assert!(matches!(
            verify_user_cert(&bogus, ca.public_key(), "alice", "n1", NOW),
            Err(TrustError::BadExtension { .. })
        ));

        let mut b =
            Builder::new_with_random_nonce(&mut rand::rng(), key.public_key().key_data().clone(), NOW - 1, NOW + 60)
                .unwrap();
        b.cert_type(CertType::User).unwrap();
        b.all_principals_valid().unwrap();
        b.extension(EXT_NODE, "n1").unwrap();
        b.extension(EXT_ISOLATION, "native").unwrap();
        let anyone = b.sign(&ca_key).unwrap();
        assert!(matches!(
            verify_user_cert(&anyone, ca.public_key(), "alice", "n1", NOW),
            Err(TrustError::PrincipalMismatch { .. })
        ));
    }

    #[test]
    fn host_certificates_are_checked_for_ca_node_and_time() {
        let ca = Ca::generate();
        let other_ca = Ca::generate();
        let host_key = generate_key();
        let cert = ca.sign_host(host_key.public_key(), "n1", NOW - 10, NOW + 100).unwrap();
        assert!(verify_host_cert(&cert, ca.public_key(), "n1", NOW).is_ok());
        assert!(matches!(
            verify_host_cert(&cert, ca.public_key(), "n2", NOW),
            Err(TrustError::PrincipalMismatch { .. })
        ));
        assert!(matches!(verify_host_cert(&cert, other_ca.public_key(), "n1", NOW), Err(TrustError::WrongCa)));
        assert!(matches!(verify_host_cert(&cert, ca.public_key(), "n1", NOW + 100), Err(TrustError::Expired { .. })));
    }

    #[test]
    fn the_ca_key_round_trips_through_openssh_format() {
        let ca = Ca::generate();
        let text = ca.to_openssh().unwrap();
        assert!(text.expose().starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let again = Ca::from_openssh(text.expose()).unwrap();
        assert_eq!(again.public_key(), ca.public_key());
    }
}
