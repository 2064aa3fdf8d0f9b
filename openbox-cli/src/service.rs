//! `openbox service install|uninstall|status`: the control plane, the agent or openboxd
//! as a service of this machine's service manager. The unit or property list comes from
//! the `service` crate, rendered for the directory this `openbox` is in; this file decides
//! where it goes, moves a token into a file, and asks systemd or launchd to run it — or,
//! where neither runs (a container, a chroot), says exactly what to run instead.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use service::{Os, Place, Plan, Role, Scope, Step, hidden_from_service, shell_word};

use crate::args::{ScopeArgs, ServiceCommand};

/// Installed, but not started: no service manager runs here. For `status`: not running.
const NOT_STARTED: u8 = 3;
/// `status`: not installed (as LSB init scripts say it).
const NOT_INSTALLED: u8 = 4;

pub fn command(command: ServiceCommand, json: bool) -> ExitCode {
    let result = match command {
        ServiceCommand::Install { role, scope, print, args } => install(role.into(), scope, print, args, json),
        ServiceCommand::Uninstall { role, scope } => uninstall(role.into(), scope, json),
        ServiceCommand::Status { role, scope } => status(role.map(Into::into), scope, json),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            eprintln!("openbox: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The service manager of this machine, for one scope.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Manager {
    Systemd,
    Launchd,
    /// Files are written, nothing is started.
    Absent,
}

impl Manager {
    fn find(scope: Scope) -> Manager {
        if cfg!(target_os = "macos") {
            return Manager::Launchd;
        }
        // systemd's own test (sd_booted): it runs this machine when this directory exists.
        if !Path::new("/run/systemd/system").is_dir() {
            return Manager::Absent;
        }
        match scope {
            Scope::System => Manager::Systemd,
            // A user's manager listens on its private socket while the user is logged in.
            Scope::User => match std::env::var_os("XDG_RUNTIME_DIR") {
                Some(dir) if Path::new(&dir).join("systemd/private").exists() => Manager::Systemd,
                _ => Manager::Absent,
            },
        }
    }

    fn name(self) -> &'static str {
        match self {
            Manager::Systemd => "systemd",
            Manager::Launchd => "launchd",
            Manager::Absent => "none",
        }
    }
}

/// Where one role's service lives here, in one scope.
fn place(role: Role, scope: Scope) -> Result<Place, String> {
    let home = std::env::var("HOME").map_err(|_| "HOME is not set".to_owned())?;
    let config = match std::env::var("XDG_CONFIG_HOME").ok().filter(|d| Path::new(d).is_absolute()) {
        Some(dir) => dir,
        None => format!("{home}/.config"),
    };
    let uid = rustix::process::getuid().as_raw();
    Ok(Place::new(role, scope, Os::here(), &home, &config, uid))
}

/// On macOS, the variables of the service's environment file, if there is one: launchd
/// reads no file, so they go into the property list (install again after changing it).
fn launchd_env(place: &Place) -> Result<Vec<(String, String)>, String> {
    if place.os != Os::MacOs {
        return Ok(Vec::new());
    }
    match std::fs::read_to_string(&place.env) {
        Ok(text) => service::parse_env(&text).map_err(|e| format!("{}: {e}", place.env)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("reading {}: {e}", place.env)),
    }
}

fn scope_word(scope: Scope) -> &'static str {
    if scope == Scope::System { "system" } else { "user" }
}

/// `systemctl` (or `systemctl --user`) with `args`.
fn systemctl(scope: Scope, args: &[&str]) -> Command {
    let mut cmd = Command::new("systemctl");
    if scope == Scope::User {
        cmd.arg("--user");
    }
    cmd.args(args);
    cmd
}

/// Carries out `plan` here: its files always, its service manager's commands when one runs
/// (`manager`).
fn carry_out(plan: &Plan, manager: Manager) -> Result<(), String> {
    for step in &plan.steps {
        match step {
            Step::Write { path, mode, text } => Path::new(path)
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| paths::write_atomically(Path::new(path), text.as_bytes(), *mode))
                .map_err(|e| format!("cannot write {path}: {e}"))?,
            Step::Remove { path } => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(format!("{path}: {e}")),
                _ => {}
            },
            // Left alone when something is still in it (or it is not there).
            Step::RemoveEmptyDir { path } => {
                let _ = std::fs::remove_dir(path);
            }
            Step::Run { .. } if manager == Manager::Absent => {}
            Step::Run { argv, checked } => {
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                if *checked {
                    run(cmd)?;
                } else {
                    let _ = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
                }
            }
        }
    }
    Ok(())
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The scope asked for, or the default: the machine's for the control plane and the agent
/// when run as root, else the user's.
fn choose_scope(role: Role, asked: ScopeArgs, changes_files: bool) -> Result<Scope, String> {
    if asked.user {
        return Ok(Scope::User);
    }
    if asked.system && !role.has_system_scope() {
        return Err("openboxd belongs to one user: install it with --user (the default)".into());
    }
    if asked.system && changes_files && !is_root() {
        return Err(format!(
            "a system service needs root: sudo {} (or --user for a service of your own)",
            std::env::args().collect::<Vec<_>>().join(" ")
        ));
    }
    if asked.system || (role.has_system_scope() && is_root()) { Ok(Scope::System) } else { Ok(Scope::User) }
}

