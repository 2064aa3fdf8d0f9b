//! `openbox up` and `openbox down`: a personal fleet on this machine — a control plane on
//! SQLite under the state directory, this machine enrolled as a node tagged `local`, and
//! the CLI logged in. Both run as background processes logging to the state directory.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use net::control::Endpoint;
use proto::api::{EnrollToken, NewEnrollToken, WhoAmI};
use proto::request::UpRequest;
use rustix::process::{Pid, Signal, kill_process, test_kill_process};

use crate::Daemon;
use crate::commands::{Reply, to_json};
use crate::login::{Login, user_key};

const LOCAL_TAG: &str = "local";

struct Role {
    name: &'static str,
    binary: &'static str,
}

const CONTROL: Role = Role { name: "control", binary: "openbox-control" };
const AGENT: Role = Role { name: "agent", binary: "openbox-agent" };

impl Role {
    fn pid_file(&self) -> PathBuf {
        paths::pid_file(self.name)
    }

    fn log_file(&self) -> PathBuf {
        paths::log_file(self.name)
    }

    /// The pid of this role's process if it is running.
    fn running(&self) -> Option<Pid> {
        let pid: i32 = std::fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok()?;
        let pid = Pid::from_raw(pid)?;
        test_kill_process(pid).ok()?;
        // A recycled pid belongs to some other program; only trust our own binary.
        if let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero()))
            && !String::from_utf8_lossy(&cmdline).contains(self.binary)
        {
            return None;
        }
        Some(pid)
    }

    /// A warning when the running process `pid` runs a binary other than the one `up` would
    /// start now: an upgrade renamed a new file over it (the old one shows as deleted), or
    /// these binaries are another installation's.
    fn older_binary_warning(&self, pid: Pid) -> Option<String> {
        // Unreadable (not ours, or not Linux): nothing to say.
        let running = std::fs::read_link(format!("/proc/{}/exe", pid.as_raw_nonzero())).ok()?;
        let wanted = paths::sibling_binary(self.binary);
        let older = running.to_string_lossy().ends_with(" (deleted)")
            || std::fs::canonicalize(&wanted).is_ok_and(|wanted| wanted != running);
        older.then(|| {
            format!(
                "the {} (pid {pid}) still runs the binary from before an upgrade; `openbox down && openbox up` moves the fleet to this version (ending this node's sessions)",
                self.name
            )
        })
    }

    /// Starts the role's binary with `args`, and `env` added to its environment (where
    /// secrets go: other users can read a process's arguments).
    fn spawn(&self, args: &[String], env: &[(&str, &str)]) -> anyhow::Result<Pid> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file())?;
        let binary = paths::sibling_binary(self.binary);
        let mut child = Command::new(&binary)
            .args(args)
            .envs(env.iter().copied())
            .env_remove(proto::request::CALL_ENV)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        std::fs::write(self.pid_file(), child.id().to_string())?;
        let pid = Pid::from_raw(child.id() as i32).expect("a child has a positive pid");
        // Reap it when it exits (`openbox down`, a crash), so no zombie stays behind.
        std::thread::spawn(move || child.wait());
        Ok(pid)
    }
}

