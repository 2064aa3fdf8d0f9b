//! What `--json` prints for the CLI's account and fleet commands, so scripts can rely on
//! the shape. Listings print the API's own types (`Node`, `UserInfo`, `SessionInfo`), and
//! `login` / `whoami` print [`crate::rpc::Whoami`], `daemon stop` [`crate::rpc::Stopping`].
//! `context` prints its own, below, and reads [`LoginWho`] from each context's login.

use serde::{Deserialize, Serialize};

/// `text` as a terminal may safely show it: line breaks and tabs stay, every other
/// control character (an escape sequence a node put in its platform name, say) is written
/// out as `\x1b`, so it is seen, never obeyed.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let shown = |c: char| !c.is_control() || c == '\n' || c == '\t';
    if text.chars().all(shown) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if shown(c) {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{:x}", u32::from(c)));
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `openbox logout --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoggedOut {
    /// False when there was no login to forget.
    pub logged_out: bool,
    /// Whether the control plane revoked the token (absent when there was no login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_revoked: Option<bool>,
}

/// `openbox user add --json` and `openbox user token --json`: a login token, shown once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginIssued {
    pub name: String,
    pub token: String,
    /// The `openbox login …` command that takes it (without it: from `OPENBOX_LOGIN_TOKEN`,
    /// or asked for on a terminal).
    pub command: String,
}

/// `openbox node token --json`: a single-use enrollment token, shown once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollIssued {
    pub token: String,
    pub tags: Vec<String>,
    pub expires_at: u64,
    /// The exact `openbox agent …` command that uses it.
    pub command: String,
}

/// `openbox user rm`, `node rm` and `session rm` with `--json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Removed {
    pub removed: String,
    /// For a session: the node its shell was on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `openbox node add --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeAdded {
    pub node_id: String,
    pub name: String,
    /// The machine, `USER@HOST:PORT`.
    pub host: String,
    /// How the agent runs there: `systemd`, `systemd-user`, `launchd` or `nohup`; none
    /// when nothing was installed.
    pub service: Option<String>,
    /// It was a node already, and nothing changed.
    pub already: bool,
}

/// `openbox up --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Up {
    pub server: String,
    pub user: String,
    /// False when it was already running.
    pub control_started: bool,
    pub agent_started: bool,
    /// The tag this machine carries as a node.
    pub tag: String,
    /// The web dashboard's address (`openbox dashboard` opens it logged in).
    pub dashboard: String,
    /// Where the logs of the processes it started are.
    pub logs: String,
}

/// `openbox down --json`: the roles that were stopped (none when nothing ran).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Down {
    pub stopped: Vec<String>,
}

/// The part of a context's `login.json` (openboxd writes the whole) that the CLI reads to
/// list contexts without starting their daemons.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginWho {
    /// The control plane's URL.
    pub server: String,
    pub user: String,
}

/// `openbox context ls --json`: one per context, the default first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContextInfo {
    pub name: String,
    /// The one commands use now: `--context`, else `OPENBOX_CONTEXT`, else the one chosen
    /// with `openbox context use`, else `default`.
    pub current: bool,
    /// Its control plane and user; absent while it is not logged in.
    pub server: Option<String>,
    pub user: Option<String>,
    /// Its openboxd's socket (see docs/rpc.md).
    pub socket: String,
}

/// `openbox context use --json` and `context show --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContextCurrent {
    pub current: String,
}

/// `openbox context rm --json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContextRemoved {
    pub removed: String,
    /// Whether its openboxd was running (it was stopped).
    pub daemon_stopped: bool,
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(printable("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(printable("a\u{1b}[2Jb\r\u{7}"), "a\\x1b[2Jb\\xd\\x7");
        assert_eq!(printable("\u{9b}31m"), "\\x9b31m");
    }
}
