//! SSH to a machine that is not an openbox node (yet) — to bootstrap one. Its host key is
//! checked as OpenSSH checks it (`known_hosts`, hashed entries too), or against a pinned
//! fingerprint; an unknown host is taken only when the caller says so, a changed key never.
//! The login is a password, a key file, or a key held by the user's SSH agent.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use trust::known_hosts::{self, HostKeyStatus};
use trust::{PrivateKey, PublicKey, Secret};

use crate::ssh::{ExitStatus, Input, Started, Writers};

/// How to log in.
pub enum Login {
    Password(Secret),
    Key(Arc<PrivateKey>),
    /// The keys an SSH agent holds, at this socket.
    Agent(PathBuf),
}

/// What decides whether the host's key is the right one.
#[derive(Clone, Debug, Default)]
pub struct HostKeyPolicy {
    /// The text of the user's `known_hosts`.
    pub known_hosts: String,
    /// Where it is, for messages.
    pub known_hosts_path: String,
    /// `SHA256:…`: the key the user expects.
    pub pin: Option<String>,
    /// Take a host that `known_hosts` does not know (the caller then records it).
    pub accept_new: bool,
}

/// Why the host's key was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trusted {
    /// `known_hosts` has it.
    Known,
    /// Not in `known_hosts`; the caller's pin, or `accept_new`, vouched for it: record it.
    New,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot reach {addr}: {why}")]
    Unreachable { addr: String, why: String },
    #[error(transparent)]
    HostKey(#[from] HostKeyRefusal),
    #[error("{user}@{host} refused {how}")]
    AuthFailed { user: String, host: String, how: String },
    #[error("the SSH connection to {host} failed: {why}")]
    Lost { host: String, why: String },
}

/// The host-key check, run during the handshake; its refusal is kept for the error.
struct HostKeyCheck {
    host: String,
    port: u16,
    policy: HostKeyPolicy,
    verdict: Arc<Mutex<Option<Verdict>>>,
}

/// The host key taken and why, or the refusal.
type Verdict = Result<(Trusted, PublicKey), HostKeyRefusal>;

/// Why a machine's host key was not taken, in OpenSSH's words where it has them.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyRefusal {
    #[error("it presented a host certificate; give it a plain host key")]
    Certificate,
    #[error("the host key of {name} is {presented}, not the {pin} you gave; refusing to connect")]
    NotThePin { name: String, presented: String, pin: String },
    #[error(
        "the host key of {name} is not known ({presented}). Check it on that machine (`ssh-keygen -lf \
         /etc/ssh/ssh_host_ed25519_key.pub`), then give --host-key-fingerprint {presented}, or --accept-new to \
         take it as it is"
    )]
    Unknown { name: String, presented: String },
    #[error(
        "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED for {name}! Someone could be eavesdropping on you right \
         now (a man-in-the-middle attack), or the host key has just been changed. It presents {presented}; \
         {file}:{line} records {recorded}. If the change is expected, remove that line (`ssh-keygen -R '{name}' -f '{file}'`) \
         and try again. Refusing to connect"
    )]
    Changed { name: String, presented: String, file: String, line: usize, recorded: String },
    #[error("the host key of {name} ({presented}) is marked @revoked in {file}:{line}; refusing to connect")]
    Revoked { name: String, presented: String, file: String, line: usize },
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let verdict = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => judge(&self.host, self.port, &self.policy, key),
            PublicKeyOrCertificate::Certificate(_) => Err(HostKeyRefusal::Certificate),
        };
        let ok = verdict.is_ok();
        *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) = Some(verdict);
        Ok(ok)
    }
}

/// Whether `key` may be taken for `host:port` under `policy`; the OpenSSH-style refusal
/// otherwise.
fn judge(host: &str, port: u16, policy: &HostKeyPolicy, key: &PublicKey) -> Verdict {
    let presented = known_hosts::fingerprint(key);
    let name = known_hosts::host_name(host, port);
    let file = policy.known_hosts_path.clone();
    if let Some(pin) = &policy.pin
        && *pin != presented
    {
        return Err(HostKeyRefusal::NotThePin { name, presented, pin: pin.clone() });
    }
    match known_hosts::status(&policy.known_hosts, host, port, key) {
        HostKeyStatus::Known => Ok((Trusted::Known, key.clone())),
        HostKeyStatus::Unknown if policy.pin.is_some() || policy.accept_new => Ok((Trusted::New, key.clone())),
        HostKeyStatus::Unknown => Err(HostKeyRefusal::Unknown { name, presented }),
        HostKeyStatus::Changed { line, recorded } => {
            Err(HostKeyRefusal::Changed { name, presented, file, line, recorded })
        }
        HostKeyStatus::Revoked { line } => Err(HostKeyRefusal::Revoked { name, presented, file, line }),
    }
}

/// An authenticated SSH connection to a machine.
pub struct Remote {
    handle: Handle<HostKeyCheck>,
    host: String,
    /// The key it presented, and why it was taken.
    pub host_key: PublicKey,
    pub trusted: Trusted,
}

