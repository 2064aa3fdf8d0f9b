//! What a node reports to the control plane — a heartbeat with its sessions and the
//! executions it ran — parsed and checked as the control plane does. Nothing may panic,
//! and what the check lets through holds no control characters.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hb) = serde_json::from_slice::<proto::api::Heartbeat>(data)
        && hb.check().is_ok()
    {
        let shown = [&hb.platform.os, &hb.platform.arch, &hb.version, &hb.addr];
        assert!(shown.iter().all(|s| !s.chars().any(char::is_control)));
        for x in &hb.executions {
            assert!(!x.exit.chars().any(char::is_control) && !x.key_id.chars().any(char::is_control));
        }
    }
});