fn install(role: Role, scope: ScopeArgs, print: bool, args: Vec<String>, json: bool) -> Result<u8, String> {
    let scope = choose_scope(role, scope, !print)?;
    let place = place(role, scope)?;
    let bin_dir = own_dir()?;
    let binary = bin_dir.join(role.binary());
    if !binary.is_file() {
        return Err(format!(
            "{} is not beside this openbox (in {}): install the whole release (docs/install.md)",
            role.binary(),
            bin_dir.display()
        ));
    }
    let (args, token) = take_token(role, args, Path::new(&place.token))?;
    let args = absolute_paths(args)?;
    if let Some(why) = hidden_from_service(role, scope, "its binary,", &binary.display().to_string()) {
        return Err(why);
    }
    // A file an argument names (`--flag PATH` or `--flag=PATH`), absolute by now.
    let joined = args.iter().filter_map(|a| a.split_once('=').filter(|(f, _)| f.starts_with("--")));
    let paired = args.iter().zip(args.iter().skip(1)).map(|(f, v)| (f.as_str(), v.as_str()));
    for (flag, value) in joined.chain(paired) {
        if flag.starts_with("--")
            && let Some(why) = hidden_from_service(role, scope, flag, value.strip_prefix("sqlite:").unwrap_or(value))
        {
            return Err(why);
        }
    }
    check_args(&binary, &args)?;
    let env = launchd_env(&place)?;
    let plan = Plan::install(&place, &bin_dir.display().to_string(), &args, token.as_deref(), &env);
    if print {
        // The service's own file (the unit or the property list), as it would be written.
        if let Some(Step::Write { text, .. }) =
            plan.steps.iter().find(|s| matches!(s, Step::Write { path, .. } if *path == place.file))
        {
            print!("{text}");
        }
        return Ok(0);
    }
    let manager = Manager::find(scope);
    carry_out(&plan, manager)?;
    let started = manager != Manager::Absent;
    let by_hand = by_hand(&place, &binary, &args);
    if json {
        let out = serde_json::json!({
            "role": role.name(),
            "scope": scope_word(scope),
            "file": place.file,
            "token_file": token.as_ref().map(|_| &place.token),
            "manager": manager.name(),
            "started": started,
            "run_instead": if started { None } else { Some(&by_hand) },
        });
        println!("{out}");
    } else {
        println!("wrote {}", place.file);
        if token.is_some() {
            println!("wrote the enrollment token to {} (mode 0600)", place.token);
        }
        if started {
            println!("{} is enabled and started ({} {} service).", role.unit(), manager.name(), scope_word(scope));
            println!("{}", watch_hint(&place));
        } else {
            println!("No service manager runs here ({}), so nothing was started.", why_absent(scope));
            for line in &by_hand {
                println!("  {line}");
            }
        }
    }
    Ok(if started { 0 } else { NOT_STARTED })
}

/// What to run where no service manager does.
fn by_hand(place: &Place, binary: &Path, args: &[String]) -> Vec<String> {
    let mut line = String::new();
    if let (Scope::System, Some(state)) = (place.scope, place.role.system_state()) {
        line.push_str(&format!("OPENBOX_HOME={state} "));
    }
    line.push_str(&shell_word(&binary.display().to_string()));
    for a in args {
        line.push(' ');
        line.push_str(&shell_word(a));
    }
    let user = if place.scope == Scope::User { " --user" } else { "" };
    vec![
        format!("start it here by hand:  {line}"),
        format!(
            "or, on a machine booted with systemd:  systemctl{user} daemon-reload && systemctl{user} enable --now {}",
            place.role.unit()
        ),
    ]
}

fn why_absent(scope: Scope) -> &'static str {
    match scope {
        Scope::System => "systemd is not running this machine: no /run/systemd/system",
        Scope::User => "no systemd user manager for you: not booted with systemd, or not logged in",
    }
}

fn watch_hint(place: &Place) -> String {
    match (cfg!(target_os = "macos"), place.scope, place.role) {
        (true, _, _) => format!("Its output goes to {}.", place.log),
        (false, Scope::System, Role::Control) => format!(
            "Its first start writes the admin's login token to {}/control/admin-token (mode 0600) and the login \
             command to its journal: journalctl -u openbox-control",
            Role::Control.system_state().unwrap_or_default()
        ),
        (false, Scope::System, _) => format!("See how it runs: systemctl status {}", place.role.unit()),
        (false, Scope::User, _) => format!("See how it runs: systemctl --user status {}", place.role.unit()),
    }
}

