//! `openbox node add`: a machine reachable over SSH becomes a node with one command.
//!
//! Steps, each named in the error when it fails: connect (host key checked as OpenSSH
//! would, see `net::remote`) → probe (`uname`, the account, the service manager) → already
//! a node? (its agent's `--identity`) → upload the agent binary → a fresh single-use
//! enrollment token, into a 0600 file there (never on a command line) → install and start
//! the agent (systemd system or user unit, launchd, or nohup said out loud) → wait until
//! it has enrolled and is online. A failure after the install step removes what it put
//! there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use net::remote::{HostKeyPolicy, Login as SshAuth, Remote, RemoteError, Trusted};
use net::ssh::NoInput;
use proto::api::{EnrollToken, NewEnrollToken, Node};
use proto::output::NodeAdded;
use proto::request::{NodeAddRequest, SshLogin};
use service::{Role, Scope};

use crate::Daemon;
use crate::commands::{Reply, to_json};
use crate::io::CallOutput;

/// How long a fresh agent may take to enroll and come online.
const ONLINE_WITHIN: Duration = Duration::from_secs(60);

/// What the machine is, as the probe found it.
#[derive(Clone)]
struct Machine {
    os: String,
    arch: String,
    /// Installs as root: the login is root, or it may `sudo` without a password where
    /// systemd runs the system (then the agent is a system service).
    root: bool,
    /// Through `sudo -n` (the login is not root).
    sudo: bool,
    home: String,
    uid: u32,
    manager: Manager,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Manager {
    Systemd,
    SystemdUser,
    Launchd,
    Nohup,
}

impl Manager {
    fn name(self) -> &'static str {
        match self {
            Manager::Systemd => "systemd",
            Manager::SystemdUser => "systemd-user",
            Manager::Launchd => "launchd",
            Manager::Nohup => "nohup",
        }
    }
}

/// Where things go on the machine.
struct Layout {
    bin: String,
    /// `OPENBOX_HOME` for the agent, when it is not the account's default.
    home_env: Option<String>,
    token: String,
    log: String,
    pid: String,
    /// The agent's service, where a service manager runs it (the same place `openbox
    /// service install agent` would use there).
    service: Option<service::Place>,
}

impl Layout {
    fn for_machine(m: &Machine) -> Layout {
        let os = if m.os == "macos" { service::Os::MacOs } else { service::Os::Linux };
        let scope = if m.root { Scope::System } else { Scope::User };
        let service = match m.manager {
            Manager::Nohup => None,
            _ => Some(service::Place::new(Role::Agent, scope, os, &m.home, &format!("{}/.config", m.home), m.uid)),
        };
        let state = format!("{}/.local/state/openbox", m.home);
        let (bin, home_env, nohup_token, log, pid) = if m.root {
            (
                "/usr/local/bin/openbox-agent".to_owned(),
                Some("/var/lib/openbox-agent".to_owned()),
                "/etc/openbox/enroll.token".to_owned(),
                "/var/log/openbox-agent.log".to_owned(),
                "/run/openbox-agent.pid".to_owned(),
            )
        } else {
            (
                format!("{}/.local/bin/openbox-agent", m.home),
                None,
                format!("{state}/enroll.token"),
                format!("{state}/agent.log"),
                format!("{state}/agent.pid"),
            )
        };
        // A service keeps its token and log where the service crate puts them.
        let token = service.as_ref().map_or(nohup_token, |p| p.token.clone());
        let log = match &service {
            Some(p) if !p.log.is_empty() => p.log.clone(),
            _ => log,
        };
        Layout { bin, home_env, token, log, pid, service }
    }

    /// The directory the agent binary is in.
    fn bin_dir(&self) -> String {
        self.bin.rsplit_once('/').map_or(".", |(dir, _)| dir).to_owned()
    }

    /// The agent binary, run with the right `OPENBOX_HOME`.
    fn agent(&self) -> String {
        match &self.home_env {
            Some(h) => format!("OPENBOX_HOME={} {}", sh(h), sh(&self.bin)),
            None => sh(&self.bin),
        }
    }
}

