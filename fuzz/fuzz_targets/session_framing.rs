//! The scanner that finds the end-of-command marker in a session shell's output, fed in
//! pieces of every size: it must pass on exactly the bytes before the marker, find the
//! marker whichever pieces it is split across, and hold back no more than a marker's
//! length when there is none.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openbox_agent::fuzzing::Scanner;

const MARKER: &str = "OBX:0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let Some((&size, output)) = data.split_first() else { return };
    let piece = usize::from(size % 64) + 1;
    let mut scanner = Scanner::new(MARKER.to_owned());
    let (mut passed, mut found, mut fed) = (Vec::new(), None, 0);
    for chunk in output.chunks(piece) {
        let (out, after) = scanner.feed(chunk);
        passed.extend(out);
        fed += chunk.len();
        if let Some(after) = after {
            found = Some(after);
            break;
        }
    }
    let marker = MARKER.as_bytes();
    match output.windows(marker.len()).position(|w| w == marker) {
        Some(at) => {
            assert_eq!(passed, &output[..at]);
            let after = found.expect("the marker is found");
            assert_eq!(after, &output[at + marker.len()..fed]);
        }
        None => {
            assert!(found.is_none());
            assert!(output.starts_with(&passed));
            assert!(output.len() - passed.len() < marker.len(), "held back more than a marker");
        }
    }
});
