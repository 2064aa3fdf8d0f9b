//! Installing a role as a service, written once: where its files go on a machine, and the
//! steps — files written with their modes, then the service manager's commands — that
//! install or remove it. `openbox service install` carries a plan out on this machine;
//! `openbox node add` renders the same plan as one shell script for another
//! ([`Plan::script`]).

use crate::{Role, Scope, launchd_plist, systemd_unit};

/// The machine's kind: which service manager a service is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Os {
    /// systemd units.
    Linux,
    /// launchd property lists.
    MacOs,
}

impl Os {
    /// This machine's.
    pub fn here() -> Os {
        if cfg!(target_os = "macos") { Os::MacOs } else { Os::Linux }
    }
}

/// Where a role's service lives on a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub role: Role,
    pub scope: Scope,
    pub os: Os,
    /// The unit or the property list.
    pub file: String,
    /// Where an enrollment token is kept until the agent has enrolled (mode 0600).
    pub token: String,
    /// launchd: where the service's output goes.
    pub log: String,
    /// launchd: the domain the service is loaded in (`system`, `gui/UID`).
    pub domain: String,
    /// The optional file of variables for the service (`DOCKER_HOST=…`).
    pub env: String,
}

impl Place {
    /// The place of `role`'s service for `scope` on a machine of `os`, for an account with
    /// home `home`, configuration directory `config` (`~/.config`) and user id `uid`.
    pub fn new(role: Role, scope: Scope, os: Os, home: &str, config: &str, uid: u32) -> Place {
        let (file, token, log) = match (scope, os) {
            (Scope::System, Os::Linux) => {
                (format!("/etc/systemd/system/{}", role.unit()), "/etc/openbox/enroll.token".into(), String::new())
            }
            (Scope::User, Os::Linux) => (
                format!("{config}/systemd/user/{}", role.unit()),
                format!("{config}/openbox/enroll.token"),
                String::new(),
            ),
            (Scope::System, Os::MacOs) => (
                format!("/Library/LaunchDaemons/{}.plist", role.label()),
                "/etc/openbox/enroll.token".into(),
                format!("/var/log/openbox-{}.log", role.name()),
            ),
            (Scope::User, Os::MacOs) => (
                format!("{home}/Library/LaunchAgents/{}.plist", role.label()),
                format!("{config}/openbox/enroll.token"),
                format!("{home}/Library/Logs/openbox-{}.log", role.name()),
            ),
        };
        let domain = match scope {
            Scope::System => "system".to_owned(),
            Scope::User => format!("gui/{uid}"),
        };
        let env = match (scope, os) {
            (Scope::User, Os::MacOs) => format!("{config}/openbox/{}.env", role.name()),
            _ => crate::env_file(role, scope),
        };
        Place { role, scope, os, file, token, log, domain, env }
    }

    /// `systemctl` (or `systemctl --user`) with `args`.
    fn systemctl(&self, args: &[&str]) -> Vec<String> {
        let mut argv = vec!["systemctl".to_owned()];
        if self.scope == Scope::User {
            argv.push("--user".into());
        }
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    fn launchd_target(&self) -> String {
        format!("{}/{}", self.domain, self.role.label())
    }
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `text` written whole to `path` (its directory made first) with `mode`.
    Write { path: String, mode: u32, text: String },
    /// `path` removed, if it is there.
    Remove { path: String },
    /// The directory `path` removed if it is there and empty (what install made for the
    /// token and environment files, once nothing is left in it).
    RemoveEmptyDir { path: String },
    /// A service manager's command; when not `checked`, its failure is expected and fine
    /// (stopping what may not be running).
    Run { argv: Vec<String>, checked: bool },
}

/// What installing or removing a service does, step by step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    /// Installs `place.role` from `bin_dir` with `args`, an enrollment `token` kept in its
    /// file when given; enables and (re)starts it — installing again takes new arguments.
    /// `env`: the variables of [`Place::env`] for launchd, which reads no file itself (a
    /// systemd unit reads the file when the service starts).
    pub fn install(
        place: &Place,
        bin_dir: &str,
        args: &[String],
        token: Option<&str>,
        env: &[(String, String)],
    ) -> Plan {
        let mut steps = Vec::new();
        if let Some(token) = token {
            steps.push(Step::Write { path: place.token.clone(), mode: 0o600, text: format!("{}\n", token.trim()) });
        }
        let run = |argv: Vec<String>| Step::Run { argv, checked: true };
        match place.os {
            Os::Linux => {
                // A unit holds no secret: readable by all, as the service manager's own are.
                let text = systemd_unit(place.role, place.scope, bin_dir, args);
                steps.push(Step::Write { path: place.file.clone(), mode: 0o644, text });
                steps.push(run(place.systemctl(&["daemon-reload"])));
                steps.push(run(place.systemctl(&["enable", place.role.unit()])));
                steps.push(run(place.systemctl(&["restart", place.role.unit()])));
            }
            Os::MacOs => {
                let text = launchd_plist(place.role, bin_dir, args, &place.log, env);
                steps.push(Step::Write { path: place.file.clone(), mode: 0o644, text });
                // An earlier version is unloaded first; there may be none.
                let bootout = vec!["launchctl".into(), "bootout".into(), place.launchd_target()];
                steps.push(Step::Run { argv: bootout, checked: false });
                steps.push(run(vec!["launchctl".into(), "bootstrap".into(), place.domain.clone(), place.file.clone()]));
            }
        }
        Plan { steps }
    }

