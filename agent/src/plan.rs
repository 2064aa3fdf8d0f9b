//! What a channel asked for, and what the agent will do about it. Every decision about one
//! request — the certificate still good, the runtime there, whose account runs it, what
//! nspawn and Docker may do, what a subsystem is — is made here by [`plan`], before
//! anything starts; [`crate::launch`] then carries the plan out. `plan` does no I/O of its
//! own: what it needs to know about the node comes through [`Node`], so it is tested
//! without a socket.

use std::time::Duration;

use proto::Isolation;
use trust::UserGrant;

use crate::access::Lapsed;
use crate::pty::PtyRequest;
use crate::run_as::{Login, NotMapped};
use crate::runtimes::{RuntimeError, Sandbox};

/// What a session channel asked for, as its requests said it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    /// The terminal asked for before it, if one was.
    pub pty: Option<PtyRequest>,
    /// What is left of the caller's deadline (`OPENBOX_TIMEOUT`).
    pub timeout: Option<Duration>,
    /// What it asks of the session's job (`OPENBOX_JOB`), as sent.
    pub job: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `exec`: a command.
    Command(String),
    /// `shell`: the account's login shell.
    Shell,
    /// `subsystem`: SFTP, ending the certificate's session, or one not offered.
    Subsystem(String),
}

impl Request {
    /// How the audit journal names what was asked, for what is recorded from the start:
    /// commands, shells and file transfers (refusals of those too).
    pub fn journal_kind(&self) -> Option<&'static str> {
        match &self.kind {
            Kind::Command(_) => Some("command"),
            Kind::Shell if self.pty.is_some() => Some("shell"),
            Kind::Subsystem(name) if name == "sftp" => Some("sftp"),
            _ => None,
        }
    }
}

/// What the agent will do for one channel.
#[derive(Debug)]
pub enum Plan {
    /// End the certificate's session (`openbox session rm`).
    EndSession { session: String },
    /// Serve SFTP, as `login` (none: the agent's own user), over the node's files or —
    /// with `into` — over a session's.
    Sftp { login: Option<Login>, into: Option<(String, Sandbox)>, timeout: Option<Duration> },
    /// Run a command, or a login shell.
    Run(Run),
    /// Read, feed, signal or forget the certificate's session's job.
    Job { session: String, op: proto::exec::JobOp },
}

/// A command (or login shell) to run, and everything it runs with.
#[derive(Debug)]
pub struct Run {
    /// None: the account's login shell (only in a terminal).
    pub command: Option<String>,
    pub terminal: Option<PtyRequest>,
    /// The certificate's session, when it names one.
    pub session: Option<String>,
    pub sandbox: Sandbox,
    /// The account it runs as (none: the agent's own user).
    pub login: Option<Login>,
    pub timeout: Option<Duration>,
    /// Run it as the session's job, detached from the channel: the job's id, and whether
    /// its input stays open for later.
    pub detach: Option<(String, bool)>,
}

/// Why a request is refused, in the words the caller is told.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}; nothing was run")]
    Lapsed(Lapsed),
    /// For a file transfer or a port forward (said without the "nothing was run").
    #[error("{0}")]
    LapsedForTransfer(Lapsed),
    #[error(transparent)]
    NotForwarding(#[from] crate::forward::NotForwarding),
    #[error("this certificate names no session to end")]
    NoSessionToEnd,
    #[error("a job runs in a session: this certificate names none")]
    JobWithoutSession,
    #[error("{0:?} is not a job operation (start, read:OUT:ERR, input, signal:NAME, forget)")]
    BadJobOp(String),
    #[error("a shell needs a terminal: ask for one first (`openbox -n NODE -i`, `ssh -t`)")]
    ShellWithoutTerminal,
    #[error("subsystem {0:?} is not offered")]
    NotOffered(String),
    #[error("a one-shot container keeps no files to transfer: copy into a session's container (-s SID) or the node")]
    OneShotFiles,
    #[error("cannot run {kind} isolation here: {why}; nothing was run")]
    Runtime { kind: &'static str, why: RuntimeError },
    #[error("{0}; nothing was transferred")]
    RuntimeTransfer(RuntimeError),
    #[error(transparent)]
    NotMapped(#[from] NotMapped),
    #[error(
        "this node runs {user}'s commands as {login}, and an nspawn container would run them as root; use native or docker isolation"
    )]
    NspawnAsAccount { user: String, login: String },
}

