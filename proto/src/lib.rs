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

/// Parses a duration such as `90s`, `15m`, `2h`, `7d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<u64, Invalid> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = |why: String| Invalid::Duration(why);
    let n: u64 = num
        .parse()
        .map_err(|_| bad(format!("invalid duration {text:?}: expected a number with s, m, h or d, as in 15m")))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad(format!("invalid duration {text:?}: the unit must be s, m, h or d"))),
    };
    n.checked_mul(mult).ok_or_else(|| bad(format!("duration {text:?} is too long")))
}

#[cfg(test)]
mod duration_tests {
    #[test]
    fn durations_take_the_four_units_and_refuse_others() {
        assert_eq!(super::parse_duration("90").unwrap(), 90);
        assert_eq!(super::parse_duration("15m").unwrap(), 900);
        assert_eq!(super::parse_duration("2h").unwrap(), 7200);
        assert_eq!(super::parse_duration("1d").unwrap(), 86400);
        for bad in ["", "m", "5w", "-1s", "1.5h"] {
            assert!(super::parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
