//! The service definitions of openbox's long-running roles — systemd units and launchd
//! property lists — rendered for the directory an install put the binaries in.
//!
//! `openbox service install` writes them on this machine, `openbox node add` writes the
//! agent's on another one, and the files under `systemd/` and `launchd/` at the top of the
//! repository are their renderings for `/usr/local/bin` (a test below keeps them equal).
//! No arguments are secrets: a token travels by file (`--token-file`), never in a unit.

use std::fmt::Write as _;

pub mod plan;

pub use plan::{Os, Place, Plan, Step, shell_word};

/// A role that runs as a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The control plane (`openbox-control`).
    Control,
    /// The node agent (`openbox-agent`).
    Agent,
    /// openboxd, the per-user daemon.
    Daemon,
}

/// Whose service it is: the machine's (run as root at boot) or one user's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    System,
    User,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Control, Role::Agent, Role::Daemon];

    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "control" => Ok(Role::Control),
            "agent" => Ok(Role::Agent),
            "daemon" | "openboxd" => Ok(Role::Daemon),
            other => Err(format!("{other:?} is not a role that runs as a service: control, agent or daemon")),
        }
    }

    /// The word `openbox service` takes for it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Control => "control",
            Role::Agent => "agent",
            Role::Daemon => "daemon",
        }
    }

    /// The binary the service runs.
    pub fn binary(self) -> &'static str {
        match self {
            Role::Control => "openbox-control",
            Role::Agent => "openbox-agent",
            Role::Daemon => "openboxd",
        }
    }

    /// The systemd unit's name.
    pub fn unit(self) -> &'static str {
        match self {
            Role::Control => "openbox-control.service",
            Role::Agent => "openbox-agent.service",
            Role::Daemon => "openboxd.service",
        }
    }

    /// The launchd label (and the plist's file name, with `.plist`).
    pub fn label(self) -> &'static str {
        match self {
            Role::Control => "dev.openbox.control",
            Role::Agent => "dev.openbox.agent",
            Role::Daemon => "dev.openbox.openboxd",
        }
    }

    /// The variable of the unit's environment file that may add arguments (the form
    /// `openbox node add` writes, and a person can edit).
    pub fn args_variable(self) -> &'static str {
        match self {
            Role::Control => "OPENBOX_CONTROL_ARGS",
            Role::Agent => "OPENBOX_AGENT_ARGS",
            Role::Daemon => "OPENBOXD_ARGS",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Role::Control => "The openbox control plane",
            Role::Agent => "The openbox node agent",
            Role::Daemon => "openboxd, the openbox per-user daemon",
        }
    }

    /// Where a system service keeps its state (`OPENBOX_HOME`); a user's service uses the
    /// user's own openbox directories.
    pub fn system_state(self) -> Option<&'static str> {
        match self {
            Role::Control => Some("/var/lib/openbox"),
            Role::Agent => Some("/var/lib/openbox-agent"),
            Role::Daemon => None,
        }
    }

    /// Whether the role may run as a system service (openboxd belongs to one user).
    pub fn has_system_scope(self) -> bool {
        self != Role::Daemon
    }
}

/// The comment a unit starts with: what it runs and how to change that.
fn unit_header(role: Role, scope: Scope) -> String {
    let how = match (role, scope) {
        (Role::Daemon, _) => "Keeps the login, certificates and SSH connections warm so that every `openbox`\n\
                              # call is instant (the CLI also starts it on demand; the unit starts it at login)."
            .to_owned(),
        (Role::Control, Scope::System) => "State (the registry, the CA key) lives in /var/lib/openbox. The first start writes the\n\
                                           # admin's login token to /var/lib/openbox/control/admin-token (mode 0600) and the\n\
                                           # login command to the journal: `journalctl -u openbox-control`."
            .to_owned(),
        (Role::Agent, Scope::System) => "Runs as root (--nspawn and --run-as need it). The identity is kept in\n\
                                         # /var/lib/openbox-agent after the first start; the enrollment token may go then.\n\
                                         # DOCKER_HOST=… in the environment file picks the engine for --docker."
            .to_owned(),
        (_, Scope::User) => "Runs as this user, with this user's openbox directories.".to_owned(),
    };
    let env = env_file(role, scope);
    format!(
        "# {desc}: a {kind} service, written by `openbox service install {name}`.\n\
         # {how}\n\
         # Arguments: `openbox service install {name} -- ARGS…` writes them below; {env}\n\
         # may set {var}=… and other variables too (secrets go in files, never here).\n",
        desc = role.description(),
        kind = if scope == Scope::System { "system" } else { "user" },
        name = role.name(),
        var = role.args_variable(),
    )
}