    /// Stops and removes `place.role`'s service, and an agent's enrollment token; its
    /// state is kept.
    pub fn uninstall(place: &Place) -> Plan {
        let mut steps = Vec::new();
        match place.os {
            Os::Linux => {
                // A unit that is not loaded cannot be disabled; that is not an error here.
                let disable = place.systemctl(&["disable", "--now", place.role.unit()]);
                steps.push(Step::Run { argv: disable, checked: false });
                steps.push(Step::Remove { path: place.file.clone() });
                steps.push(Step::Run { argv: place.systemctl(&["daemon-reload"]), checked: true });
            }
            Os::MacOs => {
                let bootout = vec!["launchctl".into(), "bootout".into(), place.launchd_target()];
                steps.push(Step::Run { argv: bootout, checked: false });
                steps.push(Step::Remove { path: place.file.clone() });
            }
        }
        if place.role == Role::Agent {
            steps.push(Step::Remove { path: place.token.clone() });
        }
        if let Some((dir, _)) = place.token.rsplit_once('/') {
            steps.push(Step::RemoveEmptyDir { path: dir.to_owned() });
        }
        Plan { steps }
    }

    /// The files it writes, in order.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().filter_map(|s| match s {
            Step::Write { path, .. } => Some(path.as_str()),
            _ => None,
        })
    }

    /// The plan as one POSIX shell script, for another machine: each step in order, a
    /// checked command's failure ending it (`set -e`).
    pub fn script(&self) -> String {
        let mut out = String::from("set -e\n");
        for step in &self.steps {
            match step {
                Step::Write { path, mode, text } => {
                    let dir = path.rsplit_once('/').map_or(".", |(d, _)| if d.is_empty() { "/" } else { d });
                    out.push_str(&format!(
                        "mkdir -p {dir} && (umask 077 && printf %s {text} > {tmp}) && chmod {mode:o} {tmp} && mv -f {tmp} {path}\n",
                        dir = shell_word(dir),
                        text = shell_word(text),
                        tmp = shell_word(&format!("{path}.new")),
                        path = shell_word(path),
                    ));
                }
                Step::Remove { path } => out.push_str(&format!("rm -f {}\n", shell_word(path))),
                Step::RemoveEmptyDir { path } => {
                    out.push_str(&format!("rmdir {} 2>/dev/null || true\n", shell_word(path)));
                }
                Step::Run { argv, checked } => {
                    let line: Vec<String> = argv.iter().map(|a| shell_word(a)).collect();
                    out.push_str(&line.join(" "));
                    out.push_str(if *checked { "\n" } else { " 2>/dev/null || true\n" });
                }
            }
        }
        out
    }
}