/// The machine, as the account that installs: commands go through `sudo -n` when that is
/// how it becomes root.
struct On<'a> {
    remote: &'a Remote,
    sudo: bool,
}

impl On<'_> {
    async fn run(&self, command: &str, input: impl net::ssh::Input) -> Result<net::remote::Ran, RemoteError> {
        match self.sudo {
            true => self.remote.run(&format!("sudo -n sh -c {}", sh(command)), input).await,
            false => self.remote.run(command, input).await,
        }
    }
}

/// Single-quoted for `sh`.
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Progress, on the call's stderr (none with `-q`).
async fn say(out: &mut CallOutput, text: &str) {
    if !crate::call_log::quiet() {
        out.eprint(&format!("node add: {text}\n")).await;
    }
}

pub async fn node_add(d: &Daemon, req: NodeAddRequest, out: &mut CallOutput) -> anyhow::Result<Reply> {
    let login = d.login()?;
    let control = login.client()?;
    let who = format!("{}@{}:{}", req.user, req.host, req.port);

    say(out, &format!("connecting to {who}")).await;
    let remote = connect(&req).await?;
    let fingerprint = trust::known_hosts::fingerprint(&remote.host_key);
    if remote.trusted == Trusted::New {
        record_host_key(&req, &remote.host_key)?;
        say(out, &format!("host key {fingerprint} recorded in {}", req.known_hosts)).await;
    } else {
        say(out, &format!("host key {fingerprint} is the one known_hosts records")).await;
    }
    let result = bootstrap(&req, &who, &remote, &control, &login.server, out).await;
    remote.close().await;
    result
}

async fn connect(req: &NodeAddRequest) -> anyhow::Result<Remote> {
    let known_hosts = match std::fs::read_to_string(&req.known_hosts) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", req.known_hosts)),
    };
    let policy = HostKeyPolicy {
        known_hosts,
        known_hosts_path: req.known_hosts.clone(),
        pin: req.host_key_fingerprint.clone(),
        accept_new: req.accept_new,
    };
    let auth = match &req.login {
        SshLogin::Password(p) => SshAuth::Password(trust::Secret::new(p.0.as_str())),
        SshLogin::Key(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading the key {path}"))?;
            let key = trust::PrivateKey::from_openssh(&text)
                .map_err(|e| anyhow!("{path} is not an OpenSSH private key: {e}"))?;
            if key.is_encrypted() {
                bail!("{path} is protected by a passphrase: add it to your SSH agent (ssh-add) and leave out --key");
            }
            SshAuth::Key(Arc::new(key))
        }
        SshLogin::Agent(socket) => SshAuth::Agent(socket.into()),
    };
    net::remote::connect(&req.host, req.port, &req.user, &auth, &policy).await.map_err(|e| match e {
        RemoteError::AuthFailed { .. } => anyhow!("authentication failed: {e}"),
        e => anyhow!(e),
    })
}

/// Appends the host's key to `known_hosts` (creating it, and `~/.ssh`, private).
fn record_host_key(req: &NodeAddRequest, key: &trust::PublicKey) -> anyhow::Result<()> {
    use std::io::Write as _;
    let path = std::path::Path::new(&req.known_hosts);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("recording the host key in {}", path.display()))?;
    writeln!(f, "{}", trust::known_hosts::entry_line(&req.host, req.port, key))?;
    Ok(())
}

