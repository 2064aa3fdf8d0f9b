//! Running each person's commands as a local account (`--run-as USER=LOGIN`), as OpenSSH
//! does with a certificate's principal: the verified openbox user picks the account, and a
//! user the mapping does not name runs nothing. Without a mapping, commands run as the
//! agent's own user.

use std::collections::HashMap;
use std::path::PathBuf;

use uzers::os::unix::UserExt as _;

/// `PATH` for root's commands and for other accounts', as Debian's login sets them.
pub const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A local account commands run as: its user and primary group (supplementary groups are
/// not given), with its home as the working directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// Its login shell, for an interactive terminal (`openbox -i`).
    pub shell: PathBuf,
}

impl Login {
    /// Sets a command up to run as this account, in a fresh environment as sshd gives
    /// one ([`Login::environment`]): nothing of the agent's own (its variables may hold
    /// secrets of the account it runs as) reaches another account's commands.
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        // An account without a home (`nobody`) starts at the root.
        let dir = if self.home.is_dir() { self.home.as_path() } else { std::path::Path::new("/") };
        cmd.uid(self.uid).gid(self.gid).current_dir(dir);
        cmd.env_clear().envs(self.environment());
    }

    /// The environment a command of this account starts with: `PATH`, `HOME`, `USER`,
    /// `LOGNAME`, `SHELL`, and the agent's `LANG` when it has one. `TERM` is added for a
    /// terminal, and openbox's own variables by the caller.
    pub fn environment(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        let path = if self.uid == 0 { ROOT_PATH } else { USER_PATH };
        let mut env = vec![
            ("PATH", path.into()),
            ("HOME", self.home.clone().into_os_string()),
            ("USER", self.name.clone().into()),
            ("LOGNAME", self.name.clone().into()),
            ("SHELL", self.shell.clone().into_os_string()),
        ];
        if let Some(lang) = std::env::var_os("LANG") {
            env.push(("LANG", lang));
        }
        env
    }

    fn lookup(name: &str) -> anyhow::Result<Login> {
        let user = uzers::get_user_by_name(name)
            .ok_or_else(|| anyhow::anyhow!("--run-as: there is no local account named {name:?}"))?;
        Ok(Login {
            name: name.to_owned(),
            uid: user.uid(),
            gid: user.primary_group_id(),
            home: user.home_dir().into(),
            shell: user.shell().into(),
        })
    }
}

/// Which account each openbox user's commands run as.
#[derive(Clone, Debug, Default)]
pub struct RunAs {
    logins: HashMap<String, Login>,
    /// For users the mapping does not name (`*=LOGIN`).
    others: Option<Login>,
}

impl RunAs {
    /// Reads `USER=LOGIN` entries (`*=LOGIN` for everyone not named), looking each account
    /// up now: a mapping to an account that does not exist is refused at start.
    pub fn parse(entries: &[String]) -> anyhow::Result<RunAs> {
        let mut run_as = RunAs::default();
        if entries.is_empty() {
            return Ok(run_as);
        }
        if !rustix::process::geteuid().is_root() {
            anyhow::bail!("--run-as needs the agent to run as root: only root can start commands as another account");
        }
        for entry in entries {
            let Some((user, login)) = entry.split_once('=') else {
                anyhow::bail!("--run-as {entry:?}: write USER=LOGIN (an openbox user, or * for everyone else)");
            };
            if user != "*" {
                proto::check_name("user name", user).map_err(|e| anyhow::anyhow!("--run-as {entry:?}: {e}"))?;
            }
            let login = Login::lookup(login)?;
            let earlier = match user {
                "*" => run_as.others.replace(login),
                _ => run_as.logins.insert(user.to_owned(), login),
            };
            if earlier.is_some() {
                anyhow::bail!("--run-as names {user:?} twice");
            }
        }
        Ok(run_as)
    }

    /// Whether commands run as mapped accounts (else as the agent's own user).
    fn is_mapped(&self) -> bool {
        !self.logins.is_empty() || self.others.is_some()
    }

    /// The account `user`'s commands run as: `None` when there is no mapping, a refusal
    /// when there is one and it does not name them.
    pub fn login(&self, user: &str) -> Result<Option<&Login>, NotMapped> {
        if !self.is_mapped() {
            return Ok(None);
        }
        match self.logins.get(user).or(self.others.as_ref()) {
            Some(login) => Ok(Some(login)),
            None => Err(NotMapped { user: user.to_owned() }),
        }
    }
}

/// A user the `--run-as` mapping names no account for: nothing of theirs runs here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "this node runs commands only as the local accounts its --run-as mapping gives, and it names none for {user}; nothing was run"
)]
pub struct NotMapped {
    pub user: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(name: &str, uid: u32) -> Login {
        Login { name: name.into(), uid, gid: uid, home: format!("/home/{name}").into(), shell: "/bin/sh".into() }
    }

    #[test]
    fn a_named_user_gets_their_account_others_the_fallback_or_nothing() {
        let none = RunAs::default();
        assert_eq!(none.login("bob"), Ok(None), "no mapping: the agent's own user");
        let mut only_bob = RunAs::default();
        only_bob.logins.insert("bob".into(), login("bobby", 1000));
        assert_eq!(only_bob.login("bob").unwrap().unwrap().name, "bobby");
        assert_eq!(only_bob.login("eve"), Err(NotMapped { user: "eve".into() }));
        let mut with_others = only_bob.clone();
        with_others.others = Some(login("nobody", 65534));
        assert_eq!(with_others.login("eve").unwrap().unwrap().uid, 65534);
        assert_eq!(with_others.login("bob").unwrap().unwrap().uid, 1000);
    }

    #[test]
    fn entries_that_do_not_parse_or_name_no_account_are_refused() {
        // These tests run as root (the agent's tests need it for nspawn too).
        assert!(RunAs::parse(&["bob".into()]).unwrap_err().to_string().contains("USER=LOGIN"));
        assert!(
            RunAs::parse(&["bob=no-such-account-here".into()]).unwrap_err().to_string().contains("no local account")
        );
        assert!(RunAs::parse(&["bob=root".into(), "bob=nobody".into()]).unwrap_err().to_string().contains("twice"));
        let ok = RunAs::parse(&["bob=nobody".into(), "*=root".into()]).unwrap();
        assert_eq!(ok.login("bob").unwrap().unwrap().name, "nobody");
        assert_eq!(ok.login("anyone").unwrap().unwrap().uid, 0);
    }
}