/// What [`plan`] needs to know about this node.
pub trait Node {
    /// Why `grant` no longer holds here, if it does not.
    fn lapsed(&self, grant: &UserGrant) -> Option<Lapsed>;
    /// What `isolation` runs under here for a user (an admin or not), or why it cannot.
    fn sandbox(&self, isolation: &Isolation, admin: bool) -> Result<Sandbox, RuntimeError>;
    /// The account `user`'s commands run as (none: the agent's own user).
    fn login(&self, user: &str) -> Result<Option<Login>, NotMapped>;
}

/// Decides what to do for `request` on a channel of a connection authenticated as
/// `grant`: exactly what the certificate names, or nothing.
pub fn plan(grant: &UserGrant, request: Request, node: &impl Node) -> Result<Plan, Refusal> {
    let Request { kind, pty, timeout, job } = request;
    let job = match job {
        Some(value) => Some(proto::exec::JobOp::parse(&value).ok_or(Refusal::BadJobOp(value))?),
        None => None,
    };
    if job.is_some() && grant.session.is_none() {
        return Err(Refusal::JobWithoutSession);
    }
    let detach = match (&kind, job) {
        (Kind::Command(_), Some(proto::exec::JobOp { id, act: proto::exec::JobAct::Start { stdin } })) => {
            Some((id, stdin))
        }
        (Kind::Subsystem(name), Some(op))
            if name == proto::exec::JOB_SUBSYSTEM && !matches!(op.act, proto::exec::JobAct::Start { .. }) =>
        {
            if let Some(lapsed) = node.lapsed(grant) {
                return Err(Refusal::Lapsed(lapsed));
            }
            return Ok(Plan::Job { session: grant.session.clone().expect("checked above"), op });
        }
        (_, Some(op)) => return Err(Refusal::BadJobOp(op.value())),
        (_, None) => None,
    };
    let command = match kind {
        Kind::Subsystem(name) if name == proto::exec::END_SESSION_SUBSYSTEM => {
            let session = grant.session.clone().ok_or(Refusal::NoSessionToEnd)?;
            return Ok(Plan::EndSession { session });
        }
        Kind::Subsystem(name) if name == "sftp" => return plan_sftp(grant, timeout, node),
        Kind::Subsystem(name) => return Err(Refusal::NotOffered(name)),
        Kind::Shell if pty.is_none() => return Err(Refusal::ShellWithoutTerminal),
        Kind::Shell if detach.is_some() => return Err(Refusal::BadJobOp("start".into())),
        Kind::Shell => None,
        Kind::Command(command) => Some(command),
    };
    if let Some(lapsed) = node.lapsed(grant) {
        return Err(Refusal::Lapsed(lapsed));
    }
    // The isolation comes from the signed certificate, already parsed strictly; it runs
    // exactly as issued or not at all, with its host paths judged by what they are here.
    let isolation = &grant.isolation;
    let sandbox =
        node.sandbox(isolation, grant.admin).map_err(|why| Refusal::Runtime { kind: isolation.kind(), why })?;
    // Whose account it runs as: the mapping's, from the verified principal, or none at all.
    let login = node.login(&grant.user)?;
    if let (Some(login), Isolation::Nspawn { .. }) = (&login, isolation)
        && login.uid != 0
    {
        return Err(Refusal::NspawnAsAccount { user: grant.user.clone(), login: login.name.clone() });
    }
    Ok(Plan::Run(Run { command, terminal: pty, session: grant.session.clone(), sandbox, login, timeout, detach }))
}

/// Whether `grant`'s connection may forward ports (`-L`, `-R`) now: asked on every
/// request, as a pooled connection may outlive its certificate, and its user.
pub fn forwarding(grant: &UserGrant, node: &impl Node) -> Result<(), Refusal> {
    if let Some(lapsed) = node.lapsed(grant) {
        return Err(Refusal::LapsedForTransfer(lapsed));
    }
    match crate::forward::refusal(grant) {
        Some(why) => Err(why.into()),
        None => Ok(()),
    }
}