async fn bootstrap(
    req: &NodeAddRequest,
    who: &str,
    remote: &Remote,
    control: &net::control::Client,
    server: &net::control::Endpoint,
    out: &mut CallOutput,
) -> anyhow::Result<Reply> {
    let machine = probe(remote).await.context("probing the machine")?;
    let account = match (machine.root, machine.sudo) {
        (true, false) => "root",
        (true, true) => "installing as root through passwordless sudo",
        _ => "not root: installing for this account",
    };
    say(out, &format!("{} {}, {account}", machine.os, machine.arch)).await;
    let layout = Layout::for_machine(&machine);
    let remote = &On { remote, sudo: machine.sudo };

    // Already a node of this fleet? Then nothing changes, unless asked. An identity the
    // fleet does not know (the node was removed, or it is another fleet's) is set aside,
    // so that the agent enrolls anew.
    let enrolled_here = match enrolled(remote, &layout).await {
        Some((node_id, name))
            if control
                .call::<proto::routes::ListNodes>(&[], &Default::default())
                .await?
                .iter()
                .any(|n| n.id == node_id) =>
        {
            Some((node_id, name))
        }
        Some((node_id, name)) => {
            let forget = remote.run(&format!("{} --forget-identity", layout.agent()), NoInput).await?;
            if !forget.ok() {
                bail!(
                    "{who} has the identity of node {name} ({node_id}), which this fleet does not know, and it could not be set aside: {}",
                    forget.why()
                );
            }
            say(out, &format!("set aside the identity of node {name} ({node_id}), which this fleet does not know"))
                .await;
            None
        }
        None => None,
    };
    if !req.reinstall
        && let Some((node_id, name)) = enrolled_here.clone()
    {
        let text =
            format!("{who} is already node {name} ({node_id}); nothing changed (--reinstall installs it again).");
        let added = NodeAdded { node_id, name, host: who.to_owned(), service: None, already: true };
        return Ok(Reply::new(to_json(&added), text));
    }

    let (m, from) = (machine.clone(), req.from.clone());
    let binary = tokio::task::spawn_blocking(move || agent_binary(&m, from.as_deref()))
        .await?
        .context("choosing the agent for the machine")?;
    let existed = remote.run(&format!("test -e {}", sh(&layout.bin)), NoInput).await?.ok();
    upload(remote, &binary.path, &layout.bin, out).await.context("uploading the agent")?;

    let installed = Installed { layout: &layout, binary_is_new: !existed };
    let done = async {
        // Installed again over a node of the fleet, the agent stays that node: it gets no
        // token (one it did not enroll with would be refused as a second node's).
        if enrolled_here.is_none() {
            let tok: EnrollToken = control
                .call::<proto::routes::NewEnrollToken>(&[], &NewEnrollToken { tags: req.tags.clone(), ttl_secs: 600 })
                .await
                .context("minting an enrollment token")?;
            put_token(remote, &layout, &tok.token).await.context("handing over the enrollment token")?;
        }
        let args = agent_args(req, server, &layout);
        let how = start_agent(remote, &machine, &layout, &args).await.context("starting the agent")?;
        say(out, &how).await;
        say(out, "waiting for the node to enroll and come online").await;
        let (node_id, name) = wait_online(remote, &layout, control).await.context("waiting for the node")?;
        let _ = remote.run(&format!("rm -f {}", sh(&layout.token)), NoInput).await;
        anyhow::Ok((node_id, name))
    }
    .await;
    let (node_id, name) = match done {
        Ok(v) => v,
        Err(e) => {
            installed.remove(remote).await;
            return Err(e.context(format!("{who}: nothing was left installed")));
        }
    };
    let text = format!(
        "Node {name} ({node_id}) is online, its agent run by {}.\nTry:  openbox -n {name} hostname",
        machine.manager.name()
    );
    let added =
        NodeAdded { node_id, name, host: who.to_owned(), service: Some(machine.manager.name().into()), already: false };
    Ok(Reply::new(to_json(&added), text))
}

