//! OpenSSH's `known_hosts`: whether the key a machine presents is the one recorded for it.
//! Pure: the caller reads and writes the file.
//!
//! Entries may name hosts as patterns (`*`, `?`, `!negated`, `[host]:port`) or hashed
//! (`|1|salt|hash`, HMAC-SHA1). A `@revoked` key is refused; `@cert-authority` lines are
//! not host keys and are skipped.

use hmac::{Hmac, KeyInit, Mac};
use ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use ssh_key::{HashAlg, PublicKey};

/// What `known_hosts` says of a host's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// Recorded for this host.
    Known,
    /// The host is not in the file.
    Unknown,
    /// The host is recorded with another key: someone may be in the middle, or the host
    /// was reinstalled. `line` is the first entry for it (1-based); `recorded` its key's
    /// fingerprint.
    Changed { line: usize, recorded: String },
    /// The key is marked `@revoked` (at `line`).
    Revoked { line: usize },
}

/// How OpenSSH names a host in `known_hosts`: `host`, or `[host]:port` off port 22.
pub fn host_name(host: &str, port: u16) -> String {
    if port == 22 { host.to_owned() } else { format!("[{host}]:{port}") }
}

/// The line that records `key` for `host:port`.
pub fn entry_line(host: &str, port: u16, key: &PublicKey) -> String {
    let key = key.to_openssh().unwrap_or_default();
    format!("{} {key}", host_name(host, port))
}

/// The SHA-256 fingerprint of a key as OpenSSH shows it (`SHA256:…`).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// What the entries of `known_hosts` (the file's text) say of `key` for `host:port`.
pub fn status(known_hosts: &str, host: &str, port: u16, key: &PublicKey) -> HostKeyStatus {
    let name = host_name(host, port).to_ascii_lowercase();
    let mut changed = None;
    for (i, line) in known_hosts.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // A line this parser cannot read is skipped, as OpenSSH skips it.
        let Ok(entry) = line.parse::<Entry>() else { continue };
        if !names(entry.host_patterns(), &name) {
            continue;
        }
        let same = entry.public_key().key_data() == key.key_data();
        match entry.marker() {
            Some(Marker::CertAuthority) => {}
            Some(Marker::Revoked) if same => return HostKeyStatus::Revoked { line: i + 1 },
            Some(Marker::Revoked) => {}
            None if same => return HostKeyStatus::Known,
            None => {
                changed
                    .get_or_insert(HostKeyStatus::Changed { line: i + 1, recorded: fingerprint(entry.public_key()) });
            }
        }
    }
    changed.unwrap_or(HostKeyStatus::Unknown)
}

/// Whether an entry's host patterns name `name` (already lowercase).
fn names(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(salt) else { return false };
            mac.update(name.as_bytes());
            mac.verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(list) => {
            let mut matched = false;
            for p in list {
                let p = p.to_ascii_lowercase();
                match p.strip_prefix('!') {
                    Some(negated) if glob(negated.as_bytes(), name.as_bytes()) => return false,
                    Some(_) => {}
                    None => matched |= glob(p.as_bytes(), name.as_bytes()),
                }
            }
            matched
        }
    }
}

/// `*` (any run) and `?` (any one character) against the whole of `text`.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.split_first(), text.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => glob(rest, text) || (!text.is_empty() && glob(pattern, &text[1..])),
        (Some((b'?', rest)), Some((_, more))) => glob(rest, more),
        (Some((p, rest)), Some((t, more))) if p == t => glob(rest, more),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn key() -> PublicKey {
        crate::generate_key().public_key().clone()
    }

    fn line(hosts: &str, key: &PublicKey) -> String {
        format!("{hosts} {}", key.to_openssh().unwrap())
    }

    /// A hashed entry, as `ssh-keygen -H` writes it.
    fn hashed(name: &str, key: &PublicKey) -> String {
        let salt = [7u8; 20];
        let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&salt).unwrap();
        mac.update(name.as_bytes());
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        line(&format!("|1|{}|{}", b64(&salt), b64(&mac.finalize().into_bytes())), key)
    }

    #[test]
    fn a_host_is_known_unknown_or_changed_as_openssh_reads_the_file() {
        let (k, other) = (key(), key());
        let file = [
            "# comment".to_owned(),
            line("alpha,10.0.0.1", &k),
            line("[beta]:2222", &k),
            line("*.example,!bad.example", &k),
            hashed("[hidden]:2200", &k),
            line("gamma", &other),
            format!("@cert-authority * {}", k.to_openssh().unwrap()),
            "not a key line".to_owned(),
        ]
        .join("\n");
        assert_eq!(status(&file, "alpha", 22, &k), HostKeyStatus::Known);
        assert_eq!(status(&file, "10.0.0.1", 22, &k), HostKeyStatus::Known);
        assert_eq!(status(&file, "ALPHA", 22, &k), HostKeyStatus::Known, "host names ignore case");
        assert_eq!(status(&file, "beta", 2222, &k), HostKeyStatus::Known);
        assert_eq!(status(&file, "beta", 22, &k), HostKeyStatus::Unknown, "another port is another host");
        assert_eq!(status(&file, "www.example", 22, &k), HostKeyStatus::Known);
        assert_eq!(status(&file, "bad.example", 22, &k), HostKeyStatus::Unknown, "negated");
        assert_eq!(status(&file, "hidden", 2200, &k), HostKeyStatus::Known, "hashed");
        assert_eq!(status(&file, "hidden", 22, &k), HostKeyStatus::Unknown);
        assert_eq!(status(&file, "delta", 22, &k), HostKeyStatus::Unknown, "a CA line is no host key");
        assert_eq!(status(&file, "gamma", 22, &k), HostKeyStatus::Changed { line: 6, recorded: fingerprint(&other) });
        assert_eq!(status(&file, "alpha", 22, &other), HostKeyStatus::Changed { line: 2, recorded: fingerprint(&k) });
        let revoked = format!("{file}\n@revoked alpha {}", other.to_openssh().unwrap());
        assert_eq!(status(&revoked, "alpha", 22, &other), HostKeyStatus::Revoked { line: 9 });

        // What is recorded is read back.
        let recorded = entry_line("new", 2022, &k);
        assert!(recorded.starts_with("[new]:2022 ssh-ed25519 "), "{recorded}");
        assert_eq!(status(&recorded, "new", 2022, &k), HostKeyStatus::Known);
        assert!(fingerprint(&k).starts_with("SHA256:"));
    }

    #[test]
    fn globs_match_the_whole_name() {
        assert!(glob(b"*", b""));
        assert!(glob(b"a*c", b"abbbc"));
        assert!(glob(b"a?c", b"abc"));
        assert!(!glob(b"a?c", b"ac"));
        assert!(!glob(b"abc", b"abcd"));
        assert!(glob(b"*.x", b"y.x") && !glob(b"*.x", b"y.xz"));
    }
}
