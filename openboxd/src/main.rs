//! `openboxd` (also `openbox daemon`): serves the CLI's requests on a Unix socket. Started
//! with a call in `OPENBOX_CALL`, it runs just that call instead (no daemon).

use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use openboxd::Daemon;
use openboxd::io::{CallOutput, fd_input};
use proto::request::{CALL_ENV, Call};

/// Run openboxd, the per-user daemon behind the `openbox` CLI (the CLI starts it when
/// needed; a service manager may run it instead). It serves one context: the one
/// OPENBOX_CONTEXT names (the CLI sets it), else the default.
#[derive(clap::Parser, Debug)]
#[command(name = "openbox daemon run", version = proto::VERSION)]
struct Args {
    /// Join this tailnet (its Headscale or Tailscale coordination server) and reach nodes
    /// over it; remembered, so later starts rejoin as the same tailnet node. Also
    /// OPENBOX_MESH_CONTROL; a control plane may hand one out at login.
    #[arg(long, value_name = "URL")]
    mesh_control: Option<String>,
    /// File holding the tailnet auth key (needed the first time only; also
    /// OPENBOX_MESH_AUTHKEY). Never give the key itself on the command line.
    #[arg(long, value_name = "FILE")]
    mesh_authkey_file: Option<std::path::PathBuf>,
    /// Be on a tailnet (the remembered one unless --mesh-control names one), or fail.
    /// Also OPENBOX_MESH=1.
    #[arg(long)]
    mesh: bool,
    /// How long one try at joining the tailnet may take; a failed try is tried again,
    /// and calls that need the tailnet meanwhile fail at once. Also OPENBOX_MESH_TIMEOUT
    /// [default: 30s].
    #[arg(long, value_parser = proto::parse_secs)]
    mesh_timeout: Option<u64>,
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    // Every file this process names depends on its context: a bad name stops it here.
    if let Err(e) = paths::Context::from_env() {
        eprintln!("openboxd: {e}");
        return ExitCode::from(proto::EXIT_OPENBOX_FAILURE);
    }
    let mesh =
        match openboxd::wanted_mesh(args.mesh_control, args.mesh_authkey_file.as_deref(), args.mesh, args.mesh_timeout)
        {
            Ok(mesh) => mesh,
            Err(e) => {
                eprintln!("openboxd: {e:#}");
                return ExitCode::from(proto::EXIT_OPENBOX_FAILURE);
            }
        };
    if let Some(m) = &mesh {
        tailnet::ensure_environment(m.control_url());
    }
    let call = std::env::var_os(CALL_ENV);
    // A one-shot call's stderr is the user's own: only warnings belong there.
    telemetry::init_at_with(if call.is_some() { "warn" } else { "info" }, openboxd::call_log::layer());
    telemetry::raise_open_file_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Each call's descriptors are served by blocking threads (see `openboxd::io`): this
        // many calls at once, not tokio's default of 256, before one has to wait.
        .max_blocking_threads(openboxd::io::MAX_BLOCKING_THREADS)
        .build()
        .expect("tokio runtime");
    match call {
        Some(text) => one_shot(&rt, &text.to_string_lossy(), mesh),
        None => {
            let served = rt.block_on(daemon(mesh));
            // A thread still serving a caller's descriptor notices within a tick that its
            // call is gone; never wait on one longer than that.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("openboxd: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs the one call the CLI handed over, with this process's own streams.
fn one_shot(rt: &tokio::runtime::Runtime, text: &str, mesh: Option<openboxd::WantedMesh>) -> ExitCode {
    let call: Call = match serde_json::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "openboxd: the request from the CLI is not understood ({e}); are openbox and openboxd the same version?"
            );
            return ExitCode::from(proto::EXIT_OPENBOX_FAILURE);
        }
    };
    // The same descriptor handling as for a caller's passed descriptors: they may be
    // non-blocking, and they may be shared.
    let own = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned();
    let streams = own(std::io::stdin().as_fd())
        .and_then(|i| Ok((i, own(std::io::stdout().as_fd())?, own(std::io::stderr().as_fd())?)));
    let (stdin, stdout, stderr) = match streams {
        Ok(s) => s,
        Err(e) => {
            eprintln!("openboxd: cannot use this process's standard streams ({e})");
            return ExitCode::from(proto::EXIT_OPENBOX_FAILURE);
        }
    };
    let wants_tty = matches!(&call.request, proto::request::Request::Run(r) if r.tty.is_some());
    let code = rt.block_on(async {
        let d = Daemon::new(false, mesh);
        // A run in a terminal: this process is the terminal's foreground process, so it
        // hears the terminal's resizes itself.
        let terminal = if wants_tty { openboxd::terminal::Terminal::own().ok() } else { None };
        let (input, output) = (fd_input(stdin), CallOutput::fds(stdout, stderr));
        // This process is the caller: its own signals go to the call's command (a second
        // one, while the first is being dealt with, ends it at once).
        let (tx, halts) = net::halt::Halts::channel();
        if let Ok(mut signals) = tailnet::call_signals() {
            tokio::spawn(async move {
                let mut told = false;
                while let Some(name) = signals.recv().await {
                    let halt = if told { net::halt::Halt::Gone } else { net::halt::Halt::Signal(name) };
                    tx.send_replace(Some(halt));
                    told = true;
                }
            });
        }
        let (verbosity, log_to) = (call.verbosity, std::io::stderr().as_fd().try_clone_to_owned().ok().map(Into::into));
        let call = openboxd::handle(&d, call, openboxd::io::CallIo { input, terminal, output, halts });
        openboxd::call_log::scope(verbosity, log_to, false, call).await
    });
    // Exit without waiting for a blocked read of stdin (the runtime would wait for it).
    std::process::exit(i32::from(code));
}