/// The unit's optional environment file.
pub fn env_file(role: Role, scope: Scope) -> String {
    match scope {
        Scope::System => format!("/etc/openbox/{}.env", role.name()),
        Scope::User => format!("%h/.config/openbox/{}.env", role.name()),
    }
}

/// The systemd unit that runs `role` from `bin_dir` with `args`.
pub fn systemd_unit(role: Role, scope: Scope, bin_dir: &str, args: &[String]) -> String {
    let bin = format!("{}/{}", bin_dir.trim_end_matches('/'), role.binary());
    let mut exec: Vec<String> =
        std::iter::once(bin.as_str()).chain(args.iter().map(String::as_str)).map(systemd_word).collect();
    exec.push(format!("${}", role.args_variable()));
    let mut u = unit_header(role, scope);
    let _ = write!(u, "[Unit]\nDescription={}\n", role.description());
    u.push_str("After=network-online.target\nWants=network-online.target\n\n[Service]\nType=simple\n");
    if let (Scope::System, Some(state)) = (scope, role.system_state()) {
        let _ = writeln!(u, "Environment=OPENBOX_HOME={state}");
    }
    let _ = write!(u, "EnvironmentFile=-{}\nExecStart={}\n", env_file(role, scope), exec.join(" "));
    u.push_str(match role {
        Role::Daemon => "Restart=on-failure\nRestartSec=1s\n",
        _ => "Restart=on-failure\nRestartSec=2s\n",
    });
    match (role, scope) {
        (Role::Control, Scope::System) => u.push_str(CONTROL_HARDENING),
        (Role::Agent, Scope::System) => u.push_str(
            "StateDirectory=openbox-agent\nStateDirectoryMode=0700\n\
             # Commands run as they would in a login shell on this machine (sudo, containers,\n\
             # nspawn): a sandbox here would be theirs too. Stopping kills the agent first so that\n\
             # it can end its sessions, then whatever is left.\nKillMode=mixed\n",
        ),
        (Role::Agent, Scope::User) => u.push_str("KillMode=mixed\n"),
        // openboxd reads and writes the user's files for `openbox cp`: no sandbox.
        (Role::Daemon, _) | (Role::Control, Scope::User) => {}
    }
    let target = if scope == Scope::System { "multi-user.target" } else { "default.target" };
    let _ = write!(u, "\n[Install]\nWantedBy={target}\n");
    u
}

/// What the system control plane's sandbox (`ProtectHome=yes`) hides from it.
const HOMES: [&str; 3] = ["/home", "/root", "/run/user"];

/// Why `role`'s service in `scope` could not use `path` (its binary, or a file an argument
/// names), when its sandbox hides it: a line that says what to do instead.
pub fn hidden_from_service(role: Role, scope: Scope, what: &str, path: &str) -> Option<String> {
    let hidden = role == Role::Control
        && scope == Scope::System
        && HOMES.iter().any(|h| path == *h || path.starts_with(&format!("{h}/")));
    hidden.then(|| {
        format!(
            "{what} {path} is in a home directory, which the control plane's system service cannot see \
             (its sandbox has ProtectHome=yes): install openbox outside home directories (as root: the .deb, or \
             install.sh --prefix /usr/local), keep its files elsewhere (say /etc/openbox), or run it as your own \
             service: openbox service install control --user"
        )
    })
}

/// The control plane needs its state directory, its port and the network; nothing else of
/// the machine.
const CONTROL_HARDENING: &str = "StateDirectory=openbox\nStateDirectoryMode=0700\n\
RuntimeDirectory=openbox\nUMask=0077\n\
NoNewPrivileges=yes\nProtectSystem=strict\nProtectHome=yes\nPrivateTmp=yes\nPrivateDevices=yes\n\
ProtectKernelTunables=yes\nProtectKernelModules=yes\nProtectKernelLogs=yes\nProtectControlGroups=yes\n\
ProtectClock=yes\nProtectHostname=yes\nProtectProc=invisible\nRestrictSUIDSGID=yes\nRestrictRealtime=yes\n\
RestrictNamespaces=yes\nLockPersonality=yes\nSystemCallArchitectures=native\n\
SystemCallFilter=@system-service\n\
# Root without root's powers: it may bind a port below 1024 and nothing more.\n\
CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n\
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n";

