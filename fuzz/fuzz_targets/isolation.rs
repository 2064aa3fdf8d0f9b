//! An isolation spec, as the CLI, the control plane and the agent parse it (the agent from
//! a certificate extension): never a panic, and what parses prints back to a text that
//! parses to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(isolation) = text.parse::<proto::Isolation>() {
        let canonical = isolation.to_string();
        let again: proto::Isolation = canonical.parse().expect("the canonical text parses");
        assert_eq!(again, isolation, "{text:?} -> {canonical:?}");
    }
});