/// What a command printed, and how it ended.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.status == ExitStatus::Code(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The last line of stderr (or stdout), for an error message.
    pub fn why(&self) -> String {
        let err = String::from_utf8_lossy(&self.stderr);
        let out = String::from_utf8_lossy(&self.stdout);
        let line = err.lines().chain(out.lines()).rfind(|l| !l.trim().is_empty()).unwrap_or("").trim();
        match (&self.status, line) {
            (ExitStatus::Code(c), "") => format!("exit {c}"),
            (ExitStatus::Code(c), l) => format!("{l} (exit {c})"),
            (ExitStatus::Signal { name, .. }, _) => format!("killed by signal {name}"),
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects to `user@host:port`, checks the host key under `policy`, and logs in.
pub async fn connect(
    host: &str,
    port: u16,
    user: &str,
    login: &Login,
    policy: &HostKeyPolicy,
) -> Result<Remote, RemoteError> {
    let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let unreachable = |why: String| RemoteError::Unreachable { addr: addr.clone(), why };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))?
        .map_err(|e| unreachable(e.to_string()))?;
    let verdict = Arc::new(Mutex::new(None));
    let check = HostKeyCheck { host: host.to_owned(), port, policy: policy.clone(), verdict: verdict.clone() };
    let config = Arc::new(client::Config { inactivity_timeout: None, ..Default::default() });
    let handshake = client::connect_stream(config, stream, check).await;
    let taken = verdict.lock().unwrap_or_else(|e| e.into_inner()).take();
    let (mut handle, (trusted, host_key)) = match (handshake, taken) {
        (_, Some(Err(why))) => return Err(why.into()),
        (Ok(handle), Some(Ok(taken))) => (handle, taken),
        (Ok(_), None) => return Err(unreachable("the SSH handshake ended without a host key".into())),
        (Err(e), _) => return Err(unreachable(format!("SSH handshake failed: {e}"))),
    };
    let lost = |e: &dyn std::fmt::Display| RemoteError::Lost { host: host.to_owned(), why: e.to_string() };
    let failed =
        |how: &str| RemoteError::AuthFailed { user: user.to_owned(), host: host.to_owned(), how: how.to_owned() };
    let ok = match login {
        Login::Password(pw) => handle.authenticate_password(user, pw.expose()).await.map_err(|e| lost(&e))?.success(),
        Login::Key(key) => {
            let hash = handle.best_supported_rsa_hash().await.map_err(|e| lost(&e))?.flatten();
            let key = PrivateKeyWithHashAlg::new(key.clone(), hash);
            handle.authenticate_publickey(user, key).await.map_err(|e| lost(&e))?.success()
        }
        Login::Agent(socket) => {
            let mut agent = AgentClient::connect_uds(socket).await.map_err(|e| {
                failed(&format!("no key: the SSH agent at {} cannot be reached ({e})", socket.display()))
            })?;
            let keys = agent.request_identities().await.map_err(|e| lost(&e))?;
            let hash = handle.best_supported_rsa_hash().await.map_err(|e| lost(&e))?.flatten();
            let mut ok = false;
            for id in keys {
                let AgentIdentity::PublicKey { key, .. } = id else { continue };
                if handle
                    .authenticate_publickey_with(user, key, hash, &mut agent)
                    .await
                    .map_err(|e| lost(&e))?
                    .success()
                {
                    ok = true;
                    break;
                }
            }
            ok
        }
    };
    if !ok {
        let how = match login {
            Login::Password(_) => "the password",
            Login::Key(_) => "the key",
            Login::Agent(_) => "every key the SSH agent holds",
        };
        return Err(failed(how));
    }
    Ok(Remote { handle, host: host.to_owned(), host_key, trusted })
}

impl Remote {
    /// Runs `command` (by the login shell) with `input` as its stdin; what it printed.
    pub async fn run(&self, command: &str, input: impl Input) -> Result<Ran, RemoteError> {
        let lost = |why: String| RemoteError::Lost { host: self.host.clone(), why };
        let channel = self.handle.channel_open_session().await.map_err(|e| lost(e.to_string()))?;
        channel.exec(true, command).await.map_err(|e| lost(e.to_string()))?;
        let mut out = Writers { stdout: Vec::new(), stderr: Vec::new() };
        let status = Started::new(channel, self.host.clone())
            .finish(input, &mut out, std::future::pending())
            .await
            .map_err(|e| lost(e.to_string()))?;
        Ok(Ran { status, stdout: out.stdout, stderr: out.stderr })
    }

    pub async fn close(self) {
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_key_is_taken_when_known_pinned_or_accepted_and_never_when_changed() {
        let (key, other) = (trust::generate_key().public_key().clone(), trust::generate_key().public_key().clone());
        let policy = |known: &str, pin: Option<&str>, accept_new: bool| HostKeyPolicy {
            known_hosts: known.to_owned(),
            known_hosts_path: "~/.ssh/known_hosts".into(),
            pin: pin.map(str::to_owned),
            accept_new,
        };
        let known = known_hosts::entry_line("h", 2222, &key);
        let fp = known_hosts::fingerprint(&key);
        let taken =
            |p: &HostKeyPolicy, k: &PublicKey| judge("h", 2222, p, k).map(|(t, _)| t).map_err(|e| e.to_string());
        assert_eq!(taken(&policy(&known, None, false), &key), Ok(Trusted::Known));
        assert_eq!(taken(&policy("", Some(&fp), false), &key), Ok(Trusted::New));
        assert_eq!(taken(&policy("", None, true), &key), Ok(Trusted::New));
        assert!(matches!(judge("h", 2222, &policy("", None, false), &key), Err(HostKeyRefusal::Unknown { .. })));
        let unknown = taken(&policy("", None, false), &key).unwrap_err();
        assert!(unknown.contains("not known") && unknown.contains(&fp), "{unknown}");
        let wrong_pin = taken(&policy("", Some(&known_hosts::fingerprint(&other)), true), &key).unwrap_err();
        assert!(wrong_pin.contains("not the"), "{wrong_pin}");
        for p in [policy(&known, None, true), policy(&known, Some(&known_hosts::fingerprint(&other)), true)] {
            let changed = taken(&p, &other).unwrap_err();
            assert!(changed.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"), "{changed}");
        }
        let changed = taken(&policy(&known, None, true), &other).unwrap_err();
        assert!(changed.contains("~/.ssh/known_hosts:1") && changed.contains(&fp), "{changed}");
    }
}