/// One word of an `ExecStart=` line, taken literally by systemd (quoted only when it needs
/// it, so the usual line reads as typed).
pub fn systemd_word(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:=,+@".contains(c));
    if plain {
        return word.to_owned();
    }
    let escaped = word.replace('\\', "\\\\").replace('"', "\\\"").replace('%', "%%").replace('$', "$$");
    format!("\"{escaped}\"")
}

/// The launchd property list that runs `role` from `bin_dir` with `args`, logging to `log`.
///
/// launchd reads no environment file: `env` holds the variables of the role's (see
/// [`Place::env`]), read when the service is installed.
pub fn launchd_plist(role: Role, bin_dir: &str, args: &[String], log: &str, env: &[(String, String)]) -> String {
    let bin = format!("{}/{}", bin_dir.trim_end_matches('/'), role.binary());
    let items: String = std::iter::once(bin.as_str())
        .chain(args.iter().map(String::as_str))
        .map(|a| format!("        <string>{}</string>\n", xml(a)))
        .collect();
    let env = if env.is_empty() {
        String::new()
    } else {
        let vars: String = env
            .iter()
            .map(|(k, v)| format!("        <key>{}</key>\n        <string>{}</string>\n", xml(k), xml(v)))
            .collect();
        format!("    <key>EnvironmentVariables</key>\n    <dict>\n{vars}    </dict>\n")
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <!-- The {desc}, written by `openbox service install {name}`. -->\n\
         <plist version=\"1.0\">\n<dict>\n    <key>Label</key>\n    <string>{label}</string>\n\
         \x20   <key>ProgramArguments</key>\n    <array>\n{items}    </array>\n{env}\
         \x20   <key>RunAtLoad</key>\n    <true/>\n\
         \x20   <key>KeepAlive</key>\n    <dict>\n        <key>SuccessfulExit</key>\n        <false/>\n    </dict>\n\
         \x20   <key>ProcessType</key>\n    <string>{kind}</string>\n\
         \x20   <key>StandardOutPath</key>\n    <string>{log}</string>\n\
         \x20   <key>StandardErrorPath</key>\n    <string>{log}</string>\n</dict>\n</plist>\n",
        desc = role.description(),
        name = role.name(),
        label = role.label(),
        kind = if role == Role::Daemon { "Interactive" } else { "Standard" },
        log = xml(log),
    )
}

