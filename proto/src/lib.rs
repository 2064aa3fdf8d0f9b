//! Wire types for openbox: what travels between the CLI, openboxd, the control plane and
//! the agent. Only these types are (de)serialized on the wire.
//!
//! This crate knows nothing about sockets, HTTP, SSH or storage; it depends on serde alone,
//! so the tiny CLI can use it without pulling in a runtime.

pub mod api;
pub mod cert;
pub mod exec;
pub mod files;
pub mod isolation;
pub mod jobs;
pub mod output;
pub mod request;
pub mod routes;
pub mod rpc;
pub mod time;

pub use isolation::Isolation;

/// openbox's release version, shown by `--version` and sent in heartbeats.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The argument `openbox man --out DIR` runs `openbox-control` and `openbox-agent` with to
/// have them write their own manual pages into DIR (before their flags are parsed).
pub const MAN_PAGES_ARG: &str = "--man-pages";

/// Exit code for openbox's own failures (as ssh uses 255), distinct from remote exit codes.
pub const EXIT_OPENBOX_FAILURE: u8 = 255;
/// Exit code of a session call whose shell had ended (the agent restarted, the shell
/// exited or was reaped): nothing ran, and the next call starts a new shell.
pub const EXIT_SESSION_LOST: u8 = 254;

/// Input that does not parse, by what it was meant to be; the message says why in words a
/// user can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// A user name, node name, tag or session id.
    #[error("{0}")]
    Name(String),
    #[error("{0}")]
    Duration(String),
    /// An isolation mode or one of its options.
    #[error("{0}")]
    Isolation(String),
    /// Something a node reported about itself.
    #[error("{0}")]
    Reported(String),
}

/// Names must be short, printable and shell-friendly: used for user names, node names,
/// tags and session ids. Returns why not, in words a user can act on.
pub fn check_name(kind: &str, value: &str) -> Result<(), Invalid> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let why = if value.is_empty() {
        format!("{kind} must not be empty")
    } else if value.len() > 64 {
        format!("{kind} {value:?} is longer than 64 characters")
    } else if !value.chars().all(ok_char) || value.starts_with(['-', '.']) {
        format!("{kind} {value:?} may hold only letters, digits, '-', '_' and '.', and must not start with '-' or '.'")
    } else {
        return Ok(());
    };
    Err(Invalid::Name(why))
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names_accept_plain_words_and_refuse_shell_metacharacters() {
        assert!(check_name("tag", "gpu-1.a_b").is_ok());
        assert!(check_name("tag", "").is_err());
        assert!(check_name("tag", "-rf").is_err());
        assert!(check_name("tag", "a b").is_err());
        assert!(check_name("tag", "a;b").is_err());
        assert!(check_name("tag", &"x".repeat(65)).is_err());
    }
}

/// Parses a duration as people write them: `90s`, `1m30s`, `500ms`, `2h`, `7d`, `1h 15m`
/// (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, Invalid> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let secs = t.parse().map_err(|_| Invalid::Duration(format!("duration {text:?} is too long")))?;
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(t).map_err(|e| {
        Invalid::Duration(format!("invalid duration {text:?}: {e}; write it as 90s, 1m30s, 500ms, 2h or 7d"))
    })
}

/// A duration given where whole seconds are kept (intervals, lifetimes): as
/// [`parse_duration`], refusing a fraction of a second.
pub fn parse_secs(text: &str) -> Result<u64, Invalid> {
    let d = parse_duration(text)?;
    if d.subsec_nanos() != 0 {
        return Err(Invalid::Duration(format!("{text:?}: this takes whole seconds, such as 1s or 2m")));
    }
    Ok(d.as_secs())
}

#[cfg(test)]
mod duration_tests {
    use std::time::Duration;

    #[test]
    fn durations_take_the_forms_people_write() {
        let d = |t: &str| super::parse_duration(t).unwrap();
        assert_eq!(d("90"), Duration::from_secs(90));
        assert_eq!(d("15m"), Duration::from_secs(900));
        assert_eq!(d("1m30s"), Duration::from_secs(90));
        assert_eq!(d("1h 15m"), Duration::from_secs(4500));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("2h"), Duration::from_secs(7200));
        assert_eq!(d("7d"), Duration::from_secs(7 * 86400));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        for bad in ["", "m", "5x", "-1s", "99999999999999999999999"] {
            let err = super::parse_duration(bad).expect_err(bad).to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        }
    }

    #[test]
    fn whole_seconds_refuse_a_fraction() {
        assert_eq!(super::parse_secs("1m30s").unwrap(), 90);
        assert!(super::parse_secs("1500ms").unwrap_err().to_string().contains("whole seconds"));
    }
}
