//! What travels on an SSH channel besides the bytes: the environment variables and
//! subsystem names openbox uses, and the signal names both ends agree on.

/// Set by the client on a channel: stop the command after this many seconds (exit 124);
/// a decimal fraction is allowed (`2.5`).
pub const TIMEOUT_ENV: &str = "OPENBOX_TIMEOUT";

/// [`TIMEOUT_ENV`]'s value as a duration, when it is a positive number of seconds.
pub fn parse_timeout(value: &str) -> Option<std::time::Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs > 0.0 && secs < 1e9).then(|| std::time::Duration::from_secs_f64(secs))
}

/// [`TIMEOUT_ENV`]'s value for a duration: seconds, to the millisecond.
pub fn timeout_value(left: std::time::Duration) -> String {
    format!("{:.3}", left.as_secs_f64().max(0.001))
}
/// Set by the agent for every command: the openbox user it runs for.
pub const USER_ENV: &str = "OPENBOX_USER";
/// Set by the agent for every command: the id of the node it runs on.
pub const NODE_ENV: &str = "OPENBOX_NODE";

/// The SSH subsystem that ends the session named by the caller's certificate.
pub const END_SESSION_SUBSYSTEM: &str = "openbox-end-session";

/// Set by the client on a channel: the command (an `exec`) or the request (the
/// [`JOB_SUBSYSTEM`]) is about the job of the certificate's session — see [`JobOp`].
pub const JOB_ENV: &str = "OPENBOX_JOB";

/// The SSH subsystem for a session's job: what it does is said in [`JOB_ENV`].
pub const JOB_SUBSYSTEM: &str = "openbox-job";

/// What a channel asks of a session's job (a command the node runs on in the session's
/// shell, whoever is connected, its output kept on the node until it is read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOp {
    /// The `exec` command starts as the session's job; the channel is answered at once.
    /// Its stdin stays open for [`JobOp::Input`] when `stdin`, else it is empty.
    Start { stdin: bool },
    /// Sends its output from these offsets in stdout and stderr, following it until it
    /// ends; the channel's exit status is then the job's.
    Read { stdout: u64, stderr: u64 },
    /// The channel's data goes to its stdin; with `close`, the channel's EOF closes it.
    Input { close: bool },
    /// Sends it this signal (`TERM`, `KILL`, …).
    Signal(String),
    /// Stops it as a call given up on is stopped: interrupted, then its shell ended if it
    /// does not end within a moment.
    Stop,
    /// Its output is no longer wanted: the node deletes it (once it ended).
    Forget,
}

impl JobOp {
    /// The value of [`JOB_ENV`] that says this.
    pub fn value(&self) -> String {
        match self {
            JobOp::Start { stdin: true } => "start:stdin".into(),
            JobOp::Start { stdin: false } => "start".into(),
            JobOp::Read { stdout, stderr } => format!("read:{stdout}:{stderr}"),
            JobOp::Input { close: false } => "input".into(),
            JobOp::Input { close: true } => "input:close".into(),
            JobOp::Signal(name) => format!("signal:{name}"),
            JobOp::Stop => "stop".into(),
            JobOp::Forget => "forget".into(),
        }
    }

    pub fn parse(value: &str) -> Option<JobOp> {
        let mut parts = value.split(':');
        let op = match (parts.next()?, parts.next(), parts.next()) {
            ("start", None, None) => JobOp::Start { stdin: false },
            ("start", Some("stdin"), None) => JobOp::Start { stdin: true },
            ("read", Some(out), Some(err)) => JobOp::Read { stdout: out.parse().ok()?, stderr: err.parse().ok()? },
            ("input", None, None) => JobOp::Input { close: false },
            ("input", Some("close"), None) => JobOp::Input { close: true },
            ("signal", Some(name), None) if signal_number(name).is_some() => JobOp::Signal(name.to_owned()),
            ("stop", None, None) => JobOp::Stop,
            ("forget", None, None) => JobOp::Forget,
            _ => return None,
        };
        parts.next().is_none().then_some(op)
    }
}

/// Signals by the names SSH uses (RFC 4254 §6.10: without "SIG") and the numbers Linux
/// gives them; the one table every crate reads.
pub const SIGNALS: &[(&str, u8)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("WINCH", 28),
];

/// The number of the signal SSH calls `name` (with or without a "SIG" prefix).
pub fn signal_number(name: &str) -> Option<u8> {
    let name = name.strip_prefix("SIG").unwrap_or(name);
    SIGNALS.iter().find(|(n, _)| *n == name).map(|(_, num)| *num)
}

/// The SSH name of signal number `num`.
pub fn signal_name(num: i32) -> Option<&'static str> {
    SIGNALS.iter().find(|(_, n)| i32::from(*n) == num).map(|(name, _)| *name)
}

/// The code a command killed by signal `name` exits with, as a shell reports it: 128+N
/// (255 for a signal this table does not know).
pub fn signal_exit_code(name: &str) -> u8 {
    signal_number(name).map_or(crate::EXIT_OPENBOX_FAILURE, |n| 128 + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_travels_to_the_millisecond() {
        use std::time::Duration;
        assert_eq!(timeout_value(Duration::from_millis(2500)), "2.500");
        assert_eq!(parse_timeout("2.500"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_timeout("3"), Some(Duration::from_secs(3)));
        assert_eq!(timeout_value(Duration::ZERO), "0.001", "never none at all");
        for bad in ["0", "-1", "nan", "inf", "", "1e12", "soon"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_and_numbers_map_both_ways() {
        for (name, num) in SIGNALS {
            assert_eq!(signal_number(name), Some(*num));
            assert_eq!(signal_name(i32::from(*num)), Some(*name));
        }
        assert_eq!(signal_number("SIGTERM"), Some(15));
        assert_eq!(signal_number("NOPE"), None);
        assert_eq!(signal_name(64), None);
    }

    #[test]
    fn a_job_operation_travels_as_one_value() {
        let ops = [
            JobOp::Start { stdin: false },
            JobOp::Start { stdin: true },
            JobOp::Read { stdout: 12, stderr: 0 },
            JobOp::Input { close: false },
            JobOp::Input { close: true },
            JobOp::Signal("TERM".into()),
            JobOp::Stop,
            JobOp::Forget,
        ];
        for op in ops {
            assert_eq!(JobOp::parse(&op.value()), Some(op.clone()), "{op:?}");
        }
        for bad in ["", "read:1", "read:x:2", "signal:NOPE", "start:x", "forget:1", "input:"] {
            assert_eq!(JobOp::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_signal_exit_code_is_128_plus_its_number() {
        assert_eq!(signal_exit_code("TERM"), 143);
        assert_eq!(signal_exit_code("KILL"), 137);
        assert_eq!(signal_exit_code("PIPE"), 141);
        assert_eq!(signal_exit_code("WHAT"), 255);
    }
}