fn uninstall(role: Role, scope: ScopeArgs, json: bool) -> Result<u8, String> {
    let scope = choose_scope(role, scope, true)?;
    let place = place(role, scope)?;
    let installed = Path::new(&place.file).exists();
    // The token is only the agent's, and only until it has enrolled.
    let token_removed = role == Role::Agent && Path::new(&place.token).exists();
    let mut plan = Plan::uninstall(&place);
    if !installed {
        // Nothing of the service to stop or remove: only a token left behind.
        plan.steps.retain(|s| match s {
            Step::Remove { path } => *path == place.token,
            Step::RemoveEmptyDir { .. } => true,
            _ => false,
        });
    }
    carry_out(&plan, Manager::find(scope))?;
    let state = match (scope, role.system_state()) {
        (Scope::System, Some(dir)) => Some(dir.to_owned()),
        _ => None,
    };
    if json {
        let out = serde_json::json!({
            "role": role.name(),
            "scope": scope_word(scope),
            "file": place.file,
            "removed": installed,
            "token_removed": token_removed,
            "state_kept": state,
        });
        println!("{out}");
    } else if installed {
        println!("removed {} ({} service {})", place.file, scope_word(scope), role.unit());
        if let Some(dir) = state {
            println!("Its state stays in {dir}: remove that directory to forget it for good.");
        }
    } else {
        println!("{} is not installed as a {} service (no {}).", role.binary(), scope_word(scope), place.file);
    }
    Ok(0)
}

/// One service as `status` shows it.
struct Shown {
    role: Role,
    scope: &'static str,
    file: PathBuf,
    installed: bool,
    /// What the service manager says: `enabled`, `active` …; empty where none runs.
    enabled: String,
    active: String,
}

fn status(role: Option<Role>, scope: ScopeArgs, json: bool) -> Result<u8, String> {
    let roles = role.map_or_else(|| Role::ALL.to_vec(), |r| vec![r]);
    let mut shown = Vec::new();
    for r in roles {
        let scopes = match (scope.user, scope.system) {
            (true, _) => vec![Scope::User],
            (_, true) => vec![choose_scope(r, scope, false)?],
            _ if r.has_system_scope() => vec![Scope::System, Scope::User],
            _ => vec![Scope::User],
        };
        for s in scopes {
            let place = place(r, s)?;
            let installed = Path::new(&place.file).exists();
            let (enabled, active) = match (installed, Manager::find(s)) {
                (true, Manager::Systemd) => {
                    (answer(systemctl(s, &["is-enabled", r.unit()])), answer(systemctl(s, &["is-active", r.unit()])))
                }
                (true, Manager::Launchd) => {
                    let loaded = Command::new("launchctl")
                        .args(["print", &format!("{}/{}", place.domain, r.label())])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success());
                    (String::new(), if loaded { "active".into() } else { "inactive".into() })
                }
                _ => (String::new(), String::new()),
            };
            shown.push(Shown { role: r, scope: scope_word(s), file: place.file.into(), installed, enabled, active });
        }
    }
    if json {
        let list: Vec<_> = shown
            .iter()
            .map(|s| {
                serde_json::json!({
                    "role": s.role.name(),
                    "scope": s.scope,
                    "file": s.file,
                    "installed": s.installed,
                    "enabled": (!s.enabled.is_empty()).then_some(&s.enabled),
                    "active": (!s.active.is_empty()).then_some(&s.active),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        for s in &shown {
            let what = match (s.installed, s.active.is_empty()) {
                (false, _) => "not installed".to_owned(),
                (true, true) => "installed; no service manager runs here".to_owned(),
                (true, false) if s.enabled.is_empty() => s.active.clone(),
                (true, false) => format!("{}, {}", s.enabled, s.active),
            };
            println!("{:<8} {:<7} {:<55} {what}", s.role.name(), s.scope, s.file.display());
        }
    }
    // With one role named, the exit code answers "is it running?".
    if role.is_none() {
        return Ok(0);
    }
    Ok(if !shown.iter().any(|s| s.installed) {
        NOT_INSTALLED
    } else if shown.iter().any(|s| s.active == "active") {
        0
    } else {
        NOT_STARTED
    })
}

/// The first line a `systemctl is-…` query prints.
fn answer(mut cmd: Command) -> String {
    cmd.stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().trim().to_owned())
        .unwrap_or_default()
}

/// The directory this `openbox` runs from: the service runs its sibling.
fn own_dir() -> Result<PathBuf, String> {
    let exe =
        std::env::current_exe().and_then(std::fs::canonicalize).map_err(|e| format!("this program's path: {e}"))?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// Takes an enrollment token out of the arguments (`--token T`, `--token=T`, or else
/// OPENBOX_ENROLL_TOKEN for an agent) and names the file it will be kept in instead.
fn take_token(role: Role, args: Vec<String>, file: &Path) -> Result<(Vec<String>, Option<String>), String> {
    if role != Role::Agent {
        return Ok((args, None));
    }
    let mut kept = Vec::with_capacity(args.len());
    let mut token = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--token" {
            token = Some(it.next().ok_or("--token needs a value")?);
        } else if let Some(t) = a.strip_prefix("--token=") {
            token = Some(t.to_owned());
        } else {
            kept.push(a);
        }
    }
    let has_file = kept.iter().any(|a| a == "--token-file" || a.starts_with("--token-file="));
    if token.is_none() && !has_file {
        token = std::env::var("OPENBOX_ENROLL_TOKEN").ok().filter(|t| !t.is_empty());
    }
    if token.is_some() {
        if has_file {
            return Err("give the enrollment token once: --token or --token-file".into());
        }
        kept.extend(["--token-file".to_owned(), file.display().to_string()]);
    }
    Ok((kept, token.map(|t| format!("{}\n", t.trim()))))
}

/// File arguments made absolute: a service does not start in this directory.
fn absolute_paths(args: Vec<String>) -> Result<Vec<String>, String> {
    const FILE_FLAGS: [&str; 5] = ["--ca", "--tls-cert", "--tls-key", "--db", "--state-dir"];
    let takes_file = |flag: &str| flag.ends_with("-file") || FILE_FLAGS.contains(&flag);
    let absolute = |v: &str| -> Result<String, String> {
        if v.contains("://") || v.starts_with("sqlite:") || Path::new(v).is_absolute() {
            return Ok(v.to_owned());
        }
        std::path::absolute(v).map(|p| p.display().to_string()).map_err(|e| format!("{v}: {e}"))
    };
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter().peekable();
    while let Some(a) = it.next() {
        if let Some((flag, value)) = a.split_once('=').filter(|(f, _)| f.starts_with("--") && takes_file(f)) {
            out.push(format!("{flag}={}", absolute(value)?));
        } else if a.starts_with("--") && takes_file(&a) && it.peek().is_some() {
            let value = it.next().unwrap_or_default();
            out.push(a);
            out.push(absolute(&value)?);
        } else {
            out.push(a);
        }
    }
    Ok(out)
}

/// Lets the role's own parser judge the arguments now, not at the service's first start.
fn check_args(binary: &Path, args: &[String]) -> Result<(), String> {
    let out = Command::new(binary)
        .args(args)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr);
    let first = why.lines().find(|l| !l.trim().is_empty()).unwrap_or("refused").trim();
    Err(format!(
        "{} does not take these arguments: {first} (see `{} --help`)",
        binary.display(),
        binary.file_name().unwrap_or_default().to_string_lossy()
    ))
}