async fn probe(remote: &Remote) -> anyhow::Result<Machine> {
    const PROBE: &str = r#"uname -s; uname -m; id -u; printf '%s\n' "$HOME"
if [ "$(uname -s)" = Darwin ]; then echo launchd
elif [ -d /run/systemd/system ] && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then echo systemd
elif [ "$(id -u)" != 0 ] && systemctl --user show-environment >/dev/null 2>&1; then echo systemd-user
else echo nohup; fi"#;
    let ran = remote.run(PROBE, NoInput).await?;
    if !ran.ok() {
        bail!("the probe failed: {}", ran.why());
    }
    let text = ran.stdout_text();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let [os, arch, uid, home, manager, ..] = lines[..] else {
        bail!("the probe's answer is not understood: {text:?}");
    };
    let uid_number: u32 = uid.parse().map_err(|_| anyhow!("the probe's answer is not understood: {text:?}"))?;
    let os = match os {
        "Linux" => "linux",
        "Darwin" => "macos",
        other => bail!("unsupported platform: {other} {arch} (openbox runs on Linux and macOS)"),
    };
    let arch = match arch {
        "x86_64" | "amd64" => "x86_64",
        "aarch64" | "arm64" => "aarch64",
        other => bail!("unsupported platform: {os} {other} (openbox runs on x86_64 and aarch64)"),
    };
    let manager = match manager {
        "systemd" => Manager::Systemd,
        "systemd-user" => Manager::SystemdUser,
        "launchd" => Manager::Launchd,
        _ => Manager::Nohup,
    };
    // Not root, but a system service all the same: through sudo.
    let sudo = uid != "0" && manager == Manager::Systemd;
    Ok(Machine {
        os: os.into(),
        arch: arch.into(),
        root: uid == "0" || sudo,
        sudo,
        home: home.into(),
        uid: uid_number,
        manager,
    })
}

/// The node this machine's agent says it is, if it has enrolled.
async fn enrolled(remote: &On<'_>, layout: &Layout) -> Option<(String, String)> {
    let ran = remote.run(&format!("{} --identity", layout.agent()), NoInput).await.ok()?;
    let id: serde_json::Value = serde_json::from_slice(&ran.stdout).ok().filter(|_| ran.ok())?;
    Some((id["node_id"].as_str()?.to_owned(), id["name"].as_str()?.to_owned()))
}

/// The agent binary to upload, and the directory a release tarball was unpacked into
/// (removed when this is dropped).
struct AgentBinary {
    path: std::path::PathBuf,
    _unpacked: Option<tempfile::TempDir>,
}

/// How a release names a platform in its tarballs' names: `linux-x86_64`, `linux-aarch64`,
/// `macos-arm64` (Apple's name for its own CPUs), `macos-x86_64`.
fn release_platform(os: &str, arch: &str) -> String {
    match (os, arch) {
        ("macos", "aarch64") => "macos-arm64".to_owned(),
        _ => format!("{os}-{arch}"),
    }
}

/// The agent binary for the machine: from `from` when given — a release directory, whose
/// tarball for the machine's platform is checked against its `SHA256SUMS` and unpacked, or
/// a directory of `openbox-agent-OS-ARCH` binaries — else this machine's own, when the
/// platforms match. Whatever it is, its header must say the machine's platform.
fn agent_binary(m: &Machine, from: Option<&str>) -> anyhow::Result<AgentBinary> {
    let platform = release_platform(&m.os, &m.arch);
    let tarball = format!("openbox-{}-{platform}.tar.gz", proto::VERSION);
    let binary = match from {
        None => {
            let here = (if cfg!(target_os = "macos") { "macos" } else { "linux" }, std::env::consts::ARCH);
            if (m.os.as_str(), m.arch.as_str()) != here {
                bail!(
                    "the machine is {} {} and this one {} {}: give --from DIR, the release directory holding {tarball} and its SHA256SUMS",
                    m.os,
                    m.arch,
                    here.0,
                    here.1
                );
            }
            AgentBinary { path: paths::sibling_binary("openbox-agent"), _unpacked: None }
        }
        Some(dir) => {
            let dir = std::path::Path::new(dir);
            let loose = dir.join(format!("openbox-agent-{}-{}", m.os, m.arch));
            if loose.is_file() { AgentBinary { path: loose, _unpacked: None } } else { unpack_agent(dir, &tarball)? }
        }
    };
    let mut head = [0u8; 64];
    let n = std::io::Read::read(
        &mut std::fs::File::open(&binary.path).with_context(|| format!("opening {}", binary.path.display()))?,
        &mut head,
    )?;
    match binary_platform(&head[..n]) {
        Some((os, arch)) if (os, arch) == (m.os.as_str(), m.arch.as_str()) => Ok(binary),
        found => bail!(
            "{} is not an agent for {platform} (it is {}): the machine would not run it",
            binary.path.display(),
            found.map_or("no Linux or macOS binary".to_owned(), |(os, arch)| release_platform(os, arch))
        ),
    }
}