/// SFTP: as the account the user's commands run as, over the node's files, or over a
/// session's (its container's, when it has one). A one-shot container keeps no files.
fn plan_sftp(grant: &UserGrant, timeout: Option<Duration>, node: &impl Node) -> Result<Plan, Refusal> {
    if let Some(lapsed) = node.lapsed(grant) {
        return Err(Refusal::LapsedForTransfer(lapsed));
    }
    if grant.isolation != Isolation::Native && grant.session.is_none() {
        return Err(Refusal::OneShotFiles);
    }
    let login = node.login(&grant.user)?;
    let into = match &grant.session {
        Some(session) => {
            let sandbox = node.sandbox(&grant.isolation, grant.admin).map_err(Refusal::RuntimeTransfer)?;
            Some((session.clone(), sandbox))
        }
        None => None,
    };
    Ok(Plan::Sftp { login, into, timeout })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confine::Confinement;
    use crate::runtimes::Runtime;

    /// A node as `plan` sees it, set up by each test.
    #[derive(Default)]
    struct FakeNode {
        lapsed: Option<Lapsed>,
        /// The isolation kinds it cannot serve, and why.
        unavailable: Vec<(&'static str, &'static str)>,
        /// `--run-as`: the account for everyone (none: no mapping).
        login: Option<Login>,
        /// A mapping that names nobody.
        maps_nobody: bool,
    }

    impl Node for FakeNode {
        fn lapsed(&self, _grant: &UserGrant) -> Option<Lapsed> {
            self.lapsed.clone()
        }

        fn sandbox(&self, isolation: &Isolation, admin: bool) -> Result<Sandbox, RuntimeError> {
            if let Some((_, why)) = self.unavailable.iter().find(|(kind, _)| *kind == isolation.kind()) {
                return Err(RuntimeError::Spawn(std::io::Error::other(*why)));
            }
            let runtime = match isolation {
                Isolation::Native => Runtime::Native,
                Isolation::Nspawn { dir, limits } => Runtime::Nspawn { dir: dir.clone(), limits: limits.clone() },
                Isolation::Docker { .. } => return Err(RuntimeError::Spawn(std::io::Error::other("no engine here"))),
            };
            Ok(Sandbox { runtime, hold: Confinement { confined: !admin, max_processes: 100 } })
        }

        fn login(&self, user: &str) -> Result<Option<Login>, NotMapped> {
            if self.maps_nobody {
                return Err(NotMapped { user: user.into() });
            }
            Ok(self.login.clone())
        }
    }

    fn grant(isolation: &str, session: Option<&str>) -> UserGrant {
        UserGrant {
            user: "bob".into(),
            incarnation: Some("bob-1".into()),
            key_id: "k".into(),
            isolation: isolation.parse().unwrap(),
            session: session.map(str::to_owned),
            valid_before: u64::MAX,
            issued_at: 1,
            admin: false,
            port_forwarding: false,
        }
    }

    fn command(text: &str) -> Request {
        Request { kind: Kind::Command(text.into()), pty: None, timeout: None, job: None }
    }

    fn pty() -> Option<PtyRequest> {
        Some(PtyRequest { term: "xterm".into(), cols: 80, rows: 24 })
    }

    fn account(name: &str, uid: u32) -> Login {
        Login { name: name.into(), uid, gid: uid, home: "/".into(), shell: "/bin/sh".into() }
    }

    #[test]
    fn a_command_runs_as_its_certificate_says_in_its_session_and_held_as_its_user_is() {
        let node = FakeNode::default();
        let Ok(Plan::Run(run)) = plan(&grant("native", Some("build")), command("make"), &node) else { panic!() };
        assert_eq!((run.command.as_deref(), run.session.as_deref()), (Some("make"), Some("build")));
        assert!(matches!(run.sandbox.runtime, Runtime::Native));
        assert!(run.sandbox.hold.confined, "bob is not an admin");
        assert!(run.login.is_none(), "no mapping: the agent's own user");
    }

    #[test]
    fn a_lapsed_certificate_runs_nothing_and_says_why() {
        let node = FakeNode { lapsed: Some(Lapsed::Removed { user: "bob".into() }), ..FakeNode::default() };
        let refused = plan(&grant("native", None), command("true"), &node).unwrap_err();
        assert_eq!(refused.to_string(), "user bob was removed from this fleet; nothing was run");
        let refused =
            plan(&grant("native", None), Request { kind: Kind::Subsystem("sftp".into()), ..command("") }, &node)
                .unwrap_err();
        assert_eq!(refused.to_string(), "user bob was removed from this fleet");
    }

    #[test]
    fn an_isolation_the_node_cannot_serve_is_refused_never_run_elsewhere() {
        let node = FakeNode { unavailable: vec![("nspawn", "systemd-nspawn is missing")], ..FakeNode::default() };
        let refused = plan(&grant("nspawn:/srv/tree", None), command("true"), &node).unwrap_err();
        assert!(matches!(refused, Refusal::Runtime { kind: "nspawn", .. }), "{refused}");
        assert!(refused.to_string().starts_with("cannot run nspawn isolation here: systemd-nspawn is missing"));
    }

    #[test]
    fn an_account_mapping_that_names_nobody_or_a_non_root_account_for_nspawn_refuses() {
        let nobody = FakeNode { maps_nobody: true, ..FakeNode::default() };
        let refused = plan(&grant("native", None), command("true"), &nobody).unwrap_err();
        assert!(matches!(refused, Refusal::NotMapped(_)), "{refused}");

        let mapped = FakeNode { login: Some(account("builder", 1000)), ..FakeNode::default() };
        let refused = plan(&grant("nspawn:/srv/tree", None), command("true"), &mapped).unwrap_err();
        assert!(matches!(refused, Refusal::NspawnAsAccount { .. }), "{refused}");
        let Ok(Plan::Run(run)) = plan(&grant("native", None), command("id"), &mapped) else { panic!() };
        assert_eq!(run.login.unwrap().name, "builder");

        let as_root = FakeNode { login: Some(account("root", 0)), ..FakeNode::default() };
        assert!(plan(&grant("nspawn:/srv/tree", None), command("true"), &as_root).is_ok());
    }

    #[test]
    fn shells_need_a_terminal_and_subsystems_are_sftp_or_ending_the_session() {
        let node = FakeNode::default();
        let shell = Request { kind: Kind::Shell, pty: None, timeout: None, job: None };
        assert!(matches!(plan(&grant("native", None), shell.clone(), &node), Err(Refusal::ShellWithoutTerminal)));
        let Ok(Plan::Run(run)) = plan(&grant("native", None), Request { pty: pty(), ..shell }, &node) else { panic!() };
        assert!(run.command.is_none() && run.terminal.is_some(), "a login shell in a terminal");

        let subsystem =
            |name: &str| Request { kind: Kind::Subsystem(name.into()), pty: None, timeout: None, job: None };
        assert!(
            matches!(plan(&grant("native", None), subsystem("x11"), &node), Err(Refusal::NotOffered(n)) if n == "x11")
        );
        let end = subsystem(proto::exec::END_SESSION_SUBSYSTEM);
        assert!(matches!(plan(&grant("native", None), end.clone(), &node), Err(Refusal::NoSessionToEnd)));
        assert!(
            matches!(plan(&grant("native", Some("s")), end, &node), Ok(Plan::EndSession { session }) if session == "s")
        );
    }

    #[test]
    fn files_are_transferred_on_the_node_or_in_a_session_never_in_a_one_shot_container() {
        let node = FakeNode::default();
        let sftp = Request { kind: Kind::Subsystem("sftp".into()), pty: None, timeout: None, job: None };
        assert!(matches!(plan(&grant("native", None), sftp.clone(), &node), Ok(Plan::Sftp { into: None, .. })));
        let refused = plan(&grant("nspawn:/srv/tree", None), sftp.clone(), &node).unwrap_err();
        assert!(matches!(refused, Refusal::OneShotFiles));
        let Ok(Plan::Sftp { into: Some((session, sandbox)), .. }) =
            plan(&grant("nspawn:/srv/tree", Some("s")), sftp, &node)
        else {
            panic!()
        };
        assert_eq!(session, "s");
        assert!(matches!(sandbox.runtime, Runtime::Nspawn { .. }));
    }

    #[test]
    fn the_journal_records_commands_shells_and_transfers() {
        let journal =
            |kind: Kind, pty: Option<PtyRequest>| Request { kind, pty, timeout: None, job: None }.journal_kind();
        assert_eq!(journal(Kind::Command("x".into()), None), Some("command"));
        assert_eq!(journal(Kind::Shell, pty()), Some("shell"));
        assert_eq!(journal(Kind::Shell, None), None);
        assert_eq!(journal(Kind::Subsystem("sftp".into()), None), Some("sftp"));
        assert_eq!(journal(Kind::Subsystem(proto::exec::END_SESSION_SUBSYSTEM.into()), None), None);
    }
}