/// The variables of an environment file as systemd reads one: `KEY=VALUE` lines (an
/// `export ` before is allowed), `#` comments, blank lines; a value may be quoted with `'`
/// or `"`. A line that is none of these is an error naming it.
pub fn parse_env(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let name_ok = |k: &str| {
            !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        match line.split_once('=') {
            Some((k, v)) if name_ok(k.trim()) => {
                let v = v.trim();
                let unquoted =
                    ['"', '\''].iter().find_map(|q| v.strip_prefix(*q).and_then(|r| r.strip_suffix(*q))).unwrap_or(v);
                vars.push((k.trim().to_owned(), unquoted.to_owned()));
            }
            _ => return Err(format!("line {}: {line:?} is not KEY=VALUE", n + 1)),
        }
    }
    Ok(vars)
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_unit_files_are_the_renderings_for_usr_local_bin() {
        let shipped = [
            (Role::Control, Scope::System, include_str!("../../systemd/openbox-control.service")),
            (Role::Agent, Scope::System, include_str!("../../systemd/openbox-agent.service")),
            (Role::Daemon, Scope::User, include_str!("../../systemd/openboxd.service")),
        ];
        for (role, scope, text) in shipped {
            assert_eq!(systemd_unit(role, scope, "/usr/local/bin", &[]), text, "systemd/{}", role.unit());
        }
        let plists = [
            (Role::Daemon, "/tmp/dev.openbox.openboxd.log", include_str!("../../launchd/dev.openbox.openboxd.plist")),
            (Role::Control, "/var/log/openbox-control.log", include_str!("../../launchd/dev.openbox.control.plist")),
            (Role::Agent, "/var/log/openbox-agent.log", include_str!("../../launchd/dev.openbox.agent.plist")),
        ];
        for (role, log, text) in plists {
            assert_eq!(launchd_plist(role, "/usr/local/bin", &[], log, &[]), text, "launchd/{}.plist", role.label());
        }
    }

    #[test]
    fn arguments_are_taken_literally_by_systemd() {
        let args = ["--addr".to_owned(), "0.0.0.0:7683".to_owned(), "a b$c%d\"e".to_owned()];
        let unit = systemd_unit(Role::Control, Scope::System, "/opt/openbox/bin/", &args);
        let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert_eq!(
            exec,
            r#"ExecStart=/opt/openbox/bin/openbox-control --addr 0.0.0.0:7683 "a b$$c%%d\"e" $OPENBOX_CONTROL_ARGS"#
        );
    }

    #[test]
    fn only_the_control_plane_is_sandboxed_and_only_system_services_get_a_state_directory() {
        let control = systemd_unit(Role::Control, Scope::System, "/usr/bin", &[]);
        for line in ["NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes"] {
            assert!(control.lines().any(|l| l == line), "{line}");
        }
        let agent = systemd_unit(Role::Agent, Scope::System, "/usr/bin", &[]);
        assert!(!agent.contains("NoNewPrivileges"), "sudo in a user's command needs new privileges");
        assert!(agent.contains("Environment=OPENBOX_HOME=/var/lib/openbox-agent"));
        let user = systemd_unit(Role::Control, Scope::User, "/home/u/.local/bin", &[]);
        assert!(!user.contains("OPENBOX_HOME") && user.contains("WantedBy=default.target"));
        assert!(user.contains("EnvironmentFile=-%h/.config/openbox/control.env"));
    }

    /// Both files as the tools that read them see them: `systemd-analyze verify` and
    /// Python's plistlib (a launchd plist is plain XML).
    #[test]
    fn a_user_unit_and_a_launchd_agent_with_awkward_arguments_are_valid() {
        let args: Vec<String> =
            ["--server", "https://h:1", "--token-file", "/tmp/a b/50%$x\"y"].iter().map(|s| s.to_string()).collect();
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink("/bin/true", bin.join("openbox-agent")).unwrap();
        let unit = dir.path().join("openbox-agent.service");
        std::fs::write(&unit, systemd_unit(Role::Agent, Scope::User, bin.to_str().unwrap(), &args)).unwrap();
        let runtime = dir.path().join("run");
        std::fs::create_dir(&runtime).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .args(["verify", "--user"])
            .arg(&unit)
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .expect("systemd-analyze must be installed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");

        let plist = dir.path().join("agent.plist");
        let env = [("DOCKER_HOST".to_owned(), "unix:///Users/a&b/.docker/run/docker.sock".to_owned())];
        std::fs::write(&plist, launchd_plist(Role::Agent, "/usr/local/bin", &args, "/tmp/a&b.log", &env)).unwrap();
        let check = "import plistlib,sys,json; p=plistlib.load(open(sys.argv[1],'rb')); print(json.dumps([p['Label'], p['ProgramArguments'], p['StandardErrorPath'], p['EnvironmentVariables']]))";
        let out = std::process::Command::new("python3").args(["-c", check]).arg(&plist).output().unwrap();
        let read: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a plist python reads");
        let mut expected = vec!["/usr/local/bin/openbox-agent".to_owned()];
        expected.extend(args);
        let env = serde_json::json!({"DOCKER_HOST": "unix:///Users/a&b/.docker/run/docker.sock"});
        assert_eq!(read, serde_json::json!(["dev.openbox.agent", expected, "/tmp/a&b.log", env]));
    }

    #[test]
    fn plist_arguments_are_escaped() {
        let p = launchd_plist(Role::Agent, "/usr/local/bin", &["--name".into(), "a<b&c".into()], "/var/log/x.log", &[]);
        assert!(p.contains("<string>a&lt;b&amp;c</string>"));
        assert!(p.contains("<string>dev.openbox.agent</string>"));
    }

    #[test]
    fn environment_files_read_as_systemd_reads_them() {
        let text = "# the engine\nDOCKER_HOST=unix:///Users/me/.colima/default/docker.sock\n\nexport A=\"two words\"\nB='x=y'\n";
        let vars = parse_env(text).unwrap();
        let want = [("DOCKER_HOST", "unix:///Users/me/.colima/default/docker.sock"), ("A", "two words"), ("B", "x=y")];
        assert_eq!(vars, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
        for bad in ["just words", "=v", "1A=v", "A B=v"] {
            assert!(parse_env(bad).unwrap_err().starts_with("line 1:"), "{bad}");
        }
    }

    #[test]
    fn roles_parse_from_their_names() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.name()), Ok(role));
        }
        assert!(Role::parse("web").unwrap_err().contains("control, agent or daemon"));
    }
}