/// `openbox-agent` out of the release tarball `name` in `dir`, once the tarball's checksum
/// matches the one its `SHA256SUMS` lists (as install.sh checks it).
fn unpack_agent(dir: &std::path::Path, name: &str) -> anyhow::Result<AgentBinary> {
    use sha2::Digest as _;
    let sums_path = dir.join("SHA256SUMS");
    let sums = std::fs::read_to_string(&sums_path).map_err(|e| {
        anyhow!("{}: {e}; --from takes a release directory, with its tarballs and SHA256SUMS", sums_path.display())
    })?;
    let mut listed = sums.lines().filter_map(|line| line.split_once("  "));
    let Some((expected, _)) = listed.find(|(_, file)| file.trim_start_matches('*') == name) else {
        bail!("the release in {} has no {name} (its SHA256SUMS does not list it)", dir.display());
    };
    let path = dir.join(name);
    let mut file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut hash = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hash).with_context(|| format!("reading {}", path.display()))?;
    let actual: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if actual != expected {
        bail!(
            "checksum mismatch for {}: SHA256SUMS says {expected}, the file is {actual}; refusing to install it",
            path.display()
        );
    }
    let unpacked = tempfile::tempdir().context("making a directory to unpack the release in")?;
    let tar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&path)
        .arg("-C")
        .arg(unpacked.path())
        .output()
        .context("running tar")?;
    if !tar.status.success() {
        bail!("{} is not a tarball openbox can read: {}", path.display(), String::from_utf8_lossy(&tar.stderr).trim());
    }
    let agent = unpacked.path().join(name.trim_end_matches(".tar.gz")).join("bin/openbox-agent");
    if !agent.is_file() {
        bail!("{} holds no bin/openbox-agent: not an openbox release", path.display());
    }
    Ok(AgentBinary { path: agent, _unpacked: Some(unpacked) })
}

/// The platform (`linux`/`macos`, `x86_64`/`aarch64`) a binary is built for, from the
/// first bytes of it: an ELF header's machine or a 64-bit Mach-O header's CPU type.
fn binary_platform(head: &[u8]) -> Option<(&'static str, &'static str)> {
    if head.len() >= 20 && head.starts_with(b"\x7fELF") {
        return match u16::from_le_bytes([head[18], head[19]]) {
            62 => Some(("linux", "x86_64")),
            183 => Some(("linux", "aarch64")),
            _ => None,
        };
    }
    if head.len() >= 8 && head[..4] == 0xfeed_facf_u32.to_le_bytes() {
        return match u32::from_le_bytes([head[4], head[5], head[6], head[7]]) {
            0x0100_0007 => Some(("macos", "x86_64")),
            0x0100_000c => Some(("macos", "aarch64")),
            _ => None,
        };
    }
    None
}

