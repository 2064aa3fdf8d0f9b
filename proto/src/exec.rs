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

/// What a channel asks of a session's job (a command the node runs in the session's
/// shell, whether or not anyone is connected, its output kept on the node until it is
/// read). Each names the job by the id its starter gave it: an operation meant for an
/// earlier job of the same session never reaches a later one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobOp {
    pub id: String,
    pub act: JobAct,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobAct {
    /// The `exec` command starts as the session's job; the channel is answered at once.
    /// Its stdin stays open for [`JobAct::Input`] when `stdin`, else it is empty.
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
    /// A job with a terminal: its screen as it is now, a [`crate::jobs::Screen`] as JSON on
    /// stdout.
    Screen,
}

/// What a job's refusal to be read says when the node no longer has the job.
pub const JOB_LOST: &str = "the job was lost: ";

impl JobOp {
    pub fn new(id: &str, act: JobAct) -> JobOp {
        JobOp { id: id.to_owned(), act }
    }

    /// The value of [`JOB_ENV`] that says this: `ACT:ID[:…]`.
    pub fn value(&self) -> String {
        let id = &self.id;
        match &self.act {
            JobAct::Start { stdin: true } => format!("start:{id}:stdin"),
            JobAct::Start { stdin: false } => format!("start:{id}"),
            JobAct::Read { stdout, stderr } => format!("read:{id}:{stdout}:{stderr}"),
            JobAct::Input { close: false } => format!("input:{id}"),
            JobAct::Input { close: true } => format!("input:{id}:close"),
            JobAct::Signal(name) => format!("signal:{id}:{name}"),
            JobAct::Stop => format!("stop:{id}"),
            JobAct::Forget => format!("forget:{id}"),
            JobAct::Screen => format!("screen:{id}"),
        }
    }

    pub fn parse(value: &str) -> Option<JobOp> {
        let parts: Vec<&str> = value.split(':').collect();
        let (&act, &id) = (parts.first()?, parts.get(1)?);
        // A job id is a name: letters, digits and dashes (it names a directory on the node).
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return None;
        }
        let act = match (act, &parts[2..]) {
            ("start", []) => JobAct::Start { stdin: false },
            ("start", ["stdin"]) => JobAct::Start { stdin: true },
            ("read", [out, err]) => JobAct::Read { stdout: out.parse().ok()?, stderr: err.parse().ok()? },
            ("input", []) => JobAct::Input { close: false },
            ("input", ["close"]) => JobAct::Input { close: true },
            ("signal", [name]) if signal_number(name).is_some() => JobAct::Signal((*name).to_owned()),
            ("stop", []) => JobAct::Stop,
            ("forget", []) => JobAct::Forget,
            ("screen", []) => JobAct::Screen,
            _ => return None,
        };
        Some(JobOp::new(id, act))
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
        let acts = [
            JobAct::Start { stdin: false },
            JobAct::Start { stdin: true },
            JobAct::Read { stdout: 12, stderr: 0 },
            JobAct::Input { close: false },
            JobAct::Input { close: true },
            JobAct::Signal("TERM".into()),
            JobAct::Stop,
            JobAct::Forget,
        ];
        for act in acts {
            let op = JobOp::new("3f9c2a71be", act);
            assert_eq!(JobOp::parse(&op.value()), Some(op.clone()), "{op:?}");
        }
        for bad in [
            "",
            "read:j1:1",
            "read:j1:x:2",
            "signal:j1:NOPE",
            "start:j1:x",
            "forget:j1:1",
            "input:j1:",
            "stop",
            "stop::",
            "stop:../x",
            "stop:a/b",
        ] {
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
