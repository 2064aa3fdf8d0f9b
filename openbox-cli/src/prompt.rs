//! What `openbox node add` asks of the person at the terminal (a password, without echo)
//! and of this process's environment (the SSH agent, `~/.ssh/known_hosts`).

use std::io::{BufRead as _, Write as _};

/// `[USER@]HOST[:PORT]` (an IPv6 address in brackets) → user, host, port; the user is
/// this account's name when not given.
pub fn ssh_target(target: &str) -> Result<(String, String, u16), String> {
    let bad = || format!("{target:?}: expected [USER@]HOST[:PORT]");
    let (user, rest) = match target.rsplit_once('@') {
        Some((u, r)) if !u.is_empty() => (u.to_owned(), r),
        Some(_) => return Err(bad()),
        None => (std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).map_err(|_| bad())?, target),
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?,
        None => 22,
    };
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(bad());
    }
    Ok((user, host.to_owned(), port))
}

/// A password typed at the terminal, not echoed.
pub fn password(prompt: &str) -> Result<String, String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| "--password needs a terminal to ask on; use --password-stdin".to_owned())?;
    let before = tcgetattr(&tty).map_err(|e| format!("the terminal: {e}"))?;
    let mut quiet = before.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&tty, OptionalActions::Flush, &quiet).map_err(|e| format!("the terminal: {e}"))?;
    let mut out = &tty;
    let _ = write!(out, "{prompt}");
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    let _ = tcsetattr(&tty, OptionalActions::Flush, &before);
    let _ = writeln!(out);
    read.map_err(|e| format!("reading the password: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// The first line of stdin (`--password-stdin`).
pub fn stdin_line() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("reading the password from stdin: {e}"))?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        return Err("--password-stdin: stdin held no password".into());
    }
    Ok(line)
}

/// The SSH agent's socket, when no key or password was given.
pub fn agent_socket() -> Result<String, String> {
    std::env::var("SSH_AUTH_SOCK")
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| "no way to log in: give --key FILE, --password, or run an SSH agent (SSH_AUTH_SOCK)".to_owned())
}

/// `~/.ssh/known_hosts`.
pub fn default_known_hosts() -> Result<String, String> {
    let home = std::env::var("HOME").map_err(|_| "HOME is not set: give --known-hosts FILE".to_owned())?;
    Ok(format!("{home}/.ssh/known_hosts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_reads_as_ssh_reads_it() {
        assert_eq!(ssh_target("bob@10.0.0.2").unwrap(), ("bob".into(), "10.0.0.2".into(), 22));
        assert_eq!(ssh_target("bob@host:2222").unwrap(), ("bob".into(), "host".into(), 2222));
        assert_eq!(ssh_target("bob@[fd00::2]:2222").unwrap(), ("bob".into(), "fd00::2".into(), 2222));
        assert_eq!(ssh_target("a@b@host").unwrap().0, "a@b");
        for bad in ["bob@", "@host", "bob@host:0", "bob@host:x", "bob@[fd00::2", "bob@ho st"] {
            assert!(ssh_target(bad).is_err(), "{bad}");
        }
    }
}