/// Streams `local` to `path` on the machine (through a temporary name, so a cut upload
/// leaves no half binary), with progress.
async fn upload(remote: &On<'_>, local: &std::path::Path, path: &str, out: &mut CallOutput) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let mut file = tokio::fs::File::open(local).await.with_context(|| format!("opening {}", local.display()))?;
    let total = file.metadata().await?.len();
    let part = format!("{path}.part");
    let dir = std::path::Path::new(path).parent().map(|d| d.display().to_string()).unwrap_or_else(|| ".".into());
    let command = format!(
        "mkdir -p {} && cat > {} && chmod 755 {} && mv -f {} {}",
        sh(&dir),
        sh(&part),
        sh(&part),
        sh(&part),
        sh(path)
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let (progress_tx, mut progress) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let reader = tokio::spawn(async move {
        let mut sent = 0u64;
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            let n = match file.read(&mut buf).await {
                Ok(0) | Err(_) => return sent,
                Ok(n) => n,
            };
            buf.truncate(n);
            if tx.send(buf).await.is_err() {
                return sent;
            }
            sent += n as u64;
            let _ = progress_tx.send(sent);
        }
    });
    let run = remote.run(&command, rx);
    tokio::pin!(run);
    let mut shown = 0;
    let ran = loop {
        tokio::select! {
            ran = &mut run => break ran?,
            Some(sent) = progress.recv() => {
                let pct = (sent * 100).checked_div(total).unwrap_or(100);
                if pct >= shown + 25 || sent == total {
                    shown = pct;
                    say(out, &format!("uploading {} to {path}: {pct}% of {:.1} MB", local.display(), total as f64 / 1e6)).await;
                }
            }
        }
    };
    let sent = reader.await.unwrap_or(0);
    if !ran.ok() {
        let _ = remote.run(&format!("rm -f {}", sh(&part)), NoInput).await;
        bail!("{}", ran.why());
    }
    if sent != total {
        bail!("only {sent} of {total} bytes were sent");
    }
    Ok(())
}

/// Writes the token into a file only the account can read.
async fn put_token(remote: &On<'_>, layout: &Layout, token: &str) -> anyhow::Result<()> {
    let dir = std::path::Path::new(&layout.token).parent().map(|d| d.display().to_string()).unwrap_or_default();
    let command = format!("umask 077 && mkdir -p {} && cat > {}", sh(&dir), sh(&layout.token));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(format!("{token}\n").into_bytes()).await.ok();
    drop(tx);
    let ran = remote.run(&command, rx).await?;
    if !ran.ok() {
        bail!("{}", ran.why());
    }
    Ok(())
}

/// The agent's arguments (the token by file).
fn agent_args(req: &NodeAddRequest, server: &net::control::Endpoint, layout: &Layout) -> Vec<String> {
    let mut args = vec!["--server".to_owned(), server.url.clone()];
    if let Some(fp) = &server.fingerprint {
        args.extend(["--fingerprint".into(), fp.to_string()]);
    }
    if server.insecure_http {
        args.push("--insecure-http".into());
    }
    args.extend(["--token-file".into(), layout.token.clone()]);
    if let Some(n) = &req.name {
        args.extend(["--name".into(), n.clone()]);
    }
    if !req.mesh {
        let advertise = if req.host.contains(':') { format!("[{}]", req.host) } else { req.host.clone() };
        args.extend([
            "--addr".into(),
            format!("0.0.0.0:{}", req.agent_port),
            "--advertise".into(),
            format!("{advertise}:{}", req.agent_port),
        ]);
    }
    args
}