/// Waits for `ready` to hold, checking that the process is still alive.
async fn wait_for<F, Fut>(what: &str, role: &Role, pid: Pid, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pause = Duration::from_millis(10);
    loop {
        if ready().await {
            return Ok(());
        }
        if test_kill_process(pid).is_err() || is_zombie(pid) {
            bail!("the {} exited while starting; see {}", role.name, role.log_file().display());
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen within 30s; see {}", role.log_file().display());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

fn is_zombie(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

fn log_len(role: &Role) -> u64 {
    std::fs::metadata(role.log_file()).map(|m| m.len()).unwrap_or(0)
}

fn log_since(role: &Role, offset: u64) -> String {
    let text = std::fs::read(role.log_file()).unwrap_or_default();
    String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default()).into_owned()
}

/// Where `up` puts the control plane when not told: where the last `up` put it.
const DEFAULT_CONTROL_ADDR: &str = "127.0.0.1:7683";

fn remembered_addr() -> Option<String> {
    let text = std::fs::read_to_string(paths::up_addr_file()).ok()?;
    Some(text.trim().to_owned()).filter(|a| !a.is_empty())
}

/// Refuses an address another program listens on, naming it when this machine says who.
fn check_free(addr: &str) -> anyhow::Result<()> {
    let err = match std::net::TcpListener::bind(addr) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => e,
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr}")),
    };
    let Ok(sock) = addr.parse::<std::net::SocketAddr>() else { return Err(err.into()) };
    let by = match procinfo::tcp_listener(sock.port()) {
        Some((pid, name)) => format!(" by {name} (pid {pid})"),
        None => " by another program".to_owned(),
    };
    // A port near it that is free now, to suggest.
    let free = (1..=20u16)
        .filter_map(|i| sock.port().checked_add(i))
        .map(|port| std::net::SocketAddr::new(sock.ip(), port))
        .find(|a| std::net::TcpListener::bind(a).is_ok())
        .map_or_else(|| "127.0.0.1:PORT".to_owned(), |a| a.to_string());
    bail!(
        "{addr} is taken{by}, so this fleet's control plane cannot listen there. \
         `openbox up --addr {free}` starts it on another port (remembered: later `openbox up` and `openbox down` act on that fleet)"
    )
}

pub async fn up(d: &Daemon, req: UpRequest) -> anyhow::Result<Reply> {
    let logs = paths::logs_dir();
    paths::create_private_dir(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let remembered = remembered_addr();
    let control_addr =
        req.control_addr.clone().or_else(|| remembered.clone()).unwrap_or_else(|| DEFAULT_CONTROL_ADDR.to_owned());
    let url = format!("http://{control_addr}");
    let logged_in = Login::load().ok().filter(|l| l.server.url == url);

    // 1. The control plane.
    let token_file = paths::admin_token_file();
    // An upgrade leaves what is running alone: `up` says how to move it to this version.
    let mut warnings = Vec::new();
    let control_started = match CONTROL.running() {
        Some(pid) => {
            // (A fleet an earlier release started remembers no address: it is not second-guessed.)
            if let Some(running_at) = remembered.as_deref()
                && control_addr != running_at
            {
                bail!(
                    "this machine's fleet already runs with its control plane on {running_at}; \
                     `openbox down` stops it, then `openbox up --addr {control_addr}` starts it there"
                );
            }
            warnings.extend(CONTROL.older_binary_warning(pid));
            false
        }
        None => {
            check_free(&control_addr)?;
            paths::write_private(&paths::up_addr_file(), format!("{control_addr}\n").as_bytes())?;
            let mut args =
                vec!["--addr".into(), control_addr.clone(), "--bootstrap-token-file".into(), path_arg(&token_file)];
            if logged_in.is_none() {
                args.push("--new-admin-token".into());
            }
            let _ = std::fs::remove_file(&token_file);
            let pid = CONTROL.spawn(&args, &[])?;
            let health = net::control::Client::new(&Endpoint::new(&url), None)?;
            wait_for("the control plane answering", &CONTROL, pid, || async {
                health.call::<proto::routes::Health>(&[], &()).await.is_ok()
            })
            .await?;
            true
        }
    };

    // 2. The CLI's login.
    let login = match logged_in {
        Some(l) => l,
        None => {
            let token = std::fs::read_to_string(&token_file).map_err(|_| {
                anyhow::anyhow!("the control plane at {url} is running but this machine is not logged in to it; run `openbox down` then `openbox up`")
            })?;
            let token = trust::Secret::new(token.trim());
            let server = Endpoint::new(&url);
            let me: WhoAmI = net::control::Client::new(&server, Some(token.clone()))?
                .call::<proto::routes::WhoAmI>(&[], &())
                .await?;
            let login = Login { server, user: me.user, token, ca: trust::parse_public_key(&me.ca_public_key)? };
            user_key()?;
            login.save()?;
            d.reload_login();
            let _ = std::fs::remove_file(&token_file);
            login
        }
    };

    // 3. This machine as a node.
    let enrolled = openbox_agent_identity_exists();
    let agent_started = match AGENT.running() {
        Some(pid) => {
            warnings.extend(AGENT.older_binary_warning(pid));
            false
        }
        None => {
            // The control plane's address always: after `up --addr` moved the fleet, an
            // enrolled agent heartbeats to where it is now.
            let args: Vec<String> = vec!["--addr".into(), "127.0.0.1:0".into(), "--server".into(), url.clone()];
            let mut token = None;
            if !enrolled {
                let tok: EnrollToken = login
                    .client()?
                    .call::<proto::routes::NewEnrollToken>(
                        &[],
                        &NewEnrollToken { tags: vec![LOCAL_TAG.into()], ttl_secs: 600 },
                    )
                    .await?;
                token = Some(tok.token);
            }
            let offset = log_len(&AGENT);
            let env: Vec<(&str, &str)> =
                token.as_deref().map(|t| (proto::api::ENROLL_TOKEN_ENV, t)).into_iter().collect();
            let pid = AGENT.spawn(&args, &env)?;
            wait_for("the agent serving", &AGENT, pid, || async {
                log_since(&AGENT, offset).contains("openbox agent: node ")
            })
            .await?;
            true
        }
    };

    let logs_shown = logs.display().to_string();
    let json = to_json(&proto::output::Up {
        server: url.clone(),
        user: login.user.clone(),
        control_started,
        agent_started,
        tag: LOCAL_TAG.into(),
        dashboard: format!("{url}/"),
        logs: logs_shown.clone(),
    });
    let state = |started: bool| if started { "started" } else { "already running" };
    let text = format!(
        "openbox is up:\n  control plane  {url} ({})\n  this machine   node tagged {LOCAL_TAG} ({})\n  logged in as   {}\n  dashboard      {url}/ (`openbox dashboard` opens it logged in)\n  logs           {logs_shown}\n\nTry:  openbox -t {LOCAL_TAG} uname -a\n      openbox nodes\nStop: openbox down",
        state(control_started),
        state(agent_started),
        login.user
    );
    Ok(Reply { json, text, warnings })
}

fn openbox_agent_identity_exists() -> bool {
    paths::agent_identity(&paths::agent_dir()).exists()
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Stops what `up` started: the agent first (it says goodbye to the control plane).
pub async fn down() -> anyhow::Result<Reply> {
    let mut stopped = Vec::new();
    for role in [&AGENT, &CONTROL] {
        if let Some(pid) = role.running() {
            let _ = kill_process(pid, Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while test_kill_process(pid).is_ok() && !is_zombie(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if test_kill_process(pid).is_ok() && !is_zombie(pid) {
                let _ = kill_process(pid, Signal::KILL);
            }
            stopped.push(role.name);
        }
        let _ = std::fs::remove_file(role.pid_file());
    }
    let text = if stopped.is_empty() {
        "Nothing was running.".to_owned()
    } else {
        format!("Stopped: {}.", stopped.join(", "))
    };
    let stopped = stopped.iter().map(|s| s.to_string()).collect();
    Ok(Reply { json: to_json(&proto::output::Down { stopped }), text, warnings: Vec::new() })
}
