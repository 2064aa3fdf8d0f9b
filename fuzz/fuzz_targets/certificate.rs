//! Certificates as the agent checks them: a user certificate signed by the fleet's CA
//! whose extensions and key id come from the input must be accepted or refused, never
//! panic; and certificate text from the input (as openboxd reads a dispatch reply) must
//! parse or fail cleanly.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ssh_key::certificate::{Builder, CertType};

struct Keys {
    ca: trust::PrivateKey,
    user: trust::PrivateKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys { ca: trust::generate_key(), user: trust::generate_key() })
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    // NUL-separated fields: the key id, then extension names and values in turn.
    let mut fields = data.split(|b| *b == 0).map(|f| String::from_utf8_lossy(f).into_owned());
    let key_id = fields.next().unwrap_or_default();
    let Ok(mut b) = Builder::new([7u8; 32], keys.user.public_key().key_data().clone(), 100, 10_000) else { return };
    let _ = b.cert_type(CertType::User);
    let _ = b.key_id(key_id);
    let _ = b.valid_principal("someone");
    while let Some(name) = fields.next() {
        let _ = b.extension(name, fields.next().unwrap_or_default());
    }
    if let Ok(cert) = b.sign(&keys.ca) {
        let _ = trust::verify_user_cert(&cert, keys.ca.public_key(), "someone", "node1", 1_000);
        let text = cert.to_openssh().expect("a signed certificate encodes");
        let again = trust::parse_certificate(&text).expect("its own encoding parses");
        assert_eq!(again, cert);
    }
    let _ = trust::parse_certificate(&String::from_utf8_lossy(data));
});