/// Installs the agent as a service (or starts it with nohup) and says how.
async fn start_agent(remote: &On<'_>, m: &Machine, layout: &Layout, args: &[String]) -> anyhow::Result<String> {
    let quoted: Vec<String> = args.iter().map(|a| sh(a)).collect();
    let (command, said) = match (&layout.service, m.manager) {
        // The token is already there (it travels on stdin, never in a command line).
        (Some(place), manager) => (
            service::Plan::install(place, &layout.bin_dir(), args, None, &[]).script(),
            match manager {
                Manager::SystemdUser => "installed the systemd user unit openbox-agent.service (enabled, started; `loginctl enable-linger` keeps it running when you are logged out)".to_owned(),
                Manager::Launchd => "installed the launchd agent dev.openbox.agent (loaded)".to_owned(),
                _ => "installed the systemd unit openbox-agent.service (enabled, started)".to_owned(),
            },
        ),
        (None, _) => {
            let log_dir =
                std::path::Path::new(&layout.log).parent().map(|d| d.display().to_string()).unwrap_or_default();
            let start = format!("{} {}", layout.agent(), quoted.join(" "));
            (
                // An agent started here before (--reinstall) stops first: it holds the port.
                format!(
                    "if test -f {pid}; then old=$(cat {pid}); kill \"$old\" 2>/dev/null; i=0; \
                     while kill -0 \"$old\" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; fi; \
                     mkdir -p {} && cd && if command -v setsid >/dev/null; then setsid nohup {start} >> {log} 2>&1 < /dev/null & \
                     else nohup {start} >> {log} 2>&1 < /dev/null & fi; echo $! > {pid}",
                    sh(&log_dir),
                    log = sh(&layout.log),
                    pid = sh(&layout.pid)
                ),
                format!(
                    "no service manager here: started the agent with nohup (log {}); it will not start again after a reboot",
                    layout.log
                ),
            )
        }
    };
    let ran = remote.run(&command, NoInput).await?;
    if !ran.ok() {
        let why = ran.why();
        if why.contains("ermission denied")
            || why.contains("Access denied")
            || why.contains("Interactive authentication")
        {
            bail!("no permission to install a service: {why}");
        }
        bail!("{why}");
    }
    Ok(said)
}