/// Runs a service manager's command; its own words when it fails.
fn run(mut cmd: Command) -> Result<(), String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{shown}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("{shown} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_on_the_command_line_becomes_a_file_argument() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (kept, token) =
            take_token(Role::Agent, args(&["--server", "https://h", "--token", "enroll_x"]), Path::new("/t")).unwrap();
        assert_eq!(token.as_deref(), Some("enroll_x\n"));
        assert_eq!(&kept[..2], ["--server", "https://h"]);
        assert_eq!(&kept[2..], ["--token-file", "/t"]);
        assert!(!kept.iter().any(|a| a.contains("enroll_x")), "{kept:?}");
        let (kept, token) = take_token(Role::Agent, args(&["--token=enroll_y"]), Path::new("/t")).unwrap();
        assert_eq!((kept[0].as_str(), token.as_deref()), ("--token-file", Some("enroll_y\n")));
        assert!(take_token(Role::Agent, args(&["--token", "a", "--token-file", "/f"]), Path::new("/t")).is_err());
        let (kept, token) = take_token(Role::Control, args(&["--addr", "0.0.0.0:1"]), Path::new("/t")).unwrap();
        assert_eq!((kept.len(), token), (2, None));
    }

    #[test]
    fn file_arguments_are_made_absolute() {
        let args: Vec<String> = ["--tls-cert", "c.pem", "--ca=k", "--db", "postgres://h/db", "--addr", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = absolute_paths(args).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(out[1], cwd.join("c.pem").display().to_string());
        assert_eq!(out[2], format!("--ca={}", cwd.join("k").display()));
        assert_eq!(&out[3..], ["--db", "postgres://h/db", "--addr", "x"]);
    }

    #[test]
    fn shell_words_survive_the_shell() {
        assert_eq!(shell_word("/usr/bin/x"), "/usr/bin/x");
        assert_eq!(shell_word("a b'c"), r"'a b'\''c'");
    }
}