/// `s` as one word for `sh`: as it is when it needs no quoting, else single-quoted.
pub fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:=,+@".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(role: Role, scope: Scope, os: Os) -> Place {
        Place::new(role, scope, os, "/home/u", "/home/u/.config", 1000)
    }

    #[test]
    fn each_role_and_scope_has_its_place_on_each_os() {
        let p = place(Role::Agent, Scope::System, Os::Linux);
        assert_eq!(
            (p.file.as_str(), p.token.as_str()),
            ("/etc/systemd/system/openbox-agent.service", "/etc/openbox/enroll.token")
        );
        let p = place(Role::Daemon, Scope::User, Os::Linux);
        assert_eq!(p.file, "/home/u/.config/systemd/user/openboxd.service");
        let p = place(Role::Agent, Scope::User, Os::MacOs);
        assert_eq!(p.file, "/home/u/Library/LaunchAgents/dev.openbox.agent.plist");
        assert_eq!((p.domain.as_str(), p.log.as_str()), ("gui/1000", "/home/u/Library/Logs/openbox-agent.log"));
        assert_eq!(p.env, "/home/u/.config/openbox/agent.env", "read at install: launchd has no %h");
        let p = place(Role::Agent, Scope::System, Os::MacOs);
        assert_eq!((p.file.as_str(), p.domain.as_str()), ("/Library/LaunchDaemons/dev.openbox.agent.plist", "system"));
        assert_eq!((p.env.as_str(), p.log.as_str()), ("/etc/openbox/agent.env", "/var/log/openbox-agent.log"));
        assert_eq!(
            place(Role::Daemon, Scope::User, Os::MacOs).file,
            "/home/u/Library/LaunchAgents/dev.openbox.openboxd.plist"
        );
        assert_eq!(place(Role::Control, Scope::System, Os::MacOs).domain, "system");
        assert_eq!(place(Role::Agent, Scope::User, Os::Linux).env, "%h/.config/openbox/agent.env");
    }

    #[test]
    fn on_a_mac_the_environment_files_variables_go_into_the_property_list() {
        let p = place(Role::Agent, Scope::System, Os::MacOs);
        let env = [("DOCKER_HOST".to_owned(), "unix:///Users/me/.docker/run/docker.sock".to_owned())];
        let plan = Plan::install(&p, "/usr/local/bin", &[], None, &env);
        let Step::Write { path, text, .. } = &plan.steps[0] else { panic!() };
        assert_eq!(path, "/Library/LaunchDaemons/dev.openbox.agent.plist");
        assert!(
            text.contains("<key>EnvironmentVariables</key>\n    <dict>\n        <key>DOCKER_HOST</key>\n        <string>unix:///Users/me/.docker/run/docker.sock</string>"),
            "{text}"
        );
    }

    #[test]
    fn installing_writes_the_token_and_the_unit_then_enables_and_restarts_it() {
        let p = place(Role::Agent, Scope::User, Os::Linux);
        let plan = Plan::install(&p, "/opt/bin", &["--server".into(), "https://h".into()], Some("enroll_x"), &[]);
        assert_eq!(plan.files().collect::<Vec<_>>(), [p.token.as_str(), p.file.as_str()]);
        let Step::Write { mode, text, .. } = &plan.steps[0] else { panic!() };
        assert_eq!((*mode, text.as_str()), (0o600, "enroll_x\n"));
        let Step::Write { mode, text, .. } = &plan.steps[1] else { panic!() };
        assert_eq!(*mode, 0o644);
        assert!(text.contains("ExecStart=/opt/bin/openbox-agent --server https://h $OPENBOX_AGENT_ARGS"), "{text}");
        let commands: Vec<String> = plan.steps[2..]
            .iter()
            .map(|s| match s {
                Step::Run { argv, .. } => argv.join(" "),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            commands,
            [
                "systemctl --user daemon-reload",
                "systemctl --user enable openbox-agent.service",
                "systemctl --user restart openbox-agent.service"
            ]
        );
    }

    #[test]
    fn a_plan_rendered_for_another_machine_runs_in_sh_and_writes_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let place = Place::new(Role::Agent, Scope::User, Os::Linux, &d, &format!("{d}/config"), 1);
        let mut plan = Plan::install(&place, "/opt/it's here", &["--name".into(), "a b".into()], Some("tok'en"), &[]);
        // No service manager in a test: keep the files, and one command whose failure is fine.
        plan.steps.retain(|s| matches!(s, Step::Write { .. }));
        plan.steps.push(Step::Run { argv: vec!["false".into()], checked: false });
        let ran = std::process::Command::new("sh").arg("-c").arg(plan.script()).status().unwrap();
        assert!(ran.success(), "{}", plan.script());
        let token = std::fs::read_to_string(&place.token).unwrap();
        assert_eq!(token, "tok'en\n");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&place.token).unwrap().permissions().mode() & 0o777, 0o600);
        let unit = std::fs::read_to_string(&place.file).unwrap();
        assert_eq!(unit, systemd_unit(Role::Agent, Scope::User, "/opt/it's here", &["--name".into(), "a b".into()]));

        let gone = Plan::uninstall(&place);
        let mut gone = Plan { steps: gone.steps.into_iter().filter(|s| matches!(s, Step::Remove { .. })).collect() };
        gone.steps.push(Step::Run { argv: vec!["true".into()], checked: true });
        assert!(std::process::Command::new("sh").arg("-c").arg(gone.script()).status().unwrap().success());
        assert!(!std::path::Path::new(&place.file).exists() && !std::path::Path::new(&place.token).exists());
    }
}