async fn daemon(mesh: Option<openboxd::WantedMesh>) -> anyhow::Result<()> {
    let socket = paths::daemon_socket();
    let listener = bind(&socket)?;
    let d = Daemon::new(true, mesh);
    let _watcher = watch_login(d.clone())?;
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "openboxd listening");
    println!("openboxd listening on {}", socket.display());
    let ours = socket_identity(&socket);
    openboxd::serve(listener, d, tailnet::shutdown_signals()?).await;
    // A new openboxd may have taken the socket's place meanwhile: leave that one be.
    if ours.is_some() && socket_identity(&socket) == ours {
        let _ = std::fs::remove_file(&socket);
    }
    tracing::info!("openboxd stopped");
    Ok(())
}

/// Binds the socket: mode 0600 in a 0700 directory. A socket file nobody answers on is
/// left over from a daemon that died, and is replaced.
fn bind(socket: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    paths::check_socket_path(socket).map_err(anyhow::Error::msg)?;
    let dir = socket.parent().context("socket path has no directory")?;
    paths::create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            bail!("another openboxd is already serving {}", socket.display());
        }
        std::fs::remove_file(socket)?;
    }
    let listener = tokio::net::UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Which file the socket path names (device and inode), to tell ours from a successor's.
fn socket_identity(socket: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(socket).ok().map(|m| (m.dev(), m.ino()))
}

/// Notices `openbox login` / `logout` done by other processes, without a restart.
fn watch_login(d: Arc<Daemon>) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let file = paths::login_file();
    let dir = file.parent().context("login file has no directory")?.to_path_buf();
    paths::create_private_dir(&dir)?;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the file is an event too: reacting to those would loop forever.
        if let Ok(e) = event
            && (e.kind.is_create() || e.kind.is_modify() || e.kind.is_remove())
            && e.paths.iter().any(|p| p.file_name() == file.file_name())
        {
            d.reload_login();
        }
    })
    .context("watching the login file")?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