/// Waits until the agent has enrolled (its `--identity` answers) and the control plane
/// shows the node online.
async fn wait_online(
    remote: &On<'_>,
    layout: &Layout,
    control: &net::control::Client,
) -> anyhow::Result<(String, String)> {
    let deadline = Instant::now() + ONLINE_WITHIN;
    let mut pause = Duration::from_millis(100);
    loop {
        if let Some((id, name)) = enrolled(remote, layout).await {
            let nodes: Vec<Node> = control.call::<proto::routes::ListNodes>(&[], &Default::default()).await?;
            if nodes.iter().any(|n| n.id == id && n.online) {
                return Ok((id, name));
            }
        } else if let Some(last) = agent_gone(remote, layout).await {
            bail!("the agent stopped: {last}");
        }
        if Instant::now() > deadline {
            bail!("it did not come online within {}s; its log is {}", ONLINE_WITHIN.as_secs(), layout.log);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// When a nohup-started agent has exited: the last line of its log.
async fn agent_gone(remote: &On<'_>, layout: &Layout) -> Option<String> {
    let check = format!(
        "test -f {p} && ! kill -0 \"$(cat {p})\" 2>/dev/null && tail -n 1 {}",
        sh(&layout.log),
        p = sh(&layout.pid)
    );
    let ran = remote.run(&check, NoInput).await.ok()?;
    ran.ok().then(|| ran.stdout_text().trim().to_owned())
}

/// What one run put on the machine, so that a failure can take it away again.
struct Installed<'a> {
    layout: &'a Layout,
    binary_is_new: bool,
}

impl Installed<'_> {
    async fn remove(&self, remote: &On<'_>) {
        let l = self.layout;
        let mut steps = match &l.service {
            Some(place) => vec![service::Plan::uninstall(place).script()],
            None => vec![format!("test -f {p} && kill \"$(cat {p})\"; rm -f {p}", p = sh(&l.pid))],
        };
        steps.push(format!("rm -f {}", sh(&l.token)));
        if self.binary_is_new {
            steps.push(format!("rm -f {}", sh(&l.bin)));
        }
        for step in steps {
            let _ = remote.run(&step, NoInput).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(os: &str, arch: &str) -> Machine {
        Machine {
            os: os.into(),
            arch: arch.into(),
            root: false,
            sudo: false,
            home: "/home/u".into(),
            uid: 1000,
            manager: Manager::Nohup,
        }
    }

    #[test]
    fn on_a_mac_the_agent_becomes_a_launch_daemon_as_root_else_a_launch_agent() {
        let root = Machine {
            root: true,
            home: "/var/root".into(),
            uid: 0,
            manager: Manager::Launchd,
            ..machine("macos", "aarch64")
        };
        let l = Layout::for_machine(&root);
        let place = l.service.as_ref().expect("a launchd service");
        assert_eq!(l.bin, "/usr/local/bin/openbox-agent");
        assert_eq!(
            (place.file.as_str(), place.domain.as_str()),
            ("/Library/LaunchDaemons/dev.openbox.agent.plist", "system")
        );
        assert_eq!((l.log.as_str(), l.token.as_str()), ("/var/log/openbox-agent.log", "/etc/openbox/enroll.token"));
        let script =
            service::Plan::install(place, &l.bin_dir(), &["--server".into(), "https://cp".into()], None, &[]).script();
        assert!(
            script.contains("launchctl bootstrap system /Library/LaunchDaemons/dev.openbox.agent.plist"),
            "{script}"
        );

        let user =
            Machine { home: "/Users/me".into(), uid: 501, manager: Manager::Launchd, ..machine("macos", "x86_64") };
        let l = Layout::for_machine(&user);
        let place = l.service.as_ref().expect("a launchd service");
        assert_eq!(l.bin, "/Users/me/.local/bin/openbox-agent");
        assert_eq!(
            (place.file.as_str(), place.domain.as_str()),
            ("/Users/me/Library/LaunchAgents/dev.openbox.agent.plist", "gui/501")
        );
        assert_eq!(l.log, "/Users/me/Library/Logs/openbox-agent.log");
    }

    #[test]
    fn a_release_names_each_platform_as_its_tarballs_do() {
        assert_eq!(release_platform("linux", "x86_64"), "linux-x86_64");
        assert_eq!(release_platform("linux", "aarch64"), "linux-aarch64");
        assert_eq!(release_platform("macos", "aarch64"), "macos-arm64");
        assert_eq!(release_platform("macos", "x86_64"), "macos-x86_64");
    }

    #[test]
    fn a_binarys_header_says_its_platform() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let os = if cfg!(target_os = "macos") { "macos" } else { "linux" };
        assert_eq!(binary_platform(&me[..64]), Some((os, std::env::consts::ARCH)));
        // 64-bit Mach-O headers: magic, then the CPU type.
        let mach_o = |cpu: u32| [0xfeed_facf_u32.to_le_bytes(), cpu.to_le_bytes()].concat();
        assert_eq!(binary_platform(&mach_o(0x0100_000c)), Some(("macos", "aarch64")));
        assert_eq!(binary_platform(&mach_o(0x0100_0007)), Some(("macos", "x86_64")));
        assert_eq!(binary_platform(&mach_o(12)), None, "32-bit ARM");
        assert_eq!(binary_platform(b"#!/bin/sh\necho agent\n"), None);
    }

    #[test]
    fn a_directory_of_loose_binaries_must_hold_one_for_the_machines_platform() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::env::current_exe().unwrap();
        let mac = machine("macos", "aarch64");
        // This machine's own binary, named for a Mac: its header gives it away.
        std::fs::copy(&me, dir.path().join("openbox-agent-macos-aarch64")).unwrap();
        let err = agent_binary(&mac, dir.path().to_str()).err().unwrap().to_string();
        assert!(err.contains("is not an agent for macos-arm64"), "{err}");
        // Neither a loose binary nor a release for it.
        let err = agent_binary(&machine("macos", "x86_64"), dir.path().to_str()).err().unwrap().to_string();
        assert!(err.contains("SHA256SUMS") && err.contains("release directory"), "{err}");
        // Without --from only this machine's own platform is served.
        let err = agent_binary(&mac, None).err().map(|e| e.to_string()).unwrap_or_default();
        if !cfg!(all(target_os = "macos", target_arch = "aarch64")) {
            assert!(err.contains(&format!("openbox-{}-macos-arm64.tar.gz", proto::VERSION)), "{err}");
        }
    }

    #[test]
    fn shell_quoting_keeps_every_byte() {
        assert_eq!(sh("a b"), "'a b'");
        assert_eq!(sh("it's"), r"'it'\''s'");
    }
}
